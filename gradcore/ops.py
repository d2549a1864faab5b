"""Layer 3: the ops. Each op is one home: its forward, its VJP rules, what backward keeps of it,
its fused device kernels and, for elementwise ops, its formula.

A forward finds the backend of its arguments and calls ``backend.xp`` (an Array API
namespace); the ops with kernels (the sigmoid and its derivative, fused; on the CPU also sum,
mean, astype and log_softmax without NumPy's Python layers) look theirs up per device and fall
back to the generic Array-API expression. Ops follow their inputs' device
and dtype: nothing is moved between devices and a float32 input gives a float32 output. Python
numbers combine with arrays of any device without promoting them (NumPy 2 rules), and an op on
Python numbers alone returns a Python number, as the ``math`` module would.

The VJP rules are the derivative table, in the form the field knows:
``defvjp(op, lambda g, ans, x, y: ..., saves=...)``: ``g`` is the output's cotangent, ``ans``
the op's output, and ``saves`` says which of the two the rules read, so that backward keeps
nothing else. Beside each, the forward rule (JVP) in the same form,
``defjvp(op, lambda t, ans, x, y: ...)``: ``t`` is the tangent of that argument, and the rule
returns its share of the output's tangent. Rules are written in gradcore ops, so they are
traced like any other code and higher derivatives, in either mode, come for free.

An elementwise op's ``formula`` is the op as a function of a namespace ``m`` and its arguments
(``lambda m, x, y: x + y``; the longer ones in ``gradcore.formulas``, shared with the kernels):
what a device's code generator evaluates to fuse a chain of elementwise ops. ``lower``
and ``into_argument`` tell ``gc.jit`` how a replay may call an op: without its checks, and
writing over a dead argument.
"""

from __future__ import annotations

import builtins
import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

from gradcore import formulas
from gradcore.backend import PY_SCALARS, array_backend, backend_of, common_backend
from gradcore.tracer import (
    Box,
    Nondifferentiable,
    Primitive,
    defjvp,
    defjvp_argnum,
    defvjp,
    defvjp_argnum,
    getval,
    nondifferentiable,
    primitive,
)

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


def _elementwise(prim: Primitive, formula: Callable) -> Primitive:
    """Give ``prim`` its ``formula``: the op as a function of a namespace ``m`` and its
    arguments (see ``gradcore.formulas``), which device code generators evaluate."""
    prim.formula = formula
    return prim


def unbroadcast(x: Any, g: Any) -> Any:
    """Sum ``g`` back to the shape of ``x`` (undoing broadcasting), in ``x``'s dtype.

    For a Python number ``x`` the result has shape ``()``; ``grad`` makes it a number.
    """
    try:  # the common case, first: nothing was broadcast
        if g.shape == x.shape and g.dtype == x.dtype:
            return g
    except AttributeError:  # a Python number, traced or not, has no dtype
        if type(getval(x)) in PY_SCALARS and type(getval(g)) in PY_SCALARS:
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
    if (
        type(getval(x)) not in PY_SCALARS
        and type(getval(g)) not in PY_SCALARS
        and g.dtype != x.dtype
    ):
        g = astype(g, x.dtype)
    return g


def broadcast_like(t: Any, ans: Any) -> Any:
    """An argument's tangent ``t`` as a tangent of the output ``ans``: broadcast to its shape
    and cast to its dtype (the forward counterpart of ``unbroadcast``)."""
    if type(getval(ans)) in PY_SCALARS:
        return t
    if type(getval(t)) in PY_SCALARS:
        return t * ones_like(ans)  # a Python number takes the array's dtype
    if shape(t) != shape(ans):
        t = broadcast_to(t, shape(ans))
    return t if t.dtype == ans.dtype else astype(t, ans.dtype)


def replace_zero(x: Any, value: float) -> Any:
    """``x`` with its zeros replaced by ``value`` (keeps ``log`` finite in the power rule)."""
    return where(equal(x, 0), value, x)


def _log_of_base(x: Any) -> Any:
    """``log x`` for the power rule's exponent, 0 where ``x`` is 0 (where ``x**y`` is 0 too)."""
    return log(replace_zero(x, 1.0))


# ---------------------------------------------------------------------------------------------
# constant-valued ops: comparisons, signs, argmax and fresh arrays do not depend on inputs
# smoothly (first, since the rules below use them), and where, which selects between values


# comparisons of two Python numbers give a Python bool, as Python's own operators do
_PYTHON_COMPARISONS = {
    "equal": operator.eq,
    "not_equal": operator.ne,
    "less": operator.lt,
    "less_equal": operator.le,
    "greater": operator.gt,
    "greater_equal": operator.ge,
}


def _comparison(name: str) -> Nondifferentiable:
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
    if type(x) in PY_SCALARS:
        return type(x)(0)
    return backend_of(x).xp.zeros_like(x)


@nondifferentiable
def ones_like(x):
    if type(x) in PY_SCALARS:
        return type(x)(1)
    return backend_of(x).xp.ones_like(x)


# gc.jit computes these once per program: their arguments' values do not matter.
zeros_like.recorded.shape_only = ones_like.recorded.shape_only = True


@nondifferentiable
def sign(x):
    """-1, 0 or 1 by the sign of ``x``; a constant under differentiation."""
    if type(x) in PY_SCALARS:
        return float((x > 0) - (x < 0))
    return backend_of(x).xp.sign(x)


@primitive
def where(condition, x, y):
    """``x`` where ``condition`` holds, else ``y``; only ``x`` and ``y`` are differentiable."""
    if type(condition) in PY_SCALARS:
        return x if condition else y
    return common_backend("where", condition, x, y).xp.where(condition, x, y)


defvjp(where,
       None,
       lambda g, ans, c, x, y: unbroadcast(x, where(c, g, 0.0)),
       lambda g, ans, c, x, y: unbroadcast(y, where(c, 0.0, g)),
       saves="shapes")  # the condition is never traced, so it is kept as it is  # fmt: skip
defjvp(where,
       None,
       lambda t, ans, c, x, y: broadcast_like(where(c, t, 0.0), ans),
       lambda t, ans, c, x, y: broadcast_like(where(c, 0.0, t), ans))  # fmt: skip
_elementwise(where, lambda m, condition, x, y: m.where(condition, x, y))


# ---------------------------------------------------------------------------------------------
# elementwise arithmetic: written with operators, which every Array API array supports with
# Python numbers on either side


def _same_device(op_name: str, x: Any, y: Any) -> None:
    """Arrays of two libraries never meet silently: NumPy would convert some of them.

    Arrays of one library on two devices are refused by the library itself; the primitive
    turns that refusal into the same DeviceError (``common_backend`` words both).
    """
    if type(x) is not type(y) and type(x) not in PY_SCALARS and type(y) not in PY_SCALARS:
        common_backend(op_name, x, y)


