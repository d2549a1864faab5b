"""Layer 3: the derivative table. ``defvjp(op, vjp_x, vjp_y, ...)``, one rule per argument.

Each rule maps the output cotangent ``g`` to the cotangent of one input: ``vjp(g, ans, *args)``
where ``ans`` is the op's output. Rules are written in gradcore ops, so they are traced like any
other code and higher derivatives come for free.
"""

from __future__ import annotations

from gradcore.ops import (
    _concatenate,
    _normalize_axis,
    _stack,
    abs,
    add,
    astype,
    broadcast_to,
    clip,
    cos,
    divide,
    equal,
    exp,
    expand_dims,
    getitem,
    greater,
    log,
    logsumexp,
    matmul,
    matrix_transpose,
    max,
    maximum,
    mean,
    minimum,
    multiply,
    ndim,
    negative,
    not_equal,
    power,
    relu,
    replace_zero,
    reshape,
    shape,
    sigmoid,
    sigmoid_grad,
    sign,
    sin,
    sqrt,
    square,
    squeeze,
    subtract,
    sum,
    tanh,
    transpose,
    true_divide,
    unbroadcast,
    untake,
    where,
)
from gradcore.tracer import defvjp, defvjp_argnum

# --- arithmetic: the table gradcore was specified with ----------------------------------------

defvjp(add, lambda g, ans, x, y: unbroadcast(x, g), lambda g, ans, x, y: unbroadcast(y, g))
defvjp(multiply,
       lambda g, ans, x, y: unbroadcast(x, y * g),
       lambda g, ans, x, y: unbroadcast(y, x * g))  # fmt: skip
defvjp(subtract, lambda g, ans, x, y: unbroadcast(x, g), lambda g, ans, x, y: unbroadcast(y, -g))
defvjp(divide,
       lambda g, ans, x, y: unbroadcast(x, g / y),
       lambda g, ans, x, y: unbroadcast(y, -g * x / y**2))  # fmt: skip
defvjp(true_divide,
       lambda g, ans, x, y: unbroadcast(x, g / y),
       lambda g, ans, x, y: unbroadcast(y, -g * x / y**2))  # fmt: skip
defvjp(power,
       lambda g, ans, x, y: unbroadcast(x, g * y * x ** where(not_equal(y, 0.0), y - 1, 1.0)),
       lambda g, ans, x, y: unbroadcast(y, g * log(replace_zero(x, 1.0)) * x**y))  # fmt: skip

# --- elementwise functions ----------------------------------------------------------------------

defvjp(negative, lambda g, ans, x: -g)
defvjp(exp, lambda g, ans, x: g * ans)
defvjp(log, lambda g, ans, x: g / x)
defvjp(sin, lambda g, ans, x: g * cos(x))
defvjp(cos, lambda g, ans, x: -g * sin(x))
defvjp(tanh, lambda g, ans, x: g * (1.0 - square(ans)))
defvjp(square, lambda g, ans, x: g * (2.0 * x))
defvjp(abs, lambda g, ans, x: g * sign(x))
# d sqrt(x) = 1 / (2 sqrt(x)) is infinite at 0; we take 0 there, so that the gradient of a
# norm at the zero vector is 0 rather than NaN (autograd's most reported bug).
defvjp(sqrt, lambda g, ans, x: where(equal(ans, 0.0), 0.0, g * 0.5 / replace_zero(ans, 1.0)))
# The sigmoid's derivative needs only its output: y (1 - y).
defvjp(sigmoid, lambda g, ans, x: sigmoid_grad(ans, g))
defvjp(sigmoid_grad,
       lambda g2, ans, y, g: g2 * g * (1.0 - 2.0 * y),
       lambda g2, ans, y, g: sigmoid_grad(y, g2))  # fmt: skip
defvjp(relu, lambda g, ans, x: where(greater(ans, 0.0), g, 0.0))
defvjp(clip, lambda g, ans, x, min=None, max=None: where(equal(ans, x), g, 0.0))
defvjp(astype, lambda g, ans, x, *_, **__: astype(g, x.dtype))


def _tie_share(x, ans, y):
    """1 where x alone attains the max/min, 1/2 on ties, else 0 (autograd's balanced_eq)."""
    return astype(equal(x, ans), ans.dtype) / (1.0 + astype(equal(x, y), ans.dtype))


defvjp(maximum,
       lambda g, ans, x, y: unbroadcast(x, g * _tie_share(x, ans, y)),
       lambda g, ans, x, y: unbroadcast(y, g * _tie_share(y, ans, x)))  # fmt: skip
defvjp(minimum,
       lambda g, ans, x, y: unbroadcast(x, g * _tie_share(x, ans, y)),
       lambda g, ans, x, y: unbroadcast(y, g * _tie_share(y, ans, x)))  # fmt: skip
