"""Layer 4: differential operators built on tracing.

Reverse mode (``grad``, ``value_and_grad``, ``vjp``, ``elementwise_grad``) records a forward
pass and runs it backwards: one pass gives the gradient of one output with respect to every
input. Forward mode (``jvp``) pushes one direction through with the values: one pass gives the
derivative of every output along one input direction. Jacobians take one pass per row
(``jacrev``) or per column (``jacfwd``), and a Hessian is forward mode over reverse mode
(``hessian``, ``hvp``), as in JAX and ``torch.func``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, cast

from gradcore.backend import (
    PY_SCALARS,
    array_backend,
    backend_for_device,
    common_backend,
    device_scopes,
    isdtype,
    on_device_of,
)
from gradcore.ops import add, astype, multiply, ones_like, reshape, shape, stack, zeros_like
from gradcore.pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from gradcore.tracer import Box, JVPNode, Node, backward_pass, getval, new_forward_trace, new_trace

__all__ = [
    "check_grads",
    "elementwise_grad",
    "grad",
    "hessian",
    "hvp",
    "jacfwd",
    "jacrev",
    "jvp",
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


def _call_on_device(fun: Callable, args: list, kwargs: dict) -> Any:
    """``fun(*args, **kwargs)``, inside the device of the arguments' first array where the
    library launches on a current GPU: ``fun``'s Python operators on the arrays it does not
    differentiate (a batch, its labels) are CuPy's own, not ops that enter their device."""
    if device_scopes:
        with on_device_of(*map(getval, tree_leaves((args, kwargs)))):
            return fun(*args, **kwargs)
    return fun(*args, **kwargs)


def _is_real_floating(value: Any) -> bool:
    value = getval(value)
    if type(value) in PY_SCALARS:
        return type(value) is float
    return isdtype(value, "real floating")


def _describe_dtype(value: Any) -> str:
    value = getval(value)
    return type(value).__name__ if type(value) in PY_SCALARS else str(value.dtype)


def _check_argnums(op_name: str, argnums: Sequence[int], args: Sequence[Any]) -> None:
    for argnum in argnums:
        if not -len(args) <= argnum < len(args):
            raise ValueError(
                f"{op_name}: argnum {argnum} is out of range for a call with {len(args)} "
                f"positional argument{'s' * (len(args) != 1)}; pass argnum between 0 and "
                f"{len(args) - 1}, or pass that argument positionally"
            )


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
        _check_argnums(op_name, argnums, args)
        with new_trace(keep_values) as (self.trace, self.tape):
            boxed = list(args)
            for argnum in argnums:
                leaves, treedef = tree_flatten(args[argnum])
                boxes = [self._box(op_name, argnum, leaf, len(leaves) > 1) for leaf in leaves]
                self.treedefs.append(treedef)
                self.leaf_nodes.append([cast(Node, box._node) for box in boxes])
                self.python_floats.append([type(getval(leaf)) is float for leaf in leaves])
                boxed[argnum] = tree_unflatten(treedef, boxes)
            out_leaves, self.out_treedef = tree_flatten(_call_on_device(fun, boxed, kwargs))
        # (position, node) of each output leaf that depends on the inputs
        self.ends = [
            (i, cast(Node, leaf._node))
            for i, leaf in enumerate(out_leaves)
            if type(leaf) is Box and leaf._trace == self.trace
        ]
        self.value = tree_unflatten(
            self.out_treedef,
            [leaf._value if type(leaf) is Box and leaf._trace == self.trace else leaf
             for leaf in out_leaves],
        )  # fmt: skip

    def _box(self, op_name: str, argnum: int, leaf: Any, in_tree: bool) -> Box:
        _check_floating(op_name, argnum, leaf, in_tree)
        # A Python float is traced as itself: it combines with arrays of any device, without
        # promoting float32 work, and its gradient comes back as a Python float (autograd's way).
        return Box(leaf, self.trace, Node.leaf(leaf))

    def backward(self, cotangent: Any, retain_graph: bool) -> list[Any]:
        """One gradient pytree per traced argument."""
        cotangents = tree_leaves(cotangent)
        seeds = [(node, cotangents[i]) for i, node in self.ends]
        if not seeds:
            found = {}
        elif device_scopes:  # the rules compute on raw cotangents: enter their device
            with on_device_of(*(g for _, g in seeds)):
                found = backward_pass(seeds, self.tape, _accumulate, retain_graph)
        else:
            found = backward_pass(seeds, self.tape, _accumulate, retain_graph)
        grads = []
        for treedef, nodes, floats in zip(self.treedefs, self.leaf_nodes, self.python_floats):
            leaves = [
                _finish(found.get(node), node, was_float) for node, was_float in zip(nodes, floats)
            ]
            grads.append(tree_unflatten(treedef, leaves))
        return grads