@primitive
def add(x, y):
    _same_device("add", x, y)
    return x + y


@primitive
def subtract(x, y):
    _same_device("subtract", x, y)
    return x - y


@primitive
def multiply(x, y):
    _same_device("multiply", x, y)
    return x * y


@primitive
def divide(x, y):
    _same_device("divide", x, y)
    return x / y


true_divide = divide  # NumPy's older name for the same op


@primitive
def power(x, y):
    _same_device("power", x, y)
    return x**y


@primitive
def negative(x):
    return -x


# The table gradcore was specified with.
defvjp(add, lambda g, ans, x, y: unbroadcast(x, g), lambda g, ans, x, y: unbroadcast(y, g),
       saves="shapes")  # fmt: skip
defjvp(add, lambda t, ans, x, y: broadcast_like(t, ans),
       lambda t, ans, x, y: broadcast_like(t, ans))  # fmt: skip
defvjp(multiply,
       lambda g, ans, x, y: unbroadcast(x, y * g),
       lambda g, ans, x, y: unbroadcast(y, x * g), saves="args")  # fmt: skip
defjvp(multiply, lambda t, ans, x, y: t * y, lambda t, ans, x, y: x * t)
defvjp(subtract, lambda g, ans, x, y: unbroadcast(x, g), lambda g, ans, x, y: unbroadcast(y, -g),
       saves="shapes")  # fmt: skip
defjvp(subtract, lambda t, ans, x, y: broadcast_like(t, ans),
       lambda t, ans, x, y: broadcast_like(-t, ans))  # fmt: skip
defvjp(divide,
       lambda g, ans, x, y: unbroadcast(x, g / y),
       lambda g, ans, x, y: unbroadcast(y, -g * x / y**2), saves="args")  # fmt: skip
defjvp(divide, lambda t, ans, x, y: t / y, lambda t, ans, x, y: -t * x / y**2)
defvjp(power,
       lambda g, ans, x, y: unbroadcast(x, g * y * x ** where(not_equal(y, 0.0), y - 1, 1.0)),
       lambda g, ans, x, y: unbroadcast(y, g * _log_of_base(x) * x**y),
       saves="args")  # fmt: skip
defjvp(power,
       lambda t, ans, x, y: t * y * x ** where(not_equal(y, 0.0), y - 1, 1.0),
       lambda t, ans, x, y: t * _log_of_base(x) * ans)  # fmt: skip
defvjp(negative, lambda g, ans, x: -g, saves="shapes")
defjvp(negative, lambda t, ans, x: -t)

_elementwise(add, lambda m, x, y: x + y)
_elementwise(subtract, lambda m, x, y: x - y)
_elementwise(multiply, lambda m, x, y: x * y)
_elementwise(divide, lambda m, x, y: x / y)
_elementwise(power, lambda m, x, y: x**y)
_elementwise(negative, lambda m, x: -x)


def _into_argument(name: str, in_place: Callable) -> Callable:
    """For gc.jit: ``x op y`` written over a dead ``x`` by the in-place operator (every Array
    API array has them), or over a dead ``y`` by the library's ufunc given ``y`` as its out
    (NumPy's and CuPy's; not every namespace has one): the same arithmetic in the same
    operand order, so the same bits, NaN payloads included, without allocating."""

    def into_argument(argnum: int, x: Any, y: Any) -> tuple[Callable, tuple[int, ...]] | None:
        if argnum == 0:
            return in_place, (0, 1)
        ufunc = getattr(array_backend(y).xp, name, None)
        return (ufunc, (0, 1, 1)) if ufunc is not None and hasattr(ufunc, "nout") else None

    return into_argument


add.into_argument = _into_argument("add", operator.iadd)
subtract.into_argument = _into_argument("subtract", operator.isub)
multiply.into_argument = _into_argument("multiply", operator.imul)
divide.into_argument = _into_argument("divide", operator.itruediv)


def _extremum(name: str, python: Callable) -> Primitive:
    def extremum(x, y):
        if type(x) in PY_SCALARS and type(y) in PY_SCALARS:
            return python(x, y)
        return getattr(common_backend(name, x, y).xp, name)(x, y)

    extremum.__name__ = name
    extremum.__doc__ = f"Elementwise {name} of two arrays; ties share the gradient equally."
    return primitive(extremum)


maximum = _elementwise(_extremum("maximum", builtins.max), lambda m, x, y: m.maximum(x, y))
minimum = _elementwise(_extremum("minimum", builtins.min), lambda m, x, y: m.minimum(x, y))


def _share(g, x, ans, y):
    """``g`` where x alone attains the max/min, half of it on ties, else 0 (autograd's
    balanced_eq), written with ``where`` so that it keeps ``g``'s dtype, or its Python float."""
    return where(equal(x, ans), where(equal(x, y), 0.5 * g, g), 0.0)


# maximum and minimum share one rule: the cotangent goes to whichever argument won.
def _extremum_vjp_x(g, ans, x, y):
    return unbroadcast(x, _share(g, x, ans, y))


def _extremum_vjp_y(g, ans, x, y):
    return unbroadcast(y, _share(g, y, ans, x))


def _share_of(t, ans, x, y):
    """maximum/minimum: ``t`` where x alone wins, half of it on ties, as the VJP shares ``g``."""
    return broadcast_like(_share(t, x, ans, y), ans)


defvjp(maximum, _extremum_vjp_x, _extremum_vjp_y, saves="both")
defjvp(maximum, _share_of, lambda t, ans, x, y: _share_of(t, ans, y, x))
defvjp(minimum, _extremum_vjp_x, _extremum_vjp_y, saves="both")
defjvp(minimum, _share_of, lambda t, ans, x, y: _share_of(t, ans, y, x))


# ---------------------------------------------------------------------------------------------
# elementwise functions


def _unary(name: str, python: Callable) -> Primitive:
    """An elementwise function of one array, from the backend namespace of the same name."""

    def impl(x):
        if type(x) in PY_SCALARS:
            return python(x)
        return getattr(backend_of(x).xp, name)(x)

    impl.__name__ = name
    impl.__doc__ = f"Elementwise {name}."
    return _elementwise(primitive(impl), lambda m, x: getattr(m, name)(x))


exp = _unary("exp", math.exp)
log = _unary("log", math.log)
sin = _unary("sin", math.sin)
cos = _unary("cos", math.cos)
tanh = _unary("tanh", math.tanh)
sqrt = _unary("sqrt", math.sqrt)
abs = _unary("abs", lambda x: x if x >= 0 else -x)  # noqa: A001 - the Array API name


@primitive
def square(x):
    return x * x


