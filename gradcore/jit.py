"""Layer 4: ``jit``. Record a call once as a flat program of primitive calls; replay it.

Eager gradcore pays for a Box, a Node and a dispatch at every op, forward and backward. For a
training step that runs thousands of times with arrays of one signature, that work gives the
same answer every time, so ``jit`` does it once. The first call runs the function under a
*recording*: an outermost trace whose boxes wrap every input array. Nested traces already
record each op of each trace they see (that is how ``grad(grad(f))`` works), so the
recording's tape ends up holding every primitive call of the forward pass, of the backward
pass (VJP rules are gradcore ops) and of in-place updates, in the order they ran. That tape,
flattened into ``(function, argument slots, output slot)`` steps over one list of slots, is the
program. Later calls with the same signature put their input arrays into the input slots and
run the steps: no boxes, no nodes, no backward pass, the same arithmetic in the same order, so
the same bits on the CPU. Before that, the program is made cheaper without changing what it
computes: what is the same at every call is computed once, what nobody reads is dropped, and
results are written over the memory of arguments that are dead (see ``Program``).

What a program cannot see, it freezes. A Python value read while recording (``float(x)``, an
``if`` on a traced value, a global, a random draw, a NumPy call on a raw array) would be a
constant of the program; reading a traced value in Python is therefore refused while
recording, with an error that says what to do instead. Random numbers drawn inside the
function and globals read by it are not detectable: they are fixed at their recorded values.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from gradcore.backend import (
    PY_SCALARS,
    Fused,
    array_backend,
    backend_of,
    device_scopes,
    on_device_of,
)
from gradcore.pytree import tree_flatten, tree_unflatten
from gradcore.tracer import Box, Node, new_trace, primitive, recordings

__all__ = ["Jitted", "RecordingError", "jit", "update_in_place"]

# Recordings of one function beyond which it warns (once) that a shape keeps changing.
MAX_RECORDINGS = 8


class RecordingError(TypeError):
    """A traced value was read in Python while ``jit`` was recording."""


def jit(
    fun: Callable, static_argnums: int | Sequence[int] = (), *, fallback: bool = False
) -> Jitted:
    """``fun``, recorded once per input signature and replayed without tracing.

    The signature is the pytree structure of the arguments, each array's type, shape, dtype,
    device and strides, the Python values among the leaves, and the values of ``static_argnums``
    (which must be hashable). Python numbers are part of the signature, not inputs: pass a
    0-d array for a number that changes between calls. With ``fallback``, a recording that
    raises is reported once as a warning and ``fun`` runs eagerly from then on (what
    ``gradcore.train.fit`` does).
    """
    return Jitted(fun, static_argnums, fallback)


class Jitted:
    """A jitted function: its programs by signature; ``describe()`` shows what was recorded."""

    def __init__(self, fun: Callable, static_argnums: int | Sequence[int], fallback: bool):
        self.fun = fun
        self.static_argnums = (
            (static_argnums,) if isinstance(static_argnums, int) else tuple(static_argnums)
        )
        self.fallback = fallback
        self.eager = False  # set when a recording failed under ``fallback``
        self.programs: dict[Any, Program] = {}
        self._warned = False
        self._updated_while_recording = False  # by the last recording, even one that failed
        self.__name__ = getattr(fun, "__name__", "fun")
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.eager:
            return self.fun(*args, **kwargs)
        static = tuple((type(args[i]), args[i]) for i in self.static_argnums)
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        arrays: list[Any] = []
        parts: list[Any] = [static]
        try:
            _signature((dynamic, kwargs), arrays, parts)
        except _TracedArgumentError:  # an outer grad traces an argument: join its graph
            return self.fun(*args, **kwargs)
        if not arrays:
            raise RecordingError(
                f"gc.jit({self.__name__}): no argument is an array, so everything it computes "
                "would be a constant of the recorded program; pass the arrays it reads "
                "(parameters, data) as arguments"
            )
        key = tuple(parts)
        try:
            program = self.programs.get(key)
        except TypeError as error:  # a list or an array among static arguments, say
            raise TypeError(
                f"gc.jit({self.__name__}): static arguments and non-array leaves are part of "
                f"the signature and must be hashable: {error}"
            ) from None
        if program is not None:
            if device_scopes:  # a library that launches on a current GPU: enter the arrays'
                with on_device_of(arrays):
                    return program.run(arrays)
            return program.run(arrays)
        try:
            out, self.programs[key] = self._record(args, kwargs)
        except Exception as error:
            # Running fun again eagerly would apply an in-place update a second time.
            if not self.fallback or self._updated_while_recording:
                raise
            out = self.fun(*args, **kwargs)  # a genuine error in fun raises again here
            self.eager = True
            warnings.warn(
                f"gc.jit({self.__name__}): recording failed, running eagerly instead: {error}",
                stacklevel=2,
            )
            return out
        if len(self.programs) > MAX_RECORDINGS and not self._warned:
            self._warned = True
            warnings.warn(self._recompiling_message(), stacklevel=2)
        return out

    def _record(self, args: tuple, kwargs: dict) -> tuple[Any, Program]:
        """Run ``fun`` with every input array boxed in a recording; build its program."""
        dynamic = tuple(a for i, a in enumerate(args) if i not in self.static_argnums)
        leaves, treedef = tree_flatten((dynamic, kwargs))
        self._updated_while_recording = False
        with new_trace(keep_values=True) as (trace, tape):
            recordings[trace] = functools.partial(_refusal, self.__name__)
            try:
                inputs = []
                for position, leaf in enumerate(leaves):
                    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
                        leaves[position] = Box(leaf, trace, Node.leaf(leaf))
                        inputs.append(leaves[position]._node)
                dynamic, kwargs = tree_unflatten(treedef, leaves)
                dynamic = iter(dynamic)
                call = [a if i in self.static_argnums else next(dynamic) for i, a in
                        enumerate(args)]  # fmt: skip
                out = self.fun(*call, **kwargs)
            finally:
                del recordings[trace]
                self._updated_while_recording = any(node.primitive is _update for node in tape)
        out_leaves, out_treedef = tree_flatten(out)
        static = tuple(call[i] for i in self.static_argnums)
        program = Program(self.__name__, inputs, tape, trace, out_leaves, out_treedef, static)
        program.argument_shapes = {
            argnum: tuple(tuple(leaf.shape) for leaf in tree_flatten(arg)[0] if type(leaf) is Box)
            for argnum, arg in enumerate(call)
            if argnum not in self.static_argnums
        }
        # An output the program holds as a constant goes out as a copy, at this call as at
        # every replay: the caller may write into it.
        values = [leaf._value if _recorded(leaf, trace) else _fresh(leaf) for leaf in out_leaves]
        return tree_unflatten(out_treedef, values), program

    def _recompiling_message(self) -> str:
        """Name the argument whose shapes differ between recordings."""
        shapes: dict[int, set] = {}  # argnum -> every shape tuple it was recorded with
        for program in self.programs.values():
            for argnum, seen in program.argument_shapes.items():
                shapes.setdefault(argnum, set()).add(seen)
        changing = [argnum for argnum, seen in shapes.items() if len(seen) > 1]
        if changing:
            few = sorted(shapes[changing[0]])[:4]
            what = f"argument {changing[0]} keeps changing shape ({', '.join(map(str, few))}, ...)"
        else:
            what = "the signature keeps changing (dtypes, memory layouts, devices or Python values)"
        return (
            f"gc.jit({self.__name__}) has recorded {len(self.programs)} programs: {what}. Each "
            "new signature records again; pad to one shape, mark the argument static, or "
            "call the function without jit"
        )

    def describe(self) -> str:
        """Every recorded program: its steps, slots, constants and fused groups."""
        if not self.programs:
            return f"gc.jit({self.__name__}): nothing recorded yet\n"
        return "\n".join(program.describe() for program in self.programs.values())


class _TracedArgumentError(Exception):
    """Raised by ``_signature`` on meeting a box."""


_is_array: dict[type, bool] = {Box: False}


def _signature(tree: Any, arrays: list, key: list) -> None:
    """Collect the arrays of ``tree`` and describe it (structure, array specs, other leaves)
    in ``key``, in one pass: this runs at every call, so it is ``tree_flatten`` made lean."""
    kind = type(tree)
    if kind is dict or (kind not in _is_array and isinstance(tree, dict)):
        key.append(tuple(tree))
        for value in tree.values():
            _signature(value, arrays, key)
    elif (
        kind is list or kind is tuple or (kind not in _is_array and isinstance(tree, (list, tuple)))
    ):
        key.append((kind, len(tree)))
        for value in tree:
            _signature(value, arrays, key)
    elif kind is Box:
        raise _TracedArgumentError
    else:
        is_array = _is_array.get(kind)
        if is_array is None:
            is_array = _is_array[kind] = (
                hasattr(tree, "shape") and hasattr(tree, "dtype") and not isinstance(tree, type)
            )
        if is_array:
            arrays.append(tree)
            # Strides too: whether a reshape is a view or a copy follows the layout, and so do
            # the passes' decisions about which memory a result may be written over.
            strides = getattr(tree, "strides", None)
            key.append((kind, tree.shape, tree.dtype, getattr(tree, "device", None), strides))
        elif kind is float:
            key.append((kind, _bits(tree)))  # tells -0.0 from 0.0 and one nan from another
        else:
            key.append((kind, tree))  # the type too: 1, 1.0 and True are equal keys


def _bits(number: float) -> bytes:
    """A float's IEEE bytes: equal exactly when the floats are the same bits."""
    return struct.pack("<d", number)