def _check_floating(op_name: str, argnum: int, leaf: Any, in_tree: bool) -> None:
    if not _is_real_floating(leaf):
        where = f"a leaf of argument {argnum}" if in_tree else f"argument {argnum}"
        raise TypeError(
            f"{op_name}: {where} has dtype {_describe_dtype(leaf)}; derivatives are defined "
            "only for real floating-point inputs (cast it, e.g. x.astype('float32'))"
        )


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
        return array_backend(g).xp.asarray(g)  # NumPy reductions return scalars, not arrays
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
# forward mode


def _jvp(
    op_name: str, fun: Callable, args: tuple, kwargs: dict, argnums: Sequence[int], tangents: Any
) -> tuple[Any, Any]:
    """``fun(*args, **kwargs)`` with the arguments ``argnums`` moving along ``tangents`` (one
    pytree per argnum): the output and its tangent, in one pass."""
    with new_forward_trace() as trace:
        boxed = list(args)
        for argnum, tangent in zip(argnums, tangents):
            leaves, treedef = tree_flatten(args[argnum])
            tangent_leaves, tangent_treedef = tree_flatten(tangent)
            if tangent_treedef != treedef:
                raise ValueError(
                    f"{op_name}: the tangent of argument {argnum} must have the structure of "
                    f"the argument (the same dicts, lists and tuples, {len(leaves)} arrays), "
                    f"but it has {len(tangent_leaves)} leaves in other containers"
                )
            boxes = []
            for leaf, leaf_tangent in zip(leaves, tangent_leaves):
                _check_floating(op_name, argnum, leaf, len(leaves) > 1)
                _check_tangent(op_name, argnum, leaf, leaf_tangent)
                boxes.append(Box(leaf, trace, JVPNode(leaf_tangent)))
            boxed[argnum] = tree_unflatten(treedef, boxes)
        out_leaves, out_treedef = tree_flatten(_call_on_device(fun, boxed, kwargs))
    values, out_tangents = [], []
    for leaf in out_leaves:
        if type(leaf) is Box and leaf._trace == trace:
            values.append(leaf._value)
            out_tangents.append(cast(JVPNode, leaf._node).tangent)
        else:  # the output does not depend on the inputs
            values.append(leaf)
            out_tangents.append(zeros_like(leaf))
    return tree_unflatten(out_treedef, values), tree_unflatten(out_treedef, out_tangents)


def _check_tangent(op_name: str, argnum: int, primal: Any, tangent: Any) -> None:
    """A tangent lives where its primal does: same shape, device and dtype."""
    primal, tangent = getval(primal), getval(tangent)
    if shape(tangent) != shape(primal):
        raise ValueError(
            f"{op_name}: a tangent of argument {argnum} has shape {shape(tangent)} but its "
            f"primal has shape {shape(primal)}; tangents have the shapes of the primals"
        )
    if type(primal) in PY_SCALARS or type(tangent) in PY_SCALARS:
        same_dtype = type(primal) is type(tangent)
    else:
        common_backend(op_name, primal, tangent)  # DeviceError if on two devices
        same_dtype = tangent.dtype == primal.dtype
    if not same_dtype:
        raise TypeError(
            f"{op_name}: a tangent of argument {argnum} has dtype {_describe_dtype(tangent)} "
            f"but its primal has dtype {_describe_dtype(primal)}; tangents have the dtypes of "
            "the primals"
        )