defvjp(square, lambda g, ans, x: g * (2.0 * x), saves="args")
defjvp(square, lambda t, ans, x: t * (2.0 * x))
_elementwise(square, lambda m, x: x * x)

defvjp(exp, lambda g, ans, x: g * ans, saves="ans")
defjvp(exp, lambda t, ans, x: t * ans)
defvjp(log, lambda g, ans, x: g / x, saves="args")
defjvp(log, lambda t, ans, x: t / x)
defvjp(sin, lambda g, ans, x: g * cos(x), saves="args")
defjvp(sin, lambda t, ans, x: t * cos(x))
defvjp(cos, lambda g, ans, x: -g * sin(x), saves="args")
defjvp(cos, lambda t, ans, x: -t * sin(x))
defvjp(tanh, lambda g, ans, x: g * (1.0 - square(ans)), saves="ans")
defjvp(tanh, lambda t, ans, x: t * (1.0 - square(ans)))
defvjp(abs, lambda g, ans, x: g * sign(x), saves="args")
defjvp(abs, lambda t, ans, x: t * sign(x))
# d sqrt(x) = 1 / (2 sqrt(x)) is infinite at 0; we take 0 there, so that the gradient of a
# norm at the zero vector is 0 rather than NaN.
defvjp(sqrt, lambda g, ans, x: where(equal(ans, 0.0), 0.0, g * 0.5 / replace_zero(ans, 1.0)),
       saves="ans")  # fmt: skip
defjvp(sqrt, lambda t, ans, x: where(equal(ans, 0.0), 0.0, t * 0.5 / replace_zero(ans, 1.0)))


@primitive
def sigmoid(x):
    """Logistic function, one fused kernel where the device has one: exact for every input.

    Its formula (``gradcore.formulas.sigmoid``) is every device's: the kernels evaluate it too.
    """
    if type(x) in PY_SCALARS:
        return formulas.sigmoid(formulas.PYTHON, x)
    backend = backend_of(x)
    kernel = sigmoid.kernels.lookup(backend, x.dtype)
    return kernel(x) if kernel is not None else formulas.sigmoid(backend.xp, x)


def _kernel_for(op: Primitive, *args: Any) -> Callable | None:
    """For gc.jit: the kernel ``op`` calls for these arguments (arrays of one type, shape and
    dtype), or None."""
    first = args[0]
    if type(first) in PY_SCALARS or any(
        type(a) is not type(first) or a.shape != first.shape or a.dtype != first.dtype for a in args
    ):
        return None
    return op.kernels.lookup(array_backend(first), first.dtype)


def _lower_to_kernel(op: Primitive) -> Callable:
    """``op.lower`` for an op that runs its kernel on its first argument, where it has one."""
    return lambda x, *args, **kwargs: _kernel_for(op, x)


def _kernel_or_namespace(op: Primitive, x: Any, *args: Any, **kwargs: Any) -> Any:
    """``op`` on an array: its kernel for the array's device and dtype where it has one (the
    same result, without the library's Python layers), else the namespace function of its
    name."""
    backend = array_backend(x)
    kernel = op.kernels.lookup(backend, x.dtype)
    return (kernel or getattr(backend.xp, op.name))(x, *args, **kwargs)


def _kernel_into(op: Primitive, argnum: int, *args: Any) -> tuple[Callable, tuple] | None:
    """For gc.jit: the op's kernel writing over argument ``argnum``, where it takes an ``out``
    (its last parameter): the arguments, then that one again."""
    kernel = _kernel_for(op, *args)
    if kernel is None or not getattr(kernel, "takes_out", False):
        return None
    return kernel, (*range(len(args)), argnum)


def _grad_from_output(op: Primitive, formula: Callable, y: Any, g: Any) -> Any:
    """An activation's VJP ``op`` from its output ``y`` and cotangent ``g``: the op's kernel
    where both are arrays of one type, shape and dtype and the device has one, else ``formula``
    (from ``gradcore.formulas``) in the arrays' namespace or in Python."""
    if type(y) in PY_SCALARS and type(g) in PY_SCALARS:
        return formula(formulas.PYTHON, y, g)
    backend = common_backend(op.name, y, g)
    if type(g) is type(y) and g.shape == y.shape and g.dtype == y.dtype:
        kernel = op.kernels.lookup(backend, y.dtype)
        if kernel is not None:
            return kernel(y, g)
    return formula(backend.xp, y, g)


@primitive
def sigmoid_grad(y, g):
    """``g y (1 - y)``: the sigmoid's VJP from its output alone, one fused kernel."""
    return _grad_from_output(sigmoid_grad, formulas.sigmoid_grad, y, g)


sigmoid.kernel("cpu", "gradcore.backends.numpy_kernels:sigmoid")
sigmoid.kernel("cuda", "gradcore.backends.cuda_kernels:sigmoid")
sigmoid_grad.kernel("cpu", "gradcore.backends.numpy_kernels:sigmoid_grad")
sigmoid_grad.kernel("cuda", "gradcore.backends.cuda_kernels:sigmoid_grad")
# The sigmoid's derivative needs only its output: y (1 - y).
defvjp(sigmoid, lambda g, ans, x: sigmoid_grad(ans, g), saves="ans")
defjvp(sigmoid, lambda t, ans, x: sigmoid_grad(ans, t))
defvjp(sigmoid_grad,
       lambda g2, ans, y, g: g2 * g * (1.0 - 2.0 * y),
       lambda g2, ans, y, g: sigmoid_grad(y, g2), saves="args")  # fmt: skip
defjvp(sigmoid_grad,
       lambda t, ans, y, g: t * g * (1.0 - 2.0 * y),
       lambda t, ans, y, g: sigmoid_grad(y, t))  # fmt: skip
sigmoid.lower = _lower_to_kernel(sigmoid)
sigmoid_grad.lower = lambda y, g: _kernel_for(sigmoid_grad, y, g)
sigmoid.into_argument = lambda argnum, x: _kernel_into(sigmoid, argnum, x)
sigmoid_grad.into_argument = lambda argnum, y, g: _kernel_into(sigmoid_grad, argnum, y, g)
_elementwise(sigmoid, formulas.sigmoid)
_elementwise(sigmoid_grad, formulas.sigmoid_grad)


@primitive
def relu(x):
    if type(x) in PY_SCALARS:
        return builtins.max(x, 0.0)
    return backend_of(x).xp.maximum(x, 0.0)


@primitive
def relu_grad(y, g):
    """``g`` where relu's output ``y`` is positive, else 0: relu's VJP from its output, one op.

    Its formula (``gradcore.formulas.relu_grad``) is a ``where``; the CPU kernel gives the same
    bits without one (NumPy's ``where`` is several times slower on masks of mixed signs).
    """
    return _grad_from_output(relu_grad, formulas.relu_grad, y, g)