def _recorded(value: Any, trace: int) -> bool:
    return type(value) is Box and value._trace == trace


def _refusal(name: str, conversion: str) -> RecordingError:
    return RecordingError(
        f"gc.jit({name}): {conversion} of a traced value while recording. Its value changes "
        "from call to call, but a Python value read now would be frozen into the recorded "
        "program (math functions call float(); if, while, and, or call bool()). Use "
        "gc.where(condition, x, y) for a choice between values, make it a static argument "
        "(gc.jit(fun, static_argnums=...)), or call the function without jit"
    )


# ---------------------------------------------------------------------------------------------
# in-place updates


def _call_in_place(fn: Callable, *args: Any, consumed: tuple[int, ...] = ()) -> None:
    fn(*args)


def _call_with_scratch(fn: Callable, *args: Any) -> None:
    """What a replay runs for an update whose consumed arrays nothing else reads."""
    fn(*args, scratch=True)


_update = primitive(_call_in_place, name="update_in_place")


def update_in_place(fn: Callable, *arrays: Any, consumed: Sequence[int] = ()) -> None:
    """Call ``fn(*arrays)``, which updates some of ``arrays`` in place and returns nothing.

    This is how an optimizer declares its update to ``jit``: while recording, the call is a
    program step that writes into the slots of its arguments, and every replay calls ``fn``
    again with that call's arrays. So the Python inside ``fn`` (a learning-rate schedule, an
    update counter, state loaded from a checkpoint) runs at every step, and is never frozen.

    ``consumed`` are the positions of arrays that ``fn`` only reads but could use as scratch
    memory (the gradients an optimizer applies). Where no later step reads them and no other
    value shares their memory, a replay calls ``fn(*arrays, scratch=True)``: ``fn`` may then
    overwrite them, saving a temporary per array. Eager calls never pass ``scratch``: the
    caller may still hold those arrays.
    """
    if recordings and Box not in map(type, arrays):
        raise RecordingError(
            f"gc.jit: {getattr(fn, '__qualname__', fn)} updates arrays that are not arguments "
            "of the jitted function, so a replay could not update them; pass the parameters "
            "as an argument"
        )
    if consumed:
        _update(fn, *arrays, consumed=tuple(consumed))
    else:
        _update(fn, *arrays)


