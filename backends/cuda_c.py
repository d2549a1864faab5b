"""A namespace whose values are CUDA C expressions: formulas evaluated with it write source.

``gradcore.formulas`` writes each elementwise formula once, as a Python function of a namespace
``m``. Called with ``CUDA`` and one ``Value`` per argument, it builds the expression tree of the
formula; ``emit`` writes it out as CUDA C of element type ``T``: a ``const T`` line for each
value read more than once (``e`` in the sigmoid), the rest inline. CuPy's ``float16`` turns
arithmetic into ``float``, so each value stored into a ``T`` is cast back explicitly; Python
numbers become ``(T)`` literals. The fused kernels (``cuda_kernels``) and ``gc.jit``'s fused
chains (``cuda_fusion``) are both written this way. Plain strings: no CuPy here.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

__all__ = ["CUDA", "Value", "emit"]


class Value:
    """One node of a formula's expression tree: ``template`` (``"exp({0})"``) over ``args``,
    of C type ``T`` or ``bool``; a leaf (an argument or a literal) has no args."""

    __slots__ = ("template", "args", "type")

    def __init__(self, template: str, args: tuple[Value, ...] = (), type: str = "T") -> None:  # noqa: A002
        self.template, self.args, self.type = template, args, type

    # arithmetic (a Python number on either side becomes a literal of type T)
    def __add__(self, other: Any) -> Value:
        return _call("({0} + {1})", self, other)

    def __radd__(self, other: Any) -> Value:
        return _call("({0} + {1})", other, self)

    def __sub__(self, other: Any) -> Value:
        return _call("({0} - {1})", self, other)

    def __rsub__(self, other: Any) -> Value:
        return _call("({0} - {1})", other, self)

    def __mul__(self, other: Any) -> Value:
        return _call("({0} * {1})", self, other)

    def __rmul__(self, other: Any) -> Value:
        return _call("({0} * {1})", other, self)

    def __truediv__(self, other: Any) -> Value:
        return _call("({0} / {1})", self, other)

    def __rtruediv__(self, other: Any) -> Value:
        return _call("({0} / {1})", other, self)

    def __pow__(self, other: Any) -> Value:
        return _call("pow({0}, {1})", self, other)

    def __rpow__(self, other: Any) -> Value:
        return _call("pow({0}, {1})", other, self)

    def __neg__(self) -> Value:
        return _call("(-{0})", self)

    # comparisons give bool values (``where`` takes them)
    def __lt__(self, other: Any) -> Value:
        return _call("({0} < {1})", self, other, type="bool")

    def __le__(self, other: Any) -> Value:
        return _call("({0} <= {1})", self, other, type="bool")

    def __gt__(self, other: Any) -> Value:
        return _call("({0} > {1})", self, other, type="bool")

    def __ge__(self, other: Any) -> Value:
        return _call("({0} >= {1})", self, other, type="bool")


def _call(template: str, *args: Any, type: str = "T") -> Value:  # noqa: A002
    return Value(template, tuple(a if isinstance(a, Value) else _literal(a) for a in args), type)


def _literal(number: Any) -> Value:
    if type(number) not in (bool, int, float):
        raise TypeError(f"a CUDA formula takes values and Python numbers, not {number!r}")
    return Value(f"((T){float(number)!r})")


def _function(name: str) -> Callable[..., Value]:
    return lambda *args: _call(f"{name}({', '.join(f'{{{k}}}' for k in range(len(args)))})", *args)


def _astype(value: Value, dtype: str) -> Value:
    """``value`` as a ``T`` (the one type a kernel computes in): a comparison is 1 or 0."""
    if dtype != "T":
        raise TypeError(f"a CUDA formula computes in its element type T, not {dtype!r}")
    return _call("((T)({0}))", value) if value.type == "bool" else value


# The Array API names a formula may use, as CUDA C (CUDA's overloads pick float or double;
# CUDA's max and min, like fmax and fmin, drop a NaN operand).
CUDA = SimpleNamespace(
    **{
        name: _function(name)
        for name in ("exp", "log", "sin", "cos", "tanh", "sqrt", "log1p", "expm1", "erf")
    },
    abs=_function("fabs"),
    maximum=_function("max"),
    minimum=_function("min"),
    result_type=lambda *values: "T",
    astype=_astype,
    where=lambda condition, x, y: _call("({0} ? (T){1} : (T){2})", condition, x, y),
)


def emit(formula: Callable[..., Any], operands: list[str], prefix: str) -> tuple[list[str], str]:
    """``formula`` over the C expressions ``operands``: the lines that bind its shared values
    (named ``prefix0``, ``prefix1``, ...), and the expression of its result."""
    result = formula(CUDA, *(Value(operand) for operand in operands))
    if not isinstance(result, Value):  # a formula that ignores its arguments
        result = _literal(result)
    uses: dict[int, int] = {}
    order: list[Value] = []  # every node once, arguments before the nodes that read them

    def visit(node: Value) -> None:
        uses[id(node)] = uses.get(id(node), 0) + 1
        if uses[id(node)] > 1:
            return
        for position, arg in enumerate(node.args):
            for _ in range(node.template.count(f"{{{position}}}")):
                visit(arg)
        order.append(node)

    visit(result)
    names: dict[int, str] = {}

    def code(node: Value) -> str:
        return names.get(id(node)) or node.template.format(*map(code, node.args))

    lines: list[str] = []
    for node in order:
        if node.args and uses[id(node)] > 1:
            name = f"{prefix}{len(lines)}"
            cast = "(T)" if node.type == "T" else ""
            lines.append(f"const {node.type} {name} = {cast}{code(node)};")
            names[id(node)] = name
    return lines, code(result)
