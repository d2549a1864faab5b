"""Layer 2: tracing. Boxes record primitive calls on a tape; the backward pass reads it backwards.

The design is HIPS autograd's. ``grad`` wraps its inputs in ``Box`` objects tagged with a fresh
trace id. A primitive called with boxes unwraps the boxes of the innermost trace, computes
on the raw values, and returns a new box whose ``Node`` remembers the primitive, its inputs and
its output. Because the raw values may themselves be boxes of an outer trace, ``grad(grad(f))``
needs nothing special: each trace only sees its own boxes.

Forward mode (``jvp``) uses the same boxes on a *forward* trace: there each box carries the
tangent of its value (a ``JVPNode``) instead of a node on a tape, and a primitive pushes its
arguments' tangents through its JVP rules as it computes. Nothing is recorded and nothing runs
backwards. The rules are gradcore ops too, so forward and reverse traces nest in any order:
``jvp`` of ``grad`` (a Hessian-vector product) and ``grad`` of ``jvp`` need nothing special
either.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import MethodType
from typing import Any

from gradcore.backend import PY_SCALARS, KernelTable, common_backend, device_scopes, on_device_of

__all__ = [
    "ArraySpec",
    "Box",
    "JVPNode",
    "Node",
    "Nondifferentiable",
    "NotKeptError",
    "Primitive",
    "backward_pass",
    "defjvp",
    "defjvp_argnum",
    "defvjp",
    "defvjp_argnum",
    "getval",
    "new_forward_trace",
    "new_trace",
    "nondifferentiable",
    "primitive",
    "stop_gradient",
]

_trace_ids = itertools.count(1)
# trace id -> the nodes recorded in it, in the order they ran
_tapes: dict[int, Tape] = {}
# gradcore.jit's hook: the trace id of each jit recording in progress -> a function that builds
# the error for reading one of its values in Python (``bool()``, ``float()``...). A recording's
# boxes stand for the inputs of every later call: their values must never become Python
# constants, and they stay boxed where other traces' boxes are unwrapped (``stop_gradient``,
# constant-valued ops), so that what is computed from them is recorded too.
recordings: dict[int, Callable[[str], Exception]] = {}
# the ids of the forward-mode traces in progress: their boxes carry tangents, not tape nodes
_forward_traces: set[int] = set()


class Tape(list):
    """The nodes of one trace, in the order they ran.

    Nodes are appended as they are created, after their inputs, so the tape read backwards is
    a reverse topological order: backward needs no graph search. ``keep_values`` keeps every
    value (for drawing the graph) instead of only what the VJP rules read.
    """

    keep_values = False


@contextmanager
def new_trace(keep_values: bool = False) -> Iterator[tuple[int, Tape]]:
    """A trace id larger than any before it (the innermost trace wins) and its tape."""
    trace = next(_trace_ids)
    tape = Tape()
    tape.keep_values = keep_values
    _tapes[trace] = tape
    try:
        yield trace, tape
    finally:
        del _tapes[trace]


@contextmanager
def new_forward_trace() -> Iterator[int]:
    """A forward-mode trace id, larger than any before it (so it nests with every other trace)."""
    trace = next(_trace_ids)
    _forward_traces.add(trace)
    try:
        yield trace
    finally:
        _forward_traces.discard(trace)


class JVPNode:
    """What a box of a forward trace carries: the tangent of its value (autograd's JVPNode)."""

    __slots__ = ("tangent",)

    def __init__(self, tangent: Any) -> None:
        self.tangent = tangent  # an array (or a Python number) shaped like the value


class Node:
    """One primitive application in the graph: what backward needs to apply its VJPs."""

    __slots__ = ("primitive", "args", "kwargs", "ans", "parents")

    def __init__(
        self,
        primitive: Primitive | None,
        args: Any,
        kwargs: Any,
        ans: Any,
        parents: Sequence[tuple[int, Any]],
    ) -> None:
        self.primitive = primitive  # None for a leaf (an input of grad)
        self.args = args  # raw argument values, as the VJPs receive them
        self.kwargs = kwargs
        self.ans = ans
        self.parents = parents  # [(argnum, parent node)]

    @classmethod
    def leaf(cls, value: Any) -> Node:
        return cls(None, (), {}, value, ())


class NotKeptError(RuntimeError):
    """A VJP rule read a value that its ``defvjp(..., saves=...)`` said backward need not keep."""


class _NotKept:
    """Stands in for a value backward did not keep; any use of it raises ``NotKeptError``.

    Arithmetic, indexing and conversions all fail loudly, so a rule that reads more than its
    ``saves`` declares fails in the op tests instead of computing with something else. (The
    backward pass adds the op's name to the message.)
    """

    __slots__ = ()
    _what = "a value"
    __array_ufunc__ = None  # NumPy and CuPy defer to our operators, which raise
    __hash__ = None  # type: ignore[assignment]

    def _refuse(self, *_: Any, **__: Any) -> Any:
        raise NotKeptError(
            f"a VJP rule read {self._what}, which backward did not keep; declare what the "
            "rules read in defvjp(..., saves=...): 'args', 'ans' or 'both'"
        )

    def __getattr__(self, attribute: str) -> Any:
        self._refuse()

    def __repr__(self) -> str:
        return f"<{self._what}, not kept>"


for _dunder in (
    "add sub mul truediv pow matmul radd rsub rmul rtruediv rpow rmatmul neg abs getitem "
    "bool float int index array eq ne lt le gt ge len iter"
).split():
    setattr(_NotKept, f"__{_dunder}__", _NotKept._refuse)


class _OutputNotKept(_NotKept):
    __slots__ = ()
    _what = "the output (ans)"


OUTPUT_NOT_KEPT = _OutputNotKept()  # what the nodes of ops whose rules never read ans hold


class ArraySpec(_NotKept):
    """What backward keeps of an argument whose rules read only its shape and dtype."""

    __slots__ = ("shape", "dtype", "ndim")
    _what = "an argument's values"

    def __init__(self, value: Any) -> None:
        self.shape, self.dtype, self.ndim = value.shape, value.dtype, value.ndim


class Box:
    """A value being traced. Operators (+, *, @, x[i], ...) are attached by ``gradcore.ops``."""

    __slots__ = ("_value", "_trace", "_node")
    # NumPy and CuPy must not treat a Box as an array: ``ndarray + box`` then falls to
    # Box.__radd__ (both read __array_ufunc__; __array_priority__ is the older protocol).
    __array_ufunc__ = None
    __array_priority__ = 100.0
    __hash__ = None  # type: ignore[assignment]  # == is elementwise, as for arrays

    def __init__(self, value: Any, trace: int, node: Node | JVPNode) -> None:
        self._value = value
        self._trace = trace
        self._node = node

    # A traced Python number has the shape of a 0-d array and, like the number, no dtype.
    shape = property(lambda self: () if type(self._value) in PY_SCALARS else self._value.shape)
    ndim = property(lambda self: len(self.shape))
    dtype = property(lambda self: self._value.dtype)
    size = property(lambda self: self._value.size)

    def __len__(self) -> int:
        return len(self._value)

    def __bool__(self) -> bool:
        return bool(_python_value(self, "bool()"))

    def __float__(self) -> float:
        return float(_python_value(self, "float()"))

    def __int__(self) -> int:
        return int(_python_value(self, "int()"))

    def item(self) -> Any:
        return _python_value(self, ".item()").item()

    def __array__(self, *args: Any, **kwargs: Any) -> Any:  # np.asarray(box), np.mean(box)...
        return _python_value(self, "a NumPy call (np.asarray)").__array__(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Box({self._value!r}, trace={self._trace})"

    def __setitem__(self, index: Any, value: Any) -> None:
        raise TypeError(
            "assignment into a traced value is not supported: the write would be invisible to "
            "the gradient; build a new array instead (gradcore.where, gradcore.concatenate)"
        )


def getval(x: Any) -> Any:
    """The raw value under every level of boxing."""
    while type(x) is Box:
        x = x._value
    return x


def _python_value(box: Box, conversion: str) -> Any:
    """The value under ``box`` for a Python conversion; refused while a jit records it."""
    explain = recordings.get(box._trace)
    if explain is not None:
        raise explain(conversion)
    return box._value


def _unbox_unless_recorded(x: Any) -> Any:
    """The value under every box but a jit recording's, which must stay traced."""
    while type(x) is Box and x._trace not in recordings:
        x = x._value
    return x


# The shapes of the rules hung on a primitive (see defvjp and defjvp).
VJP = Callable[..., Any]  # (g, ans, *args, **kwargs) -> the cotangent of one argument
VJPArgnum = Callable[[int, Any, Any, Any, dict], Any]  # (argnum, g, ans, args, kwargs)
JVP = Callable[..., Any]  # (t, ans, *args, **kwargs) -> one argument's share of the tangent
JVPArgnum = Callable[[int, Any, Any, Any, dict], Any]  # (argnum, t, ans, args, kwargs)


class Primitive:
    """An op that tracing records as one step, and everything the transformations hang on it.

    Calling it computes ``fun`` on raw values. Given boxes, it unwraps those of the innermost
    trace, computes, and records a ``Node`` on that trace's tape (reverse mode), or pushes the
    tangents through its JVP rules (forward mode). Like a function, it binds as a method, so
    it serves directly as a Box operator (``Box.__mul__ = multiply``).
    """

    name: str
    fun: Callable[..., Any]
    # reverse mode, set by defvjp: one rule per positional argument, or one for every argument
    vjps: tuple[VJP | None, ...]
    vjp_argnum: VJPArgnum | None
    saves_args: bool  # what backward keeps of the arguments' values...
    saves_ans: bool  # ... and of the output
    # forward mode, set by defjvp: one rule per positional argument, or one for every argument
    jvps: tuple[JVP | None, ...]
    jvp_argnum: JVPArgnum | None
    kernels: KernelTable  # fused kernels per device, registered with .kernel(device, path)
    # for gc.jit, which computes an op once when it can and reuses dead arguments' memory:
    shape_only: bool  # True: the result depends on the arguments' shapes alone
    # (*args, **kwargs) -> the op's work for such arguments, unchecked, or None
    lower: Callable[..., Callable[..., Any] | None] | None
    # (argnum, *args) -> (function, order): function(*(args[i] for i in order)) is the op,
    # written over argument argnum; or None
    into_argument: Callable[..., tuple[Callable[..., Any], tuple[int, ...]] | None] | None
    # an elementwise op as a function of a namespace m and its arguments (gradcore.formulas),
    # which device code generators evaluate to fuse gc.jit's chains of elementwise ops
    formula: Callable[..., Any] | None

    def __init__(self, fun: Callable[..., Any], name: str | None = None) -> None:
        self.name = name or fun.__name__
        self.fun = self.__wrapped__ = fun
        self.__name__ = self.__qualname__ = self.name
        self.__doc__ = fun.__doc__
        self.vjps, self.vjp_argnum = (), None
        self.saves_args = self.saves_ans = True
        self.jvps, self.jvp_argnum = (), None
        self.kernels = KernelTable(self.name)
        self.shape_only = False
        self.lower = self.into_argument = None
        self.formula = None

    def kernel(self, device: str, path: str) -> None:
        """Use the kernel ``path`` ("module:function") for arrays of ``device``."""
        self.kernels.register(device, path)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        top = 0
        for arg in args:
            if type(arg) is Box and arg._trace > top:
                top = arg._trace
        if not top:
            try:
                if device_scopes:  # a library that launches on a current GPU: enter the arrays'
                    with on_device_of(*args):
                        return self.fun(*args, **kwargs)
                return self.fun(*args, **kwargs)
            except (ValueError, TypeError) as error:
                raise _explain(error, self.name, args) from error

        raw = list(args)
        parents: list[tuple[int, Any]] = []  # (argnum, its Node or JVPNode)
        nested = False  # do the unboxed values still hold boxes of outer traces?
        for argnum, arg in enumerate(args):
            if type(arg) is Box:
                if arg._trace == top:
                    raw[argnum] = value = arg._value
                    parents.append((argnum, arg._node))
                    nested = nested or type(value) is Box
                else:
                    nested = True
        if nested:  # call ourselves, so that the outer traces record this op too
            ans = self(*raw, **kwargs)
        else:
            try:
                if device_scopes:
                    with on_device_of(*raw):
                        ans = self.fun(*raw, **kwargs)
                else:
                    ans = self.fun(*raw, **kwargs)
            except (ValueError, TypeError) as error:
                raise _explain(error, self.name, raw) from error
        if _forward_traces and top in _forward_traces:
            if device_scopes:  # the rules compute on raw tangents too: on the arrays' device
                with on_device_of(*map(getval, (*raw, *(p.tangent for _, p in parents)))):
                    tangent = _push_tangents(self, parents, ans, raw, kwargs)
            else:
                tangent = _push_tangents(self, parents, ans, raw, kwargs)
            return ans if tangent is None else Box(ans, top, JVPNode(tangent))
        saved_ans = ans
        tape = _tapes.get(top)
        if tape is not None and not tape.keep_values:
            # Keep for backward only what the rules read: memory is activations.
            if not self.saves_args:
                for argnum, _ in parents:
                    value = raw[argnum]
                    if type(value) not in PY_SCALARS and (  # a traced number costs nothing
                        type(value) is not Box or type(getval(value)) not in PY_SCALARS
                    ):
                        raw[argnum] = ArraySpec(value)
            if not self.saves_ans:
                saved_ans = OUTPUT_NOT_KEPT
        node = Node(self, raw, kwargs, saved_ans, parents)
        if tape is not None:  # None: a box that outlived its trace, nothing will read this
            tape.append(node)
        return Box(ans, top, node)


def primitive(fun: Callable[..., Any], name: str | None = None) -> Primitive:
    """Make ``fun`` traceable as one step; give it rules with ``defvjp`` and ``defjvp``."""
    return Primitive(fun, name)


def _missing_vjp(name: str, argnum: int) -> NotImplementedError:
    return NotImplementedError(
        f"{name}: no VJP is defined for argument {argnum}; register one with "
        f"gradcore.defvjp({name}, ...), or wrap the argument in stop_gradient"
    )


def _missing_jvp(name: str, argnum: int) -> NotImplementedError:
    return NotImplementedError(
        f"{name}: no JVP (forward-mode rule) is defined for argument {argnum}; register one "
        f"with gradcore.defjvp({name}, ...), or wrap the argument in stop_gradient"
    )


def _push_tangents(prim: Primitive, parents: list, ans: Any, args: list, kwargs: dict) -> Any:
    """The tangent of ``prim``'s output: the sum over its traced arguments of each argument's
    tangent pushed through that argument's JVP rule; None if no rule gives one (a constant).

    The rules see the arguments and the output as they are, boxes of outer traces included,
    so what they compute is traced by those traces (``+`` is gradcore's add on boxes).
    """
    total = None
    for argnum, parent in parents:
        if prim.jvp_argnum is not None:
            tangent = prim.jvp_argnum(argnum, parent.tangent, ans, args, kwargs)
        else:
            if argnum >= len(prim.jvps):
                raise _missing_jvp(prim.name, argnum)
            rule = prim.jvps[argnum]
            if rule is None:  # declared as having no derivative
                continue
            tangent = rule(parent.tangent, ans, *args, **kwargs)
        if tangent is not None:
            total = tangent if total is None else total + tangent
    return total


def _describe(value: Any) -> str:
    value = getval(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{tuple(value.shape)}"
    return type(value).__name__


def _explain(error: Exception, name: str, args: Any) -> Exception:
    """The array library refused an op: say it was arrays of two devices, or name the op and
    its operands.

    The new exception is a plain TypeError or ValueError: library exception classes may take
    other constructor arguments (NumPy's ``UFuncTypeError`` wants dtypes), and the original
    stays attached as ``__cause__``.
    """
    try:
        common_backend(name, *args)  # raises DeviceError if the operands live on two devices
    except TypeError:  # something that is not an array: the original error says more
        pass
    message = str(error)
    if message.startswith(name + "(") or type(error).__module__.startswith("gradcore"):
        return error  # it names the op already, or is gradcore's own (a jit refusal, say)
    described = ", ".join(_describe(a) for a in args)
    kind = TypeError if isinstance(error, TypeError) else ValueError
    return kind(f"{name}({described}): {message}")


# What backward keeps of an op's arguments and output, by the name ``defvjp`` takes.
SAVES = {
    "both": (True, True),  # the rules read argument values and the output
    "args": (True, False),  # argument values only
    "ans": (False, True),  # the output, and only shapes and dtypes of the arguments
    "shapes": (False, False),  # only shapes and dtypes of the arguments
}


def _set_saves(prim: Primitive, saves: str) -> None:
    if saves not in SAVES:
        raise ValueError(
            f"defvjp({prim.name}): saves must be one of {', '.join(map(repr, SAVES))}, "
            f"got {saves!r}"
        )
    prim.saves_args, prim.saves_ans = SAVES[saves]


def defvjp(prim: Primitive, *vjps: VJP | None, saves: str = "both") -> None:
    """Register ``vjp(g, ans, *args, **kwargs)`` for each positional argument, in order.

    ``None`` marks an argument that has no gradient (it is treated as a constant). ``saves``
    says what the rules read, so that backward keeps only that: ``"args"`` (argument values),
    ``"ans"`` (the output), ``"both"``, or ``"shapes"`` (neither: only the arguments' shapes
    and dtypes). An activation that no rule reads is then freed as soon as the forward pass
    is done with it. A rule that reads what ``saves`` left out gets an error naming the op.
    """
    _set_saves(prim, saves)
    prim.vjps = vjps
    prim.vjp_argnum = None


def defvjp_argnum(prim: Primitive, vjp: VJPArgnum, saves: str = "both") -> None:
    """Register one rule ``vjp(argnum, g, ans, args, kwargs)`` for every argument.

    For ops that take any number of arrays (concatenate, stack), where the rule for each
    argument differs only by its position.
    """
    _set_saves(prim, saves)
    prim.vjps = ()
    prim.vjp_argnum = vjp


def defjvp(prim: Primitive, *jvps: JVP | None) -> None:
    """Register ``jvp(t, ans, *args, **kwargs)`` for each positional argument, in order.

    The forward counterpart of ``defvjp``: ``t`` is the tangent of that argument (its shape),
    and the rule returns its contribution to the tangent of the output (the output's shape and
    dtype); the contributions of the arguments are summed. ``None`` marks an argument that has
    no derivative. Nothing needs to be kept: the rule runs as the op does.
    """
    prim.jvps = jvps
    prim.jvp_argnum = None


def defjvp_argnum(prim: Primitive, jvp: JVPArgnum) -> None:
    """Register one forward rule ``jvp(argnum, t, ans, args, kwargs)`` for every argument."""
    prim.jvps = ()
    prim.jvp_argnum = jvp


class Nondifferentiable:
    """An op whose output is constant under tracing (comparisons, argmax): it unboxes its
    arguments and computes. While a jit records, it is recorded as a step all the same."""

    name: str
    fun: Callable[..., Any]
    recorded: Primitive  # the op as a step of a jit program

    def __init__(self, fun: Callable[..., Any]) -> None:
        self.name = self.__name__ = self.__qualname__ = fun.__name__
        self.fun = self.__wrapped__ = fun
        self.__doc__ = fun.__doc__
        self.recorded = Primitive(fun)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        return self if obj is None else MethodType(self, obj)

    def __repr__(self) -> str:
        return f"<nondifferentiable {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args = tuple(_unbox_unless_recorded(a) for a in args)
        if recordings and Box in map(type, args):
            return self.recorded(*args, **kwargs)
        try:
            if device_scopes:
                with on_device_of(*args):
                    return self.fun(*args, **kwargs)
            return self.fun(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise _explain(error, self.name, args) from error


def nondifferentiable(fun: Callable[..., Any]) -> Nondifferentiable:
    """Make ``fun`` an op whose output is a constant under differentiation."""
    return Nondifferentiable(fun)


def stop_gradient(x: Any) -> Any:
    """``x`` as a constant: gradients do not flow through it, at any order."""
    return _unbox_unless_recorded(x)


def backward_pass(
    seeds: list[tuple[Node, Any]],
    tape: list[Node],
    add: Callable,
    retain_graph: bool = False,
    on_cotangent: Callable[[Node, Any], None] | None = None,
) -> dict[Node, Any]:
    """Push output cotangents ``(node, g)`` back through the tape; return the leaves' cotangents.

    Each node's cotangent is popped as soon as it is used. Unless ``retain_graph`` (``vjp``
    functions may be called many times), each node's saved values are dropped too, so memory
    falls as backward proceeds. Accumulation is copy-on-second-write: a cotangent a VJP returned
    may alias another node's, so it is never written into; the sum that replaces it is ours, and
    later sums go into it. ``on_cotangent(node, g)`` sees each node's finished cotangent before
    its rules run (``to_dot`` draws them).
    """
    cotangents: dict[Node, Any] = {}
    owned: set[Node] = set()

    def accumulate(node: Node, g: Any) -> None:
        if node not in cotangents:
            cotangents[node] = g
        elif node in owned:
            cotangents[node] = add(cotangents[node], g, in_place=True)
        else:
            cotangents[node] = add(cotangents[node], g, in_place=False)
            owned.add(node)

    for node, g in seeds:
        accumulate(node, g)
    for node in reversed(tape):
        g = cotangents.pop(node, None)
        if g is None:  # the outputs do not depend on this node
            continue
        if on_cotangent is not None:
            on_cotangent(node, g)
        prim = node.primitive
        assert prim is not None  # leaves (inputs) are not on the tape
        rules, one_rule = prim.vjps, prim.vjp_argnum
        for argnum, parent in node.parents:
            try:
                if one_rule is not None:
                    parent_g = one_rule(argnum, g, node.ans, node.args, node.kwargs)
                else:
                    if argnum >= len(rules):
                        raise _missing_vjp(prim.name, argnum)
                    rule = rules[argnum]
                    if rule is None:  # declared as having no gradient
                        continue
                    parent_g = rule(g, node.ans, *node.args, **node.kwargs)
            except NotKeptError as error:
                raise NotKeptError(f"{prim.name}: {error}") from None
            if parent_g is None:
                continue
            if parent in cotangents:
                accumulate(parent, parent_g)
            else:
                cotangents[parent] = parent_g
        if not retain_graph:
            node.args = node.kwargs = node.ans = None  # free what only backward needed
    return cotangents  # what is left belongs to the leaves
