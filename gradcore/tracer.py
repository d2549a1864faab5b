"""Layer 2: tracing. Boxes record primitive calls as a graph; the backward pass walks it.

The design is HIPS autograd's. ``grad`` wraps its inputs in ``Box`` objects tagged with a fresh
trace id. A ``Primitive`` called with boxes unwraps the boxes of the innermost trace, computes
on the raw values, and returns a new box whose ``Node`` remembers the primitive, its inputs and
its output. Because the raw values may themselves be boxes of an outer trace, ``grad(grad(f))``
needs nothing special: each trace only sees its own boxes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "Box",
    "Node",
    "Primitive",
    "backward_pass",
    "defvjp",
    "defvjp_argnum",
    "getval",
    "new_trace_id",
    "nondifferentiable",
    "primitive",
    "stop_gradient",
]

_trace_ids = itertools.count(1)


def new_trace_id() -> int:
    """A trace id larger than any before it, so the innermost trace always wins."""
    return next(_trace_ids)


class Node:
    """One primitive application in the graph: what backward needs to apply its VJPs."""

    __slots__ = ("primitive", "args", "kwargs", "ans", "parents", "shape")

    def __init__(self, primitive, args, kwargs, ans, parents) -> None:
        self.primitive = primitive  # None for a leaf (an input of grad)
        self.args = args  # raw argument values, as the VJPs receive them
        self.kwargs = kwargs
        self.ans = ans
        self.parents = parents  # tuple of (argnum, parent node)
        self.shape = getattr(ans, "shape", ())  # kept for to_dot after the values are freed

    @classmethod
    def leaf(cls, value: Any) -> Node:
        return cls(None, (), {}, value, ())

    def release(self) -> None:
        """Drop the saved values once backward has used them, so memory falls as it goes."""
        self.args = self.kwargs = self.ans = None


class Box:
    """A value being traced. Operators (+, *, @, x[i], ...) are attached by ``gradcore.ops``."""

    __slots__ = ("_value", "_trace", "_node")
    # NumPy must not treat a Box as an array: ``ndarray + box`` then falls to Box.__radd__.
    __array_ufunc__ = None
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
        return bool(self._value)

    def __float__(self) -> float:
        return float(self._value)

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


class Primitive:
    """A function the tracer treats as atomic, with one VJP rule per differentiable argument."""

    def __init__(self, fun: Callable, name: str | None = None) -> None:
        self.fun = fun
        self.name = name or fun.__name__
        self.__name__ = self.name
        self.__doc__ = fun.__doc__
        self.__wrapped__ = fun
        self.vjps: tuple[Callable | None, ...] = ()
        self.vjp_argnum: Callable | None = None  # one rule for every argnum (varargs ops)

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        top = 0
        for arg in args:
            if type(arg) is Box and arg._trace > top:
                top = arg._trace
        if not top:
            try:
                return self.fun(*args, **kwargs)
            except (ValueError, TypeError) as error:
                raise _annotate(error, self.name, args) from error

        raw = list(args)
        parents = []
        for argnum, arg in enumerate(args):
            if type(arg) is Box and arg._trace == top:
                self._check_differentiable(argnum)
                raw[argnum] = arg._value
                parents.append((argnum, arg._node))
        # Raw values may still be boxes of outer traces: call ourselves to record those too.
        ans = self(*raw, **kwargs)
        return Box(ans, top, Node(self, raw, kwargs, ans, tuple(parents)))

    def _check_differentiable(self, argnum: int) -> None:
        if self.vjp_argnum is None and argnum >= len(self.vjps):
            raise NotImplementedError(
                f"{self.name}: no VJP is defined for argument {argnum}; register one with "
                f"gradcore.defvjp({self.name}, ...), or wrap the argument in stop_gradient"
            )

    def vjp(self, argnum: int, g: Any, node: Node) -> Any:
        if self.vjp_argnum is not None:
            return self.vjp_argnum(argnum, g, node.ans, node.args, node.kwargs)
        rule = self.vjps[argnum]
        if rule is None:
            return None
        return rule(g, node.ans, *node.args, **node.kwargs)


def _describe(value: Any) -> str:
    value = getval(value)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype}{tuple(value.shape)}"
    return type(value).__name__


def _annotate(error: Exception, name: str, args: tuple) -> Exception:
    """Name the op and its operands in an error raised by the array library."""
    message = str(error)
    if message.startswith(name + "("):
        return error
    described = ", ".join(_describe(a) for a in args)
    return type(error)(f"{name}({described}): {message}")


def primitive(fun: Callable) -> Primitive:
    """Make ``fun`` traceable as one step; give it VJP rules with ``defvjp``."""
    return Primitive(fun)


def defvjp(prim: Primitive, *vjps: Callable | None) -> None:
    """Register ``vjp(g, ans, *args, **kwargs)`` for each positional argument, in order.

    ``None`` marks an argument that has no gradient (it is treated as a constant).
    """
    prim.vjps = vjps


def defvjp_argnum(prim: Primitive, vjp: Callable) -> None:
    """Register one rule ``vjp(argnum, g, ans, args, kwargs)`` for ops with varargs."""
    prim.vjp_argnum = vjp


def nondifferentiable(fun: Callable) -> Callable:
    """An op whose output is constant under tracing (comparisons, argmax): unbox and compute."""

    def unboxed(*args: Any, **kwargs: Any) -> Any:
        try:
            return fun(*[getval(a) for a in args], **kwargs)
        except (ValueError, TypeError) as error:
            raise _annotate(error, fun.__name__, args) from error

    unboxed.__name__ = fun.__name__
    unboxed.__doc__ = fun.__doc__
    unboxed.__wrapped__ = fun
    return unboxed


def stop_gradient(x: Any) -> Any:
    """``x`` as a constant: gradients do not flow through it, at any order."""
    return getval(x)


def toposort(ends: list[Node]) -> Iterator[Node]:
    """Nodes from the outputs back to the leaves, each after every node that consumes it."""
    child_counts: dict[Node, int] = {}
    seen: set[Node] = set()
    stack = list(ends)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for _, parent in node.parents:
            child_counts[parent] = child_counts.get(parent, 0) + 1
            stack.append(parent)
    ready = [node for node in dict.fromkeys(ends) if node not in child_counts]
    while ready:
        node = ready.pop()
        yield node
        for _, parent in node.parents:
            child_counts[parent] -= 1
            if not child_counts[parent]:
                ready.append(parent)


def backward_pass(
    seeds: list[tuple[Node, Any]], add: Callable, retain_graph: bool = False
) -> dict[Node, Any]:
    """Push output cotangents ``(node, g)`` back to the leaves; return the leaves' cotangents.

    Each node's cotangent is popped as soon as it is used. Unless ``retain_graph`` (``vjp``
    functions may be called many times), each node's saved values are dropped too.
    Accumulation is copy-on-second-write: a cotangent a VJP returned may alias another node's,
    so it is never written into; the sum that replaces it is ours, and later sums go into it.
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
    leaves: dict[Node, Any] = {}
    for node in toposort([node for node, _ in seeds]):
        g = cotangents.pop(node, None)
        if g is None:  # every path from here to the outputs was cut (a None VJP)
            continue
        if node.primitive is None:
            leaves[node] = g
            continue
        for argnum, parent in node.parents:
            parent_g = node.primitive.vjp(argnum, g, node)
            if parent_g is not None:
                accumulate(parent, parent_g)
        if not retain_graph:
            node.release()
    return leaves
