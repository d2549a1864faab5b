"""Simulated ``cupy.fft``: NumPy's, over arrays of the current device."""

from __future__ import annotations

import numpy as np
from cupy import _core

NAMES = [
    "fft", "ifft", "fft2", "ifft2", "fftn", "ifftn", "rfft", "irfft", "rfft2", "irfft2", "rfftn",
    "irfftn", "hfft", "ihfft", "fftfreq", "rfftfreq", "fftshift", "ifftshift",
]  # fmt: skip


def _function(name: str):  # noqa: ANN202
    numpy_function = getattr(np.fft, name)

    def function(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return _core.run(numpy_function, args, kwargs)

    function.__name__ = function.__qualname__ = name
    return function


__all__ = list(NAMES)
for _name in __all__:
    globals()[_name] = _function(_name)
