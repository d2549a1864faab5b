"""Layer 4: differential operators built on tracing: grad, value_and_grad, vjp and friends."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from gradcore.backend import PY_SCALARS, backend_for_device, backend_of, isdtype
from gradcore.ops import add, astype, ones_like, shape, zeros_like
from gradcore.pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from gradcore.tracer import Box, Node, backward_pass, getval, new_trace

__all__ = [
    "check_grads",
    "elementwise_grad",
    "grad",
    "to_dot",
    "value_and_grad",
    "vjp",
]


def _accumulate(total: Any, g: Any, in_place: bool) -> Any:
    """Sum two cotangents of one node; in place only into an array backward itself made."""
    if in_place and type(total) is not Box and type(g) is not Box and type(total) is type(g):
        total += g
        return total
    return add(total, g)


def _is_real_floating(value: Any) -> bool:
    value = getval(value)
    if type(value) in PY_SCALARS:
        return type(value) is float
    return isdtype(value, "real floating")


def _describe_dtype(value: Any) -> str:
    value = getval(value)
    return type(value).__name__ if type(value) in PY_SCALARS else str(value.dtype)


class _Traced:
    """One forward pass with some arguments' leaves boxed, ready to run backward from."""

    def __init__(
        self,
        op_name: str,
        fun: Callable,
        args: tuple,
        kwargs: dict,
        argnums,
        keep_values: bool = False,
    ) -> None:
        self.treedefs = []
        self.leaf_nodes: list[list[Node]] = []
        self.python_floats: list[list[bool]] = []
        for argnum in argnums:
            if not -len(args) <= argnum < len(args):
                raise ValueError(
                    f"{op_name}: argnum {argnum} is out of range for a call with {len(args)} "
                    f"positional argument{'s' * (len(args) != 1)}; pass argnum between 0 and "
                    f"{len(args) - 1}, or pass that argument positionally"
                )
        with new_trace(keep_values) as (self.trace, self.tape):
            args = list(args)
            for argnum in argnums:
                leaves, treedef = tree_flatten(args[argnum])
                boxes = [self._box(op_name, argnum, leaf, len(leaves) > 1) for leaf in leaves]
                self.treedefs.append(treedef)
                self.leaf_nodes.append([box._node for box in boxes])
                self.python_floats.append([type(getval(leaf)) is float for leaf in leaves])
                args[argnum] = tree_unflatten(treedef, boxes)
            out_leaves, self.out_treedef = tree_flatten(fun(*args, **kwargs))
        # (position, node) of each output leaf that depends on the inputs
        self.ends = [
            (i, leaf._node)
            for i, leaf in enumerate(out_leaves)
            if type(leaf) is Box and leaf._trace == self.trace
        ]
        self.value = tree_unflatten(
            self.out_treedef,
            [leaf._value if type(leaf) is Box and leaf._trace == self.trace else leaf
             for leaf in out_leaves],
        )  # fmt: skip

    def _box(self, op_name: str, argnum: int, leaf: Any, in_tree: bool) -> Box:
        if not _is_real_floating(leaf):
            where = f"a leaf of argument {argnum}" if in_tree else f"argument {argnum}"
            raise TypeError(
                f"{op_name}: {where} has dtype {_describe_dtype(leaf)}; gradients are defined "
                "only for real floating-point inputs (cast it, e.g. x.astype('float32'))"
            )
        # A Python float is traced as itself: it combines with arrays of any device, without
        # promoting float32 work, and its gradient comes back as a Python float (autograd's way).
        return Box(leaf, self.trace, Node.leaf(leaf))

    def backward(self, cotangent: Any, retain_graph: bool) -> list[Any]:
        """One gradient pytree per traced argument."""
        cotangents = tree_leaves(cotangent)
        seeds = [(node, cotangents[i]) for i, node in self.ends]
        found = backward_pass(seeds, self.tape, _accumulate, retain_graph) if seeds else {}
        grads = []
        for treedef, nodes, floats in zip(self.treedefs, self.leaf_nodes, self.python_floats):
            leaves = [
                _finish(found.get(node), node, was_float) for node, was_float in zip(nodes, floats)
            ]
            grads.append(tree_unflatten(treedef, leaves))
        return grads


