"""Simulated ``cupy.random``: ``RandomState(seed, method=...)`` on the current device.

The numbers come from NumPy's Philox keyed by the seed, not from cuRAND: seeded streams are
reproducible on the simulator, but they are not a GPU's numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cupy import _core
from cupy.cuda import curand

FLOATS = (np.dtype("float32"), np.dtype("float64"))


def _float_dtype(dtype: Any) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in FLOATS:
        raise TypeError(f"cupy.random only supports float32 and float64, got {dtype}")
    return dtype


class RandomState:
    """CuPy's RandomState: ``method`` is a ``cupy.cuda.curand`` generator type."""

    def __init__(self, seed: Any = None, method: int = curand.CURAND_RNG_PSEUDO_DEFAULT) -> None:
        if method not in curand.METHODS:
            raise ValueError(f"unknown cuRAND generator type {method!r}")
        self.method = method
        self.seed(seed)

    def seed(self, seed: Any = None) -> None:
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int or None, not {type(seed).__name__}")
        self._generator = np.random.Generator(np.random.Philox(seed))

    def _out(self, values: np.ndarray) -> Any:
        return _core.make(values, _core.current_id())

    def normal(self, loc: float = 0.0, scale: float = 1.0, size: Any = None,
               dtype: Any = float) -> Any:  # fmt: skip
        dtype = _float_dtype(dtype)
        values = self._generator.standard_normal(size, dtype=dtype)
        return self._out((values * dtype.type(scale) + dtype.type(loc)).astype(dtype))

    def standard_normal(self, size: Any = None, dtype: Any = float) -> Any:
        return self.normal(size=size, dtype=dtype)

    def randn(self, *size: int, dtype: Any = float) -> Any:
        return self.normal(size=size, dtype=dtype)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: Any = None,
                dtype: Any = float) -> Any:  # fmt: skip
        dtype = _float_dtype(dtype)
        values = self._generator.random(size, dtype=dtype)
        return self._out((dtype.type(low) + values * dtype.type(high - low)).astype(dtype))

    def random_sample(self, size: Any = None, dtype: Any = float) -> Any:
        return self.uniform(size=size, dtype=dtype)

    def rand(self, *size: int, dtype: Any = float) -> Any:
        return self.uniform(size=size, dtype=dtype)

    def randint(self, low: int, high: int | None = None, size: Any = None,
                dtype: Any = "l") -> Any:  # fmt: skip
        return self._out(self._generator.integers(low, high, size, dtype=dtype))

    def permutation(self, num: Any) -> Any:
        if isinstance(num, (int, np.integer)):
            return self._out(self._generator.permutation(int(num)))
        raise NotImplementedError("RandomState.permutation of an array is not simulated")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        raise NotImplementedError(f"cupy.random.RandomState.{name} is not simulated")


_global = RandomState()


def seed(seed: Any = None) -> None:
    _global.seed(seed)


def get_random_state() -> RandomState:
    return _global


def normal(loc: float = 0.0, scale: float = 1.0, size: Any = None, dtype: Any = float) -> Any:
    return _global.normal(loc, scale, size, dtype)


def uniform(low: float = 0.0, high: float = 1.0, size: Any = None, dtype: Any = float) -> Any:
    return _global.uniform(low, high, size, dtype)


def standard_normal(size: Any = None, dtype: Any = float) -> Any:
    return _global.standard_normal(size, dtype)


def random_sample(size: Any = None, dtype: Any = float) -> Any:
    return _global.random_sample(size, dtype)


def rand(*size: int, dtype: Any = float) -> Any:
    return _global.rand(*size, dtype=dtype)


def randn(*size: int, dtype: Any = float) -> Any:
    return _global.randn(*size, dtype=dtype)


def randint(low: int, high: int | None = None, size: Any = None, dtype: Any = "l") -> Any:
    return _global.randint(low, high, size, dtype)


def permutation(num: Any) -> Any:
    return _global.permutation(num)
