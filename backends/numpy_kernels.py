"""Fused kernels for the "cpu" device, registered by the ops that own them (``gradcore.ops``).

They are written for memory traffic: NumPy evaluates one operation per pass, so a four-step
formula over a large array reads and writes it four times. Here each formula (the op's own, from
``gradcore.formulas``) runs as NumPy ufunc calls over cache-sized chunks, in place in reused
scratch chunks, so the array crosses main memory once and nothing is allocated; large arrays are
split between the cores, since NumPy releases the GIL inside its loops.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from types import SimpleNamespace
from typing import Any

import numpy as np

from gradcore import formulas
from gradcore.backend import kernel

# Elements per chunk: 128 KiB of float32, so that a chunk's input, output and two scratch
# chunks stay inside a 512 KiB L2 cache while a formula makes its passes over them (on a 1 MiB
# L2, float64 too). Measured over 262144 elements: 8192 is 1.4x slower, 65536 no faster.
CHUNK = 32_768
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


# ---------------------------------------------------------------------------------------------
# formulas as ufunc calls over reused buffers


class _Operands(threading.local):
    """What each thread's runs of the programs read besides the arrays: scratch chunks by
    dtype, allocated on first use and then reused by every program, so that they stay in cache
    (a fresh temporary of a chunk's size is fresh pages), and each program's numbers."""

    def __init__(self) -> None:
        self.chunks: dict[np.dtype, list[np.ndarray]] = {}
        self.operands: dict[tuple, tuple[np.ndarray, ...]] = {}

    def make(self, program: _Program, dtype: np.dtype, shape: tuple[int, ...]) -> tuple:
        """``program``'s numbers as 0-d arrays of ``dtype`` (what NumPy would convert them to,
        once), then its scratch arrays of ``shape``, which holds at most a chunk."""
        chunks = self.chunks.setdefault(dtype, [])
        chunks += [np.empty(CHUNK, dtype) for _ in range(program.scratch - len(chunks))]
        if len(self.operands) >= 256:  # a program that keeps changing shapes
            self.operands.clear()
        size = math.prod(shape)
        numbers = tuple(np.asarray(number, dtype) for number in program.numbers)
        scratch = tuple(c[:size].reshape(shape) for c in chunks[: program.scratch])
        self.operands[program, dtype, shape] = numbers + scratch
        return numbers + scratch


_OPERANDS = _Operands()


class _Node:
    """A value of a formula being traced: an argument (``ufunc`` is None, ``args`` its index),
    or a ufunc applied to ``args`` (nodes and Python numbers)."""

    __slots__ = ("ufunc", "args")

    def __init__(self, ufunc: np.ufunc | None, args: tuple) -> None:
        self.ufunc, self.args = ufunc, args

    def __add__(self, other: Any) -> _Node:
        return _Node(np.add, (self, other))

    def __radd__(self, other: Any) -> _Node:
        return _Node(np.add, (other, self))

    def __sub__(self, other: Any) -> _Node:
        return _Node(np.subtract, (self, other))

    def __rsub__(self, other: Any) -> _Node:
        return _Node(np.subtract, (other, self))

    def __mul__(self, other: Any) -> _Node:
        return _Node(np.multiply, (self, other))

    def __rmul__(self, other: Any) -> _Node:
        return _Node(np.multiply, (other, self))

    def __truediv__(self, other: Any) -> _Node:
        return _Node(np.divide, (self, other))

    def __rtruediv__(self, other: Any) -> _Node:
        return _Node(np.divide, (other, self))

    def __pow__(self, other: Any) -> _Node:
        return _Node(np.power, (self, other))

    def __rpow__(self, other: Any) -> _Node:
        return _Node(np.power, (other, self))

    def __neg__(self) -> _Node:
        return _Node(np.negative, (self,))

    def __lt__(self, other: Any) -> _Node:
        return _Node(np.less, (self, other))

    def __le__(self, other: Any) -> _Node:
        return _Node(np.less_equal, (self, other))

    def __gt__(self, other: Any) -> _Node:
        return _Node(np.greater, (self, other))

    def __ge__(self, other: Any) -> _Node:
        return _Node(np.greater_equal, (self, other))


def _function(ufunc: np.ufunc) -> Callable[..., _Node]:
    return lambda *args: _Node(ufunc, args)


# The names a formula may use, as the ufuncs they trace to. A comparison writes 1 or 0 in the
# formula's float type (as the CUDA kernels store a condition), so ``astype`` has nothing to do.
_TRACE = SimpleNamespace(
    **{name: _function(getattr(np, name)) for name in ("exp", "log", "sin", "cos", "tanh", "sqrt")},
    abs=_function(np.absolute),
    maximum=_function(np.maximum),
    minimum=_function(np.minimum),
    result_type=lambda *values: None,
    astype=lambda value, dtype: value,
)


class _Program:
    """A formula (``gradcore.formulas``) as NumPy ufunc calls over buffers, traced once.

    Tracing runs the formula on placeholders that record each operation as one ufunc call.
    Each call writes into a buffer chosen by liveness: the buffer of an operand read for the
    last time (in place), else a free scratch chunk; the last call writes into ``out``. A chunk
    then costs one ufunc call per operation of the formula and allocates nothing. ``steps``
    write ``out`` by the last call only, after every input has been read, so ``out`` may be an
    input; ``steps_through_out`` use it as a scratch chunk from the first call, which is faster
    for a large array (its output crosses main memory in the first pass, not with the last
    pass's inputs), where ``out`` is none of the inputs. Calling the program picks them.
    """

    def __init__(self, formula: Callable[..., Any], arity: int) -> None:
        result = formula(_TRACE, *(_Node(None, (k,)) for k in range(arity)))
        if not isinstance(result, _Node) or result.ufunc is None:
            raise TypeError(f"{formula.__name__}: a NumPy kernel's formula ends in an operation")
        order: list[_Node] = []  # each call once, after the calls it reads

        def visit(node: _Node) -> None:
            if node.ufunc is not None and node not in order:
                for arg in node.args:
                    if isinstance(arg, _Node):
                        visit(arg)
                order.append(node)

        visit(result)
        # The slots of a run: the inputs, out, the formula's numbers, then the scratch chunks.
        self.numbers = tuple(a for node in order for a in node.args if not isinstance(a, _Node))
        self.steps, scratch = self._plan(order, arity, out_is_free=False)
        self.steps_through_out, scratch_through_out = self._plan(order, arity, out_is_free=True)
        self.scratch = max(scratch, scratch_through_out)  # chunks a run needs

    def _plan(self, order: list[_Node], arity: int, out_is_free: bool) -> tuple[list, int]:
        """Each call as (ufunc, operand slots, None for a unary ufunc, result slot), and how
        many scratch chunks they use."""
        number_slots = iter(range(arity + 1, arity + 1 + len(self.numbers)))
        first_scratch = arity + 1 + len(self.numbers)
        scratch_slots = itertools.count(first_scratch)
        last_read = {arg: step for step, node in enumerate(order) for arg in node.args}
        slots: dict[_Node, int] = {}  # of each call's result
        free = [arity] if out_is_free else []
        steps = []
        for step, node in enumerate(order):
            operands = tuple(
                next(number_slots) if not isinstance(arg, _Node)
                else arg.args[0] if arg.ufunc is None else slots[arg]
                for arg in node.args
            )  # fmt: skip
            for arg in dict.fromkeys(node.args):  # calls read for the last time: free
                if arg in slots and last_read[arg] == step:
                    free.append(slots[arg])
            if step == len(order) - 1:  # the result
                slots[node] = arity
            else:  # the operand read last (in place), else a free buffer, else a fresh one
                slots[node] = free.pop() if free else next(scratch_slots)
            steps.append((node.ufunc, *operands, *(None,) * (2 - len(operands)), slots[node]))
        return steps, next(scratch_slots) - first_scratch

    def __call__(self, out: np.ndarray | None, *inputs: np.ndarray) -> np.ndarray:
        """The formula of ``inputs`` (of one shape) into ``out``, which may be one of them,
        or into a new array; large arrays in chunks split between the cores."""
        if out is None:
            out, out_is_free = np.empty(inputs[0].shape, np.result_type(*inputs, 0.5)), True
        else:  # the check pays off from beyond a chunk of float32 (128 KiB), not below
            out_is_free = out.nbytes > 4 * CHUNK and _shares_no_memory(out, inputs)
        if out.size <= CHUNK:  # one chunk, as it is: a training step's activations, mostly
            self.run(out, inputs, out_is_free)
        elif out.flags.c_contiguous:  # the chunks are views of the flattened arrays
            flat = [np.asarray(a, order="C").reshape(-1) for a in inputs]
            _parallel(partial(self.run_chunks, out_is_free=out_is_free), out.reshape(-1), *flat)
        else:
            out[...] = self(None, *inputs)
        return out

    def run_chunks(self, out: np.ndarray, *inputs: np.ndarray, out_is_free: bool) -> None:
        """``run`` over 1-D arrays of one size, chunk by chunk."""
        for lo in range(0, out.size, CHUNK):
            self.run(out[lo : lo + CHUNK], [a[lo : lo + CHUNK] for a in inputs], out_is_free)

    def run(self, out: np.ndarray, inputs: Any, out_is_free: bool) -> None:
        """The formula of ``inputs`` into ``out``: arrays of one shape, at most a chunk."""
        operands = _OPERANDS.operands.get((self, out.dtype, out.shape))
        if operands is None:
            operands = _OPERANDS.make(self, out.dtype, out.shape)
        slots = (*inputs, out, *operands)
        for ufunc, a, b, result in self.steps_through_out if out_is_free else self.steps:
            if b is None:  # plain calls: NumPy's fast path for arguments
                ufunc(slots[a], out=slots[result])
            else:
                ufunc(slots[a], slots[b], out=slots[result])


def _shares_no_memory(out: np.ndarray, inputs: tuple[np.ndarray, ...]) -> bool:
    """Whether ``out`` may serve as scratch. gc.jit hands an input itself: identity finds it
    before any bounds are compared."""
    for a in inputs:
        if a is out:
            return False
    return not any(np.may_share_memory(out, a) for a in inputs)


_SIGMOID = _Program(formulas.sigmoid, 1)
_SIGMOID_GRAD = _Program(formulas.sigmoid_grad, 2)


# float16 takes the op's generic form (the same formula, unchunked): rare on the CPU; gc.jit
# may hand the kernel a dead argument's memory as ``out``.
@kernel(dtypes=("float32", "float64"), takes_out=True)
def sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + e^-x)`` into ``out`` (which may be ``x`` itself) or a new array."""
    return _SIGMOID(out, x)


@kernel(takes_out=True)
def sigmoid_grad(y: np.ndarray, g: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``g * y * (1 - y)`` for ``y`` and ``g`` of one shape and dtype (the op checks); ``out``
    may be either of them."""
    return _SIGMOID_GRAD(out, y, g)


# Integers and booleans: np.sum widens them first (add.reduce of bools is a logical or).
@kernel(dtypes=("float32", "float64"))
def sum(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """``np.sum`` of a float array without its Python wrapper: ``add.reduce`` is what it
    calls, so the same bits, for a few microseconds less per call."""
    return np.add.reduce(x, axis=axis, keepdims=keepdims)  # type: ignore[call-overload]


@kernel(dtypes=("float32", "float64"))  # np.mean sums float16 in float32
def mean(x: np.ndarray, axis: Any = None, keepdims: bool = False) -> Any:
    """``np.mean`` of a float array as what it computes, the sum over the count: the same
    bits, without its Python layers."""
    total = np.add.reduce(x, axis=axis, keepdims=keepdims)  # type: ignore[call-overload]
    return total / (x.size // (np.size(total) or 1))  # an empty total: nothing to divide


def astype(x: np.ndarray, dtype: Any) -> Any:
    """``np.astype`` (a copy in ``dtype``) through the array's own method: the same array,
    without the function's Python layer."""
    return x.astype(dtype) if type(x) is np.ndarray else np.astype(x, dtype)


@kernel(dtypes=("float32", "float64"))
def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """The op's own formula, with the reductions as ufunc methods (no Python wrappers) and the
    subtractions in place."""
    shifted = x - np.maximum.reduce(x, axis=axis, keepdims=True)
    shifted -= np.log(np.add.reduce(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


@kernel(dtypes=("float32", "float64"))
def relu_grad(y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``where(y > 0, g, 0)`` without ``where`` (several times slower on masks of mixed signs):
    ``g``'s bits ANDed with all ones where ``y > 0``, all zeros (+0.0) elsewhere: the same bits."""
    bits = np.dtype(f"int{8 * g.itemsize}")
    mask = np.empty(g.shape, bits)
    np.subtract(0, np.greater(y, 0.0), out=mask)  # -1 (every bit set) where y > 0, else 0
    return np.bitwise_and(g.view(bits), mask, out=mask).view(g.dtype)