relu_grad.kernel("cpu", "gradcore.backends.numpy_kernels:relu_grad")
# A constant mask of y: no gradient flows to it (relu's second derivative is 0 almost everywhere).
defvjp(relu_grad, None, lambda g2, ans, y, g: relu_grad(y, g2), saves="args")
defjvp(relu_grad, None, lambda t, ans, y, g: relu_grad(y, t))
relu_grad.lower = lambda y, g: _kernel_for(relu_grad, y, g)
_elementwise(relu_grad, formulas.relu_grad)
defvjp(relu, lambda g, ans, x: relu_grad(ans, g), saves="ans")
defjvp(relu, lambda t, ans, x: relu_grad(ans, t))
_elementwise(relu, lambda m, x: m.maximum(x, 0.0))


@primitive
def clip(x, min=None, max=None):  # noqa: A002 - NumPy's names
    if type(x) in PY_SCALARS:
        low = x if min is None else builtins.max(x, min)
        return low if max is None else (low if low <= max else max)
    return backend_of(x).xp.clip(x, min, max)


defvjp(clip, lambda g, ans, x, min=None, max=None: where(equal(ans, x), g, 0.0), saves="both")
defjvp(clip, lambda t, ans, x, min=None, max=None: where(equal(ans, x), t, 0.0))


@primitive
def astype(x, dtype):
    if type(x) in PY_SCALARS:
        return x
    return _kernel_or_namespace(astype, x, dtype)


astype.kernel("cpu", "gradcore.backends.numpy_kernels:astype")
astype.lower = _lower_to_kernel(astype)


def _is_floating(dtype: Any) -> bool:
    return "float" in str(dtype)  # NumPy's, CuPy's and array-api-strict's dtype names


def _astype_vjp(g, ans, x, dtype):
    """A cast between floating types passes the gradient on; to integers or bool, the result
    is a constant (as for comparisons), so the argument gets no gradient through it."""
    if type(x) in PY_SCALARS or (_is_floating(x.dtype) and _is_floating(dtype)):
        return unbroadcast(x, g)
    return None


def _astype_jvp(t, ans, x, dtype):
    """Between floating types the tangent is cast along; to integers or bool, none."""
    if type(x) in PY_SCALARS or (_is_floating(x.dtype) and _is_floating(dtype)):
        return astype(t, dtype)
    return None


defvjp(astype, _astype_vjp, saves="shapes")
defjvp(astype, _astype_jvp)


log1p = _unary("log1p", math.log1p)
expm1 = _unary("expm1", math.expm1)

defvjp(log1p, lambda g, ans, x: g / (1.0 + x), saves="args")
defjvp(log1p, lambda t, ans, x: t / (1.0 + x))
defvjp(expm1, lambda g, ans, x: g * (ans + 1.0), saves="ans")
defjvp(expm1, lambda t, ans, x: t * (ans + 1.0))


def _by_formula(name: str, formula: Callable, doc: str | None) -> Primitive:
    """An elementwise op computed by its formula on every device: the backend's namespace for
    arrays, ``formulas.PYTHON`` for Python numbers, and the generated kernels where gc.jit
    fuses it (one formula, so fused and eager agree). Parameters are positional arguments, so
    that a fused kernel receives them as it receives any number."""

    def impl(*args):
        if builtins.all(type(a) in PY_SCALARS for a in args):
            return formula(formulas.PYTHON, *args)
        return formula(common_backend(name, *args).xp, *args)

    impl.__name__ = name
    impl.__doc__ = doc
    return _elementwise(primitive(impl), formula)


_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


@primitive
def erf(x):
    """The error function ``2/sqrt(pi) integral_0^x e^(-s^2) ds``: the device's own where it
    has one (CUDA), else ``formulas.erf`` (the Array API standard has none)."""
    if type(x) in PY_SCALARS:
        return math.erf(x)
    backend = backend_of(x)
    kernel = erf.kernels.lookup(backend, x.dtype)
    return kernel(x) if kernel is not None else formulas.erf(backend.xp, x)


erf.kernel("cuda", "gradcore.backends.cuda_kernels:erf")
_elementwise(erf, formulas.erf)
defvjp(erf, lambda g, ans, x: g * (_TWO_OVER_SQRT_PI * exp(-square(x))), saves="args")
defjvp(erf, lambda t, ans, x: t * (_TWO_OVER_SQRT_PI * exp(-square(x))))

_softplus = _by_formula("softplus", formulas.softplus, formulas.softplus.__doc__)


def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
    """``log(1 + e^(beta x)) / beta``, and ``x`` where ``beta x > threshold`` (PyTorch's):
    stable for every ``x``. ``beta`` and ``threshold`` are constants (no gradient)."""
    return _softplus(x, beta, threshold)


def _softplus_derivative(x, beta, threshold):
    """``sigmoid(beta x)``, and 1 where softplus is linear (PyTorch's threshold)."""
    z = x * beta
    return where(greater(z, threshold), 1.0, sigmoid(z))


defvjp(_softplus, lambda g, ans, x, beta, threshold: g * _softplus_derivative(x, beta, threshold),
       None, None, saves="args")  # fmt: skip
defjvp(_softplus, lambda t, ans, x, beta, threshold: t * _softplus_derivative(x, beta, threshold),
       None, None)  # fmt: skip


@primitive
def logaddexp(x, y):
    """``log(e^x + e^y)`` without overflow (``formulas.logaddexp``)."""
    if type(x) in PY_SCALARS and type(y) in PY_SCALARS:
        return formulas.logaddexp(formulas.PYTHON, x, y)
    backend = common_backend("logaddexp", x, y)
    # the formula's where may meet both operands: the standard's where takes one number at most
    if type(x) in PY_SCALARS:
        x = backend.xp.asarray(x, dtype=y.dtype, device=backend.array_device(y))
    if type(y) in PY_SCALARS:
        y = backend.xp.asarray(y, dtype=x.dtype, device=backend.array_device(x))
    return formulas.logaddexp(backend.xp, x, y)


_elementwise(logaddexp, formulas.logaddexp)

# d/dx = e^x / (e^x + e^y) = sigmoid(x - y): exact where x - ans would lose x's digits
defvjp(logaddexp,
       lambda g, ans, x, y: unbroadcast(x, g * sigmoid(x - y)),
       lambda g, ans, x, y: unbroadcast(y, g * sigmoid(y - x)), saves="args")  # fmt: skip
defjvp(logaddexp,
       lambda t, ans, x, y: broadcast_like(t * sigmoid(x - y), ans),
       lambda t, ans, x, y: broadcast_like(t * sigmoid(y - x), ans))  # fmt: skip