def jvp(fun: Callable, primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, Any]:
    """``(fun(*primals), J tangents)``: the output and its derivative along ``tangents``.

    One forward pass, as JAX's and ``torch.func``'s ``jvp``: ``primals`` and ``tangents`` are
    tuples with one entry per argument of ``fun`` (pytrees of arrays, each tangent with its
    primal's structure, shapes and dtypes). The output tangent has the structure of the output.
    """
    if not isinstance(primals, (tuple, list)) or not isinstance(tangents, (tuple, list)):
        raise TypeError(
            "jvp: primals and tangents must be tuples with one entry per argument of the "
            f"function, got {type(primals).__name__} and {type(tangents).__name__}; for one "
            "argument x write jvp(fun, (x,), (t,))"
        )
    if len(primals) != len(tangents):
        raise ValueError(
            f"jvp: {len(primals)} primals but {len(tangents)} tangents; pass one tangent per "
            "argument"
        )
    return _jvp("jvp", fun, tuple(primals), {}, range(len(primals)), tangents)


# ---------------------------------------------------------------------------------------------
# Jacobians and Hessians


def _argnums_of(op_name: str, argnum: int | Sequence[int], argnums: Any) -> Any:
    """``argnums`` (JAX's and torch.func's spelling) is accepted for gradcore's ``argnum``."""
    if argnums is None:
        return argnum
    if argnum != 0:
        raise TypeError(f"{op_name}: pass argnum or argnums, not both")
    return argnums


class _Flat:
    """``fun`` as a function of the leaves of its arguments ``argnums``, returning the leaves of
    its output: the form in which a Jacobian is a table of blocks, one per output leaf and
    input leaf."""

    def __init__(self, fun: Callable, args: tuple, kwargs: dict, argnums: tuple[int, ...]):
        self.fun, self.args, self.kwargs, self.argnums = fun, args, kwargs, argnums
        self.leaves: list[Any] = []
        self.treedefs = []
        for argnum in argnums:
            leaves, treedef = tree_flatten(args[argnum])
            self.leaves += leaves
            self.treedefs.append((treedef, len(leaves)))
        self.out_treedef = None

    def __call__(self, *leaves: Any) -> list[Any]:
        args = list(self.args)
        start = 0
        for argnum, (treedef, count) in zip(self.argnums, self.treedefs):
            args[argnum] = tree_unflatten(treedef, list(leaves[start : start + count]))
            start += count
        out_leaves, self.out_treedef = tree_flatten(self.fun(*args, **self.kwargs))
        return out_leaves

    def tree(self, blocks: list[list[Any]], many: bool) -> Any:
        """The Jacobian's structure from ``blocks[o][i]`` (output leaf o, input leaf i): the
        output's pytree holding, per output leaf, the input's pytree (a tuple of them, one per
        argnum, when ``argnum`` is a tuple), as JAX's ``jacfwd`` and ``jacrev`` give it."""
        out = []
        for row in blocks:
            per_argnum, start = [], 0
            for treedef, count in self.treedefs:
                per_argnum.append(tree_unflatten(treedef, row[start : start + count]))
                start += count
            out.append(tuple(per_argnum) if many else per_argnum[0])
        return tree_unflatten(self.out_treedef, out)


def _basis(leaf: Any, index: int) -> Any:
    """The ``index``-th unit vector in the space of ``leaf`` (its shape, dtype and device)."""
    value = getval(leaf)
    if type(value) in PY_SCALARS:
        return 1.0
    backend = array_backend(value)
    xp = backend.xp
    size = math.prod(value.shape)
    unit = xp.eye(1, size, k=index, dtype=value.dtype, device=backend.array_device(value))
    return xp.reshape(unit, tuple(value.shape))


