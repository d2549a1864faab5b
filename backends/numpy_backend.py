"""The "cpu" device: NumPy 2, which is itself an Array API standard namespace.

Array plumbing only; the NumPy versions of fused kernels live in ``numpy_kernels``, registered
by the ops that own them.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

import numpy as np


class NumpyRng:
    """Seeded random numbers on the host; the state round-trips through checkpoints."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return self.generator.standard_normal(shape, dtype=np.float64).astype(dtype, copy=False)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any = np.float32):
        return self.generator.uniform(low, high, shape).astype(dtype, copy=False)

    def permutation(self, n: int) -> np.ndarray:
        return self.generator.permutation(n)

    def get_state(self) -> dict:
        return dict(self.generator.bit_generator.state)

    def set_state(self, state: dict) -> None:
        self.generator.bit_generator.state = state


class NumpyBackend:
    device = "cpu"
    xp = np
    # NumPy reductions return scalars (np.float32, ...), which are NumPy's too.
    array_types = (np.ndarray, *{t for t in np.sctypeDict.values() if issubclass(t, np.generic)})

    @property
    def description(self) -> str:
        """What ``gradcore info`` prints: NumPy, and who compiles the fused CPU loops."""
        from gradcore.backends import numpy_kernels

        return f"NumPy {np.__version__}; fused loops: {numpy_kernels.compiled_loops()}"

    def for_array(self, x: Any) -> NumpyBackend:
        return self

    def array_device(self, x: Any) -> str:
        return "cpu"

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def scatter_add(self, target: np.ndarray, index: Any, values: Any) -> None:
        np.add.at(target, index, values)

    def may_overwrite(self, x: Any, others: list[Any]) -> bool:
        return (
            type(x) is np.ndarray
            and x.flags.owndata
            and x.flags.writeable
            and not any(np.may_share_memory(x, o) for o in others if type(o) is np.ndarray)
        )

    def rng(self, seed: int) -> NumpyRng:
        return NumpyRng(seed)

    def synchronize(self) -> None:
        pass


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks for reuse instead of giving them back to the OS.

    A training step frees and reallocates the same few megabytes of activations and gradients
    every step. By default glibc returns large blocks (munmap, heap trimming) and takes them
    again next step, and each page touched again costs a fault: on this project's 2-core VM
    that was half the time of a batch-32 MLP step (bench/mlp.py reports faults per step).
    Memory stays bounded by what one step uses at its peak. Set GRADCORE_KEEP_FREED_MEMORY=0 to
    leave the allocator alone; elsewhere than glibc this does nothing.
    """
    if os.environ.get("GRADCORE_KEEP_FREED_MEMORY", "1") == "0":
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def load() -> NumpyBackend:
    _keep_freed_memory()
    return NumpyBackend()