_leaky_relu = _by_formula(
    "leaky_relu", lambda m, x, slope: m.where(x > 0.0, x, x * slope), "x, or slope * x below 0."
)


def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
    """``x`` for positive ``x``, else ``negative_slope * x`` (PyTorch's default slope)."""
    return _leaky_relu(x, negative_slope)


# at 0 the slope is negative_slope, as in PyTorch; the slope itself is differentiable (PReLU)
defvjp(_leaky_relu,
       lambda g, ans, x, slope: unbroadcast(x, where(greater(x, 0.0), g, g * slope)),
       lambda g, ans, x, slope: unbroadcast(slope, where(greater(x, 0.0), 0.0, g * x)),
       saves="args")  # fmt: skip
defjvp(_leaky_relu,
       lambda t, ans, x, slope: broadcast_like(where(greater(x, 0.0), t, t * slope), ans),
       lambda t, ans, x, slope: broadcast_like(where(greater(x, 0.0), 0.0, t * x),
                                               ans))  # fmt: skip


def _gelu_exact(x):
    """``x Phi(x)`` by ``formulas.gelu``; on CUDA one launch of that formula, which calls CUDA's
    erf as gc.jit's fused chains do (the generic path computes erf in array operations)."""
    if type(x) in PY_SCALARS:
        return formulas.gelu(formulas.PYTHON, x)
    backend = backend_of(x)
    kernel = _gelu.kernels.lookup(backend, x.dtype)
    return kernel(x) if kernel is not None else formulas.gelu(backend.xp, x)


_gelu = primitive(_gelu_exact, name="gelu")
_gelu.kernel("cuda", "gradcore.backends.cuda_kernels:gelu")
_elementwise(_gelu, formulas.gelu)
_gelu_tanh = _by_formula("gelu_tanh", formulas.gelu_tanh, formulas.gelu_tanh.__doc__)


def gelu(x: Any, approximate: str = "none") -> Any:
    """``x Phi(x)``, Phi the standard normal CDF, as PyTorch's ``gelu``: exact through erf, or
    with ``approximate="tanh"`` its tanh approximation."""
    if approximate == "none":
        return _gelu(x)
    if approximate == "tanh":
        return _gelu_tanh(x)
    raise ValueError(f"gelu(approximate={approximate!r}): approximate is 'none' or 'tanh'")


_SQRT_HALF = math.sqrt(0.5)
_SQRT_TWO_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_TWO_PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_derivative(x):
    """``Phi(x) + x phi(x)``."""
    return 0.5 * (1.0 + erf(x * _SQRT_HALF)) + x * (_INV_SQRT_TWO_PI * exp(-0.5 * square(x)))


def _gelu_tanh_derivative(x):
    th = tanh(_SQRT_TWO_OVER_PI * (x + 0.044715 * (x * x * x)))
    slope = _SQRT_TWO_OVER_PI * (1.0 + 3.0 * 0.044715 * square(x))
    return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - square(th)) * slope


defvjp(_gelu, lambda g, ans, x: g * _gelu_derivative(x), saves="args")
defjvp(_gelu, lambda t, ans, x: t * _gelu_derivative(x))
defvjp(_gelu_tanh, lambda g, ans, x: g * _gelu_tanh_derivative(x), saves="args")
defjvp(_gelu_tanh, lambda t, ans, x: t * _gelu_tanh_derivative(x))


# ---------------------------------------------------------------------------------------------
# reductions


def _restore_reduced(g, x, axis, keepdims):
    """Reshape a reduction's cotangent so that it broadcasts against the input ``x``."""
    if ndim(x) == 0:  # a 0-d array or a Python number: nothing was reduced away
        return g
    if keepdims or axis is None:
        return g if keepdims else reshape(g, (1,) * ndim(x))
    return expand_dims(g, _normalize_axis(axis, ndim(x)))


def _count(x, axis):
    n = 1
    for a in _normalize_axis(axis, ndim(x)):
        n *= shape(x)[a]
    return n


@primitive
def sum(x, axis=None, keepdims=False):  # noqa: A001 - the Array API name
    if type(x) in PY_SCALARS:
        return x
    return _kernel_or_namespace(sum, x, axis=axis, keepdims=keepdims)


sum.kernel("cpu", "gradcore.backends.numpy_kernels:sum")
sum.lower = _lower_to_kernel(sum)


@primitive
def mean(x, axis=None, keepdims=False):
    if type(x) in PY_SCALARS:
        return float(x)
    return _kernel_or_namespace(mean, x, axis=axis, keepdims=keepdims)


mean.kernel("cpu", "gradcore.backends.numpy_kernels:mean")
mean.lower = _lower_to_kernel(mean)


@primitive
def max(x, axis=None, keepdims=False):  # noqa: A001 - the Array API name
    if type(x) in PY_SCALARS:
        return x
    return backend_of(x).xp.max(x, axis=axis, keepdims=keepdims)


