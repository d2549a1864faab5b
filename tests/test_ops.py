"""Every op, on every backend: forward values against NumPy in float64 (the oracle), VJPs against
central differences with ``check_grads`` at order 2, and float32 in -> float32 gradient out.

The ops are listed once, as tables of cases; each test body runs over the whole table and over
the ``device`` fixture (cpu, the array-api-strict test backend, cuda when a GPU answers).
Inputs are drawn away from kinks (abs, relu, clip, max, maximum/minimum ties) so that central
differences are valid.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import host, on
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradcore as gc

# ---------------------------------------------------------------------------------------------
# helpers


def index_on(x, index: np.ndarray):
    """An integer index array on the device of ``x`` (which may be traced)."""
    return gc.array(index, device=gc.device_of(x))


def draw(shape, low=-2.0, high=2.0, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(low, high, shape)


def away_from_zero(shape, seed=0) -> np.ndarray:
    """Values in +-[0.25, 2]: both signs, never near the kink of abs or relu."""
    rng = np.random.default_rng(seed)
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.25, 2.0, shape)


def distinct(shape, seed=0) -> np.ndarray:
    """Values at least 0.5 apart (no ties for max), in random order."""
    size = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(size).reshape(shape) * 0.5 - size / 4


def sum_of(fun: Callable) -> Callable:
    """``sum(fun(...))``: a scalar function, for grad."""
    return lambda *args: gc.sum(fun(*args))


@dataclass
class Case:
    """One use of an op: ``fun`` on gradcore arrays, ``oracle`` on NumPy float64 arrays."""

    id: str
    fun: Callable
    oracle: Callable
    args: tuple  # host float64 inputs
    # NumPy-only indexing (fewer indices than axes next to an integer array): not in the Array
    # API standard, so array-api-strict refuses it; NumPy and CuPy accept it
    standard: bool = True

    def named(self) -> Callable:
        """``fun`` under the case's name, which check_grads puts in its messages."""

        def fun(*args):
            return self.fun(*args)

        fun.__name__ = self.id
        return fun


def skip_if_not_standard(case: Case, device: str):
    if device == "strict" and not case.standard:
        pytest.skip("outside the Array API standard, which array-api-strict enforces")


def check_forward(case: Case, device: str):
    skip_if_not_standard(case, device)
    args = [on(device, a) for a in case.args]
    out = case.fun(*args)
    assert gc.device_of(out) == device
    expected = case.oracle(*case.args)
    np.testing.assert_allclose(host(out), expected, rtol=1e-12, atol=1e-12)
    assert host(out).shape == np.shape(expected)


def check_vjp(case: Case, device: str):
    gc.check_grads(case.named(), *[on(device, a) for a in case.args], order=2)


@gc.primitive
def watch(x):
    """The identity, whose VJP records the dtype of the cotangent the next op's rule returned."""
    return x


WATCHED_DTYPES: list[str] = []


def _record_dtype(g, ans, x):
    WATCHED_DTYPES.append(str(g.dtype).rpartition(".")[2])
    return g


gc.defvjp(watch, _record_dtype)


def check_float32(case: Case, device: str):
    """float32 inputs: float32 outputs, and every VJP rule of the op returns float32 cotangents.

    (``grad`` casts its result to the input's dtype at the end, so the rules are watched
    directly: a rule that computes in float64 would double the memory and time of backward.)
    """
    skip_if_not_standard(case, device)
    args = [on(device, a, "float32") for a in case.args]
    out = case.fun(*args)
    assert host(out).dtype == np.float32, f"{case.id}: output dtype {host(out).dtype}"
    expected = case.oracle(*[a.astype(np.float32).astype(np.float64) for a in case.args])
    np.testing.assert_allclose(host(out), expected, rtol=1e-5, atol=1e-5)
    argnums = tuple(range(len(args)))
    WATCHED_DTYPES.clear()
    grads = gc.grad(lambda *args: gc.sum(case.fun(*map(watch, args))), argnum=argnums)(*args)
    assert WATCHED_DTYPES == ["float32"] * len(args), f"{case.id}: cotangents {WATCHED_DTYPES}"
    for arg, g in zip(args, grads):
        assert gc.device_of(g) == device
        assert host(g).dtype == np.float32, f"{case.id}: gradient dtype {host(g).dtype}"
        assert host(g).shape == tuple(arg.shape)


# ---------------------------------------------------------------------------------------------
# binary elementwise ops over every broadcasting pair

SHAPES = [(), (4,), (3, 4), (1, 4), (3, 1)]
PAIRS = list(itertools.product(SHAPES, SHAPES))


