"""Layer 3: the ops. Each primitive finds the backend of its arguments and calls ``backend.xp``.

Ops follow their inputs' device and dtype: nothing is moved between devices and a float32
input gives a float32 output. Python numbers combine with arrays of any device without
promoting them (NumPy 2 rules), and an op on Python numbers alone returns a Python number.
Their VJP rules live in ``gradcore.vjps``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from gradcore.backend import PY_SCALARS, backend_of, common_backend
from gradcore.tracer import Box, nondifferentiable, primitive

# ---------------------------------------------------------------------------------------------
# helpers


def shape(x: Any) -> tuple[int, ...]:
    """Shape of an array, a box or a Python number (``()``)."""
    return () if type(x) in PY_SCALARS else tuple(x.shape)


def ndim(x: Any) -> int:
    return len(shape(x))


def _normalize_axis(axis: int | Sequence[int] | None, rank: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(rank))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % rank if rank else a for a in axes))


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic: written with operators, which every Array API array supports with
# Python numbers on either side


def _check_devices(op_name: str, x: Any, y: Any) -> None:
    """Arrays of two libraries never meet silently: NumPy would convert some of them.

    Arrays of one type on two devices are refused by the library itself; the primitive turns
    that refusal into a DeviceError too.
    """
    if type(x) is not type(y) and type(x) not in PY_SCALARS and type(y) not in PY_SCALARS:
        common_backend(op_name, x, y)


@primitive
def add(x, y):
    _check_devices("add", x, y)
    return x + y


@primitive
def subtract(x, y):
    _check_devices("subtract", x, y)
    return x - y


@primitive
def multiply(x, y):
    _check_devices("multiply", x, y)
    return x * y


@primitive
def divide(x, y):
    _check_devices("divide", x, y)
    return x / y


true_divide = primitive(divide.fun, name="true_divide")


@primitive
def power(x, y):
    _check_devices("power", x, y)
    return x**y


@primitive
def negative(x):
    return -x


@primitive
def maximum(x, y):
    return common_backend("maximum", x, y).xp.maximum(x, y)


@primitive
def minimum(x, y):
    return common_backend("minimum", x, y).xp.minimum(x, y)


def _unary(name: str, scalar_fun) -> Callable:
    """An elementwise function of one array, from the backend namespace of the same name."""

    def impl(x):
        if type(x) in PY_SCALARS:
            return scalar_fun(x)
        return getattr(backend_of(x).xp, name)(x)

    impl.__name__ = name
    impl.__doc__ = f"Elementwise {name}."
    return primitive(impl)


exp = _unary("exp", math.exp)
log = _unary("log", math.log)
sin = _unary("sin", math.sin)
cos = _unary("cos", math.cos)
tanh = _unary("tanh", math.tanh)
sqrt = _unary("sqrt", math.sqrt)
abs = _unary("abs", lambda x: x if x >= 0 else -x)  # noqa: A001 - the Array API name
sign = nondifferentiable(_unary("sign", lambda x: float((x > 0) - (x < 0))).fun)


@primitive
def square(x):
    return x * x


@primitive
def sigmoid(x):
    """Logistic function, one fused kernel: exact and silent for every finite input."""
    if type(x) in PY_SCALARS:
        return 0.5 * math.tanh(0.5 * x) + 0.5
    return backend_of(x).sigmoid(x)


@primitive
def sigmoid_grad(y, g):
    """``g * y * (1 - y)``: the sigmoid's VJP from its output alone, one fused kernel."""
    return common_backend("sigmoid_grad", y, g).sigmoid_grad(y, g)


@primitive
def relu(x):
    return backend_of(x).xp.maximum(x, 0.0)


@primitive
def clip(x, min=None, max=None):  # noqa: A002 - NumPy's names
    return backend_of(x).xp.clip(x, min, max)


@primitive
def where(condition, x, y):
    """``x`` where ``condition`` holds, else ``y``; only ``x`` and ``y`` are differentiable."""
    if type(condition) in PY_SCALARS:
        return x if condition else y
    return common_backend("where", condition, x, y).xp.where(condition, x, y)