# ---------------------------------------------------------------------------------------------
# the program

# Faster stand-ins for a primitive's own function, with the same arithmetic: the checks and
# dispatch the primitive does (devices, Python numbers) were done while recording.
_OPERATORS: dict[str, Callable] = {
    "add": operator.add,
    "subtract": operator.sub,
    "multiply": operator.mul,
    "divide": operator.truediv,
    "negative": operator.neg,
    "power": operator.pow,
}
_ARITHMETIC = ("add", "subtract", "multiply", "divide")
# Ops that, given an array first, call the namespace function of their name with their own
# arguments: the step calls that function of the recorded array's namespace.
_NAMESPACE_FUNCTIONS = frozenset(
    ("exp", "log", "sin", "cos", "tanh", "sqrt", "abs", "sum", "mean", "max", "astype", "equal",
     "not_equal", "less", "less_equal", "greater", "greater_equal", "matmul")
)  # fmt: skip


def _lowered(node: Node) -> Callable:
    """The function a step calls: the primitive's own, or a direct equivalent: what its op's
    ``lower`` gives for these arguments, an operator, or a namespace function."""
    prim = node.primitive
    assert prim is not None  # leaves are inputs, not steps
    name, fun = prim.name, prim.fun
    lowered = prim.lower and prim.lower(*node.args, **node.kwargs)
    if lowered:
        return lowered
    if name in _OPERATORS:
        return _OPERATORS[name]
    if name in _NAMESPACE_FUNCTIONS and type(node.args[0]) not in PY_SCALARS:
        return getattr(array_backend(node.args[0]).xp, name)
    if name == "transpose" and len(node.args) == 1 and getattr(node.args[0], "ndim", 0) == 2:
        return _matrix_transpose
    return fun


