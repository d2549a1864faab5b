"""Simulated ``cupy.linalg``: NumPy's, over arrays of the current device."""

from __future__ import annotations

import numpy as np
from cupy import _core

NAMES = [
    "cholesky", "det", "eigh", "eigvalsh", "inv", "lstsq", "matrix_power", "matrix_rank",
    "norm", "pinv", "qr", "slogdet", "solve", "svd", "tensorinv", "tensorsolve", "outer",
    "tensordot", "vecdot", "matmul", "diagonal", "trace", "cross", "matrix_norm", "vector_norm",
    "svdvals", "matrix_transpose", "multi_dot",
]  # fmt: skip


__all__ = [name for name in NAMES if hasattr(np.linalg, name)]
for _name in __all__:
    globals()[_name] = _core.device_function(getattr(np.linalg, _name), _name)
