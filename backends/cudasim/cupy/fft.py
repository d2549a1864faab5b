"""Simulated ``cupy.fft``: NumPy's, over arrays of the current device."""

from __future__ import annotations

import numpy as np
from cupy import _core

NAMES = [
    "fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn",
    "irfftn", "hfft", "ihfft", "fftfreq", "rfftfreq", "fftshift", "ifftshift",
]  # fmt: skip


__all__ = list(NAMES)
for _name in __all__:
    globals()[_name] = _core.device_function(getattr(np.fft, _name), _name)