_matrix_transpose = operator.attrgetter("T")  # a view, as permute_dims makes, minus the calls


def _nothing() -> None:
    """The step that clears a slot after its last reader: ``slots[s] = _nothing()``."""


def _getter(slots: tuple[int, ...]) -> Callable[[list], Sequence]:
    """``slots -> (values...)`` in C: itemgetter of one index returns the item, not a tuple,
    so one argument is read as a one-element slice."""
    if len(slots) == 1:
        return operator.itemgetter(slice(slots[0], slots[0] + 1))
    if not slots:
        return operator.itemgetter(slice(0, 0))
    return operator.itemgetter(*slots)


_NO_ARGUMENTS = _getter(())

# A dead slot is cleared by a step of its own only if its array has more elements than this;
# a small one waits until its run-time slot is reused (or the run ends).
SMALL = 4096

# Constants computed while recording are kept up to this many elements: a larger one (the
# ones_like of a big array, say) is recomputed at each call rather than held for good.
FOLDED_SIZE_LIMIT = 1 << 16


class Step:
    """One call of the program, as recorded (``Program._compile`` lowers it to a tuple)."""

    __slots__ = ("name", "fun", "args", "kwargs", "out", "in_place", "primitive", "over",
                 "scratch")  # fmt: skip

    def __init__(self, name, fun, args, kwargs, out, in_place=False, primitive=None) -> None:
        self.name, self.fun, self.args, self.kwargs, self.out = name, fun, args, kwargs, out
        self.in_place = in_place  # an update_in_place call: writes into its arguments
        self.primitive = primitive  # the op it calls (None for a fused kernel)
        self.over = None  # the argument slot whose memory the result is written over, if any
        self.scratch = ()  # for an update: the consumed slots it may overwrite