@primitive
def astype(x, dtype):
    if type(x) in PY_SCALARS:
        return x
    return backend_of(x).xp.astype(x, dtype)


# ---------------------------------------------------------------------------------------------
# reductions


@primitive
def sum(x, axis=None, keepdims=False):  # noqa: A001 - the Array API name
    return backend_of(x).xp.sum(x, axis=axis, keepdims=keepdims)


@primitive
def mean(x, axis=None, keepdims=False):
    return backend_of(x).xp.mean(x, axis=axis, keepdims=keepdims)


@primitive
def max(x, axis=None, keepdims=False):  # noqa: A001 - the Array API name
    return backend_of(x).xp.max(x, axis=axis, keepdims=keepdims)


@primitive
def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` without overflow: the max is subtracted first and added back."""
    xp = backend_of(x).xp
    peak = xp.max(x, axis=axis, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0.0)  # all -inf rows stay -inf, not nan
    out = xp.log(xp.sum(xp.exp(x - peak), axis=axis, keepdims=True)) + peak
    if not keepdims:
        out = xp.squeeze(out, axis=_normalize_axis(axis, x.ndim))
    return out


def softmax(x: Any, axis: int = -1) -> Any:
    """``exp(x) / sum(exp(x))`` along ``axis``, through logsumexp so it never overflows."""
    return exp(x - logsumexp(x, axis=axis, keepdims=True))


def log_softmax(x: Any, axis: int = -1) -> Any:
    return x - logsumexp(x, axis=axis, keepdims=True)


# ---------------------------------------------------------------------------------------------
# shapes


@primitive
def reshape(x, shape):
    return backend_of(x).xp.reshape(x, tuple(shape))


@primitive
def transpose(x, axes=None):
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    return backend_of(x).xp.permute_dims(x, tuple(axes))


def matrix_transpose(x: Any) -> Any:
    """Swap the last two axes (``x.mT``)."""
    rank = ndim(x)
    return transpose(x, (*range(rank - 2), rank - 1, rank - 2))


@primitive
def broadcast_to(x, shape):
    if type(x) in PY_SCALARS:
        raise TypeError("broadcast_to needs an array; create one with gradcore.array")
    return backend_of(x).xp.broadcast_to(x, tuple(shape))


@primitive
def expand_dims(x, axis):
    xp = backend_of(x).xp
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    rank = x.ndim + len(axes)
    for a in sorted(a % rank for a in axes):
        x = xp.expand_dims(x, axis=a)
    return x


@primitive
def squeeze(x, axis=None):
    if axis is None:
        axis = tuple(i for i, n in enumerate(x.shape) if n == 1)
    return backend_of(x).xp.squeeze(x, axis=axis)


@primitive
def getitem(x, index):
    """``x[index]``: basic slicing and integer-array indexing."""
    return x[index]


@primitive
def untake(g, index, shape):
    """Zeros of ``shape`` with ``g`` added at ``index``: the adjoint of ``getitem``."""
    backend = backend_of(g)
    out = backend.xp.zeros(shape, dtype=g.dtype, device=backend.array_device(g))
    backend.scatter_add(out, index, g)
    return out


@primitive
def _concatenate(axis, *arrays):
    return common_backend("concatenate", *arrays).xp.concat(arrays, axis=axis)


@primitive
def _stack(axis, *arrays):
    return common_backend("stack", *arrays).xp.stack(arrays, axis=axis)


def concatenate(arrays: Sequence[Any], axis: int = 0) -> Any:
    """Join arrays along an existing axis."""
    return _concatenate(axis, *arrays)


def stack(arrays: Sequence[Any], axis: int = 0) -> Any:
    """Join arrays along a new axis."""
    return _stack(axis, *arrays)


# ---------------------------------------------------------------------------------------------
# linear algebra


@primitive
def matmul(x, y):
    return common_backend("matmul", x, y).xp.matmul(x, y)


def dot(x: Any, y: Any) -> Any:
    """Vector and matrix products as ``matmul``; a scalar operand multiplies."""
    if ndim(x) == 0 or ndim(y) == 0:
        return multiply(x, y)
    if ndim(x) > 2 or ndim(y) > 2:
        raise ValueError(
            f"dot: operands of shapes {shape(x)} and {shape(y)}; dot takes at most 2-d "
            "arrays, use matmul for stacks of matrices"
        )
    return matmul(x, y)


# ---------------------------------------------------------------------------------------------
# constant-valued ops: comparisons, argmax and fresh arrays do not depend on inputs smoothly


# comparisons of two Python numbers give a Python bool, as Python's own operators do
_PYTHON_COMPARISONS = {
    "equal": operator.eq,
    "not_equal": operator.ne,
    "less": operator.lt,
    "less_equal": operator.le,
    "greater": operator.gt,
    "greater_equal": operator.ge,
}


def _comparison(name: str):
    def compare(x, y):
        if type(x) in PY_SCALARS and type(y) in PY_SCALARS:
            return _PYTHON_COMPARISONS[name](x, y)
        return getattr(common_backend(name, x, y).xp, name)(x, y)

    compare.__name__ = name
    return nondifferentiable(compare)


equal = _comparison("equal")
not_equal = _comparison("not_equal")
less = _comparison("less")
less_equal = _comparison("less_equal")
greater = _comparison("greater")
greater_equal = _comparison("greater_equal")


@nondifferentiable
def argmax(x, axis=None, keepdims=False):
    return backend_of(x).xp.argmax(x, axis=axis, keepdims=keepdims)


@nondifferentiable
def zeros_like(x):
    return backend_of(x).xp.zeros_like(x)


@nondifferentiable
def ones_like(x):
    return backend_of(x).xp.ones_like(x)


def replace_zero(x: Any, value: float) -> Any:
    """``x`` with its zeros replaced by ``value`` (keeps ``log`` finite in the power rule)."""
    return where(equal(x, 0), value, x)


def unbroadcast(x: Any, g: Any) -> Any:
    """Sum ``g`` back to the shape of ``x`` (undoing broadcasting), in ``x``'s dtype."""
    try:  # the common case, first: nothing was broadcast
        if g.shape == x.shape and g.dtype == x.dtype:
            return g
    except AttributeError:  # a Python number has no shape
        if type(x) in PY_SCALARS and type(g) in PY_SCALARS:
            return g
    x_shape = shape(x)
    g_shape = shape(g)
    if g_shape != x_shape:
        extra = len(g_shape) - len(x_shape)
        if extra > 0:
            g = sum(g, axis=tuple(range(extra)))
        stretched = tuple(axis for axis, n in enumerate(x_shape) if n == 1 and shape(g)[axis] != 1)
        if stretched:
            g = sum(g, axis=stretched, keepdims=True)
    if type(x) not in PY_SCALARS and type(g) not in PY_SCALARS and g.dtype != x.dtype:
        g = astype(g, x.dtype)
    return g


# ---------------------------------------------------------------------------------------------
# operators on traced values


def _reflected(op: Callable) -> Callable:
    return lambda self, other: op(other, self)


# Primitives are plain functions, so they bind as methods: ``box * 2`` calls multiply(box, 2).
for _name, _fun in [
    ("add", add),
    ("sub", subtract),
    ("mul", multiply),
    ("truediv", divide),
    ("pow", power),
    ("matmul", matmul),
]:
    setattr(Box, f"__{_name}__", _fun)
    setattr(Box, f"__r{_name}__", _reflected(_fun))
Box.__eq__ = equal
Box.__ne__ = not_equal
Box.__lt__ = less
Box.__le__ = less_equal
Box.__gt__ = greater
Box.__ge__ = greater_equal
Box.__getitem__ = getitem
Box.__neg__ = negative
Box.__abs__ = abs
Box.T = property(transpose)
Box.mT = property(matrix_transpose)