def shape_id(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


@dataclass
class Binary:
    op: Callable
    oracle: Callable
    x: Callable  # shape -> host values of the first operand
    y: Callable  # shape -> host values of the second operand


BINARY = {
    "add": Binary(gc.add, np.add, draw, draw),
    "subtract": Binary(gc.subtract, np.subtract, draw, draw),
    "multiply": Binary(gc.multiply, np.multiply, draw, draw),
    "divide": Binary(gc.divide, np.divide, draw, away_from_zero),
    "true_divide": Binary(gc.true_divide, np.true_divide, draw, away_from_zero),
    # positive bases; negative and positive exponents
    "power": Binary(gc.power, np.power, lambda s: draw(s, 0.5, 2.0), lambda s: draw(s, -1.5, 1.5)),
    # x on a grid of quarter-points, y on three-quarter points: never tied, at least 0.5 apart
    "maximum": Binary(
        gc.maximum,
        np.maximum,
        lambda s: np.random.default_rng(1).integers(-3, 3, s) + 0.25,
        lambda s: np.random.default_rng(2).integers(-3, 3, s) + 0.75,
    ),
    "minimum": Binary(
        gc.minimum,
        np.minimum,
        lambda s: np.random.default_rng(1).integers(-3, 3, s) + 0.25,
        lambda s: np.random.default_rng(2).integers(-3, 3, s) + 0.75,
    ),
}


def binary_case(name: str, x_shape, y_shape) -> Case:
    spec = BINARY[name]
    x = np.asarray(spec.x(x_shape), dtype=np.float64)
    y = np.asarray(spec.y(y_shape), dtype=np.float64) + 0.0
    return Case(f"{name}_{shape_id(x_shape)}_{shape_id(y_shape)}", spec.op, spec.oracle, (x, y))


binary_params = pytest.mark.parametrize(
    "x_shape, y_shape", PAIRS, ids=[f"{shape_id(a)}-{shape_id(b)}" for a, b in PAIRS]
)


@pytest.mark.parametrize("name", BINARY)
@binary_params
def test_binary_op_forward_and_vjp(device, name, x_shape, y_shape):
    case = binary_case(name, x_shape, y_shape)
    check_forward(case, device)
    check_vjp(case, device)


@pytest.mark.parametrize("name", BINARY)
@binary_params
def test_binary_op_float32_gradients(device, name, x_shape, y_shape):
    check_float32(binary_case(name, x_shape, y_shape), device)


@pytest.mark.parametrize("name", BINARY)
def test_binary_op_with_python_numbers(device, name):
    """A Python number on either side neither promotes a float32 array nor is traced."""
    spec = BINARY[name]
    x = spec.x((3,)) if name not in ("divide", "true_divide") else away_from_zero((3,))
    number = 1.5
    x32 = on(device, x, "float32")
    assert host(spec.op(x32, number)).dtype == np.float32
    assert host(spec.op(number, x32)).dtype == np.float32
    np.testing.assert_allclose(host(spec.op(x32, number)), spec.oracle(x, number), rtol=1e-6)
    np.testing.assert_allclose(host(spec.op(number, x32)), spec.oracle(number, x), rtol=1e-6)
    # Python numbers alone give a Python number
    assert spec.op(2.0, number) == pytest.approx(spec.oracle(2.0, number))
    # and the gradient with respect to the array is still float32
    g = gc.grad(lambda a: gc.sum(spec.op(a, number) + spec.op(number, a)))(x32)
    assert host(g).dtype == np.float32


def test_add_gradient_sums_over_broadcast_axes(device):
    x = on(device, np.zeros((3, 1)))
    y = on(device, np.zeros((1, 4)))
    gx, gy = gc.grad(sum_of(gc.add), argnum=(0, 1))(x, y)
    np.testing.assert_array_equal(host(gx), np.full((3, 1), 4.0))
    np.testing.assert_array_equal(host(gy), np.full((1, 4), 3.0))


# ---------------------------------------------------------------------------------------------
# unary elementwise ops

UNARY_SHAPES = [(), (4,), (3, 4)]


def sigmoid_oracle(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5


UNARY = {
    # name: (op, oracle, domain)
    "negative": (gc.negative, np.negative, draw),
    "exp": (gc.exp, np.exp, draw),
    "log": (gc.log, np.log, lambda s: draw(s, 0.5, 3.0)),
    "sin": (gc.sin, np.sin, draw),
    "cos": (gc.cos, np.cos, draw),
    "tanh": (gc.tanh, np.tanh, draw),
    "sigmoid": (gc.sigmoid, sigmoid_oracle, lambda s: draw(s, -4.0, 4.0)),
    "relu": (gc.relu, lambda x: np.maximum(x, 0.0), away_from_zero),
    "abs": (gc.abs, np.abs, away_from_zero),
    "sqrt": (gc.sqrt, np.sqrt, lambda s: draw(s, 0.5, 3.0)),
    "square": (gc.square, np.square, draw),
}


def unary_case(name: str, shape) -> Case:
    op, oracle, domain = UNARY[name]
    return Case(f"{name}_{shape_id(shape)}", op, oracle, (np.asarray(domain(shape)),))


unary_params = pytest.mark.parametrize("shape", UNARY_SHAPES, ids=shape_id)


@pytest.mark.parametrize("name", UNARY)
@unary_params
def test_unary_op_forward_and_vjp(device, name, shape):
    case = unary_case(name, shape)
    check_forward(case, device)
    check_vjp(case, device)


@pytest.mark.parametrize("name", UNARY)
@unary_params
def test_unary_op_float32_gradients(device, name, shape):
    check_float32(unary_case(name, shape), device)


@pytest.mark.parametrize(
    "op, derivative",
    [
        (gc.exp, np.exp),
        (gc.log, lambda x: 1 / x),
        (gc.sin, np.cos),
        (gc.cos, lambda x: -np.sin(x)),
        (gc.tanh, lambda x: 1 - np.tanh(x) ** 2),
        (gc.sigmoid, lambda x: sigmoid_oracle(x) * (1 - sigmoid_oracle(x))),
        (gc.sqrt, lambda x: 0.5 / np.sqrt(x)),
        (gc.square, lambda x: 2 * x),
        (gc.abs, np.sign),
        (gc.relu, lambda x: (x > 0).astype(float)),
        (gc.negative, lambda x: -np.ones_like(x)),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_unary_derivative_table(device, op, derivative):
    """The elementwise derivative, against the closed form from the derivative table."""
    x = np.array([0.3, 0.7, 1.9, 2.5])
    if op in (gc.abs, gc.relu, gc.negative):
        x = np.array([-1.5, -0.3, 0.4, 2.0])
    g = gc.elementwise_grad(op)(on(device, x))
    np.testing.assert_allclose(host(g), derivative(x), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# the rest of the ops, one table: reductions, shapes, indexing, joins, linear algebra, softmax

X34 = draw((3, 4), seed=3)
X234 = draw((2, 3, 4), seed=4)
DISTINCT34 = distinct((3, 4), seed=5)
DISTINCT234 = distinct((2, 3, 4), seed=6)
AXES = [None, 0, 1, -1, (0, 1)]


def _keepdims_id(keepdims: bool) -> str:
    return "keepdims" if keepdims else "dropdims"


def _logsumexp_oracle(x, axis=None, keepdims=False):
    peak = np.max(x, axis=axis, keepdims=True)
    out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis)


REDUCTIONS = [
    ("sum", gc.sum, np.sum),
    ("mean", gc.mean, np.mean),
    ("max", gc.max, np.max),
    ("logsumexp", gc.logsumexp, _logsumexp_oracle),
]


def reduction_cases() -> list[Case]:
    cases = []
    for (name, op, oracle), axis, keepdims in itertools.product(REDUCTIONS, AXES, [False, True]):
        cases.append(
            Case(
                f"{name}_axis{axis}_{_keepdims_id(keepdims)}",
                lambda x, op=op, axis=axis, keepdims=keepdims: op(x, axis=axis, keepdims=keepdims),
                lambda x, oracle=oracle, axis=axis, keepdims=keepdims: oracle(
                    x, axis=axis, keepdims=keepdims
                ),
                (DISTINCT34 if name == "max" else X34,),
            )
        )
    # three axes, reduced over a non-contiguous pair, and over negative axes in any order
    for (name, op, oracle), axis, keepdims in itertools.product(
        REDUCTIONS, [(0, 2), (-1, 0)], [False, True]
    ):
        cases.append(
            Case(
                f"{name}_3d_axis{axis}_{_keepdims_id(keepdims)}".replace(" ", ""),
                lambda x, op=op, axis=axis, keepdims=keepdims: op(x, axis=axis, keepdims=keepdims),
                lambda x, oracle=oracle, axis=axis, keepdims=keepdims: oracle(
                    x, axis=axis, keepdims=keepdims
                ),
                (DISTINCT234 if name == "max" else X234,),
            )
        )
    return cases


def _softmax_oracle(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def softmax_cases() -> list[Case]:
    cases = []
    for axis in [0, 1, -1]:
        cases.append(
            Case(
                f"softmax_axis{axis}",
                lambda x, axis=axis: gc.softmax(x, axis=axis),
                lambda x, axis=axis: _softmax_oracle(x, axis),
                (X34,),
            )
        )
        cases.append(
            Case(
                f"log_softmax_axis{axis}",
                lambda x, axis=axis: gc.log_softmax(x, axis=axis),
                lambda x, axis=axis: np.log(_softmax_oracle(x, axis)),
                (X34,),
            )
        )
    return cases


def shape_cases() -> list[Case]:
    c = Case
    return [
        c("reshape_flat", lambda x: gc.reshape(x, (12,)), lambda x: x.reshape(12), (X34,)),
        c("reshape_-1", lambda x: gc.reshape(x, (2, -1)), lambda x: x.reshape(2, -1), (X34,)),
        c("reshape_3d", lambda x: gc.reshape(x, (2, 3, 2)), lambda x: x.reshape(2, 3, 2), (X34,)),
        c("reshape_scalar", lambda x: gc.reshape(x, ()), lambda x: x.reshape(()), (X34[:1, :1],)),
        c("transpose", gc.transpose, np.transpose, (X34,)),
        c("transpose_3d", gc.transpose, np.transpose, (X234,)),
        c(
            "transpose_axes",
            lambda x: gc.transpose(x, (1, 2, 0)),
            lambda x: np.transpose(x, (1, 2, 0)),
            (X234,),
        ),
        c(
            "transpose_negative_axes",
            lambda x: gc.transpose(x, (0, -1, -2)),
            lambda x: np.transpose(x, (0, 2, 1)),
            (X234,),
        ),
        c(
            "broadcast_to_rows",
            lambda x: gc.broadcast_to(x, (3, 4)),
            lambda x: np.broadcast_to(x, (3, 4)),
            (X34[0],),
        ),
        c(
            "broadcast_to_3d",
            lambda x: gc.broadcast_to(x, (2, 3, 4)),
            lambda x: np.broadcast_to(x, (2, 3, 4)),
            (X34[:, :1],),
        ),
        c(
            "broadcast_to_from_scalar",
            lambda x: gc.broadcast_to(x, (3,)),
            lambda x: np.broadcast_to(x, (3,)),
            (np.array(1.5),),
        ),
        c("expand_dims_0", lambda x: gc.expand_dims(x, 0), lambda x: x[None], (X34,)),
        c("expand_dims_-1", lambda x: gc.expand_dims(x, -1), lambda x: x[..., None], (X34,)),
        c(
            "expand_dims_(0,2)",
            lambda x: gc.expand_dims(x, (0, 2)),
            lambda x: np.expand_dims(x, (0, 2)),
            (X34,),
        ),
        c(
            "expand_dims_(0,-1)",
            lambda x: gc.expand_dims(x, (0, -1)),
            lambda x: np.expand_dims(x, (0, -1)),
            (X34,),
        ),
        c("squeeze_all", gc.squeeze, np.squeeze, (X34[None, :, None, :1],)),
        c(
            "squeeze_negative_axis",
            lambda x: gc.squeeze(x, axis=-1),
            lambda x: np.squeeze(x, axis=-1),
            (X34[..., None],),
        ),
        c(
            "squeeze_axis",
            lambda x: gc.squeeze(x, axis=0),
            lambda x: np.squeeze(x, axis=0),
            (X34[None],),
        ),
        c(
            "squeeze_axes",
            lambda x: gc.squeeze(x, axis=(0, 2)),
            lambda x: np.squeeze(x, axis=(0, 2)),
            (X34[None, :, None],),
        ),
    ]


REPEATED = np.array([0, 2, 0, 0])  # repeated indices: their cotangents must add up


def indexing_cases() -> list[Case]:
    c = Case
    x1 = X34[0]
    return [
        c("getitem_int", lambda x: x[1], lambda x: x[1], (x1,)),
        c("getitem_row", lambda x: x[1, ...], lambda x: x[1, ...], (X34,)),
        c("getitem_negative_int", lambda x: x[-1, :], lambda x: x[-1, :], (X34,)),
        c("getitem_two_ints", lambda x: x[1, 2], lambda x: x[1, 2], (X34,)),
        c("getitem_slice", lambda x: x[1:3], lambda x: x[1:3], (x1,)),
        c("getitem_slice_rows", lambda x: x[1:3, ...], lambda x: x[1:3, ...], (X34,)),
        c("getitem_rows_numpy_style", lambda x: x[1:3], lambda x: x[1:3], (X34,), False),
        c("getitem_step", lambda x: x[:, ::2], lambda x: x[:, ::2], (X34,)),
        c("getitem_reverse", lambda x: x[::-1], lambda x: x[::-1], (x1,)),
        c("getitem_ellipsis", lambda x: x[..., -1], lambda x: x[..., -1], (X234,)),
        c("getitem_newaxis", lambda x: x[None, 1:, :], lambda x: x[None, 1:, :], (X34,)),
        c(
            "getitem_int_array_repeated",
            lambda x: x[index_on(x, REPEATED)],
            lambda x: x[REPEATED],
            (x1,),
        ),
        c(
            "getitem_int_array_and_int",
            lambda x: x[index_on(x, REPEATED), 1],
            lambda x: x[REPEATED, 1],
            (X34,),
        ),
        c(  # gathering rows, as a minibatch or an embedding lookup does
            "getitem_int_array_rows",
            lambda x: x[index_on(x, REPEATED)],
            lambda x: x[REPEATED],
            (X34,),
            False,
        ),
        c(
            "getitem_two_int_arrays",
            lambda x: x[index_on(x, REPEATED), index_on(x, np.array([1, 1, 3, 1]))],
            lambda x: x[REPEATED, np.array([1, 1, 3, 1])],
            (X34,),
        ),
    ]


def join_cases() -> list[Case]:
    a, b, c3 = X34, draw((3, 4), seed=7), draw((3, 2), seed=8)
    return [
        Case(
            "concatenate_axis0",
            lambda x, y: gc.concatenate([x, y]),
            lambda x, y: np.concatenate([x, y]),
            (a, b),
        ),
        Case(
            "concatenate_axis1_three",
            lambda x, y, z: gc.concatenate([x, y, z], axis=1),
            lambda x, y, z: np.concatenate([x, y, z], axis=1),
            (a, b, c3),
        ),
        Case(
            "concatenate_axis-1",
            lambda x, y: gc.concatenate((x, y), axis=-1),
            lambda x, y: np.concatenate((x, y), axis=-1),
            (a, c3),
        ),
        Case(
            "stack_axis0",
            lambda x, y: gc.stack([x, y]),
            lambda x, y: np.stack([x, y]),
            (a, b),
        ),
        Case(
            "stack_axis1",
            lambda x, y: gc.stack([x, y, x], axis=1),  # x used twice: cotangents add up
            lambda x, y: np.stack([x, y, x], axis=1),
            (a, b),
        ),
        Case(
            "stack_axis-1",
            lambda x, y: gc.stack((x, y), axis=-1),
            lambda x, y: np.stack((x, y), axis=-1),
            (a, b),
        ),
    ]


MATMUL_SHAPES = [
    ((4,), (4,)),
    ((4,), (4, 3)),
    ((3, 4), (4,)),
    ((3, 4), (4, 5)),
    ((3, 1), (1, 5)),  # a column times a row: the CPU's outer product kernel
    ((3, 4), (4, 1)),  # its VJP for x is one
    ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)),
    ((2, 3, 4), (2, 4, 5)),
    ((1, 3, 4), (2, 4, 5)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
]

DOT_SHAPES = [((4,), (4,)), ((4,), (4, 3)), ((3, 4), (4,)), ((3, 4), (4, 5)), ((), (3, 4))]


def linear_algebra_cases() -> list[Case]:
    cases = []
    for name, op, oracle, shapes in [
        ("matmul", gc.matmul, np.matmul, MATMUL_SHAPES),
        ("dot", gc.dot, np.dot, DOT_SHAPES),
    ]:
        for x_shape, y_shape in shapes:
            cases.append(
                Case(
                    f"{name}_{shape_id(x_shape)}_{shape_id(y_shape)}",
                    op,
                    oracle,
                    (draw(x_shape, seed=9), draw(y_shape, seed=10)),
                )
            )
    return cases


CONDITION = np.array([[True, False, True, False]] * 2 + [[False, False, True, True]])


def selection_cases() -> list[Case]:
    def where(shape_x, shape_y):
        def fun(x, y):
            return gc.where(index_on(x, CONDITION), x, y)

        return Case(
            f"where_{shape_id(shape_x)}_{shape_id(shape_y)}",
            fun,
            lambda x, y: np.where(CONDITION, x, y),
            (draw(shape_x, seed=11), draw(shape_y, seed=12)),
        )

    # values on both sides of the bounds -0.5 and 0.5, none within 0.1 of them
    clip_x = away_from_zero((3, 4), seed=13)
    clip_x = np.where(np.abs(np.abs(clip_x) - 0.5) < 0.1, clip_x * 1.5, clip_x)
    assert np.all(np.abs(np.abs(clip_x) - 0.5) >= 0.1) and np.any(np.abs(clip_x) < 0.5)
    return [
        where((3, 4), (3, 4)),
        where((3, 4), (4,)),
        where((1, 4), (3, 1)),
        where((), (3, 4)),
        Case(
            "where_python_zero",
            lambda x: gc.where(index_on(x, CONDITION), x, 0.0),
            lambda x: np.where(CONDITION, x, 0.0),
            (X34,),
        ),
        Case(
            "clip_both",
            lambda x: gc.clip(x, -0.5, 0.5),
            lambda x: np.clip(x, -0.5, 0.5),
            (clip_x,),
        ),
        Case(
            "clip_min",
            lambda x: gc.clip(x, min=-0.5),
            lambda x: np.clip(x, -0.5, None),
            (clip_x,),
        ),
        Case(
            "clip_max",
            lambda x: gc.clip(x, max=0.5),
            lambda x: np.clip(x, None, 0.5),
            (clip_x,),
        ),
    ]


def composite_cases() -> list[Case]:
    """Ops used together, the way a network uses them."""
    w, b, x = draw((4, 3), seed=14), draw((3,), seed=15), draw((5, 4), seed=16)
    return [
        Case(
            "affine_tanh_logsumexp",
            lambda w, b, x: gc.logsumexp(gc.tanh(x @ w + b), axis=1),
            lambda w, b, x: _logsumexp_oracle(np.tanh(x @ w + b), axis=1),
            (w, b, x),
        ),
        Case(
            "mean_square_error",
            lambda w, x: gc.mean(gc.square(gc.sigmoid(x @ w) - 0.5)),
            lambda w, x: np.mean(np.square(sigmoid_oracle(x @ w) - 0.5)),
            (w, x),
        ),
    ]


OTHER = {
    case.id: case
    for case in (
        reduction_cases()
        + softmax_cases()
        + shape_cases()
        + indexing_cases()
        + join_cases()
        + linear_algebra_cases()
        + selection_cases()
        + composite_cases()
    )
}


@pytest.mark.parametrize("case_id", OTHER)
def test_op_forward_and_vjp(device, case_id):
    case = OTHER[case_id]
    check_forward(case, device)
    check_vjp(case, device)


@pytest.mark.parametrize("case_id", OTHER)
def test_op_float32_gradients(device, case_id):
    check_float32(OTHER[case_id], device)


# ---------------------------------------------------------------------------------------------
# op-specific behaviour


def test_repeated_indices_accumulate(device):
    """``x[[0, 2, 0, 0]]``: the gradient counts each use of an element (scatter-add)."""
    x = on(device, np.arange(4.0))
    g = gc.grad(lambda x: gc.sum(x[index_on(x, REPEATED)]))(x)
    np.testing.assert_array_equal(host(g), [3.0, 0.0, 1.0, 0.0])


def test_max_shares_the_gradient_among_ties(device):
    x = on(device, [1.0, 3.0, 3.0, 2.0])
    np.testing.assert_array_equal(host(gc.grad(gc.max)(x)), [0.0, 0.5, 0.5, 0.0])
    rows = on(device, [[5.0, 5.0], [1.0, 2.0]])
    g = gc.grad(lambda x: gc.sum(gc.max(x, axis=1)))(rows)
    np.testing.assert_array_equal(host(g), [[0.5, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize("op", [gc.maximum, gc.minimum])
def test_maximum_and_minimum_split_ties(device, op):
    x = on(device, [1.0, 2.0])
    gx, gy = gc.grad(sum_of(op), argnum=(0, 1))(x, x * 1.0)
    np.testing.assert_array_equal(host(gx), [0.5, 0.5])
    np.testing.assert_array_equal(host(gy), [0.5, 0.5])


def test_relu_and_clip_gradients_are_zero_where_flat(device):
    x = on(device, [-2.0, -0.5, 0.5, 2.0])
    np.testing.assert_array_equal(host(gc.elementwise_grad(gc.relu)(x)), [0, 0, 1, 1])
    clipped = gc.elementwise_grad(lambda x: gc.clip(x, -1.0, 1.0))(x)
    np.testing.assert_array_equal(host(clipped), [0, 1, 1, 0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_grad_kernel_gives_the_bits_of_where(dtype):
    """The CPU kernel selects without ``where``: the same bits, signed zeros, NaN and
    infinities included, on contiguous and strided arrays."""
    from gradcore.backends import numpy_kernels

    special = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-310, -1e-310, 3.0]
    y = np.array(list(itertools.product(special, special)), dtype)
    y, g = y[:, 0], y[:, 1]  # every pair of the special values
    y = np.concatenate([y, draw((200,), seed=1).astype(dtype)])
    g = np.concatenate([g, draw((200,), seed=2).astype(dtype)])
    for ys, gs in ((y, g), (y[::3], g[::3]), (y.reshape(-1, 4).T, g.reshape(-1, 4).T)):
        got = numpy_kernels.relu_grad(ys, gs)
        assert got.dtype == dtype and got.shape == gs.shape
        expected = np.where(ys > 0, gs, 0.0).astype(dtype)
        np.testing.assert_array_equal(got.view(f"i{got.itemsize}"),
                                      expected.view(f"i{got.itemsize}"))  # fmt: skip


def test_relu_grad_op_broadcasts_and_has_derivatives(device):
    """Of relu_grad(y, g): linear in ``g``, a constant mask of ``y`` (relu's second
    derivative is 0 away from its kink)."""
    y = on(device, [0.0, 0.5, 2.0, 0.0])
    rows = on(device, [[3.0], [-1.0]])  # broadcast: the formula, not the kernel
    np.testing.assert_array_equal(host(gc.ops.relu_grad(y, rows)), [[0, 3, 3, 0], [0, -1, -1, 0]])
    w = on(device, [1.0, 2.0, 3.0, 4.0])
    dg = gc.grad(lambda g: gc.sum(gc.ops.relu_grad(y, g) * w))(on(device, [1.0] * 4))
    np.testing.assert_array_equal(host(dg), [0, 2, 3, 0])
    second = gc.elementwise_grad(gc.elementwise_grad(gc.relu))(on(device, [-1.0, 0.5, 2.0]))
    np.testing.assert_array_equal(host(second), [0, 0, 0])
    tangent = gc.jvp(gc.elementwise_grad(gc.relu), (on(device, [-1.0, 2.0]),),
                     (on(device, [1.0, 1.0]),))[1]  # fmt: skip
    np.testing.assert_array_equal(host(tangent), [0, 0])


@pytest.mark.parametrize("fun", [gc.logsumexp, gc.softmax, gc.log_softmax])
def test_softmax_family_is_stable_for_large_inputs(device, fun):
    """Subtracting the max first: no overflow, no warning, finite values and gradients."""
    x = np.array([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fun(on(device, x), axis=-1)
        weights = on(device, [[1.0, 2.0, 3.0]] if fun is not gc.logsumexp else [1.0, 2.0])
        g = gc.grad(lambda x: gc.sum(fun(x, axis=-1) * weights))(on(device, x))
    shifted = x - x.max(axis=-1, keepdims=True)
    expected = {
        gc.logsumexp: _logsumexp_oracle(shifted, axis=-1) + x.max(axis=-1),
        gc.softmax: _softmax_oracle(shifted),
        gc.log_softmax: np.log(_softmax_oracle(shifted)),
    }[fun]
    np.testing.assert_allclose(host(out), expected, rtol=1e-12)
    assert np.all(np.isfinite(host(g)))


def test_softmax_rows_sum_to_one_and_its_gradient_of_the_sum_is_zero(device):
    x = on(device, X34)
    np.testing.assert_allclose(host(gc.sum(gc.softmax(x), axis=-1)), np.ones(3), rtol=1e-12)
    g = gc.grad(lambda x: gc.sum(gc.softmax(x)))(x)
    np.testing.assert_allclose(host(g), np.zeros((3, 4)), atol=1e-12)


def test_logsumexp_of_all_minus_infinity_is_minus_infinity(device):
    """A row of -inf (log of all-zero weights) gives -inf, not NaN (NumPy may warn of log(0))."""
    x = on(device, [[-np.inf, -np.inf], [0.0, 0.0]])
    with np.errstate(divide="ignore"):
        out = host(gc.logsumexp(x, axis=1))
    assert out[0] == -np.inf
    assert out[1] == pytest.approx(np.log(2.0))


def test_concatenate_and_stack_of_python_lists_of_traced_values(device):
    """The join ops take any sequence, including one built inside the traced function."""

    def f(x):
        parts = [x[i, :] * float(i + 1) for i in range(3)]
        return gc.sum(gc.stack(parts) ** 2) + gc.sum(gc.concatenate(parts))

    x = on(device, X34)
    g = gc.grad(f)(x)
    scale = np.array([1.0, 2.0, 3.0])[:, None]
    np.testing.assert_allclose(host(g), 2 * scale**2 * X34 + scale, rtol=1e-12)


def test_joining_traced_values_with_constants(device):
    constant = on(device, [[1.0, 2.0]])
    x = on(device, [[3.0, 4.0]])
    g = gc.grad(lambda x: gc.sum(gc.concatenate([constant, x, constant]) ** 2))(x)
    np.testing.assert_array_equal(host(g), [[6.0, 8.0]])
    g = gc.grad(lambda x: gc.sum(gc.stack([x, constant], axis=-1) ** 2))(x)
    np.testing.assert_array_equal(host(g), [[6.0, 8.0]])


def test_dot_refuses_more_than_two_dimensions(device):
    with pytest.raises(ValueError, match=r"dot: operands of shapes \(2, 3, 4\) and \(4,\)"):
        gc.dot(on(device, X234), on(device, np.ones(4)))


def test_matmul_shape_mismatch_names_the_op_and_shapes(device):
    with pytest.raises(ValueError, match=r"matmul\(.*\(3, 4\).*\(3, 4\)\)"):
        gc.matmul(on(device, X34), on(device, X34))


# ---------------------------------------------------------------------------------------------
# power at the edges: the ``where(y, y - 1, 1)`` and ``log(replace_zero(x, 1))`` forms


def test_power_gradient_wrt_base_is_finite_for_zero_exponent(device):
    x = on(device, [0.0, 2.0, 3.0])
    g = gc.grad(lambda x: gc.sum(x**0.0))(x)
    np.testing.assert_array_equal(host(g), [0.0, 0.0, 0.0])
    y = on(device, [0.0, 0.0, 2.0])
    gx, gy = gc.grad(lambda x, y: gc.sum(x**y), argnum=(0, 1))(x, y)
    np.testing.assert_array_equal(host(gx), [0.0, 0.0, 6.0])
    assert np.all(np.isfinite(host(gy)))


def test_power_gradient_wrt_exponent_is_finite_where_base_is_zero(device):
    base = on(device, [0.0, 2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = gc.grad(lambda y: gc.sum(gc.power(base, y)))(on(device, [2.0, 3.0]))
    np.testing.assert_allclose(host(g), [0.0, 8.0 * np.log(2.0)], rtol=1e-12)


def test_power_mixed_second_derivative(device):
    """d/dy (d/dx x**y) = d/dy (y x**(y-1)) = x**(y-1) (1 + y log x).

    (At y = 0 exactly, the ``where(y, y - 1, 1)`` form, which keeps d/dx finite at x = 0, makes
    this x instead of 1/x, as in HIPS autograd; the points here avoid y = 0.)
    """
    x_host, y_host = np.array([0.5, 2.0, 1.5]), np.array([0.5, -1.0, 2.0])
    x = on(device, x_host)
    mixed = gc.elementwise_grad(lambda y: gc.elementwise_grad(lambda x: gc.power(x, y))(x))
    expected = x_host ** (y_host - 1) * (1 + y_host * np.log(x_host))
    np.testing.assert_allclose(host(mixed(on(device, y_host))), expected, rtol=1e-12)


def test_power_with_integer_exponent_of_negative_base(device):
    x = on(device, [-2.0, -0.5, 1.5])
    g = gc.grad(lambda x: gc.sum(x**3))(x)
    np.testing.assert_allclose(host(g), 3 * np.array([-2.0, -0.5, 1.5]) ** 2, rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# sqrt at 0 (a design choice: 0, not NaN) and the sigmoid at the edges of the floats


def test_sqrt_gradient_at_zero_is_zero(device):
    x = on(device, [0.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = gc.grad(lambda x: gc.sum(gc.sqrt(x)))(x)
    np.testing.assert_array_equal(host(g), [0.0, 0.25])


def test_gradient_of_norm_at_zero_vector_is_zero_not_nan(device):
    x = on(device, np.zeros(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = gc.grad(lambda x: gc.sqrt(gc.sum(x * x)))(x)
    np.testing.assert_array_equal(host(g), np.zeros(3))


HUGE = {
    "float32": [-3e38, -1e4, -100.0, 0.0, 100.0, 1e4, 3e38],
    "float64": [-1.7e308, -1e4, -800.0, 0.0, 800.0, 1e4, 1.7e308],
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_exact_and_silent_for_huge_inputs(device, dtype):
    x = on(device, HUGE[dtype], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = gc.sigmoid(x)
        g = gc.elementwise_grad(gc.sigmoid)(x)
    assert host(y).dtype == np.dtype(dtype)
    assert host(g).dtype == np.dtype(dtype)
    # Exact to rounding: the deep lower tail may be 0 or a subnormal, below the smallest normal.
    tiny = np.finfo(dtype).tiny
    np.testing.assert_allclose(host(y), [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 1.0], rtol=0, atol=tiny)
    np.testing.assert_allclose(host(g), [0.0, 0.0, 0.0, 0.25, 0.0, 0.0, 0.0], rtol=0, atol=tiny)


def test_sigmoid_of_scalars(device):
    """0-d arrays, Python floats and the results of reductions go through the fused kernel."""
    x = on(device, 0.5)
    expected = 1 / (1 + np.exp(-0.5))
    assert float(host(gc.sigmoid(x))) == pytest.approx(expected, rel=1e-15)
    assert gc.sigmoid(0.5) == pytest.approx(expected, rel=1e-15)
    assert float(host(gc.grad(gc.sigmoid)(x))) == pytest.approx(expected * (1 - expected))
    v = on(device, [0.25, 0.25])
    assert float(host(gc.sigmoid(gc.sum(v)))) == pytest.approx(expected, rel=1e-15)


def _sigmoid_reference(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float64 without overflow, for comparison."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore", under="ignore"):
        e = np.exp(-np.abs(x))
        return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


# The device fixture does not change between examples, so hypothesis may share it.
per_device = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@per_device
@given(data=st.data(), dtype=st.sampled_from(["float32", "float64"]))
def test_sigmoid_matches_reference_for_any_finite_input(device, data, dtype):
    """Exact: within a few ulp of 1 / (1 + e^-x) (or below the smallest normal number), for
    every finite input, and silent; its gradient y (1 - y) within a few ulp of 1."""
    width = 32 if dtype == "float32" else 64
    x = data.draw(
        hnp.arrays(
            np.dtype(dtype),
            st.integers(1, 8),
            elements=st.floats(allow_nan=False, allow_infinity=False, width=width),
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = host(gc.sigmoid(on(device, x, dtype)))
        g = host(gc.elementwise_grad(gc.sigmoid)(on(device, x, dtype)))
    reference = _sigmoid_reference(x)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    assert y.dtype == np.dtype(dtype) and g.dtype == np.dtype(dtype)
    assert np.all((y >= 0) & (y <= 1))
    if device == "strict":  # the test backend's simple tanh form is exact only near 0.5 and 1
        np.testing.assert_allclose(y, reference, rtol=4 * eps, atol=4 * eps)
    else:  # relative accuracy deep into the lower tail too
        np.testing.assert_allclose(y, reference, rtol=8 * eps, atol=tiny)
    # y (1 - y) from the output alone: 1 - y carries y's absolute rounding error
    np.testing.assert_allclose(g, reference * (1 - reference), rtol=16 * eps, atol=4 * eps)


# ---------------------------------------------------------------------------------------------
# unbroadcast over random broadcastable shapes


@st.composite
def broadcast_pair(draw_):
    """A shape and a larger shape it broadcasts to (extra leading axes, stretched ones)."""
    target = draw_(hnp.array_shapes(min_dims=0, max_dims=4, min_side=1, max_side=4))
    rank = draw_(st.integers(0, len(target)))
    source = tuple(1 if draw_(st.booleans()) else side for side in target[len(target) - rank :])
    return source, target


@per_device
@given(shapes=broadcast_pair())
def test_unbroadcast_sums_back_to_the_input_shape(device, shapes):
    source, target = shapes
    x = on(device, np.zeros(source))
    g_host = np.random.default_rng(0).normal(size=target)
    out = host(gc.unbroadcast(x, on(device, g_host)))
    extra = len(target) - len(source)
    expected = g_host.sum(axis=tuple(range(extra)))
    stretched = tuple(i for i, n in enumerate(source) if n == 1 and target[extra + i] != 1)
    expected = expected.sum(axis=stretched, keepdims=True)
    assert out.shape == source
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # the same, through the VJP of an add that broadcasts
    gx = gc.grad(lambda x: gc.sum((x + on(device, np.zeros(target))) * on(device, g_host)))(x)
    np.testing.assert_allclose(host(gx), expected, rtol=1e-12, atol=1e-12)


@per_device
@given(
    target_and_x=broadcast_pair(),
    data=st.data(),
    name=st.sampled_from(["add", "subtract", "multiply", "divide", "maximum", "power"]),
)
def test_binary_ops_over_random_broadcastable_shapes(device, target_and_x, data, name):
    """Both operands broadcast to a common shape of up to four axes; the VJPs sum back."""
    x_shape, target = target_and_x
    rank = data.draw(st.integers(0, len(target)))
    y_shape = tuple(
        1 if data.draw(st.booleans()) else side for side in target[len(target) - rank :]
    )
    spec = BINARY[name]
    x = np.asarray(spec.x(x_shape), dtype=np.float64)
    y = np.asarray((spec.y if name != "divide" else away_from_zero)(y_shape), dtype=np.float64)
    case = Case(f"{name}_{shape_id(x_shape)}_{shape_id(y_shape)}", spec.op, spec.oracle, (x, y))
    check_forward(case, device)
    gc.check_grads(case.named(), on(device, x), on(device, y), order=1)


def test_unbroadcast_of_python_numbers():
    assert gc.unbroadcast(1.0, 2.5) == 2.5
    assert float(gc.unbroadcast(1.0, np.ones((2, 3)))) == 6.0  # a number: everything summed


def test_unbroadcast_keeps_the_dtype_of_x(device):
    x = on(device, np.zeros((1, 3)), "float32")
    out = gc.unbroadcast(x, on(device, np.ones((2, 3))))
    assert host(out).dtype == np.float32
    np.testing.assert_array_equal(host(out), np.full((1, 3), 2.0))


# ---------------------------------------------------------------------------------------------
# operators and attributes on traced values


def test_operators_on_traced_values(device):
    x_host, y_host = draw((3, 4), 0.5, 2.0, seed=17), draw((4,), 0.5, 2.0, seed=18)
    m_host = draw((4, 2), seed=19)
    m = on(device, m_host)

    def f(x, y):
        assert x.shape == (3, 4) and x.ndim == 2 and x.dtype == on(device, 0.0).dtype
        assert x.T.shape == (4, 3)
        z = (x + y) * x - y / x + x**y - (-x) + 2.0 ** (x - y) + 1.0 / y
        z = z - 0.5 + (3.0 - x) * 2.0
        return gc.sum((z @ m) * (x.T[1, :] @ x[:, :2])) + x[1, 2] * y[0]

    def f_oracle(x, y):
        z = (x + y) * x - y / x + x**y - (-x) + 2.0 ** (x - y) + 1.0 / y
        z = z - 0.5 + (3.0 - x) * 2.0
        return np.sum((z @ m_host) * (x.T[1, :] @ x[:, :2])) + x[1, 2] * y[0]

    x, y = on(device, x_host), on(device, y_host)
    np.testing.assert_allclose(float(host(f(x, y))), f_oracle(x_host, y_host), rtol=1e-12)
    value, (gx, gy) = gc.value_and_grad(f, argnum=(0, 1))(x, y)
    assert float(host(value)) == pytest.approx(f_oracle(x_host, y_host), rel=1e-12)
    assert host(gx).shape == (3, 4) and host(gy).shape == (4,)
    gc.check_grads(f, x, y, order=2)


def test_operators_with_an_array_on_the_left(device):
    """``array + box`` and friends reach the Box's reflected operators."""
    a_host = draw((4,), 0.5, 2.0, seed=20)
    a = on(device, a_host)

    def f(x):
        np.testing.assert_array_equal(host(a < x), a_host < 1.5)  # comparisons: raw arrays
        np.testing.assert_array_equal(host(a >= x), a_host >= 1.5)
        return gc.sum(a + x) + gc.sum(a - x) + gc.sum(a * x) + gc.sum(a / x) + a @ x + gc.sum(a**x)

    x = on(device, np.full(4, 1.5))
    g = gc.grad(f)(x)
    expected = 1 - 1 + a_host - a_host / 1.5**2 + a_host + a_host**1.5 * np.log(a_host)
    np.testing.assert_allclose(host(g), expected, rtol=1e-12)


def test_traced_values_support_abs_and_float(device):
    x = on(device, [-1.5, 2.0])

    def f(x):
        assert float(gc.sum(x)) == 0.5  # reading a number out of a traced value
        return gc.sum(abs(x))

    np.testing.assert_array_equal(host(gc.grad(f)(x)), [-1.0, 1.0])


# ---------------------------------------------------------------------------------------------
# non-differentiable ops: comparisons and argmax return raw arrays, and cut the gradient

COMPARISONS = {
    "equal": (gc.equal, np.equal),
    "not_equal": (gc.not_equal, np.not_equal),
    "less": (gc.less, np.less),
    "less_equal": (gc.less_equal, np.less_equal),
    "greater": (gc.greater, np.greater),
    "greater_equal": (gc.greater_equal, np.greater_equal),
}


@pytest.mark.parametrize("name", COMPARISONS)
def test_comparison_is_raw_and_not_differentiable(device, name):
    op, oracle = COMPARISONS[name]
    x_host, y_host = np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])
    x, y = on(device, x_host), on(device, y_host)
    np.testing.assert_array_equal(host(op(x, y)), oracle(x_host, y_host))
    np.testing.assert_array_equal(host(op(x, 2.0)), oracle(x_host, 2.0))

    def f(x):
        mask = op(x, y)
        assert not isinstance(mask, gc.Box)  # a plain array even inside the trace
        return gc.sum(gc.astype(mask, x.dtype))

    with pytest.warns(UserWarning, match="does not depend on argument 0"):
        np.testing.assert_array_equal(host(gc.grad(f)(x)), np.zeros(3))
    # as a mask, it selects where the gradient flows without carrying any of its own
    g = gc.grad(lambda x: gc.sum(gc.where(op(x, y), x, -x)))(x)
    np.testing.assert_array_equal(host(g), np.where(oracle(x_host, y_host), 1.0, -1.0))


@pytest.mark.parametrize(
    "x, y, expected", [("x", "y", [False, True, False]), ("x", 2.0, [False, True, False])]
)
def test_comparison_operators_on_traced_values(device, x, y, expected):
    values = {"x": on(device, [1.0, 2.0, 3.0]), "y": on(device, [3.0, 2.0, 1.0])}
    seen = {}

    def f(x):
        other = values[y] if isinstance(y, str) else y
        seen["=="] = host(x == other)
        seen["!="] = host(x != other)
        seen["<"], seen["<="] = host(x < other), host(x <= other)
        seen[">"], seen[">="] = host(x > other), host(x >= other)
        return gc.sum(x)

    gc.grad(f)(values[x])
    expected = np.array(expected)
    np.testing.assert_array_equal(seen["=="], expected)
    np.testing.assert_array_equal(seen["!="], ~expected)
    np.testing.assert_array_equal(seen["<"] | seen["=="], seen["<="])
    np.testing.assert_array_equal(seen[">"] | seen["=="], seen[">="])


def test_argmax_is_raw_and_not_differentiable(device):
    x_host = DISTINCT34
    x = on(device, x_host)
    for axis, keepdims in [(None, False), (0, False), (1, True), (-1, False)]:
        np.testing.assert_array_equal(
            host(gc.argmax(x, axis=axis, keepdims=keepdims)),
            np.argmax(x_host, axis=axis, keepdims=keepdims),
        )

    def f(x):
        best = gc.argmax(x, axis=-1)
        assert not isinstance(best, gc.Box)
        return gc.sum(gc.astype(best, x.dtype)) + gc.sum(gc.max(x, axis=-1))

    g = host(gc.grad(f)(x))  # only the max contributes: one-hot at each row's argmax
    expected = np.zeros((3, 4))
    expected[np.arange(3), np.argmax(x_host, axis=-1)] = 1.0
    np.testing.assert_array_equal(g, expected)