class Program:
    """A flat list of steps over numbered slots: inputs first, then constants and results.

    ``template`` has one slot per recorded value (what ``describe`` shows) and holds the
    constants, everything a step reads that is not computed from the inputs; ``specs`` keeps
    each array slot's (shape, dtype), never the arrays. The steps are made cheaper without
    changing a bit of what they compute: each op is called through its ``lower`` form
    (``_lowered``), steps whose result is the same at every call become constants
    (``_fold_constants``), steps whose result nobody reads go (``_drop_unread``), and a result
    is written over the memory of a dead argument that shares it with nothing (``_over``; an
    update may use the gradients it consumes as scratch, ``_scratch``). ``_compile`` maps the
    slots onto fewer run-time slots (``initial``, reused like registers); a run copies those,
    binds the inputs, runs each step and frees each slot after its last reader, so
    intermediate arrays are freed as early as eagerly.
    """

    def __init__(self, name, inputs, tape, trace, out_leaves, out_treedef, static) -> None:
        self.name, self.static, self.n_inputs = name, static, len(inputs)
        # argnum -> the shapes of its arrays when recorded (set by Jitted, for its warning)
        self.argument_shapes: dict[int, tuple[tuple[int, ...], ...]] = {}
        slot_of = {node: i for i, node in enumerate(inputs)}
        self.template: list[Any] = [None] * len(inputs)
        self.specs: list[tuple | None] = [_spec(node.ans) for node in inputs]
        self.steps: list[Step] = []
        self.constants: set[int] = set()
        # Every slot's value while recording: what the passes read; dropped once compiled.
        recorded: dict[int, Any] = {i: node.ans for i, node in enumerate(inputs)}

        def constant(value: Any) -> int:
            if type(value) is Box:
                raise RecordingError(
                    f"gc.jit({name}): the function uses a value traced outside it (a closure "
                    "over a value an outer grad is differentiating); pass it as an argument"
                )
            self.constants.add(len(self.template))
            recorded[len(self.template)] = value
            return self._new_slot(value, _spec(value))

        for node in tape:
            parents = dict(node.parents)
            args = tuple(
                slot_of[parents[argnum]] if argnum in parents else constant(value)
                for argnum, value in enumerate(node.args)
            )
            slot_of[node] = self._new_slot(None, _spec(node.ans))
            recorded[slot_of[node]] = node.ans
            prim = node.primitive
            if prim is _update:
                fn_name = getattr(node.args[0], "__qualname__", repr(node.args[0]))
                step = Step(fn_name, prim.fun, args, node.kwargs, slot_of[node], in_place=True)
            else:
                step = Step(prim.name, _lowered(node), args, node.kwargs, slot_of[node],
                            primitive=prim)  # fmt: skip
            self.steps.append(step)
        if any(callable(leaf) for leaf in out_leaves):
            raise RecordingError(
                f"gc.jit({name}) returns a function (vjp's, say): a replay would return the one "
                "made while recording; jit a function that calls it instead"
            )
        self.outputs = tuple(  # a constant output is held by reference, copied at each call
            slot_of[leaf._node] if _recorded(leaf, trace) else constant(leaf) for leaf in out_leaves
        )
        self.recorded_steps = len(self.steps)
        self._fold_constants(recorded)
        self._drop_unread()
        backend = backend_of(inputs[0].ans) if inputs else None
        self.device = backend.device if backend else None
        # A backend that fuses elementwise steps (``gradcore.backend.Fuser``) writes Python
        # numbers into its kernels: they stay numbers there.
        fuse = getattr(backend, "fuse", None)
        if fuse is None:
            self._type_numbers(recorded)
        # Outputs that are constants of the program (the zero gradient of an unused argument):
        # each call returns its own copy, as an eager call would, so writing into one is safe.
        self.copied_outputs = tuple(
            position
            for position, slot in enumerate(self.outputs)
            if slot in self.constants and self.specs[slot] is not None
        )
        self.out_treedef = out_treedef
        self.groups: list[tuple[int, ...]] = []  # the indices of the steps each kernel replaces
        self._compile(self.fused_steps(fuse(self) if fuse else None), recorded)

    def fused_steps(self, fused: list[Fused] | None) -> list[Step]:
        """``steps`` with the steps of each fused kernel replaced by one call of it (its
        ``groups`` recorded for ``describe``). A kernel with several outputs returns a tuple:
        it goes into a new slot, and one step per output takes its item out."""
        self.groups = [kernel.steps for kernel in fused or ()]
        first = {kernel.steps[0]: kernel for kernel in fused or ()}
        skipped = {index for group in self.groups for index in group}
        steps = []
        for index, step in enumerate(self.steps):
            kernel = first.get(index)
            if kernel is None:
                if index not in skipped:
                    steps.append(step)
            elif len(kernel.outputs) == 1:
                steps.append(Step(kernel.name, kernel.fun, kernel.inputs, {}, kernel.outputs[0]))
            else:
                both = self._new_slot(None, None)
                steps.append(Step(kernel.name, kernel.fun, kernel.inputs, {}, both))
                steps += [
                    Step("item", operator.itemgetter(k), (both,), {}, slot)
                    for k, slot in enumerate(kernel.outputs)
                ]
        return steps

    def _new_slot(self, value: Any, spec: tuple | None) -> int:
        self.template.append(value)
        self.specs.append(spec)
        return len(self.template) - 1

    def _fold_constants(self, recorded: dict[int, Any]) -> None:
        """Steps whose result is the same at every call become constants, their recorded value:
        shape-only ops (``ones_like``, the seed of backward) and steps reading only values that
        cannot change (``_unchanging``) and other folded results.

        Not folded: results an in-place update is handed (it may write into them) and arrays
        over ``FOLDED_SIZE_LIMIT`` elements (cheaper to recompute than to hold).
        """
        handed_to_updates = {slot for step in self.steps if step.in_place for slot in step.args}
        # What a folded step may read: values that cannot change, and folded results. An array
        # the function closes over (alone or in an index tuple) is held by reference, and may
        # change in place between calls.
        fixed = {slot for slot in self.constants if _unchanging(self.template[slot])}
        kept = []
        for step in self.steps:
            value = recorded[step.out]
            if (
                not step.in_place
                and (step.primitive.shape_only or fixed.issuperset(step.args))
                and all(map(_unchanging, step.kwargs.values()))
                and step.out not in handed_to_updates
                and (self.specs[step.out] is None or (value.size or 0) <= FOLDED_SIZE_LIMIT)
            ):
                self.constants.add(step.out)
                fixed.add(step.out)
                self.template[step.out] = _fresh(value)  # the recording call returns value
            else:
                kept.append(step)
        self.steps = kept

    def _type_numbers(self, recorded: dict[int, Any]) -> None:
        """A Python number that an arithmetic step combines with a floating-point array of the
        result's dtype becomes a 0-d array of that dtype, once. NumPy 2 casts the number to
        the array's dtype anyway, so the arithmetic is the same; the conversion is not
        repeated at every call (on a small array it costs more than the arithmetic)."""
        typed: dict[tuple, int] = {}  # (type, value or bits, dtype) -> its slot
        for step in self.steps:
            # Not power: NumPy has paths of its own for number exponents (x ** 2 as a square)
            # that an array exponent would not take.
            if step.primitive is None or step.primitive.name not in _ARITHMETIC:
                continue
            result = recorded[step.out]
            spec = self.specs[step.out]
            if (
                spec is None
                or spec[0] == ()  # NumPy scalars take scalar arithmetic, not the ufunc's
                or "float" not in spec[1]  # NumPy names it float32, array-api-strict too, prefixed
                or all(self.specs[slot] != spec for slot in step.args)
            ):  # no floating array of the result's dtype among the arguments
                continue
            args = list(step.args)
            for position, slot in enumerate(args):
                value = self.template[slot]
                if slot not in self.constants or type(value) not in (int, float):
                    continue
                key = (type(value), _bits(value) if type(value) is float else value, spec[1])
                if key not in typed:
                    backend = array_backend(result)
                    if abs(value) > backend.xp.finfo(result.dtype).max:
                        continue  # overflows the dtype: left to the library, as eagerly
                    number = backend.asarray(value, dtype=result.dtype)
                    self.constants.add(len(self.template))
                    typed[key] = self._new_slot(number, ((), spec[1]))
                    recorded[typed[key]] = number
                args[position] = typed[key]
            step.args = tuple(args)

    def _drop_unread(self) -> None:
        """Steps whose result no later step reads and the program does not return: the forward
        value of a function whose gradient alone is returned, say."""
        read = set(self.outputs)
        kept = []
        for step in reversed(self.steps):
            if step.in_place or step.out in read:
                read.update(step.args)
                kept.append(step)
        self.steps = kept[::-1]

    def _compile(self, steps: list[Step], recorded: dict[int, Any] | None = None) -> None:
        """The replay's tuples, ``(function, getter, output slot)``.

        Results are given slots like registers: a step writes its result into the slot of
        an argument it is the last to read, so that one store both keeps the new array and
        frees the old one (and where the op can, into that argument's memory: ``_over``).
        Other slots whose last reader this is are cleared right after it by a step of their
        own that stores None (cheaper than checking every step for slots to clear), if their
        array is larger than ``SMALL``. Inputs, constants and outputs keep their own slots.
        Without the ``recorded`` values, no result is written over an argument.
        """
        last_read = {}
        for index, step in enumerate(steps):
            for slot in step.args:
                last_read[slot] = index
        fixed = sorted(set(range(self.n_inputs)) | self.constants)  # inputs first: 0..n-1
        pinned = set(fixed) | set(self.outputs)
        where = {slot: run_slot for run_slot, slot in enumerate(fixed)}  # recorded -> run
        self.initial = [self.template[slot] for slot in fixed]
        free: list[int] = []  # run slots that hold nothing
        compiled = []
        written_at = {step.out: index for index, step in enumerate(steps)}
        for index, step in enumerate(steps):
            args = tuple(where[slot] for slot in step.args)
            dead = [slot for slot in dict.fromkeys(step.args)
                    if last_read[slot] == index and slot not in pinned]  # fmt: skip
            dead.sort(key=lambda slot: written_at.get(slot, -1), reverse=True)
            fun, order = self._over(step, index, dead, recorded, last_read, pinned)
            if order is not None:  # the form that writes over an argument takes them so
                args = tuple(args[i] for i in order)
            dying = {slot: where.pop(slot) for slot in dead if slot != step.over}  # -> run slot
            if step.over is not None:
                out = where.pop(step.over)
            elif step.out not in pinned and dying:
                out = dying.pop(next(reversed(dying)))
            elif free:
                out = free.pop()
            else:
                out = len(self.initial)
                self.initial.append(None)
            if step.out not in last_read and step.out not in pinned:
                dying[step.out] = out  # never read: dropped at once
            else:
                where[step.out] = out
            free += dying.values()
            if step.kwargs and not step.in_place:  # an update's are for ``_scratch`` alone
                fun = functools.partial(fun, **step.kwargs)
            compiled.append((fun, _getter(args), out))
            compiled += [(_nothing, _NO_ARGUMENTS, run_slot) for slot, run_slot in dying.items()
                         if self._size(slot) > SMALL]  # fmt: skip
        while compiled and compiled[-1][0] is _nothing:  # the slots go with the run anyway
            compiled.pop()
        self.compiled = tuple(compiled)
        self.get_outputs = _getter(tuple(where[slot] for slot in self.outputs))

    def _size(self, slot: int) -> int:
        """Elements of the array in ``slot`` (0 for a Python value)."""
        spec = self.specs[slot]
        return 0 if spec is None else math.prod(n or 0 for n in spec[0])

    def _over(self, step, index, dead, recorded, last_read, pinned) -> tuple[Callable, Any]:
        """The function ``step`` runs and the order of its arguments (None: as recorded): its
        own, or its op's form that writes the result over a dead argument (``step.over``),
        where that argument's array has the result's shape and dtype, owns its memory and
        shares none of it with a value still in use.

        ``dead`` comes latest-written first, and the first that qualifies is taken: memory
        written last is the likeliest to be in this core's cache, where a value computed long
        before (a forward activation, in backward) has since been read by a product's BLAS
        workers on the other cores. (On the README's 2-core VM, in its slow state, the
        sigmoid's derivative at batch 1024 took 120 us written over the activation and 35 us
        written over the cotangent.)"""
        step.over, step.scratch = None, ()
        if step.in_place:
            return self._scratch(step, index, dead, recorded, last_read, pinned), None
        into_argument = getattr(step.primitive, "into_argument", None)
        if into_argument is None or step.kwargs or recorded is None:
            return step.fun, None
        if self.specs[step.out] is None or self.specs[step.out][0] == ():
            return step.fun, None  # a 0-d result: nothing to save, and scalars have own rules
        for slot in dead:
            argnum = step.args.index(slot)
            if self.specs[slot] is None or self.specs[slot] != self.specs[step.out]:
                continue
            form = into_argument(argnum, *(recorded[s] for s in step.args))
            if form is not None and _overwritable(slot, index, recorded, last_read, pinned):
                step.over = slot
                return form
        return step.fun, None

    def _scratch(self, step, index, dead, recorded, last_read, pinned) -> Callable:
        """An in-place update's call: with ``scratch=True`` when every array it consumes is
        dead after it, appears once, owns its memory and shares none with a value in use."""
        consumed = [step.args[1 + position] for position in step.kwargs.get("consumed", ())]
        if not consumed or recorded is None or len(set(consumed)) < len(consumed):
            return step.fun
        if any(self.specs[slot] is None for slot in consumed):  # Python numbers
            return step.fun
        if not all(slot in dead and _overwritable(slot, index, recorded, last_read, pinned)
                   for slot in consumed):  # fmt: skip
            return step.fun
        step.scratch = tuple(consumed)
        return _call_with_scratch

    def run(self, inputs: list[Any]) -> Any:
        """Replay: bind the inputs, run every step, free each slot after its last reader."""
        slots = self.initial.copy()
        slots[: self.n_inputs] = inputs
        for fun, get, out in self.compiled:
            slots[out] = fun(*get(slots))
        outputs = list(self.get_outputs(slots))
        for position in self.copied_outputs:
            outputs[position] = _fresh(outputs[position])
        return tree_unflatten(self.out_treedef, outputs)

    def describe(self) -> str:
        """The program as text: one line per step, ``s7 = multiply(s3, 1.001)``."""
        grouped = {index: g for g, group in enumerate(self.groups) for index in group}

        def show(slot: int) -> str:
            value = self.template[slot]
            if slot not in self.constants:
                return f"s{slot}"
            spec = self.specs[slot]
            if spec is None:
                return repr(value)
            if spec[0] == ():  # a number of that dtype
                return f"{spec[1]}({(float if 'float' in spec[1] else int)(value)!r})"
            return f"const {_show_spec(spec)}"

        inputs = ", ".join(f"s{i}: {_show_spec(self.specs[i])}" for i in range(self.n_inputs))
        static = f", static {self.static}" if self.static else ""
        lines = [
            f"gc.jit({self.name}) on {self.device}: {len(self.steps)} steps "
            f"({self.recorded_steps} recorded), "
            f"{len(self.template)} slots ({len(self.initial)} at run time), "
            f"{len(self.groups)} fused groups{static}",
            f"  inputs  {inputs}",
        ]
        for index, step in enumerate(self.steps):
            args = ", ".join(show(slot) for slot in step.args[step.in_place :])
            kwargs = "".join(f", {k}={v!r}" for k, v in step.kwargs.items())
            if step.in_place:
                line = f"  {step.name}({args})  # in place"
                if step.scratch:
                    line += f", overwriting {', '.join(f's{slot}' for slot in step.scratch)}"
            else:
                spec = _show_spec(self.specs[step.out])
                line = f"  s{step.out} = {step.name}({args}{kwargs})  # {spec}"
                if step.over is not None:
                    line += f", over s{step.over}"
            if index in grouped:
                line += f"  [fused group {grouped[index]}]"
            lines.append(line)
        lines.append(f"  outputs {', '.join(show(slot) for slot in self.outputs)}")
        return "\n".join(lines) + "\n"


