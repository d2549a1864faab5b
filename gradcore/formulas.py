"""Elementwise formulas shared by an op and its device kernels, each written once.

A formula is a Python function of a namespace ``m`` and the op's arguments, written with the
operators and a few Array API functions (``exp``, ``abs``, ``maximum``, ``astype``, ...). Every
place that computes the op evaluates this one function with its own namespace: the op's generic
path with the backend's Array API namespace, Python numbers with ``PYTHON``, the CPU kernels
with a namespace that traces it into NumPy ufunc calls over reused buffers
(``gradcore.backends.numpy_kernels``), and the CUDA kernels with an emitter whose values are
CUDA C expressions (``gradcore.backends.cuda_c``), which writes the fused kernels and
``gc.jit``'s fused chains. So the numerics are decided here, once, for every device.
"""

from __future__ import annotations

import builtins
import math
from types import SimpleNamespace
from typing import Any

__all__ = [
    "PYTHON",
    "erf",
    "gelu",
    "gelu_tanh",
    "logaddexp",
    "relu_grad",
    "sigmoid",
    "sigmoid_grad",
    "softplus",
]


def sigmoid(m: Any, x: Any) -> Any:
    """``1 / (1 + e^-x)`` as ``n / (1 + e)`` with ``e = e^-|x|``, which never overflows.

    The numerator ``n`` is 1 for x >= 0 and ``e`` below (multiplying through by ``e^x``), so
    the lower tail keeps its digits (``(1 + tanh(x / 2)) / 2`` loses them). ``max(e, x >= 0)``
    is that numerator, since ``e <= 1`` (at x = -0.0, ``e`` is 1 itself): a select without
    ``where``, which NumPy runs several times slower on data of mixed signs, and a comparison,
    which NumPy vectorizes where it does not vectorize ``sign``.
    """
    e = m.exp(-m.abs(x))
    return m.maximum(e, m.astype(x >= 0, m.result_type(x))) / (1.0 + e)


def sigmoid_grad(m: Any, y: Any, g: Any) -> Any:
    """``g y (1 - y)``: the sigmoid's derivative from its output ``y`` alone, times ``g``."""
    return g * (y * (1.0 - y))


def relu_grad(m: Any, y: Any, g: Any) -> Any:
    """``g`` where relu's output ``y`` is positive, else 0: relu's derivative, times ``g``."""
    return m.where(y > 0.0, g, 0.0)


def softplus(m: Any, x: Any, beta: Any, threshold: Any) -> Any:
    """``log(1 + e^(beta x)) / beta`` as ``(max(z, 0) + log1p(e^-|z|)) / beta`` for ``z =
    beta x``: ``e^...`` never overflows and very negative ``x`` keep their digits. Where ``z``
    passes ``threshold`` it is ``x`` itself, as PyTorch's."""
    z = x * beta
    smooth = (m.maximum(z, 0.0) + m.log1p(m.exp(-m.abs(z)))) / beta
    return m.where(z > threshold, x, smooth)


def logaddexp(m: Any, x: Any, y: Any) -> Any:
    """``log(e^x + e^y)`` as ``max(x, y) + log1p(e^-|x - y|)``, which never overflows; equal
    arguments give ``x + log 2``, equal infinities included, whose difference would be NaN
    (they are replaced by 0 before it is taken)."""
    apart_x = m.where(x >= y, m.where(x <= y, 0.0, x), x)
    apart_y = m.where(x >= y, m.where(x <= y, 0.0, y), y)
    regular = m.maximum(apart_x, apart_y) + m.log1p(m.exp(-m.abs(apart_x - apart_y)))
    return m.where(x >= y, m.where(x <= y, x + _LOG_2, regular), regular)


# Rational approximations of erf on [0, 1] and of erfc on [1, 8], coefficients highest power
# first (Cephes, S. L. Moshier; as in SciPy): within about 2 ulp of the C library's erf.
_ERF_NUMERATOR = (
    9.60497373987051638749e0,
    9.00260197203842689217e1,
    2.23200534594684319226e3,
    7.00332514112805075473e3,
    5.55923013010394962768e4,
)
_ERF_DENOMINATOR = (
    1.0,
    3.35617141647503099647e1,
    5.21357949780152679795e2,
    4.59432382970980127987e3,
    2.26290000613890934246e4,
    4.92673942608635921086e4,
)
_ERFC_NUMERATOR = (
    2.46196981473530512524e-10,
    5.64189564831068821977e-1,
    7.46321056442269912687e0,
    4.86371970985681366614e1,
    1.96520832956077098242e2,
    5.26445194995477358631e2,
    9.34528527171957607540e2,
    1.02755188689515710272e3,
    5.57535335369399327526e2,
)
_ERFC_DENOMINATOR = (
    1.0,
    1.32281951154744992508e1,
    8.67072140885989742329e1,
    3.54937778887819891062e2,
    9.75708501743205489753e2,
    1.82390916687909736289e3,
    2.24633760818710981792e3,
    1.65666309194161350182e3,
    5.57535340817727675546e2,
)


def _polynomial(z: Any, coefficients: tuple[float, ...]) -> Any:
    """Horner's rule, the highest power first."""
    total = z * coefficients[0] + coefficients[1]
    for c in coefficients[2:]:
        total = total * z + c
    return total


def erf(m: Any, x: Any) -> Any:
    """The error function: the namespace's own where it has one (CUDA's, the math module's),
    else in Array API operations alone (the standard has no erf): ``x P(x^2) / Q(x^2)`` for
    |x| <= 1, else ``1 - erfc(|x|)`` signed, with ``erfc(a) = e^(-a^2) R(a) / S(a)``. Past
    |x| = 6 erf is 1 to double precision, so ``a`` stops there; each branch's input is
    clipped, so that an infinity computes nothing invalid."""
    own = getattr(m, "erf", None)
    if own is not None:
        return own(x)
    small = m.minimum(m.maximum(x, -1.0), 1.0)
    z = small * small
    inner = small * _polynomial(z, _ERF_NUMERATOR) / _polynomial(z, _ERF_DENOMINATOR)
    a = m.minimum(m.abs(x), 6.0)
    erfc = m.exp(-(a * a)) * _polynomial(a, _ERFC_NUMERATOR) / _polynomial(a, _ERFC_DENOMINATOR)
    return m.where(m.abs(x) <= 1.0, inner, m.sign(x) * (1.0 - erfc))


def gelu(m: Any, x: Any) -> Any:
    """``x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))``, as PyTorch computes it."""
    return 0.5 * x * (1.0 + erf(m, x * _SQRT_HALF))


def gelu_tanh(m: Any, x: Any) -> Any:
    """PyTorch's tanh approximation: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return 0.5 * x * (1.0 + m.tanh(_SQRT_TWO_OVER_PI * (x + 0.044715 * (x * x * x))))


_LOG_2 = math.log(2.0)
_SQRT_HALF = math.sqrt(0.5)
_SQRT_TWO_OVER_PI = math.sqrt(2.0 / math.pi)


def _where(condition: bool, x: float, y: float) -> float:
    return x if condition else y


# The namespace for Python numbers: the math module's functions, and the builtins'.
PYTHON = SimpleNamespace(
    exp=math.exp,
    log1p=math.log1p,
    tanh=math.tanh,
    erf=math.erf,
    abs=builtins.abs,
    maximum=builtins.max,
    minimum=builtins.min,
    where=_where,
    result_type=lambda *values: float,
    astype=lambda value, dtype: dtype(value),  # a comparison's True is 1.0
)
