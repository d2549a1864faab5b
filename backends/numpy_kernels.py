"""Fused kernels for the "cpu" device, registered by the ops that own them (``gradcore.ops``).

They are written for memory traffic: NumPy evaluates one operation per pass, so a four-step
formula over a large array reads and writes it four times. Here each formula (the op's own, from
``gradcore.formulas``) runs as NumPy ufunc calls over cache-sized chunks, in place in reused
scratch chunks, so the array crosses main memory once and nothing is allocated; large arrays are
split between the cores, since NumPy releases the GIL inside its loops.

Where a C compiler runs (``$CC``, else ``cc``), large arrays go further: each run of a formula's
exactly rounded operations (arithmetic, comparisons, selections) becomes one loop of host C,
compiled once per user (``host_compiler``), so that it makes one pass where NumPy makes one per
operation, and only the transcendental functions (``exp``) stay NumPy's vectorised ufuncs. The C
computes each operation as NumPy does, in the array's own type and in the same order (no fused
multiply-add), so both paths give the same bits; ``GRADCORE_CPU_COMPILE=0`` keeps to NumPy.
The SGD update is one such loop too.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import operator
import os
import re
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache, partial
from types import SimpleNamespace
from typing import Any

import numpy as np
from gradcore.backends import host_compiler

from gradcore import formulas
from gradcore.backend import kernel

# Elements per chunk: 128 KiB of float32, so that a chunk's input, output and two scratch
# chunks stay inside a 512 KiB L2 cache while a formula makes its passes over them (on a 1 MiB
# L2, float64 too). Measured over 262144 elements: 8192 is 1.4x slower, 65536 no faster.
CHUNK = 32_768
# Below this many elements one thread is as fast: a hand-off to another thread costs tens of us.
PARALLEL_MIN = 1 << 19
# From this many elements a formula runs its compiled loops: below, NumPy's calls cost no more
# than the checks and the ctypes call (a microsecond or two).
COMPILED_MIN = 1 << 12


@cache
def _pool() -> tuple[ThreadPoolExecutor | None, int]:
    """Helpers for every usable core but the caller's, started on first need (not at import)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    if cores == 1:
        return None, 1
    return ThreadPoolExecutor(cores - 1, "gradcore"), cores


def _parallel(kernel: Callable[..., object], out: np.ndarray, *inputs: np.ndarray) -> None:
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
        self.whole: dict[tuple, list[np.ndarray]] = {}  # by (dtype, shape)

    def whole_scratch(self, dtype: np.dtype, shape: tuple[int, ...], count: int) -> list:
        """``count`` scratch arrays of ``shape`` for the compiled form, which runs over whole
        arrays; shared by every program, as the chunks are."""
        arrays = self.whole.get((dtype, shape))
        if arrays is not None and len(arrays) >= count:
            return arrays
        if arrays is None:
            if len(self.whole) >= 16:  # shapes that keep changing: keep the memory bounded
                self.whole.clear()
            arrays = self.whole[dtype, shape] = []
        arrays += [np.empty(shape, dtype) for _ in range(count - len(arrays))]
        return arrays

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
        self.compiled = _Compiled.of(formula.__name__, order, arity, self.numbers)

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
        fresh = out is None
        if out is None:
            out = np.empty(inputs[0].shape, np.result_type(*inputs, 0.5))
        if (
            self.compiled is not None
            and out.size >= COMPILED_MIN
            and _uniform(out, inputs)
            and self.compiled.calls(out.dtype) is not None
        ):
            if out.size < PARALLEL_MIN:
                if self.compiled.run(out, *inputs):  # False: out starts inside an input
                    return out
            elif _apart(out, inputs):  # each thread's loops would check their chunks alone
                _parallel(self.compiled.run, out.reshape(-1), *(a.reshape(-1) for a in inputs))
                return out
        # Whether out may serve as scratch: the check pays off beyond a chunk of float32.
        out_is_free = fresh or (out.nbytes > 4 * CHUNK and _shares_no_memory(out, inputs))
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