def _block(parts: list[Any], out_leaf: Any, in_leaf: Any, axis: int) -> Any:
    """One block of a Jacobian, of shape ``out_leaf.shape + in_leaf.shape``, from its columns
    (``axis=-1``: the tangents of ``out_leaf``, one per element of ``in_leaf``) or its rows
    (``axis=0``: the cotangents of ``in_leaf``, one per element of ``out_leaf``)."""
    block_shape = shape(out_leaf) + shape(in_leaf)
    if len(parts) == 1 and shape(parts[0]) == block_shape:
        return parts[0]
    like = getval(in_leaf) if type(getval(in_leaf)) not in PY_SCALARS else getval(out_leaf)
    backend = array_backend(like)
    device = backend.array_device(like)
    if not parts:  # an empty input or output
        return backend.xp.zeros(block_shape, dtype=like.dtype, device=device)
    one = backend.xp.ones((), dtype=like.dtype, device=device)  # makes numbers 0-d arrays
    parts = [multiply(p, one) if type(getval(p)) in PY_SCALARS else p for p in parts]
    return reshape(stack(parts, axis=axis), block_shape)


def _size(leaf: Any) -> int:
    return math.prod(shape(leaf))


def jacfwd(
    fun: Callable, argnum: int | Sequence[int] = 0, *, argnums: int | Sequence[int] | None = None
) -> Callable:
    """The Jacobian of ``fun`` by forward mode: one ``jvp`` per input element (cheap for few
    inputs and many outputs). Blocks have shape ``output.shape + input.shape``, in the output's
    pytree of the input's pytree, as JAX's ``jacfwd``."""
    argnums_, many = _argnums(_argnums_of("jacfwd", argnum, argnums))

    def jacfwd_fun(*args: Any, **kwargs: Any) -> Any:
        _check_argnums("jacfwd", argnums_, args)
        flat = _Flat(fun, args, kwargs, argnums_)
        out = None
        columns: list[list[Any]] = []  # per input leaf: per element, the output's tangents
        for position, leaf in enumerate(flat.leaves):
            columns.append([])
            for index in range(_size(leaf)):
                out, out_tangents = _jvp("jacfwd", flat, tuple(flat.leaves), {}, (position,),
                                         (_basis(leaf, index),))  # fmt: skip
                columns[-1].append(out_tangents)
        if out is None:  # no input elements
            out = flat(*flat.leaves)
        blocks = [
            [
                _block([column[o] for column in leaf_columns], out_leaf, in_leaf, axis=-1)
                for leaf_columns, in_leaf in zip(columns, flat.leaves)
            ]
            for o, out_leaf in enumerate(out)
        ]
        return flat.tree(blocks, many)

    jacfwd_fun.__name__ = f"jacfwd_{getattr(fun, '__name__', 'fun')}"
    return jacfwd_fun


def jacrev(
    fun: Callable, argnum: int | Sequence[int] = 0, *, argnums: int | Sequence[int] | None = None
) -> Callable:
    """The Jacobian of ``fun`` by reverse mode: one forward pass, then one backward pass per
    output element (cheap for many inputs and few outputs). Laid out as ``jacfwd``'s."""
    argnums_, many = _argnums(_argnums_of("jacrev", argnum, argnums))

    def jacrev_fun(*args: Any, **kwargs: Any) -> Any:
        _check_argnums("jacrev", argnums_, args)
        flat = _Flat(fun, args, kwargs, argnums_)
        out, vjp_fun = vjp(flat, *flat.leaves)
        rows: list[list[Any]] = []  # per output leaf: per element, the inputs' cotangents
        for position, out_leaf in enumerate(out):
            rows.append([])
            for index in range(_size(out_leaf)):
                cotangent = [
                    _basis(leaf, index) if other == position else zeros_like(leaf)
                    for other, leaf in enumerate(out)
                ]
                rows[-1].append(vjp_fun(cotangent))
        blocks = [
            [
                _block([row[i] for row in leaf_rows], out_leaf, in_leaf, axis=0)
                for i, in_leaf in enumerate(flat.leaves)
            ]
            for leaf_rows, out_leaf in zip(rows, out)
        ]
        return flat.tree(blocks, many)

    jacrev_fun.__name__ = f"jacrev_{getattr(fun, '__name__', 'fun')}"
    return jacrev_fun