defvjp(where,
       None,
       lambda g, ans, c, x, y: unbroadcast(x, where(c, g, 0.0)),
       lambda g, ans, c, x, y: unbroadcast(y, where(c, 0.0, g)))  # fmt: skip

# --- reductions -------------------------------------------------------------------------------


def _restore_reduced(g, x, axis, keepdims):
    """Reshape a reduction's cotangent so that it broadcasts against the input ``x``."""
    if keepdims or axis is None:
        return g if keepdims else reshape(g, (1,) * ndim(x))
    return expand_dims(g, _normalize_axis(axis, ndim(x)))


def _count(x, axis):
    n = 1
    for a in _normalize_axis(axis, ndim(x)):
        n *= shape(x)[a]
    return n


defvjp(sum, lambda g, ans, x, axis=None, keepdims=False:
       broadcast_to(_restore_reduced(g, x, axis, keepdims), shape(x)))  # fmt: skip
defvjp(mean, lambda g, ans, x, axis=None, keepdims=False:
       broadcast_to(_restore_reduced(g, x, axis, keepdims) / _count(x, axis),
                    shape(x)))  # fmt: skip


def _max_vjp(g, ans, x, axis=None, keepdims=False):
    """The cotangent goes to the maxima, shared equally among ties."""
    g = _restore_reduced(g, x, axis, keepdims)
    winners = astype(equal(x, _restore_reduced(ans, x, axis, keepdims)), x.dtype)
    return g * winners / sum(winners, axis=axis, keepdims=True)


defvjp(max, _max_vjp)
defvjp(logsumexp, lambda g, ans, x, axis=None, keepdims=False:
       _restore_reduced(g, x, axis, keepdims)
       * exp(x - _restore_reduced(ans, x, axis, keepdims)))  # fmt: skip

# --- shapes -------------------------------------------------------------------------------------

defvjp(reshape, lambda g, ans, x, *_, **__: reshape(g, shape(x)))
defvjp(broadcast_to, lambda g, ans, x, *_, **__: unbroadcast(x, g))
defvjp(expand_dims, lambda g, ans, x, *_, **__: reshape(g, shape(x)))
defvjp(squeeze, lambda g, ans, x, *_, **__: reshape(g, shape(x)))


def _transpose_vjp(g, ans, x, axes=None):
    if axes is None:
        return transpose(g)
    inverse = [0] * len(axes)
    for position, axis in enumerate(axes):
        inverse[axis % len(axes)] = position
    return transpose(g, tuple(inverse))


defvjp(transpose, _transpose_vjp)
defvjp(getitem, lambda g, ans, x, index: untake(g, index, shape(x)))
defvjp(untake, lambda g2, ans, g, index, *_: getitem(g2, index))


# Index tuples end in ``...``: the Array API standard refuses an index that names fewer axes
# than the array has (NumPy's implicit trailing slices are not standard).
def _concatenate_vjp(argnum, g, ans, args, kwargs):
    axis, arrays = args[0], args[1:]
    axis %= ndim(g)
    start = 0
    for array in arrays[: argnum - 1]:
        start += shape(array)[axis]
    stop = start + shape(arrays[argnum - 1])[axis]
    return getitem(g, (slice(None),) * axis + (slice(start, stop), ...))


def _stack_vjp(argnum, g, ans, args, kwargs):
    axis = args[0] % ndim(g)
    return getitem(g, (slice(None),) * axis + (argnum - 1, ...))


defvjp_argnum(_concatenate, _concatenate_vjp)
defvjp_argnum(_stack, _stack_vjp)

# --- linear algebra -----------------------------------------------------------------------------


def _matmul_vjp(wrt):
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


matmul_vjp_x, matmul_vjp_y = _matmul_vjp(0), _matmul_vjp(1)
defvjp(matmul, matmul_vjp_x, matmul_vjp_y)

# --- what backward keeps ------------------------------------------------------------------------
# Most rules read only part of what the forward pass saw. Saying which lets backward keep an
# ArraySpec (shape and dtype) or nothing in place of the values, so an activation is freed as
# soon as the forward pass is done with it instead of living until backward reaches it.
# (defvjp's uses_args / uses_ans say the same for primitives defined elsewhere.)

# fmt: off
_READ_SHAPES_ONLY = (add, subtract, negative, astype, sum, mean, reshape, broadcast_to,
                     expand_dims, squeeze, transpose, getitem, untake, _concatenate, _stack)
_READ_ANS_NOT_ARGS = (exp, tanh, sqrt, sigmoid, relu)
_READ_ARGS_NOT_ANS = (multiply, divide, true_divide, power, log, sin, cos, square, abs,
                      sigmoid_grad, where, matmul)
# fmt: on
for _prim in _READ_SHAPES_ONLY:
    _prim.uses_args = _prim.uses_ans = False
for _prim in _READ_ANS_NOT_ARGS:
    _prim.uses_args = False
for _prim in _READ_ARGS_NOT_ANS:
    _prim.uses_ans = False