# ---------------------------------------------------------------------------------------------
# runs of exactly rounded operations as loops of host C

COMPILE = os.environ.get("GRADCORE_CPU_COMPILE", "1") != "0"
C_COMPILER = os.environ.get("CC", "cc")
# No fused multiply-add (-ffp-contract=off), no fast math: each operation rounds as NumPy's does.
C_FLAGS = ("-O3", "-shared", "-fPIC", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-w")
C_TYPES = {np.dtype("float32"): "float", np.dtype("float64"): "double"}

# The NumPy operations that C computes with the same bits, in the operands' type: IEEE
# arithmetic, comparisons stored as 1 or 0, and NumPy's maximum and minimum (a NaN operand
# wins; of two equal values, ±0 included, the second). Operands are names or literals.
_C_TEMPLATES: dict[np.ufunc, str] = {
    np.add: "{0} + {1}",
    np.subtract: "{0} - {1}",
    np.multiply: "{0} * {1}",
    np.divide: "{0} / {1}",
    np.negative: "-{0}",
    np.absolute: "fabs({0})",
    np.maximum: "{0} != {0} || {0} > {1} ? {0} : {1}",
    np.minimum: "{0} != {0} || {0} < {1} ? {0} : {1}",
    np.greater: "(T)({0} > {1})",
    np.greater_equal: "(T)({0} >= {1})",
    np.less: "(T)({0} < {1})",
    np.less_equal: "(T)({0} <= {1})",
}


def _c_number(number: Any) -> str:
    """A Python number as a C literal of type T: exact (hexadecimal) for any double."""
    value = float(number)
    if math.isnan(value):
        return "(T)NAN"
    if math.isinf(value):
        return "(T)INFINITY" if value > 0 else "(T)-INFINITY"
    return f"(T){value.hex()}"


# On x86-64, each loop is compiled for AVX-512, AVX2 and the baseline, and the loader picks the
# best the CPU runs (GCC's and Clang's function multiversioning): a library cached in a home
# folder that several machines share still runs on each.
_C_PRELUDE = """#include <math.h>
#include <stddef.h>
#define DATA(type, array) ((type *)*(char **)((char *)(array) + GRADCORE_DATA_OFFSET))
/* Whether two arrays of n elements are the same memory or apart: a loop that reads an element
   of each before it writes it gives NumPy's result then, not where one starts inside the other
   (NumPy buffers such an overlap; the loops decline it, returning 0 before any write). */
#define APART(a, b, n) \
  ((const void *)(a) == (const void *)(b) || (a) + (n) <= (b) || (b) + (n) <= (a))
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define VECTORIZED __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTORIZED
#endif
"""


@cache
def _data_offset() -> int | None:
    """Where an ndarray keeps its data pointer: right after the object's header (NumPy's
    ``PyArrayObject_fields``), checked on an array; None where it is not (not CPython).

    The loops take the arrays themselves (ctypes passes a ``py_object`` as a bare pointer) and
    read the pointer there: asking NumPy for it (``a.ctypes.data``) costs a microsecond per
    array per call, as much as a NumPy pass over a few thousand elements."""
    probe = np.empty(1)
    offset = object.__basicsize__
    found = ctypes.c_void_p.from_address(id(probe) + offset).value
    return offset if found == probe.ctypes.data else None


def build_c(source: str) -> ctypes.CDLL | None:
    """``source`` compiled for the host (``host_compiler``), or None where no compiler runs
    (or ``GRADCORE_CPU_COMPILE=0``); a compiler that refuses the source is reported once."""
    if not COMPILE or _data_offset() is None:
        return None
    folder = host_compiler.cache_root() / "cpu"
    unit = f"#define GRADCORE_DATA_OFFSET {_data_offset()}\n{_C_PRELUDE}{source}"
    try:
        return host_compiler.build(unit, C_COMPILER, C_FLAGS, folder, ".c")
    except host_compiler.NoCompilerError:
        return None
    except (host_compiler.CompileError, OSError) as error:
        warnings.warn(f"gradcore: the CPU kernels run as NumPy calls: {error}", stacklevel=3)
        return None


def compiled_loops() -> str:
    """Who compiles the loops, or why NumPy's calls run instead (``gradcore info``)."""
    if not COMPILE:
        return "off (GRADCORE_CPU_COMPILE=0): NumPy calls"
    version = host_compiler.compiler_version(C_COMPILER)
    if version is None:
        return f"NumPy calls (no C compiler: {C_COMPILER!r} cannot run; set CC)"
    if _data_offset() is None:
        return "NumPy calls (this Python's arrays are not addressable by the loops)"
    return f"compiled by {C_COMPILER} ({version})"


def _apart(out: np.ndarray, inputs: tuple) -> bool:
    """Whether each input is ``out`` itself or shares no memory with it."""
    for a in inputs:  # a loop, not any(): this runs at every call of a kernel
        if a is not out and np.may_share_memory(a, out):
            return False
    return True


def _uniform(out: Any, inputs: tuple) -> bool:
    """Whether a compiled loop may write ``out`` from ``inputs``: ndarrays (the loop reads their
    data pointers) of one shape and dtype, C-contiguous (it walks their elements in order),
    ``out`` writeable. (The loops check for overlaps themselves.)"""
    if type(out) is not np.ndarray:
        return False
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable):
        return False
    dtype, shape = out.dtype, out.shape
    for a in inputs:  # a loop, not all(): this runs at every call of a kernel
        if a is out:
            continue
        if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape:
            return False
        if not a.flags.c_contiguous:
            return False
    return True