@primitive
def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` without overflow: the max is subtracted first and added back."""
    if type(x) in PY_SCALARS:
        return float(x)
    xp = backend_of(x).xp
    peak = xp.max(x, axis=axis, keepdims=True)
    peak = xp.where(xp.isfinite(peak), peak, 0.0)  # all -inf rows stay -inf, not nan
    out = xp.log(xp.sum(xp.exp(x - peak), axis=axis, keepdims=True)) + peak
    if not keepdims:
        out = xp.squeeze(out, axis=_normalize_axis(axis, x.ndim))
    return out


def _sum_vjp(g, ans, x, axis=None, keepdims=False):
    g = _restore_reduced(g, x, axis, keepdims)
    return g if type(x) in PY_SCALARS else broadcast_to(g, shape(x))


def _mean_vjp(g, ans, x, axis=None, keepdims=False):
    g = _restore_reduced(g, x, axis, keepdims) / _count(x, axis)
    return g if type(x) in PY_SCALARS else broadcast_to(g, shape(x))


def _max_vjp(g, ans, x, axis=None, keepdims=False):
    """The cotangent goes to the maxima, shared equally among ties."""
    if ndim(x) == 0:  # a 0-d array or a Python number is its own maximum
        return g
    g = _restore_reduced(g, x, axis, keepdims)
    winners = astype(equal(x, _restore_reduced(ans, x, axis, keepdims)), x.dtype)
    return g * winners / sum(winners, axis=axis, keepdims=True)


def _max_jvp(t, ans, x, axis=None, keepdims=False):
    """The mean of the tangents of the maxima: ties share, as in the VJP."""
    if ndim(x) == 0:
        return t
    winners = astype(equal(x, _restore_reduced(ans, x, axis, keepdims)), x.dtype)
    return sum(t * winners, axis=axis, keepdims=keepdims) / sum(winners, axis=axis,
                                                                 keepdims=keepdims)  # fmt: skip


defvjp(sum, _sum_vjp, saves="shapes")
defjvp(sum, lambda t, ans, x, axis=None, keepdims=False: sum(t, axis=axis, keepdims=keepdims))
defvjp(mean, _mean_vjp, saves="shapes")
defjvp(mean, lambda t, ans, x, axis=None, keepdims=False: mean(t, axis=axis, keepdims=keepdims))
defvjp(max, _max_vjp, saves="both")
defjvp(max, _max_jvp)
defvjp(logsumexp, lambda g, ans, x, axis=None, keepdims=False:
       _restore_reduced(g, x, axis, keepdims)
       * exp(x - _restore_reduced(ans, x, axis, keepdims)), saves="both")  # fmt: skip
defjvp(logsumexp, lambda t, ans, x, axis=None, keepdims=False:
       sum(t * exp(x - _restore_reduced(ans, x, axis, keepdims)), axis=axis,
           keepdims=keepdims))  # fmt: skip


def softmax(x: Any, axis: int = -1) -> Any:
    """``exp(x) / sum(exp(x))`` along ``axis``, through logsumexp so it never overflows."""
    return exp(x - logsumexp(x, axis=axis, keepdims=True))


@primitive
def log_softmax(x, axis=-1):
    """``x - logsumexp(x)`` along ``axis``: log-probabilities, which cross-entropy reads."""
    if type(x) in PY_SCALARS:
        return 0.0
    backend = backend_of(x)
    kernel = log_softmax.kernels.lookup(backend, x.dtype)
    if kernel is not None:
        return kernel(x, axis=axis)
    xp = backend.xp
    shifted = x - xp.max(x, axis=axis, keepdims=True)  # an all -inf row gives nan, as it must
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


log_softmax.kernel("cpu", "gradcore.backends.numpy_kernels:log_softmax")
log_softmax.lower = _lower_to_kernel(log_softmax)


# Its VJP needs only its output: g - softmax(x) sum(g), with softmax(x) = exp(ans).
defvjp(log_softmax, lambda g, ans, x, axis=-1: g - exp(ans) * sum(g, axis=axis, keepdims=True),
       saves="ans")  # fmt: skip
defjvp(log_softmax, lambda t, ans, x, axis=-1: t - sum(exp(ans) * t, axis=axis, keepdims=True))


@primitive
def min(x, axis=None, keepdims=False):  # noqa: A001 - the Array API name
    if type(x) in PY_SCALARS:
        return x
    return backend_of(x).xp.min(x, axis=axis, keepdims=keepdims)


# as for max: the minima share the cotangent equally (PyTorch's amin)
defvjp(min, _max_vjp, saves="both")
defjvp(min, _max_jvp)


@primitive
def prod(x, axis=None, keepdims=False):
    if type(x) in PY_SCALARS:
        return x
    return backend_of(x).xp.prod(x, axis=axis, keepdims=keepdims)


def _prod_partials(x, axis):
    """``d prod / d x_i``, the product of the other elements of x_i's slice, exact when the
    slice holds zeros (where ``prod / x_i`` would divide by zero), and so are its derivatives.

    With ``r`` the product of the slice's nonzero elements and ``z`` the sum of its zero
    elements (0, but its derivative reaches each zero): no zero, ``r / x_i``; one zero, ``r``
    at the zero and ``z r / x_i`` elsewhere; two, the other zero times ``r`` at each zero
    (``(z - x_i) r``) and 0 elsewhere; more, 0. Each is written so that the factors that are 0
    keep their derivatives: second derivatives are exact too, as PyTorch's are.
    """
    is_zero = equal(x, 0.0)
    zeros = sum(astype(is_zero, x.dtype), axis=axis, keepdims=True)
    nonzero = where(is_zero, 1.0, x)
    r = prod(nonzero, axis=axis, keepdims=True)
    z = sum(where(is_zero, x, 0.0), axis=axis, keepdims=True)
    one_zero = where(is_zero, r, z * r / nonzero)
    two_zeros = where(is_zero, (z - x) * r, 0.0)
    return where(
        equal(zeros, 0.0),
        r / nonzero,
        where(equal(zeros, 1.0), one_zero, where(equal(zeros, 2.0), two_zeros, 0.0)),
    )


def _prod_vjp(g, ans, x, axis=None, keepdims=False):
    if ndim(x) == 0:
        return g
    return _restore_reduced(g, x, axis, keepdims) * _prod_partials(x, axis)


def _prod_jvp(t, ans, x, axis=None, keepdims=False):
    if ndim(x) == 0:
        return t
    return sum(t * _prod_partials(x, axis), axis=axis, keepdims=keepdims)


defvjp(prod, _prod_vjp, saves="args")
defjvp(prod, _prod_jvp)


@primitive
def var(x, axis=None, ddof=0, keepdims=False):
    """Variance over ``axis``, dividing by ``n - ddof`` (NumPy's ``ddof``: 0 by default)."""
    if type(x) in PY_SCALARS:
        return 0.0
    return backend_of(x).xp.var(x, axis=axis, correction=ddof, keepdims=keepdims)


@primitive
def std(x, axis=None, ddof=0, keepdims=False):
    """Standard deviation over ``axis``, dividing by ``n - ddof``; its gradient is 0 where it is
    0 (PyTorch's subgradient), not NaN."""
    if type(x) in PY_SCALARS:
        return 0.0
    return backend_of(x).xp.std(x, axis=axis, correction=ddof, keepdims=keepdims)


def _centered(x, axis):
    return x - mean(x, axis=axis, keepdims=True)


def _var_vjp(g, ans, x, axis=None, ddof=0, keepdims=False):
    if ndim(x) == 0:
        return g * 0.0
    scale = 2.0 / (_count(x, axis) - ddof)
    return _restore_reduced(g, x, axis, keepdims) * _centered(x, axis) * scale


def _var_jvp(t, ans, x, axis=None, ddof=0, keepdims=False):
    if ndim(x) == 0:
        return t * 0.0
    scale = 2.0 / (_count(x, axis) - ddof)
    return sum(t * _centered(x, axis), axis=axis, keepdims=keepdims) * scale


def _std_vjp(g, ans, x, axis=None, ddof=0, keepdims=False):
    """d std = d var / (2 std), and 0 where std is 0."""
    if ndim(x) == 0:
        return g * 0.0
    s = _restore_reduced(ans, x, axis, keepdims)
    g = _restore_reduced(g, x, axis, keepdims)
    scale = 1.0 / (_count(x, axis) - ddof)
    return where(equal(s, 0.0), 0.0, g * _centered(x, axis) * scale / replace_zero(s, 1.0))


def _std_jvp(t, ans, x, axis=None, ddof=0, keepdims=False):
    if ndim(x) == 0:
        return t * 0.0
    scale = 1.0 / (_count(x, axis) - ddof)
    dot = sum(t * _centered(x, axis), axis=axis, keepdims=keepdims) * scale
    return where(equal(ans, 0.0), 0.0, dot / replace_zero(ans, 1.0))


defvjp(var, _var_vjp, saves="args")
defjvp(var, _var_jvp)
defvjp(std, _std_vjp, saves="both")
defjvp(std, _std_jvp)


@primitive
def norm(x, ord=2, axis=None, keepdims=False):  # noqa: A002 - NumPy's name
    """The vector norm over ``axis`` (all elements by default, whatever the rank), ``ord`` 1,
    2 or inf, as ``torch.linalg.vector_norm``; its gradient at 0 is 0, not NaN."""
    if ord not in (1, 2, math.inf):
        raise ValueError(f"norm(ord={ord!r}): ord is 1, 2 or inf (a vector norm)")
    if type(x) in PY_SCALARS:
        return float(builtins.abs(x))
    xp = backend_of(x).xp
    if ord == 2:
        return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))
    if ord == 1:
        return xp.sum(xp.abs(x), axis=axis, keepdims=keepdims)
    return xp.max(xp.abs(x), axis=axis, keepdims=keepdims)


def _norm_partials(ans, x, ord, axis, keepdims):
    """``d norm / d x``: ``x / norm`` (0 where the norm is 0), ``sign(x)``, or for inf the
    sign at the elements of largest magnitude, shared equally among ties (PyTorch's)."""
    if ndim(x) == 0:
        return sign(x)
    n = _restore_reduced(ans, x, axis, keepdims)
    if ord == 2:
        return where(equal(n, 0.0), 0.0, x / replace_zero(n, 1.0))
    if ord == 1:
        return sign(x)
    winners = astype(equal(abs(x), n), x.dtype)
    return sign(x) * winners / sum(winners, axis=axis, keepdims=True)


defvjp(norm, lambda g, ans, x, ord=2, axis=None, keepdims=False:
       _restore_reduced(g, x, axis, keepdims) * _norm_partials(ans, x, ord, axis, keepdims),
       saves="both")  # fmt: skip
defjvp(norm, lambda t, ans, x, ord=2, axis=None, keepdims=False:
       sum(t * _norm_partials(ans, x, ord, axis, keepdims), axis=axis,
           keepdims=keepdims))  # fmt: skip


@primitive
def cumsum(x, axis=None):
    """Running sums along ``axis``; over the flattened array when ``axis`` is None (NumPy's)."""
    if type(x) in PY_SCALARS:
        raise TypeError("cumsum needs an array; create one with gradcore.array")
    xp = backend_of(x).xp
    if axis is None:
        x, axis = xp.reshape(x, (-1,)), 0
    return xp.cumulative_sum(x, axis=axis)


def _cumsum_vjp(g, ans, x, axis=None):
    """The adjoint of a running sum is a running sum from the other end."""
    if axis is None:
        return reshape(flip(cumsum(flip(g))), shape(x))
    return flip(cumsum(flip(g, axis), axis), axis)


@primitive
def flip(x, axis=None):
    """``x`` with the order of its elements reversed along ``axis`` (every axis by default)."""
    if type(x) in PY_SCALARS:
        return x
    return backend_of(x).xp.flip(x, axis=axis)


defvjp(cumsum, _cumsum_vjp, saves="shapes")
defjvp(cumsum, lambda t, ans, x, axis=None: cumsum(t, axis))
defvjp(flip, lambda g, ans, x, axis=None: flip(g, axis), saves="shapes")
defjvp(flip, lambda t, ans, x, axis=None: flip(t, axis))


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


def _transpose_vjp(g, ans, x, axes=None):
    if axes is None:
        return transpose(g)
    inverse = [0] * len(axes)
    for position, axis in enumerate(axes):
        inverse[axis % len(axes)] = position
    return transpose(g, tuple(inverse))


defvjp(reshape, lambda g, ans, x, *_, **__: reshape(g, shape(x)), saves="shapes")
defjvp(reshape, lambda t, ans, x, shape: reshape(t, shape))
defvjp(transpose, _transpose_vjp, saves="shapes")
defjvp(transpose, lambda t, ans, x, axes=None: transpose(t, axes))
defvjp(broadcast_to, lambda g, ans, x, *_, **__: unbroadcast(x, g), saves="shapes")
defjvp(broadcast_to, lambda t, ans, x, shape: broadcast_to(t, shape))
defvjp(expand_dims, lambda g, ans, x, *_, **__: reshape(g, shape(x)), saves="shapes")
defjvp(expand_dims, lambda t, ans, x, axis: expand_dims(t, axis))
defvjp(squeeze, lambda g, ans, x, *_, **__: reshape(g, shape(x)), saves="shapes")
defjvp(squeeze, lambda t, ans, x, axis=None: reshape(t, shape(ans)))


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


defvjp(getitem, lambda g, ans, x, index: untake(g, index, shape(x)), saves="shapes")
defjvp(getitem, lambda t, ans, x, index: getitem(t, index))
defvjp(untake, lambda g2, ans, g, index, *_: getitem(g2, index), saves="shapes")
defjvp(untake, lambda t, ans, g, index, shape: untake(t, index, shape))


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


# Index tuples end in ``...``: the Array API standard refuses an index that names fewer axes
# than the array has (NumPy's implicit trailing slices are not standard). Argument 0 is the
# axis; the arrays are arguments 1, 2, ...
def _concatenate_vjp(argnum, g, ans, args, kwargs):
    axis, arrays = args[0] % ndim(g), args[1:]
    start = 0
    for array in arrays[: argnum - 1]:
        start += shape(array)[axis]
    stop = start + shape(arrays[argnum - 1])[axis]
    return getitem(g, (slice(None),) * axis + (slice(start, stop), ...))


def _stack_vjp(argnum, g, ans, args, kwargs):
    axis = args[0] % ndim(g)
    return getitem(g, (slice(None),) * axis + (argnum - 1, ...))


def _concatenate_jvp(argnum, t, ans, args, kwargs):
    """The tangent of one joined array, zeros in the places of the others."""
    parts = [t if i == argnum else zeros_like(a) for i, a in enumerate(args) if i > 0]
    return _concatenate(args[0], *parts)


def _stack_jvp(argnum, t, ans, args, kwargs):
    parts = [t if i == argnum else zeros_like(a) for i, a in enumerate(args) if i > 0]
    return _stack(args[0], *parts)


defvjp_argnum(_concatenate, _concatenate_vjp, saves="shapes")
defjvp_argnum(_concatenate, _concatenate_jvp)
defvjp_argnum(_stack, _stack_vjp, saves="shapes")
defjvp_argnum(_stack, _stack_jvp)


# ---------------------------------------------------------------------------------------------
# linear algebra


@primitive
def matmul(x, y):
    backend = common_backend("matmul", x, y)
    return (_outer_product_kernel(x, y) or backend.xp.matmul)(x, y)


def _outer_product_kernel(x: Any, y: Any) -> Callable | None:
    """The device's kernel for a column times a row, the product a width-1 layer's backward
    makes (``g @ w.T``), where it has one: a matrix product with one term per entry, which a
    BLAS call makes at several times the cost of a broadcast multiply. None for any other
    product. Also ``matmul.lower``: gc.jit calls the kernel for these shapes, and the
    namespace's matmul directly for any others."""
    if (
        getattr(x, "ndim", 0) != 2
        or getattr(y, "ndim", 0) != 2
        or x.shape[1] != 1
        or y.shape[0] != 1  # else a shape error for matmul, not a broadcast for multiply
        or type(x) is not type(y)
        or x.dtype != y.dtype
    ):
        return None
    return matmul.kernels.lookup(array_backend(x), x.dtype)


matmul.kernel("cpu", "gradcore.backends.numpy_kernels:outer_product")
matmul.lower = _outer_product_kernel


def _matmul_vjp(wrt: int) -> Callable:
    """matmul's rule for either argument; 1-d operands are promoted to matrices and back."""

    def vjp(g, ans, x, y):
        if ndim(x) == 2 and ndim(y) == 2:  # the common case: no promotion, no broadcasting
            return matmul(g, y.T) if wrt == 0 else matmul(x.T, g)
        x2 = x if ndim(x) > 1 else expand_dims(x, 0)
        y2 = y if ndim(y) > 1 else expand_dims(y, -1)
        if ndim(x) == 1:
            g = expand_dims(g, -2)
        if ndim(y) == 1:
            g = expand_dims(g, -1)
        if wrt == 0:
            return reshape(unbroadcast(x2, matmul(g, matrix_transpose(y2))), shape(x))
        return reshape(unbroadcast(y2, matmul(matrix_transpose(x2), g)), shape(y))

    return vjp


_matmul_vjp_x, _matmul_vjp_y = _matmul_vjp(0), _matmul_vjp(1)
defvjp(matmul, _matmul_vjp_x, _matmul_vjp_y, saves="args")
defjvp(matmul, lambda t, ans, x, y: matmul(t, y), lambda t, ans, x, y: matmul(x, t))


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
# fused layers and losses: each runs once or twice per training step, so one node instead of
# several takes tracing overhead and temporaries out of every step (as PyTorch's linear and
# cross_entropy do)


@primitive
def affine(x, w, b):
    """``x @ w + b`` as one op; a layer's bias (a vector of the product's dtype) is added in
    place into the product, saving a temporary the size of the layer's output."""
    out = common_backend("affine", x, w, b).xp.matmul(x, w)
    if type(b) in PY_SCALARS or b.ndim > 1 or b.dtype != out.dtype:
        return out + b
    out += b
    return out


def _lower_affine(x: Any, w: Any, b: Any) -> Callable | None:
    """For gc.jit: affine as the matmul and the in-place bias add, without the checks."""
    if any(type(a) in PY_SCALARS for a in (x, w, b)):
        return None
    backend = common_backend("affine", x, w, b)
    if b.ndim > 1 or b.dtype != backend.xp.result_type(x, w):
        return None
    matmul = backend.xp.matmul

    def affine_unchecked(x, w, b):
        out = matmul(x, w)
        out += b
        return out

    return affine_unchecked


affine.lower = _lower_affine
defvjp(affine,
       lambda g, ans, x, w, b: _matmul_vjp_x(g, ans, x, w),
       lambda g, ans, x, w, b: _matmul_vjp_y(g, ans, x, w),
       lambda g, ans, x, w, b: unbroadcast(b, g), saves="args")  # fmt: skip
defjvp(affine,
       lambda t, ans, x, w, b: matmul(t, w),
       lambda t, ans, x, w, b: matmul(x, t),
       lambda t, ans, x, w, b: broadcast_like(t, ans))  # fmt: skip


@primitive
def sigmoid_cross_entropy(z, y):
    """Elementwise ``-y log sigmoid(z) - (1 - y) log(1 - sigmoid(z))`` from the logits ``z``.

    Computed as ``max(z, 0) - z y + log1p(e^-|z|)``, that is ``logsumexp([0, z]) - z y`` with
    the maximum taken out, so ``e^...`` never overflows.
    """
    xp = common_backend("sigmoid_cross_entropy", z, y).xp
    return xp.maximum(z, 0.0) - z * y + xp.log1p(xp.exp(-xp.abs(z)))


# The derivative the hand derivation gives: dL/dz = sigmoid(z) - y, computed as exactly that.
defvjp(sigmoid_cross_entropy,
       lambda g, ans, z, y: multiply(g, sigmoid(z) - y),
       lambda g, ans, z, y: negative(multiply(g, z)), saves="args")  # fmt: skip
defjvp(sigmoid_cross_entropy,
       lambda t, ans, z, y: t * (sigmoid(z) - y),
       lambda t, ans, z, y: -(z * t))  # fmt: skip


def softmax_cross_entropy(logits: Any, targets: Any) -> Any:
    """``-sum(log_softmax(logits) * targets) / n`` over ``(n, classes)`` rows.

    Three ops, not one: ``log_softmax``'s VJP reads only its output, so backward uses the
    log-probabilities forward computed, as a hand derivation does, instead of computing them
    again. dL/dz comes out as ``(softmax(z) * sum(t) - t) / n``: the textbook
    ``(softmax(z) - t) / n`` for one-hot rows, exact for soft targets too.
    """
    return sum(log_softmax(logits, axis=-1) * targets) * (-1.0 / shape(logits)[0])


# ---------------------------------------------------------------------------------------------
# operators on traced values


def _reflected(op: Callable) -> Callable:
    return lambda self, other: op(other, self)


# Primitives bind as methods, as functions do: ``box * 2`` calls multiply(box, 2).
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
for _attribute, _value in [
    ("__eq__", equal),
    ("__ne__", not_equal),
    ("__lt__", less),
    ("__le__", less_equal),
    ("__gt__", greater),
    ("__ge__", greater_equal),
    ("__getitem__", getitem),
    ("__neg__", negative),
    ("__abs__", abs),
    ("T", property(transpose)),
    ("mT", property(matrix_transpose)),
]:
    setattr(Box, _attribute, _value)
