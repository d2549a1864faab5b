"""The "cpu" device: NumPy 2, which is itself an Array API standard namespace.

The fused sigmoid and its backward are written for memory traffic: NumPy evaluates one
operation per pass, so a four-step formula over a large array reads and writes it four times.
Here each formula runs over cache-sized chunks, in place in the output, so the array crosses
main memory once; large arrays are split between the cores, since NumPy releases the GIL
inside its loops. The SGD update is a few in-place passes (chunking it measured slower).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from typing import Any

import numpy as np

# Elements per chunk: three float32 chunks (inputs and output) stay inside a 512 KiB L2 cache.
CHUNK = 32_768
# Below this many elements one thread is as fast: a hand-off to another thread costs tens of us.
PARALLEL_MIN = 1 << 19


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
        return self.generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.generator.bit_generator.state = state


@cache
def _pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Helpers for every usable core but the caller's, started on first need (not at import).

    They run only these kernels, whose one possible overflow is the sigmoid's harmless one, so
    they ignore overflow for good (NumPy's error state is per thread).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if cores == 1:
        return None, 1
    quiet = partial(np.seterr, over="ignore")
    return ThreadPoolExecutor(cores - 1, "gradcore", initializer=quiet), cores


def _parallel(kernel: Callable[..., None], out: np.ndarray, *inputs: np.ndarray) -> None:
    """``kernel(out, *inputs)`` on 1-D arrays, split into one contiguous range per core."""
    n = out.size
    helpers, cores = _pool() if n >= PARALLEL_MIN else (None, 1)
    if helpers is None:
        kernel(out, *inputs)
        return
    bounds = [(n * k // cores) // CHUNK * CHUNK for k in range(cores)] + [n]
    ranges = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    futures = [helpers.submit(kernel, out[r], *(a[r] for a in inputs)) for r in ranges[1:]]
    kernel(out[ranges[0]], *(a[ranges[0]] for a in inputs))  # the caller takes the first range
    for future in futures:
        future.result()


def _chunks(*arrays: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Matching cache-sized slices of 1-D arrays: each step's passes stay in cache."""
    if arrays[0].size <= CHUNK:
        yield arrays
        return
    for lo in range(0, arrays[0].size, CHUNK):
        yield tuple(a[lo : lo + CHUNK] for a in arrays)


def _sigmoid_kernel(out: np.ndarray, x: np.ndarray) -> None:
    # 1 / (1 + exp(-x)), 25% faster than the tanh form here since NumPy's exp beats its tanh,
    # and accurate to a few ulp even deep in the lower tail. For x below -88 (float32), exp(-x)
    # rounds to inf and 1 / inf is exactly 0: a harmless overflow, silenced by the callers.
    for o, xc in _chunks(out, x):
        np.negative(xc, out=o)
        np.exp(o, out=o)
        o += 1.0
        np.divide(1.0, o, out=o)


def _sigmoid_grad_kernel(out: np.ndarray, y: np.ndarray, g: np.ndarray) -> None:
    for o, yc, gc in _chunks(out, y, g):
        np.subtract(1.0, yc, out=o)
        o *= yc
        o *= gc


class NumpyBackend:
    device = "cpu"
    xp = np
    # NumPy reductions return scalars (np.float32, ...), which are NumPy's too.
    array_types = (np.ndarray, *{t for t in np.sctypeDict.values() if issubclass(t, np.generic)})

    def for_array(self, x: Any) -> NumpyBackend:
        return self

    def array_device(self, x: Any) -> str:
        return "cpu"

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, order="C")
        out = np.empty(x.shape, np.result_type(x, 0.5))
        with np.errstate(over="ignore"):
            _parallel(_sigmoid_kernel, out.reshape(-1), x.reshape(-1))
        return out

    def sigmoid_grad(self, y: np.ndarray, g: Any) -> np.ndarray:
        if np.shape(g) != np.shape(y):  # a broadcast cotangent: unfused
            return g * (y * (1.0 - y))
        y, g = np.asarray(y, order="C"), np.asarray(g, order="C")
        out = np.empty(y.shape, np.result_type(y, g))
        _parallel(_sigmoid_grad_kernel, out.reshape(-1), y.reshape(-1), g.reshape(-1))
        return out

    def sgd_update(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        velocity: np.ndarray,
        learning_rate: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
    ) -> None:
        # ``step = lr * (g + wd * p)`` is taken before p changes; the rest is in place. (Chunking
        # this through a cache-sized scratch buffer measured slower: it is a few passes only.)
        lr, mu, wd = float(learning_rate), float(momentum), float(weight_decay)
        step = np.multiply(grad, lr, dtype=param.dtype)
        if wd:
            step += np.multiply(param, lr * wd, dtype=param.dtype)
        velocity *= mu
        velocity -= step
        if nesterov:  # Keras form: p += momentum * v_new - lr * (g + wd * p)
            param -= step
            param += np.multiply(velocity, mu, out=step)
        else:
            param += velocity

    def scatter_add(self, target: np.ndarray, index: Any, values: Any) -> None:
        np.add.at(target, index, values)

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
