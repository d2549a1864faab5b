"""The ops added with forward mode (log1p, expm1, softplus, erf, logaddexp, leaky_relu, gelu,
cumsum, prod, var, std, min, flip, norm), on every backend: values against their formulas in
NumPy float64, JVPs and VJPs against central differences at order 2 in both modes, float32 in
and out, and the edge cases where PyTorch defines the answer (large arguments, zeros, ties).
PyTorch itself is optional: where it is installed, first and second derivatives are compared
with its autograd too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from conftest import host, on

import gradcore as gc

RNG = np.random.default_rng(23)
X34 = RNG.uniform(-2.0, 2.0, (3, 4))
DISTINCT34 = RNG.permutation(12).reshape(3, 4) * 0.5 - 3.0  # no ties for min
# no ties in magnitude for the inf-norm
DISTINCT_ABS34 = (RNG.permutation(12).reshape(3, 4) + 1) * 0.25 * RNG.choice([-1.0, 1.0], (3, 4))
POSITIVE34 = RNG.uniform(0.5, 1.5, (3, 4))
AWAY34 = RNG.choice([-1.0, 1.0], (3, 4)) * RNG.uniform(0.25, 2.0, (3, 4))  # leaky_relu's kink

erf_host = np.vectorize(math.erf)


def gelu_host(x):
    return 0.5 * x * (1.0 + erf_host(x / math.sqrt(2.0)))


def gelu_tanh_host(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def norm_host(x, ord=2, axis=None, keepdims=False):
    a = np.abs(x)
    if ord == 2:
        return np.sqrt(np.sum(a * a, axis=axis, keepdims=keepdims))
    if ord == 1:
        return np.sum(a, axis=axis, keepdims=keepdims)
    return np.max(a, axis=axis, keepdims=keepdims)


@dataclass
class Case:
    id: str
    fun: Callable  # on gradcore values
    oracle: Callable  # on host float64 arrays
    args: tuple


CASES = [
    Case("log1p", gc.log1p, np.log1p, (POSITIVE34 - 0.4,)),
    Case("expm1", gc.expm1, np.expm1, (X34,)),
    Case("softplus", gc.softplus, lambda x: np.logaddexp(x, 0.0), (X34,)),
    Case(
        "softplus_beta",
        lambda x: gc.softplus(x, beta=2.0),
        lambda x: np.logaddexp(2 * x, 0) / 2,
        (X34,),
    ),
    Case("erf", gc.erf, erf_host, (X34,)),
    Case("logaddexp", gc.logaddexp, np.logaddexp, (X34, DISTINCT34)),
    Case("logaddexp_broadcast", gc.logaddexp, np.logaddexp, (X34[:1], DISTINCT34)),
    Case("leaky_relu", gc.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), (AWAY34,)),
    Case(
        "leaky_relu_slope",
        lambda x: gc.leaky_relu(x, 0.2),
        lambda x: np.where(x > 0, x, 0.2 * x),
        (AWAY34,),
    ),
    Case("gelu", gc.gelu, gelu_host, (X34,)),
    Case("gelu_tanh", lambda x: gc.gelu(x, approximate="tanh"), gelu_tanh_host, (X34,)),
    Case("cumsum", gc.cumsum, lambda x: np.cumsum(x), (X34,)),
    Case("cumsum_0", lambda x: gc.cumsum(x, axis=0), lambda x: np.cumsum(x, axis=0), (X34,)),
    Case("cumsum_-1", lambda x: gc.cumsum(x, axis=-1), lambda x: np.cumsum(x, axis=-1), (X34,)),
    Case("flip", gc.flip, np.flip, (X34,)),
    Case("flip_1", lambda x: gc.flip(x, axis=1), lambda x: np.flip(x, axis=1), (X34,)),
    Case("min", gc.min, np.min, (DISTINCT34,)),
    Case(
        "min_1_keepdims",
        lambda x: gc.min(x, axis=1, keepdims=True),
        lambda x: np.min(x, axis=1, keepdims=True),
        (DISTINCT34,),
    ),
    Case("prod", gc.prod, np.prod, (POSITIVE34 * np.sign(X34),)),
    Case("prod_0", lambda x: gc.prod(x, axis=0), lambda x: np.prod(x, axis=0), (X34,)),
    Case(
        "prod_-1_keepdims",
        lambda x: gc.prod(x, axis=-1, keepdims=True),
        lambda x: np.prod(x, axis=-1, keepdims=True),
        (X34,),
    ),
    Case("var", gc.var, np.var, (X34,)),
    Case(
        "var_0_ddof1",
        lambda x: gc.var(x, axis=0, ddof=1),
        lambda x: np.var(x, axis=0, ddof=1),
        (X34,),
    ),
    Case(
        "var_01_keepdims",
        lambda x: gc.var(x, axis=(0, 1), keepdims=True),
        lambda x: np.var(x, axis=(0, 1), keepdims=True),
        (X34,),
    ),
    Case("std", gc.std, np.std, (X34,)),
    Case(
        "std_1_ddof1",
        lambda x: gc.std(x, axis=1, ddof=1),
        lambda x: np.std(x, axis=1, ddof=1),
        (X34,),
    ),
    Case("norm", gc.norm, norm_host, (X34,)),
    Case("norm_1", lambda x: gc.norm(x, ord=1), lambda x: norm_host(x, 1), (AWAY34,)),
    Case(
        "norm_inf",
        lambda x: gc.norm(x, ord=math.inf),
        lambda x: norm_host(x, math.inf),
        (DISTINCT_ABS34,),
    ),
    Case("norm_2_axis1", lambda x: gc.norm(x, axis=1), lambda x: norm_host(x, 2, 1), (X34,)),
    Case(
        "norm_1_axis0_keepdims",
        lambda x: gc.norm(x, 1, axis=0, keepdims=True),
        lambda x: norm_host(x, 1, 0, True),
        (AWAY34,),
    ),
    Case(
        "norm_inf_axis1",
        lambda x: gc.norm(x, math.inf, axis=1),
        lambda x: norm_host(x, math.inf, 1),
        (DISTINCT_ABS34,),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_values_against_the_formulas(device, case):
    out = case.fun(*[on(device, a) for a in case.args])
    assert gc.device_of(out) == device
    expected = case.oracle(*case.args)
    assert host(out).shape == np.shape(expected)
    np.testing.assert_allclose(host(out), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_first_and_second_derivatives_in_both_modes(device, case):
    def fun(*args):
        return case.fun(*args)

    fun.__name__ = case.id
    gc.check_grads(fun, *[on(device, a) for a in case.args], modes=("fwd", "rev"), order=2)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_float32_stays_float32(device, case):
    args = [on(device, a, "float32") for a in case.args]
    out = case.fun(*args)
    assert host(out).dtype == np.float32
    grads = gc.grad(lambda *a: gc.sum(case.fun(*a)), argnum=tuple(range(len(args))))(*args)
    assert all(host(g).dtype == np.float32 for g in grads)
    tangents = gc.jvp(case.fun, tuple(args), tuple(gc.ones_like(a) for a in args))[1]
    assert host(tangents).dtype == np.float32


def test_python_numbers():
    assert gc.log1p(1e-20) == 1e-20 and gc.expm1(1e-20) == 1e-20
    assert gc.erf(0.5) == math.erf(0.5)
    assert gc.softplus(0.0) == math.log(2.0) and gc.softplus(30.0) == 30.0
    assert gc.logaddexp(1.0, 1.0) == 1.0 + math.log(2.0)
    assert gc.leaky_relu(-2.0) == -0.02 and gc.gelu(0.0) == 0.0
    assert gc.norm(-3.0) == 3.0 and gc.grad(gc.norm)(-3.0) == -1.0
    assert gc.grad(gc.softplus)(0.0) == 0.5
    assert gc.grad(gc.erf)(0.0) == pytest.approx(2 / math.sqrt(math.pi))


# ---------------------------------------------------------------------------------------------
# edge cases, with PyTorch's answers written out from its formulas


def test_softplus_and_logaddexp_are_stable_for_large_arguments(device):
    x = on(device, [-1000.0, -30.0, 0.0, 30.0, 1000.0])
    out, g = host(gc.softplus(x)), host(gc.elementwise_grad(gc.softplus)(x))
    np.testing.assert_allclose(
        out, [0.0, math.log1p(math.exp(-30.0)), math.log(2.0), 30.0, 1000.0], rtol=1e-15, atol=0.0
    )
    np.testing.assert_allclose(g, [0.0, 1 / (1 + math.exp(30.0)), 0.5, 1.0, 1.0], rtol=1e-15)
    a = on(device, [1000.0, -1000.0, 1e308, -math.inf, 5.0])
    b = on(device, [1000.0, -1000.0, 1e308, -math.inf, -math.inf])
    np.testing.assert_array_equal(
        host(gc.logaddexp(a, b)),
        [1000.0 + math.log(2.0), -1000.0 + math.log(2.0), 1e308, -math.inf, 5.0],
    )
    ga, gb = gc.grad(lambda a, b: gc.sum(gc.logaddexp(a, b)), argnum=(0, 1))(a[:3], b[:3])
    np.testing.assert_allclose(host(ga), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(host(gb), [0.5, 0.5, 0.5])
    g = gc.grad(lambda a: gc.logaddexp(a, 0.0))(on(device, 1000.0))
    assert host(g) == 1.0


def test_softplus_is_linear_past_the_threshold_as_in_pytorch(device):
    x = on(device, [19.9, 20.1])
    out = host(gc.softplus(x))
    assert out[1] == 20.1 and out[0] == pytest.approx(19.9 + math.log1p(math.exp(-19.9)))
    np.testing.assert_array_equal(host(gc.elementwise_grad(gc.softplus)(x))[1], 1.0)
    out = host(gc.softplus(on(device, [9.9, 10.1]), beta=2.0))  # the threshold is on beta x
    assert out[1] == 10.1 and out[0] == pytest.approx(9.9 + math.log1p(math.exp(-19.8)) / 2)


def test_prod_gradient_with_zeros(device):
    x = on(device, [2.0, 0.0, 3.0])
    np.testing.assert_array_equal(host(gc.grad(gc.prod)(x)), [0.0, 6.0, 0.0])
    np.testing.assert_array_equal(host(gc.grad(gc.prod)(on(device, [0.0, 5.0, 0.0]))), [0, 0, 0])
    np.testing.assert_array_equal(host(gc.grad(gc.prod)(on(device, [4.0]))), [1.0])
    # second derivatives are exact with one zero: d2/dxi dxj = the product of the third
    np.testing.assert_array_equal(
        host(gc.hessian(gc.prod)(x)), [[0.0, 3.0, 0.0], [3.0, 0.0, 2.0], [0.0, 2.0, 0.0]]
    )
    m = on(device, [[1.0, 0.0, 2.0], [3.0, 4.0, 5.0]])
    g = gc.grad(lambda m: gc.sum(gc.prod(m, axis=1)))(m)
    np.testing.assert_allclose(host(g), [[0.0, 2.0, 0.0], [20.0, 15.0, 12.0]])
    _, t = gc.jvp(lambda m: gc.prod(m, axis=1), (m,), (gc.ones_like(m),))
    np.testing.assert_allclose(host(t), [2.0, 47.0])


def test_norm_and_std_have_zero_gradient_at_zero(device):
    zero = on(device, np.zeros((2, 3)))
    for ord in (1, 2, math.inf):
        g = gc.grad(lambda x, ord=ord: gc.norm(x, ord))(zero)
        np.testing.assert_array_equal(host(g), np.zeros((2, 3)))
        _, t = gc.jvp(lambda x, ord=ord: gc.norm(x, ord), (zero,), (gc.ones_like(zero),))
        assert host(t) == 0.0
    constant = on(device, np.full((2, 3), 1.5))
    np.testing.assert_array_equal(host(gc.grad(gc.std)(constant)), np.zeros((2, 3)))
    g = gc.grad(lambda x: gc.sum(gc.std(x, axis=1, ddof=1)))(constant)
    np.testing.assert_array_equal(host(g), np.zeros((2, 3)))


def test_ties_share_the_gradient_equally_as_amin_and_amax_do(device):
    x = on(device, [[1.0, 3.0, 1.0], [2.0, 2.0, 2.0]])
    for reduce in (gc.min, gc.max):
        g = gc.grad(lambda x, reduce=reduce: gc.sum(reduce(x, axis=1)))(x)
        winner = [0.5, 0.0, 0.5] if reduce is gc.min else [0.0, 1.0, 0.0]
        np.testing.assert_allclose(host(g), [winner, [1 / 3, 1 / 3, 1 / 3]])
    g = gc.grad(lambda x: gc.norm(x, math.inf))(on(device, [3.0, -3.0, 1.0]))
    np.testing.assert_allclose(host(g), [0.5, -0.5, 0.0])


def test_leaky_relu_at_zero_has_the_negative_slope(device):
    g = gc.elementwise_grad(lambda x: gc.leaky_relu(x, 0.1))(on(device, [0.0, 1.0, -1.0]))
    np.testing.assert_allclose(host(g), [0.1, 1.0, 0.1])


def test_erf_at_large_arguments_and_gelu_tails(device):
    x = on(device, [-30.0, -6.5, 6.5, 30.0])
    np.testing.assert_array_equal(host(gc.erf(x)), [-1.0, -1.0, 1.0, 1.0])
    np.testing.assert_array_equal(host(gc.gelu(x))[[0, 3]], [-0.0, 30.0])
    np.testing.assert_allclose(
        host(gc.elementwise_grad(gc.gelu)(x))[[0, 3]], [0.0, 1.0], atol=1e-150
    )


def test_bad_parameters_are_named():
    x = gc.array([1.0, 2.0])
    with pytest.raises(ValueError, match=r"gelu\(approximate='exact'\): approximate is"):
        gc.gelu(x, approximate="exact")
    with pytest.raises(ValueError, match=r"norm\(ord=3\): ord is 1, 2 or inf"):
        gc.norm(x, 3)
    with pytest.raises(TypeError, match="cumsum needs an array"):
        gc.cumsum(1.0)


# ---------------------------------------------------------------------------------------------
# PyTorch, where installed


# name, the gradcore function, PyTorch's (given torch), the input
TORCH_CASES = [
    ("log1p", gc.log1p, lambda torch: torch.log1p, POSITIVE34 - 0.4),
    ("expm1", gc.expm1, lambda torch: torch.expm1, X34),
    ("softplus", gc.softplus, lambda torch: torch.nn.functional.softplus, X34 * 15),
    ("erf", gc.erf, lambda torch: torch.erf, X34),
    ("leaky_relu", gc.leaky_relu, lambda torch: torch.nn.functional.leaky_relu, AWAY34),
    ("gelu", gc.gelu, lambda torch: torch.nn.functional.gelu, X34),
    ("gelu_tanh", lambda x: gc.gelu(x, approximate="tanh"),
     lambda torch: lambda x: torch.nn.functional.gelu(x, approximate="tanh"), X34),
    ("logaddexp", lambda x: gc.logaddexp(x, x[::-1, ...] * 30.0),
     lambda torch: lambda x: torch.logaddexp(x, x.flip(0) * 30.0), X34),
    ("cumsum", lambda x: gc.cumsum(x, axis=1), lambda torch: lambda x: torch.cumsum(x, 1), X34),
    ("prod", gc.prod, lambda torch: torch.prod, X34),
    ("prod_zeros", lambda x: gc.prod(x, axis=1), lambda torch: lambda x: torch.prod(x, 1),
     np.array([[1.5, 0.0, -2.0], [0.0, 0.0, 3.0], [0.0, 2.0, 4.0]])),
    ("var", lambda x: gc.var(x, axis=0, ddof=1),
     lambda torch: lambda x: torch.var(x, 0, correction=1), X34),
    ("std", gc.std, lambda torch: lambda x: torch.std(x, correction=0), X34),
    ("std_constant", gc.std, lambda torch: lambda x: torch.std(x, correction=0),
     np.ones((2, 2))),
    ("min_ties", lambda x: gc.min(x, axis=1), lambda torch: lambda x: torch.amin(x, 1),
     np.array([[1.0, 3.0, 1.0], [2.0, 2.0, 2.0]])),
    ("max_ties", lambda x: gc.max(x, axis=0), lambda torch: lambda x: torch.amax(x, 0),
     np.array([[1.0, 3.0, 1.0], [2.0, 3.0, 1.0]])),
    ("flip", lambda x: gc.flip(x, 0), lambda torch: lambda x: torch.flip(x, (0,)), X34),
    ("norm", gc.norm, lambda torch: torch.linalg.vector_norm, X34),
    ("norm_zero", gc.norm, lambda torch: torch.linalg.vector_norm, np.zeros(3)),
    ("norm_inf_ties", lambda x: gc.norm(x, math.inf),
     lambda torch: lambda x: torch.linalg.vector_norm(x, math.inf), np.array([3.0, -3.0, 1.0])),
    ("norm_1", lambda x: gc.norm(x, 1, axis=0),
     lambda torch: lambda x: torch.linalg.vector_norm(x, 1, dim=0), AWAY34),
]  # fmt: skip


@pytest.mark.parametrize("name, ours, theirs, x", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_first_and_second_derivatives_against_pytorch(name, ours, theirs, x):
    """Values, the VJP along u and the Hessian-vector product along (u, v): gradcore's forward
    over reverse against PyTorch's double backward."""
    torch = pytest.importorskip("torch")
    theirs = theirs(torch)
    xt = torch.tensor(x, requires_grad=True)
    out = theirs(xt)
    u = np.random.default_rng(1).normal(size=tuple(out.shape))
    v = np.random.default_rng(2).normal(size=x.shape)
    (g,) = torch.autograd.grad(out, xt, torch.tensor(u), create_graph=True)
    hv = np.zeros_like(x)  # piecewise linear ops: the gradient does not depend on x
    if g.requires_grad:
        (hv_t,) = torch.autograd.grad(g, xt, torch.tensor(v), allow_unused=True)
        hv = hv if hv_t is None else hv_t.detach().numpy(force=True)
    xg = gc.array(x, dtype="float64")
    np.testing.assert_allclose(host(ours(xg)), out.detach().numpy(), rtol=1e-12)
    _, vjp_fun = gc.vjp(ours, xg)
    np.testing.assert_allclose(host(vjp_fun(u)[0]), g.detach().numpy(), rtol=1e-12, atol=1e-14)
    ours_hv = gc.jvp(lambda x: gc.vjp(ours, x)[1](u)[0], (xg,), (gc.array(v, "float64"),))[1]
    if name == "norm_zero":  # PyTorch's second derivative at 0 is NaN; gradcore's is 0
        hv = np.zeros_like(x)
    np.testing.assert_allclose(host(ours_hv), hv, rtol=1e-10, atol=1e-12)
