"""CUDA code generation for ``gc.jit``: each fused group of elementwise steps becomes one kernel.

``gradcore.jit.fusion_groups`` picks runs of consecutive elementwise steps; here each run is
written as one ``cupy.ElementwiseKernel`` body, one line per step (``T v12 = (v9 * in0);``),
so the intermediate values live in registers instead of in arrays. The source is a plain
string, made without CuPy (the test suite compiles it with nvcc for float and double); the
kernel object is built once per distinct source, when a program is built, and CuPy compiles
it once per dtype and caches the binary.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["FusedKernel", "fuse", "generate"]


@dataclass(frozen=True)
class FusedKernel:
    """An ElementwiseKernel's parts: ``n_inputs`` arrays ``in0..``, ``n_outputs`` ``out0..``."""

    name: str
    n_inputs: int
    n_outputs: int
    body: str

    @property
    def in_params(self) -> str:
        return ", ".join(f"T in{k}" for k in range(self.n_inputs))

    @property
    def out_params(self) -> str:
        return ", ".join(f"T out{k}" for k in range(self.n_outputs))

    def translation_unit(self) -> str:
        """A complete .cu file: the body as a ``__global__`` kernel for float and for double."""
        params = [f"const T* __restrict__ in{k}_" for k in range(self.n_inputs)]
        params += [f"T* __restrict__ out{k}_" for k in range(self.n_outputs)]
        loads = [f"    const T in{k} = in{k}_[i];" for k in range(self.n_inputs)]
        loads += [f"    T& out{k} = out{k}_[i];" for k in range(self.n_outputs)]
        kernel = "\n".join(
            [
                f"__global__ void {self.name}({', '.join(params)}, long long n) {{",
                "    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;",
                "    if (i >= n) return;",
                *loads,
                *(f"    {line}" for line in self.body.splitlines()),
                "}",
            ]
        )
        return "\n".join(
            f"namespace {space} {{\ntypedef {ctype} T;\n{kernel}\n}}\n"
            for space, ctype in (("f32", "float"), ("f64", "double"))
        )


def generate(program: Any, group: list[int]) -> tuple[FusedKernel, list[int], list[int]]:
    """The kernel for one group of ``program``'s steps, its input slots and its output slots.

    Outputs are the group's results read after the group (or returned by the program);
    the rest stay in registers.
    """
    steps = [program.steps[index] for index in group]
    produced = {step.out for step in steps}
    later = {slot for step in program.steps[group[-1] + 1 :] for slot in step.args}
    inputs: list[int] = []
    names: dict[int, str] = {}
    lines = []
    for step in steps:
        operands = []
        for slot in step.args:
            if slot in produced:
                operands.append(names[slot])
            elif program.specs[slot] is None:  # a Python number
                operands.append(f"((T){program.template[slot]!r})")
            else:
                if slot not in inputs:
                    inputs.append(slot)
                operands.append(f"in{inputs.index(slot)}")
        names[step.out] = f"v{step.out}"
        lines.append(f"const T v{step.out} = {step.expression.format(*operands)};")
    outputs = [s.out for s in steps if s.out in later or s.out in program.outputs]
    lines += [f"out{k} = v{slot};" for k, slot in enumerate(outputs)]
    body = "\n".join(lines)
    digest = hashlib.sha1(body.encode()).hexdigest()[:12]
    return FusedKernel(f"gradcore_fused_{digest}", len(inputs), len(outputs), body), inputs, outputs


@cache
def _elementwise_kernel(kernel: FusedKernel) -> Any:
    """The CuPy kernel object, built once per distinct source."""
    import cupy

    return cupy.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.body, kernel.name)


def fuse(program: Any, build: Callable[[FusedKernel], Any] | None = None) -> list[Any]:
    """``program.steps`` with each fused group replaced by one kernel call.

    A kernel with several outputs returns a tuple: it goes into a new slot, and one step per
    output takes its item out. ``build`` makes the callable kernel (CuPy's, by default; the
    tests pass an interpreter of the source, to run fused programs without a GPU).
    """
    from gradcore.jit import Step

    first = {group[0]: group for group in program.groups}
    skipped = {index for group in program.groups for index in group}
    steps = []
    for index, step in enumerate(program.steps):
        if index in first:
            kernel, inputs, outputs = generate(program, first[index])
            call = (build or _elementwise_kernel)(kernel)
            if len(outputs) == 1:
                steps.append(Step(kernel.name, call, tuple(inputs), {}, outputs[0]))
                continue
            both = program._new_slot(None, None)
            steps.append(Step(kernel.name, call, tuple(inputs), {}, both))
            steps += [
                Step("item", operator.itemgetter(k), (both,), {}, slot)
                for k, slot in enumerate(outputs)
            ]
        elif index not in skipped:
            steps.append(step)
    return steps