def _unchanging(value: Any) -> bool:
    """Whether a constant cannot change between calls: a number, a string, None, a dtype, or a
    slice or tuple of such; not an array, nor a container that could hold or become one."""
    if type(value) is tuple:
        return all(map(_unchanging, value))
    if type(value) is slice:
        return all(map(_unchanging, (value.start, value.stop, value.step)))
    return _spec(value) is None and not isinstance(value, (list, dict, set, bytearray))


def _overwritable(slot: int, index: int, recorded: dict, last_read: dict, pinned: set) -> bool:
    """Whether step ``index`` may write over the array in ``slot``: the backend, looking at the
    recorded arrays, finds it owns its memory and shares none with any value read from this
    step on (the step's other arguments included), nor with inputs, constants or outputs."""
    in_use = [value for other, value in recorded.items() if other != slot and (
        last_read.get(other, -1) >= index or other in pinned)]  # fmt: skip
    return array_backend(recorded[slot]).may_overwrite(recorded[slot], in_use)


def _fresh(value: Any) -> Any:
    """A copy of an array; a Python value, or a NumPy scalar (immutable too), as it is."""
    if _spec(value) is None:
        return value
    copy = array_backend(value).xp.asarray(value, copy=True)
    return copy if type(copy) is type(value) else value  # a scalar comes back as an array


def _spec(value: Any) -> tuple | None:
    """(shape, dtype name) of an array; None for anything else."""
    if (
        hasattr(value, "dtype")
        and hasattr(value, "shape")
        and type(value) is not Box
        and not isinstance(value, type)  # np.float64, the class, has them as descriptors
    ):
        return tuple(value.shape), str(value.dtype)
    return None


def _show_spec(spec: tuple | None) -> str:
    return "-" if spec is None else f"{spec[1]}{spec[0]}"