class _Compiled:
    """A formula's form for large arrays: each run of two or more ``_C_TEMPLATES`` operations is
    one C loop over whole arrays, the other operations NumPy ufunc calls between them (the
    sigmoid: ``-|x|`` in C, ``exp`` by NumPy, the rest in C: three passes, not seven).

    Values that pass from one unit to another are kept in whole-size scratch arrays, chosen by
    liveness; a loop reads all of an element's operands before it stores its results, so a
    result may go into the memory of an operand read for the last time. The result goes into
    ``out`` by the last unit alone, so ``out`` may be an input."""

    def __init__(self, name: str, units: list[list[_Node]], arity: int, numbers: tuple) -> None:
        self.numbers = numbers
        first_number = arity + 1
        first_scratch = arity + 1 + len(numbers)
        result = units[-1][-1]
        last_read: dict[_Node, int] = {}
        for u, unit in enumerate(units):
            for node in unit:
                for arg in node.args:
                    if isinstance(arg, _Node) and arg.ufunc is not None and arg not in unit:
                        last_read[arg] = u
        slots: dict[_Node, int] = {}
        free: list[int] = []
        scratch = itertools.count(first_scratch)
        numbers_left = iter(range(first_number, first_scratch))
        # each as (ufunc or C function name, operand slots, result slot or None for a loop)
        self.units: list[tuple] = []
        self.sources: list[str] = []
        for u, unit in enumerate(units):
            reads = list(dict.fromkeys(
                arg for node in unit for arg in node.args
                if isinstance(arg, _Node) and arg not in unit
            ))  # fmt: skip
            read_slots = [arg.args[0] if arg.ufunc is None else slots[arg] for arg in reads]
            free += [slots[arg] for arg in reads if arg.ufunc is not None and last_read[arg] == u]
            outputs = [node for node in unit if node is result or last_read.get(node, -1) > u]
            for node in outputs:
                slots[node] = arity if node is result else (free.pop() if free else next(scratch))
            if len(unit) == 1:  # one NumPy call
                (node,) = unit
                operands = [
                    (arg.args[0] if arg.ufunc is None else slots[arg])
                    if isinstance(arg, _Node) else next(numbers_left)
                    for arg in node.args
                ]  # fmt: skip
                self.units.append((node.ufunc, tuple(operands), slots[node]))
            else:
                for node in unit:  # its numbers are literals, but keep the slots in step
                    for arg in node.args:
                        if not isinstance(arg, _Node):
                            next(numbers_left)
                function = f"gradcore_{re.sub(r'[^0-9A-Za-z]', '_', name)}_{u}"
                self.sources.append(_c_loop(function, unit, reads, outputs))
                arrays = (*read_slots, *(slots[n] for n in outputs))
                self.units.append((function, arrays, None))  # called (n, arrays...)
        self.scratch = next(scratch) - first_scratch
        self._calls: dict[np.dtype, list | None] = {}
        self._numbers: dict[np.dtype, tuple] = {}  # as 0-d arrays, for the NumPy calls

    @classmethod
    def of(cls, name: str, order: list[_Node], arity: int, numbers: tuple) -> _Compiled | None:
        """The compiled form of ``order``, or None where it would run no loop of C."""
        units: list[list[_Node]] = []
        for node in order:
            if node.ufunc in _C_TEMPLATES and units and units[-1][-1].ufunc in _C_TEMPLATES:
                units[-1].append(node)
            else:
                units.append([node])
        if all(len(unit) == 1 for unit in units):
            return None
        return cls(name, units, arity, numbers)

    def calls(self, dtype: np.dtype) -> list | None:
        """The units for ``dtype`` as ``(function, operands, result slot)``, ``operands`` picking
        the unit's arrays out of the slots: a C function (built on first use) has no result
        slot, it is called ``(n, arrays...)``. None where no C compiler runs, or for a dtype C
        has no type for."""
        try:
            return self._calls[dtype]
        except KeyError:
            pass
        ctype = C_TYPES.get(dtype)
        library = None if ctype is None else build_c(
            f"#define T {ctype}\n" + "\n".join(self.sources)
        )  # fmt: skip
        calls = None
        if library is not None:
            calls = []
            for function, operands, result in self.units:
                if isinstance(function, str):  # a loop's name: its function in the library
                    function = getattr(library, function)
                    function.restype = ctypes.c_int
                    function.argtypes = [ctypes.c_ssize_t] + [ctypes.py_object] * len(operands)
                calls.append((function, _picker(operands), result))
            self._numbers[dtype] = tuple(np.asarray(number, dtype) for number in self.numbers)
        self._calls[dtype] = calls
        return calls

    def run(self, out: np.ndarray, *inputs: np.ndarray) -> bool:
        """The formula of C-contiguous ``inputs`` of ``out``'s shape and dtype into ``out``;
        False where ``out`` starts inside an input: the last unit alone writes ``out``, and
        its loop declines before it writes (the units before it wrote scratch alone)."""
        dtype = out.dtype
        scratch = _OPERANDS.whole_scratch(dtype, out.shape, self.scratch) if self.scratch else ()
        slots = (*inputs, out, *self._numbers[dtype], *scratch)
        n = out.size
        calls = self._calls[dtype]
        assert calls is not None  # the caller asked calls(dtype) first
        for function, operands, result in calls:
            if result is None:
                if not function(n, *operands(slots)):
                    return False
            else:
                function(*operands(slots), out=slots[result])
        return True