def hessian(
    fun: Callable, argnum: int | Sequence[int] = 0, *, argnums: int | Sequence[int] | None = None
) -> Callable:
    """The Hessian of scalar ``fun``: forward mode over reverse mode (``jacfwd(jacrev(fun))``),
    as JAX and ``torch.func`` build it. Blocks have shape ``input.shape + input.shape``."""
    argnum = _argnums_of("hessian", argnum, argnums)
    hessian_fun = jacfwd(jacrev(fun, argnum), argnum)
    hessian_fun.__name__ = f"hessian_{getattr(fun, '__name__', 'fun')}"
    return hessian_fun


def hvp(fun: Callable, primals: Sequence[Any], tangents: Sequence[Any]) -> tuple[Any, ...]:
    """The Hessian of scalar ``fun`` at ``primals`` times ``tangents``: one entry per argument.

    Forward over reverse: the derivative of the gradient along ``tangents``, at the cost of
    about two gradients, without forming the Hessian.
    """
    if not isinstance(primals, (tuple, list)):
        raise TypeError(
            f"hvp: primals must be a tuple with one entry per argument, got "
            f"{type(primals).__name__}; for one argument x write hvp(fun, (x,), (v,))"
        )
    gradient = _value_and_grad(fun, tuple(range(len(primals))), stacklevel=4)
    return jvp(lambda *args: gradient(*args)[1], primals, tangents)[1]


# ---------------------------------------------------------------------------------------------
# checking and drawing


def _to_float64(x: Any) -> Any:
    if type(x) in PY_SCALARS:
        x = backend_for_device("cpu").xp.asarray(float(x))
    xp = array_backend(x).xp
    return xp.astype(x, xp.float64)


def _random_like(tree: Any, seed: int) -> Any:
    def draw(leaf: Any) -> Any:
        backend = array_backend(leaf)
        return backend.rng(seed).normal(tuple(leaf.shape), dtype=backend.xp.float64)

    return tree_map(draw, tree)


def _inner(a: Any, b: Any) -> float:
    total = 0.0
    for x, y in zip(tree_leaves(a), tree_leaves(b)):
        total += float(array_backend(x).xp.sum(x * y))
    return total


def _with_arg(args: tuple, argnum: int, value: Any) -> tuple:
    return args[:argnum] + (value,) + args[argnum + 1 :]


def _directional(fun: Callable, args: tuple, argnum: int, v: Any, u: Any, eps: float) -> float:
    """``<u, d fun(*args) / d args[argnum] . v>`` by central differences."""
    plus = fun(*_with_arg(args, argnum, tree_map(lambda a, d: a + eps * d, args[argnum], v)))
    minus = fun(*_with_arg(args, argnum, tree_map(lambda a, d: a - eps * d, args[argnum], v)))
    return (_inner(u, plus) - _inner(u, minus)) / (2 * eps)