def _finish(g: Any, leaf: Node, was_python_float: bool) -> Any:
    """Give a gradient the dtype and kind of its input: a float for a float, an array else."""
    if was_python_float:
        if g is None:
            return 0.0
        return g if type(g) is Box or type(g) is float else float(g)
    value = getval(leaf.ans)
    if g is None:
        g = zeros_like(value)
    elif getval(g).dtype != value.dtype:
        g = astype(g, value.dtype)
    if type(g) is Box:
        return g
    if g.ndim == 0:
        return backend_of(g).xp.asarray(g)  # NumPy reductions return scalars, not arrays
    return g


def _argnums(argnum: int | Sequence[int]) -> tuple[tuple[int, ...], bool]:
    if isinstance(argnum, int):
        return (argnum,), False
    return tuple(argnum), True


def _scalar_seed(op_name: str, value: Any) -> Any:
    if not (type(value) in PY_SCALARS or hasattr(value, "shape")):
        raise TypeError(
            f"{op_name}: the function must return a scalar, but returned a "
            f"{type(value).__name__}; use vjp for functions with several outputs"
        )
    if shape(value) != ():
        raise TypeError(
            f"{op_name}: the function must return a scalar, but returned shape "
            f"{shape(value)}; use elementwise_grad for elementwise functions, or vjp for a "
            "vector-Jacobian product with any output"
        )
    return 1.0 if type(value) in PY_SCALARS else ones_like(value)


def _as_output_array(cotangent: Any, output: Any) -> Any:
    """A Python number as a cotangent becomes an array like the output it belongs to."""
    if type(cotangent) in PY_SCALARS and type(output) not in PY_SCALARS:
        return ones_like(output) * cotangent
    return cotangent


def _shapes(shapes: list[tuple[int, ...]]) -> str:
    return str(shapes[0]) if len(shapes) == 1 else str(shapes)


def value_and_grad(fun: Callable, argnum: int | Sequence[int] = 0) -> Callable:
    """``fun`` returning ``(value, gradient)``; a tuple of gradients when ``argnum`` is a tuple."""
    return _value_and_grad(fun, argnum, stacklevel=2)


