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

__all__ = ["PYTHON", "sigmoid", "sigmoid_grad"]


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


# The namespace for Python numbers: the math module's functions, and the builtins'.
PYTHON = SimpleNamespace(
    exp=math.exp,
    abs=builtins.abs,
    maximum=builtins.max,
    result_type=lambda *values: float,
    astype=lambda value, dtype: dtype(value),  # a comparison's True is 1.0
)
