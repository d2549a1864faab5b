"""Fused kernels for the "cpu" device, registered by the ops that own them (``gradcore.ops``).

They are written for memory traffic: NumPy evaluates one operation per pass, so a four-step
formula over a large array reads and writes it four times. Here each formula (the op's own, from
``gradcore.formulas``, evaluated with NumPy) runs over cache-sized chunks written into the
output, so the array crosses main memory once; large arrays are split between the cores, since
NumPy releases the GIL inside its loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np

from gradcore import formulas

# Elements per chunk: a formula's temporaries of a chunk stay inside a 512 KiB L2 cache, and
# below the size from which malloc maps fresh pages for each (128 KiB), which costs more than the
# arithmetic.
CHUNK = 8192
# Below this many elements one thread is as fast: a hand-off to another thread costs tens of us.
PARALLEL_MIN = 1 << 19


@cache
def _pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Helpers for every usable core but the caller's, started on first need (not at import)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if cores == 1:
        return None, 1
    return ThreadPoolExecutor(cores - 1, "gradcore"), cores


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
    for o, xc in _chunks(out, x):  # each chunk's temporaries stay in cache
        np.copyto(o, formulas.sigmoid(np, xc))


def _sigmoid_grad_kernel(out: np.ndarray, y: np.ndarray, g: np.ndarray) -> None:
    for o, yc, gc in _chunks(out, y, g):
        np.copyto(o, formulas.sigmoid_grad(np, yc, gc))


def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + e^-x)``, chunked, into the output (which may be ``x`` itself)."""
    if out is None:
        out = np.empty(x.shape, np.result_type(x, 0.5))
    if x.size <= CHUNK:  # one chunk, as it is: a training step's activations, mostly
        _sigmoid_kernel(out, x)
    elif out.flags.c_contiguous:  # the chunks are views of the flattened arrays
        _parallel(_sigmoid_kernel, out.reshape(-1), np.asarray(x, order="C").reshape(-1))
    else:
        out[...] = sigmoid(x)
    return out


# float16 takes the op's generic form (the same formula, unchunked): rare on the CPU.
sigmoid.dtypes = ("float32", "float64")
sigmoid.takes_out = True  # gc.jit may hand it a dead argument's memory


def sigmoid_grad(y: np.ndarray, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``g * y * (1 - y)`` for ``y`` and ``g`` of one shape and dtype (the op checks); ``out``
    may be either of them."""
    if out is None:
        out = np.empty(y.shape, y.dtype)
    if y.size <= CHUNK:
        _sigmoid_grad_kernel(out, y, g)
    elif out.flags.c_contiguous:
        y, g = np.asarray(y, order="C"), np.asarray(g, order="C")
        _parallel(_sigmoid_grad_kernel, out.reshape(-1), y.reshape(-1), g.reshape(-1))
    else:
        out[...] = sigmoid_grad(y, g)
    return out


sigmoid_grad.takes_out = True


def sum(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``np.sum`` of a float array without its Python wrapper: ``add.reduce`` is what it
    calls, so the same bits, for a few microseconds less per call."""
    return np.add.reduce(x, axis=axis, keepdims=keepdims)


# Integers and booleans: np.sum widens them first (add.reduce of bools is a logical or).
sum.dtypes = ("float32", "float64")


def mean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> Any:
    """``np.mean`` of a float array as what it computes, the sum over the count: the same
    bits, without its Python layers."""
    total = np.add.reduce(x, axis=axis, keepdims=keepdims)
    return total / (x.size // (np.size(total) or 1))  # an empty total: nothing to divide


mean.dtypes = ("float32", "float64")  # np.mean sums float16 in float32


def astype(x: np.ndarray, dtype: Any) -> Any:
    """``np.astype`` (a copy in ``dtype``) through the array's own method: the same array,
    without the function's Python layer."""
    return x.astype(dtype) if type(x) is np.ndarray else np.astype(x, dtype)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The op's own formula, with the reductions as ufunc methods (no Python wrappers) and the
    subtractions in place."""
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


log_softmax.dtypes = ("float32", "float64")