def _check_mode(
    mode: str, fun: Callable, args: tuple, order: int, eps: float, rtol: float, atol: float
) -> None:
    """One mode's rules for every argument, each along a random direction ``v`` and output
    direction ``u``: ``<u, jvp(v)>`` (forward) or ``<vjp(u), v>`` (reverse) against central
    differences; raises for the worst argument."""
    u = _random_like(tree_map(_to_float64, fun(*args)), seed=order)
    if mode == "rev":
        cotangents = vjp(fun, *args)[1](u)
    worst = None
    for argnum, arg in enumerate(args):
        v = _random_like(arg, seed=100 + argnum)
        if mode == "rev":
            analytic = _inner(cotangents[argnum], v)
        else:
            analytic = _inner(u, _jvp("check_grads", fun, args, {}, (argnum,), (v,))[1])
        numeric = _directional(fun, args, argnum, v, u, eps)
        error, tolerance = abs(analytic - numeric), atol + rtol * abs(numeric)
        if not error <= tolerance and (worst is None or error / tolerance > worst[0]):
            worst = (error / tolerance, argnum, analytic, numeric, error, tolerance)
    if worst is not None:
        _, argnum, analytic, numeric, error, tolerance = worst
        name = getattr(fun, "__name__", "fun")
        rule = "JVP" if mode == "fwd" else "VJP"
        raise AssertionError(
            f"check_grads: {name}, derivative of order {order}: the {rule} for argument "
            f"{argnum} gives {analytic!r} but central differences give {numeric!r} "
            f"(|difference| {error:.3g} > tolerance {tolerance:.3g})"
        )


def check_grads(
    fun: Callable,
    *args: Any,
    modes: Sequence[str] = ("fwd", "rev"),
    order: int = 2,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Check ``fun``'s JVPs and VJPs against central differences in float64, up to ``order``.

    Along one random direction ``v`` per argument and ``u`` for the output, forward mode must
    give ``<u, jvp(v)>`` and reverse mode ``<vjp(u), v>`` equal to the directional derivative
    ``<u, (f(x + eps v) - f(x - eps v)) / 2 eps>``. Each higher order repeats both checks on
    the functions ``(x, v) -> jvp`` and ``(x, u) -> vjp`` (autograd's scheme: forward over
    reverse and reverse over forward are checked too). Raises AssertionError naming the worst
    argument. ``modes=("rev",)`` checks only the VJPs (for ops that have no forward rules).
    """
    for mode in modes:
        if mode not in ("fwd", "rev"):
            raise ValueError(f"check_grads: modes are 'fwd' and 'rev', got {mode!r}")
    args = tuple(tree_map(_to_float64, arg) for arg in args)
    _check_grads(fun, args, tuple(modes), 1, order, eps, rtol, atol)


def _check_grads(
    fun: Callable,
    args: tuple,
    modes: tuple[str, ...],
    level: int,
    order: int,
    eps: float,
    rtol: float,
    atol: float,
) -> None:
    for mode in modes:
        _check_mode(mode, fun, args, level, eps, rtol, atol)
        if level < order:
            if mode == "fwd":
                directions = tuple(_random_like(arg, seed=200 + i) for i, arg in enumerate(args))
                higher, args_higher = _jvp_of(fun, len(args)), (*args, *directions)
            else:
                u = _random_like(tree_map(_to_float64, fun(*args)), seed=level)
                higher, args_higher = _vjp_of(fun), (*args, u)
            _check_grads(higher, args_higher, modes, level + 1, order, eps, rtol, atol)


def _jvp_of(fun: Callable, count: int) -> Callable:
    """``(*args, *tangents) -> jvp(fun, args, tangents)[1]``: differentiating it checks the
    next order."""

    def jvp_fun(*args_and_tangents: Any) -> Any:
        return jvp(fun, args_and_tangents[:count], args_and_tangents[count:])[1]

    jvp_fun.__name__ = f"jvp_of_{getattr(fun, '__name__', 'fun')}"
    return jvp_fun


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
        with on_device_of(seed[0][1]):
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
        rows = [names[node] if node.primitive is None else node.primitive.name]
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
    xp = array_backend(value).xp
    numbers = [f"{float(v):.4g}" for v in xp.reshape(value, (-1,))]
    return numbers[0] if value.ndim == 0 else "[" + ", ".join(numbers) + "]"


def _reachable(tape: list[Node], ends: list[Node], leaves: list[Node]) -> list[Node]:
    """The nodes the outputs depend on, inputs first."""
    needed = set(ends)
    for node in reversed(tape):
        if node in needed:
            needed.update(parent for _, parent in node.parents)
    return [node for node in leaves + tape if node in needed]