def _picker(slots: tuple[int, ...]) -> Callable[[tuple], tuple]:
    """``values -> (values[k] for k in slots)`` as a tuple, in C: ``itemgetter`` of one index
    returns the item itself, so one slot is picked as a one-element slice."""
    if len(slots) == 1:
        return operator.itemgetter(slice(slots[0], slots[0] + 1))
    return operator.itemgetter(*slots)


def _c_loop(function: str, unit: list[_Node], reads: list[_Node], outputs: list[_Node]) -> str:
    """The C function ``function(n, reads..., outputs...)`` of a unit, one line per operation;
    it returns 1, or 0 having written nothing where an output starts inside an input."""
    names = {node: f"x{k}" for k, node in enumerate(reads)}
    lines = [f"const T x{k} = in{k}[i];" for k in range(len(reads))]
    for k, node in enumerate(unit):
        names[node] = f"v{k}"
        operands = [names[a] if isinstance(a, _Node) else _c_number(a) for a in node.args]
        template = _C_TEMPLATES[node.ufunc]  # type: ignore[index]  # an operation's node
        lines.append(f"const T v{k} = {template.format(*operands)};")
    lines += [f"out{k}[i] = {names[node]};" for k, node in enumerate(outputs)]
    arrays = [f"in{k}" for k in range(len(reads))] + [f"out{k}" for k in range(len(outputs))]
    pointers = [f"const T *in{k} = DATA(const T, in{k}_);" for k in range(len(reads))]
    pointers += [f"T *out{k} = DATA(T, out{k}_);" for k in range(len(outputs))]
    apart = " && ".join(
        f"APART(in{i}, out{o}, n)" for i in range(len(reads)) for o in range(len(outputs))
    )
    body = "\n    ".join(lines)
    return (
        f"VECTORIZED int {function}(ptrdiff_t n, {', '.join(f'void *{a}_' for a in arrays)}) {{\n"
        f"  {' '.join(pointers)}\n"
        f"  if (!({apart})) return 0;\n"
        f"  #pragma GCC ivdep\n"
        f"  for (ptrdiff_t i = 0; i < n; i++) {{\n    {body}\n  }}\n"
        f"  return 1;\n}}\n"
    )


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