def _value_and_grad(fun: Callable, argnum: int | Sequence[int], stacklevel: int) -> Callable:
    """``value_and_grad``; ``stacklevel`` makes its warning point at the user's call."""
    argnums, many = _argnums(argnum)
    warned = False

    def value_and_grad_fun(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        nonlocal warned
        traced = _Traced("grad", fun, args, kwargs, argnums)
        if not traced.ends and not warned:  # like autograd: zeros here are usually a mistake
            warned = True
            warnings.warn(
                f"grad: the output of {getattr(fun, '__name__', 'the function')} does not "
                f"depend on argument {argnum} (it is constant with respect to it), so the "
                "gradient is zero; did it return a constant, or leave gradcore through "
                "float(), int(), math.*, NumPy or stop_gradient?",
                stacklevel=stacklevel,
            )
        grads = traced.backward(_scalar_seed("grad", traced.value), retain_graph=False)
        return traced.value, tuple(grads) if many else grads[0]

    value_and_grad_fun.__name__ = f"value_and_grad_{getattr(fun, '__name__', 'fun')}"
    return value_and_grad_fun


def grad(fun: Callable, argnum: int | Sequence[int] = 0) -> Callable:
    """The gradient of scalar-valued ``fun`` with respect to argument ``argnum``."""
    with_value = _value_and_grad(fun, argnum, stacklevel=3)

    def grad_fun(*args: Any, **kwargs: Any) -> Any:
        return with_value(*args, **kwargs)[1]

    grad_fun.__name__ = f"grad_{getattr(fun, '__name__', 'fun')}"
    return grad_fun


def elementwise_grad(fun: Callable, argnum: int | Sequence[int] = 0) -> Callable:
    """Sum of the Jacobian's rows: the derivative of an elementwise ``fun`` at every point."""
    argnums, many = _argnums(argnum)

    def elementwise_grad_fun(*args: Any, **kwargs: Any) -> Any:
        traced = _Traced("elementwise_grad", fun, args, kwargs, argnums)
        grads = traced.backward(tree_map(ones_like, traced.value), retain_graph=False)
        return tuple(grads) if many else grads[0]

    return elementwise_grad_fun


def vjp(fun: Callable, *args: Any) -> tuple[Any, Callable]:
    """``fun(*args)`` and a function mapping an output cotangent to one per argument.

    The returned function keeps the graph, so it may be called many times.
    """
    traced = _Traced("vjp", fun, args, {}, tuple(range(len(args))))

    def vjp_fun(cotangent: Any) -> tuple[Any, ...]:
        expected = [shape(leaf) for leaf in tree_leaves(traced.value)]
        given = [shape(leaf) for leaf in tree_leaves(cotangent)]
        if given != expected:
            raise ValueError(
                f"vjp: the cotangent has shape {_shapes(given)} but the output has shape "
                f"{_shapes(expected)}"
            )
        cotangent = tree_map(_as_output_array, cotangent, traced.value)
        return tuple(traced.backward(cotangent, retain_graph=True))

    return traced.value, vjp_fun


# ---------------------------------------------------------------------------------------------
# checking and drawing


def _to_float64(x: Any) -> Any:
    if type(x) in PY_SCALARS:
        x = backend_for_device("cpu").xp.asarray(float(x))
    xp = backend_of(x).xp
    return xp.astype(x, xp.float64)


def _random_like(tree: Any, seed: int) -> Any:
    def draw(leaf: Any) -> Any:
        backend = backend_of(leaf)
        return backend.rng(seed).normal(tuple(leaf.shape), dtype=backend.xp.float64)

    return tree_map(draw, tree)


def _inner(a: Any, b: Any) -> float:
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total += float(backend_of(x).xp.sum(x * y))
    return total


def _with_arg(args: tuple, argnum: int, value: Any) -> tuple:
    return args[:argnum] + (value,) + args[argnum + 1 :]


def _check_vjp(fun: Callable, args: tuple, order: int, eps: float, rtol: float, atol: float):
    out, vjp_fun = vjp(fun, *args)
    out = tree_map(_to_float64, out)
    u = _random_like(out, seed=order)
    cotangents = vjp_fun(u)
    worst = None
    for argnum, arg in enumerate(args):
        v = _random_like(arg, seed=100 + argnum)
        analytic = _inner(cotangents[argnum], v)
        plus = fun(*_with_arg(args, argnum, tree_map(lambda a, d: a + eps * d, arg, v)))
        minus = fun(*_with_arg(args, argnum, tree_map(lambda a, d: a - eps * d, arg, v)))
        numeric = (_inner(u, plus) - _inner(u, minus)) / (2 * eps)
        error, tolerance = abs(analytic - numeric), atol + rtol * abs(numeric)
        if not error <= tolerance and (worst is None or error / tolerance > worst[0]):
            worst = (error / tolerance, argnum, analytic, numeric, error, tolerance)
    if worst is not None:
        _, argnum, analytic, numeric, error, tolerance = worst
        name = getattr(fun, "__name__", "fun")
        raise AssertionError(
            f"check_grads: {name}, derivative of order {order}: the VJP for argument "
            f"{argnum} gives {analytic!r} but central differences give {numeric!r} "
            f"(|difference| {error:.3g} > tolerance {tolerance:.3g})"
        )


def check_grads(
    fun: Callable,
    *args: Any,
    order: int = 2,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Check ``fun``'s VJPs against central differences in float64, up to ``order``.

    Along one random direction per argument, ``<vjp(u), v>`` must equal the directional
    derivative ``<u, (f(x + eps v) - f(x - eps v)) / 2 eps>``. Order 2 repeats the check on
    the VJP function itself. Raises AssertionError naming the worst argument.
    """
    args = tuple(tree_map(_to_float64, arg) for arg in args)
    _check_vjp(fun, args, 1, eps, rtol, atol)
    for level in range(2, order + 1):
        u = _random_like(tree_map(_to_float64, fun(*args)), seed=level)
        fun = _vjp_of(fun)
        args = (*args, u)
        _check_vjp(fun, args, level, eps, rtol, atol)


def _vjp_of(fun: Callable) -> Callable:
    """``(*args, u) -> vjp(fun, *args)[1](u)``: differentiating it checks the next order."""

    def vjp_fun(*args_and_cotangent: Any) -> Any:
        *args, cotangent = args_and_cotangent
        return vjp(fun, *args)[1](cotangent)

    vjp_fun.__name__ = f"vjp_of_{getattr(fun, '__name__', 'fun')}"
    return vjp_fun


def to_dot(fun: Callable, *args: Any) -> str:
    """Graphviz DOT text of the graph ``fun(*args)`` records, drawn as the lecture draws it.

    Each node shows its op (an input: its parameter name), its shape, its forward value (green)
    and, when ``fun`` returns one real number, that number's gradient with respect to the node
    (red): what backpropagation computes at every node on the way back to the inputs. Arrays of
    up to 4 elements are written out, larger ones by shape alone. ``dot -Tpng`` renders it.
    """
    traced = _Traced("to_dot", fun, args, {}, tuple(range(len(args))), keep_values=True)
    parameters = _parameter_names(fun, len(args))
    names = {}
    for argnum, nodes in enumerate(traced.leaf_nodes):
        name = parameters[argnum]
        for position, node in enumerate(nodes):
            names[node] = name if len(nodes) == 1 else f"{name}[{position}]"
    leaves = [node for nodes in traced.leaf_nodes for node in nodes]
    reachable = _reachable(traced.tape, [node for _, node in traced.ends], leaves)
    values = {node: _small_text(node.ans) for node in reachable}
    gradients: dict[Node, str] = {}
    if len(traced.ends) == 1 and _is_real_floating(traced.value) and shape(traced.value) == ():
        record = lambda node, g: gradients.__setitem__(node, _small_text(g))
        seed = [(traced.ends[0][1], ones_like(traced.value))]
        found = backward_pass(seed, traced.tape, _accumulate, True, on_cotangent=record)
        gradients.update((node, _small_text(g)) for node, g in found.items())
    lines = [
        "digraph gradcore {",
        "  rankdir=LR;",
        '  label="green: forward value, red: gradient of the output"; fontsize=10;',
    ]
    ids: dict[Node, str] = {}
    for node in reachable:
        ids[node] = f"n{len(ids)}"
        rows = [names.get(node) or node.primitive.name]
        rows.append("x".join(map(str, getattr(node.ans, "shape", ()))) or "scalar")
        if values[node]:
            rows.append(f'<font color="darkgreen">{values[node]}</font>')
        if gradients.get(node):
            rows.append(f'<font color="red">{gradients[node]}</font>')
        style = ", shape=box" if node.primitive is None else ""
        lines.append(f"  {ids[node]} [label=<{'<br/>'.join(rows)}>{style}];")
        for argnum, parent in node.parents:
            lines.append(f'  {ids[parent]} -> {ids[node]} [label="{argnum}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _parameter_names(fun: Callable, count: int) -> list[str]:
    """The names of ``fun``'s first ``count`` positional parameters; ``arg N`` where unknown."""
    try:
        parameters = list(inspect.signature(fun).parameters.values())
    except (TypeError, ValueError):  # builtins and some callables have no signature
        parameters = []
    positional = [
        p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return [positional[i] if i < len(positional) else f"arg {i}" for i in range(count)]


def _small_text(value: Any) -> str:
    """A value written out for a drawing: a number, up to 4 numbers, else nothing."""
    value = getval(value)
    if type(value) in PY_SCALARS:
        return f"{value:.4g}"
    if value is None or not _is_real_floating(value) or math.prod(value.shape) > 4:
        return ""
    xp = backend_of(value).xp
    numbers = [f"{float(v):.4g}" for v in xp.reshape(value, (-1,))]
    return numbers[0] if value.ndim == 0 else "[" + ", ".join(numbers) + "]"


def _reachable(tape: list[Node], ends: list[Node], leaves: list[Node]) -> list[Node]:
    """The nodes the outputs depend on, inputs first."""
    needed = set(ends)
    for node in reversed(tape):
        if node in needed:
            needed.update(parent for _, parent in node.parents)
    return [node for node in leaves + tape if node in needed]
