"""Layer 2: pytrees. Arguments and gradients may be nested dicts, lists and tuples of arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["tree_flatten", "tree_leaves", "tree_map", "tree_unflatten"]


def tree_flatten(tree: Any) -> tuple[list[Any], Any]:
    """The leaves in a fixed order, and a description of the containers to rebuild them."""
    leaves: list[Any] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return (dict, tuple(node), tuple(walk(v) for v in node.values()))
        if isinstance(node, (list, tuple)):
            return (type(node), None, tuple(walk(v) for v in node))
        leaves.append(node)
        return None

    return leaves, walk(tree)


def tree_unflatten(treedef: Any, leaves: list[Any]) -> Any:
    """Inverse of ``tree_flatten``: the same containers holding ``leaves``."""
    remaining = iter(leaves)

    def build(spec: Any) -> Any:
        if spec is None:
            return next(remaining)
        container, keys, children = spec
        values = [build(child) for child in children]
        if container is dict:
            return dict(zip(keys, values))
        return container(values)

    return build(treedef)


def tree_leaves(tree: Any) -> list[Any]:
    return tree_flatten(tree)[0]


def tree_map(fun: Callable, tree: Any, *rest: Any) -> Any:
    """``fun`` applied leafwise; ``rest`` are trees of the same structure."""
    leaves, treedef = tree_flatten(tree)
    others = [tree_flatten(r)[0] for r in rest]
    return tree_unflatten(treedef, [fun(*args) for args in zip(leaves, *others)])
