"""Layer 2: tracing. Boxes record primitive calls on a tape; the backward pass reads it backwards.

The design is HIPS autograd's. ``grad`` wraps its inputs in ``Box`` objects tagged with a fresh
trace id. A primitive called with boxes unwraps the boxes of the innermost trace, computes
on the raw values, and returns a new box whose ``Node`` remembers the primitive, its inputs and
its output. Because the raw values may themselves be boxes of an outer trace, ``grad(grad(f))``
needs nothing special: each trace only sees its own boxes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gradcore.backend import raise_if_devices_mixed

__all__ = [
    "ArraySpec",
    "Box",
    "Node",
    "backward_pass",
    "defvjp",
    "defvjp_argnum",
    "getval",
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


class Node:
    """One primitive application in the graph: what backward needs to apply its VJPs."""

    __slots__ = ("primitive", "args", "kwargs", "ans", "parents")

    def __init__(self, primitive, args, kwargs, ans, parents) -> None:
        self.primitive = primitive  # None for a leaf (an input of grad)
        self.args = args  # raw argument values, as the VJPs receive them
        self.kwargs = kwargs
        self.ans = ans
        self.parents = parents  # [(argnum, parent node)]

    @classmethod
    def leaf(cls, value: Any) -> Node:
        return cls(None, (), {}, value, ())


class ArraySpec:
    """What backward keeps of an argument whose rules read only its shape and dtype."""

    __slots__ = ("shape", "dtype", "ndim")

    def __init__(self, value: Any) -> None:
        self.shape = value.shape
        self.dtype = value.dtype
        self.ndim = value.ndim


class Box:
    """A value being traced. Operators (+, *, @, x[i], ...) are attached by ``gradcore.ops``."""

    __slots__ = ("_value", "_trace", "_node")
    # NumPy and CuPy must not treat a Box as an array: ``ndarray + box`` then falls to
    # Box.__radd__ (both read __array_ufunc__; __array_priority__ is the older protocol).
    __array_ufunc__ = None
    __array_priority__ = 100.0
    __hash__ = None  # == is elementwise, as for arrays

    def __init__(self, value: Any, trace: int, node: Node) -> None:
        self._value = value
        self._trace = trace
        self._node = node

    shape = property(lambda self: self._value.shape)
    ndim = property(lambda self: self._value.ndim)
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


def primitive(fun: Callable, name: str | None = None) -> Callable:
    """Make ``fun`` traceable as one step; give it VJP rules with ``defvjp``.

    The returned function computes ``fun`` on raw values. Given boxes, it unwraps those of the
    innermost trace, computes, and records a ``Node`` on that trace's tape. It is a plain
    function (not a callable object) because it runs for every op: that keeps calls cheap and
    lets it serve directly as a Box method (``Box.__mul__ = multiply``).
    """
    name = name or fun.__name__

    def traced(*args: Any, **kwargs: Any) -> Any:
        top = 0
        for arg in args:
            if type(arg) is Box and arg._trace > top:
                top = arg._trace
        if not top:
            try:
                return fun(*args, **kwargs)
            except (ValueError, TypeError) as error:
                raise _explain(error, name, args) from error

        raw = list(args)
        parents = []
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
            ans = traced(*raw, **kwargs)
        else:
            try:
                ans = fun(*raw, **kwargs)
            except (ValueError, TypeError) as error:
                raise _explain(error, name, raw) from error
        saved_ans = ans
        tape = _tapes.get(top)
        if tape is not None and not tape.keep_values:
            # Keep for backward only what the rules read: memory is activations.
            if not traced.uses_args:
                for argnum, _ in parents:
                    raw[argnum] = ArraySpec(raw[argnum])
            if not traced.uses_ans:
                saved_ans = None
        node = Node(traced, raw, kwargs, saved_ans, parents)
        if tape is not None:  # None: a box that outlived its trace, nothing will read this
            tape.append(node)
        return Box(ans, top, node)

    traced.__name__ = traced.name = name
    traced.__qualname__ = name
    traced.__doc__ = fun.__doc__
    traced.__wrapped__ = traced.fun = fun
    traced.vjps = ()  # one rule per positional argument, set by defvjp
    traced.uses_args = traced.uses_ans = True  # what the rules read, set by defvjp
    return traced


def _missing_vjp(name: str, argnum: int) -> NotImplementedError:
    return NotImplementedError(
        f"{name}: no VJP is defined for argument {argnum}; register one with "
        f"gradcore.defvjp({name}, ...), or wrap the argument in stop_gradient"
    )


def _describe(value: Any) -> str:
    value = getval(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{tuple(value.shape)}"
    return type(value).__name__


def _explain(error: Exception, name: str, args: Any) -> Exception:
    """The array library refused an op: say it was arrays of two devices, or name the op and
    its operands."""
    raise_if_devices_mixed(name, tuple(args))
    message = str(error)
    if message.startswith(name + "("):
        return error
    described = ", ".join(_describe(a) for a in args)
    return type(error)(f"{name}({described}): {message}")


def defvjp(
    prim: Callable, *vjps: Callable | None, uses_args: bool = True, uses_ans: bool = True
) -> None:
    """Register ``vjp(g, ans, *args, **kwargs)`` for each positional argument, in order.

    ``None`` marks an argument that has no gradient (it is treated as a constant).
    ``uses_args=False`` promises that the rules read only the shape and dtype of the traced
    arguments, and ``uses_ans=False`` that they never read ``ans``: backward then keeps an
    ``ArraySpec`` or nothing instead of the values, so activations are freed during forward.
    """
    prim.vjps = vjps
    prim.uses_args = uses_args
    prim.uses_ans = uses_ans


def defvjp_argnum(
    prim: Callable, vjp: Callable, uses_args: bool = True, uses_ans: bool = True
) -> None:
    """Register one rule ``vjp(argnum, g, ans, args, kwargs)`` for ops with varargs."""
    defvjp(prim, uses_args=uses_args, uses_ans=uses_ans)
    prim.vjps = _OneRuleForEveryArgument(vjp)


class _OneRuleForEveryArgument:
    """Looks like a tuple of per-argument rules to the backward pass."""

    def __init__(self, rule: Callable) -> None:
        self.rule = rule

    def __getitem__(self, argnum: int) -> Callable:
        return lambda g, ans, *args, **kwargs: self.rule(argnum, g, ans, args, kwargs)


def nondifferentiable(fun: Callable) -> Callable:
    """An op whose output is constant under tracing (comparisons, argmax): unbox and compute."""

    recorded = primitive(fun)  # while a jit records: the op becomes a step of its program

    def unboxed(*args: Any, **kwargs: Any) -> Any:
        args = [_unbox_unless_recorded(a) for a in args]
        if recordings and Box in map(type, args):
            return recorded(*args, **kwargs)
        try:
            return fun(*args, **kwargs)
        except (ValueError, TypeError) as error:
            raise _explain(error, fun.__name__, args) from error

    unboxed.__name__ = fun.__name__
    unboxed.__doc__ = fun.__doc__
    unboxed.__wrapped__ = fun
    return unboxed


def stop_gradient(x: Any) -> Any:
    """``x`` as a constant: gradients do not flow through it, at any order."""
    return _unbox_unless_recorded(x)


def backward_pass(
    seeds: list[tuple[Node, Any]], tape: list[Node], add: Callable, retain_graph: bool = False
) -> dict[Node, Any]:
    """Push output cotangents ``(node, g)`` back through the tape; return the leaves' cotangents.

    Each node's cotangent is popped as soon as it is used. Unless ``retain_graph`` (``vjp``
    functions may be called many times), each node's saved values are dropped too, so memory
    falls as backward proceeds. Accumulation is copy-on-second-write: a cotangent a VJP returned
    may alias another node's, so it is never written into; the sum that replaces it is ours, and
    later sums go into it.
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
        rules = node.primitive.vjps
        for argnum, parent in node.parents:
            try:
                rule = rules[argnum]
            except IndexError:
                raise _missing_vjp(node.primitive.name, argnum) from None
            if rule is None:  # declared as having no gradient
                continue
            parent_g = rule(g, node.ans, *node.args, **node.kwargs)
            if parent_g is None:
                continue
            if parent in cotangents:
                accumulate(parent, parent_g)
            else:
                cotangents[parent] = parent_g
        if not retain_graph:
            node.args = node.kwargs = node.ans = None  # free what only backward needed
    return cotangents  # what is left belongs to the leaves