_SGD_SOURCE = """
VECTORIZED int gradcore_sgd_update(ptrdiff_t n, void *p_, void *g_, void *v_, T lr, T momentum,
                                   T lr_wd, int decay, int nesterov) {
  T *p = DATA(T, p_), *v = DATA(T, v_);
  const T *g = DATA(const T, g_);
  if (!(APART(p, g, n) && APART(p, v, n) && APART(g, v, n))) return 0;
  for (ptrdiff_t i = 0; i < n; i++) {
    T step = g[i] * lr;
    if (decay) step = step + p[i] * lr_wd;
    const T velocity = v[i] * momentum - step;
    v[i] = velocity;
    p[i] = nesterov ? (p[i] - step) + velocity * momentum : p[i] + velocity;
  }
  return 1;
}
"""


@cache
def _sgd_function(dtype: np.dtype) -> Any:
    """The compiled SGD update for ``dtype`` (float32 or float64), or None without a compiler."""
    library = build_c(f"#define T {C_TYPES[dtype]}\n{_SGD_SOURCE}")
    if library is None:
        return None
    function = library.gradcore_sgd_update
    scalar = ctypes.c_float if dtype == np.float32 else ctypes.c_double
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.c_ssize_t, *[ctypes.py_object] * 3, *[scalar] * 3, ctypes.c_int,
                         ctypes.c_int]  # fmt: skip
    return function


@kernel(dtypes=("float32", "float64"))
def sgd_update(
    param: np.ndarray,
    grad: np.ndarray,
    velocity: np.ndarray,
    learning_rate: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> bool:
    """``gradcore.optim.sgd_update``'s arithmetic, the same operations in the same order, in one
    pass where NumPy makes four or more (and one call where NumPy makes four, so at any size).
    Returns False, and does nothing, for arrays it leaves to NumPy: mixed dtypes or shapes, any
    not C-contiguous, one starting inside another, or where no compiler runs."""
    if not (_uniform(param, (grad, velocity)) and velocity.flags.writeable):
        return False
    function = _sgd_function(param.dtype)
    if function is None:
        return False
    # The loop checks that the three arrays are the same or apart (0: it did nothing).
    return bool(function(param.size, param, grad, velocity,
                         learning_rate, momentum, learning_rate * weight_decay,
                         bool(weight_decay), bool(nesterov)))  # fmt: skip


@kernel(dtypes=("float32", "float64"))
def outer_product(column: np.ndarray, row: np.ndarray) -> np.ndarray:
    """``column @ row`` for an ``(n, 1)`` column and a ``(1, m)`` row, as a broadcast multiply:
    3-4x faster than OpenBLAS's call for 32 to 1024 rows of 256. Plus 0.0, because BLAS adds
    each product to a zero sum (a product of -0 comes out +0): the same bits as ``np.matmul``."""
    out = np.multiply(column, row)
    out += 0.0
    return out


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
