"""CUDA code generation for ``gc.jit``: each run of elementwise steps becomes one kernel.

The CuPy backend's ``fuse`` (the ``gradcore.backend.Fuser`` protocol) calls ``fuse`` here:
``fusion_groups`` picks runs of consecutive elementwise steps of a recorded program, and each
run is written as one ``cupy.ElementwiseKernel`` body, a few lines per step
(``const T v12 = (v9 * in0);``), so the intermediate values live in registers instead of in
arrays. Each step's line is its op's ``formula`` (``gradcore.formulas``) written out by
``cuda_c``, the same writer as the fused kernels'. The source is a plain string, made without
CuPy (the test suite compiles it with nvcc for float and double); the kernel object is built
once per distinct source, when a program is built, and CuPy compiles it once per dtype and
caches the binary.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from gradcore.backends import cuda_c

from gradcore.backend import Fused

__all__ = ["FUSED_DTYPES", "FusedKernel", "fuse", "fusion_groups", "generate"]

# What a fused kernel is generated for.
FUSED_DTYPES = ("float32", "float64")


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


def fusion_groups(program: Any) -> list[list[int]]:
    """Runs of two or more consecutive steps that one elementwise kernel can compute.

    A step joins the run when its op has a ``formula``, its result has the run's shape and
    dtype, and every array it reads has that dtype and broadcasts to that shape (Python
    numbers are written into the kernel as literals). Anything else ends the run: a
    reduction, a matmul, an in-place update, a change of shape.
    """
    groups: list[list[int]] = []
    run: list[int] = []
    shape = dtype = None
    for index, step in enumerate(program.steps):
        spec = program.specs[step.out]
        fits = (
            getattr(step.primitive, "formula", None) is not None
            and spec is not None
            and spec[1] in FUSED_DTYPES
            and (not run or spec == (shape, dtype))
            and all(_operand_fits(program, slot, spec) for slot in step.args)
        )
        if not fits:
            if len(run) > 1:
                groups.append(run)
            run = []
            continue
        if not run:
            shape, dtype = spec
        run.append(index)
    if len(run) > 1:
        groups.append(run)
    return groups


def _operand_fits(program: Any, slot: int, spec: tuple) -> bool:
    operand = program.specs[slot]
    if operand is None:  # a Python number, inlined as a literal
        value = program.template[slot]
        return type(value) in (int, float) and math.isfinite(value)
    shape, dtype = operand
    return (
        dtype == spec[1]
        and len(shape) <= len(spec[0])
        and all(n in (1, m) for n, m in zip(reversed(shape), reversed(spec[0])))
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
        shared, expression = cuda_c.emit(step.primitive.formula, operands, f"v{step.out}_")
        lines += [*shared, f"const T v{step.out} = {expression};"]
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


def fuse(program: Any, build: Callable[[FusedKernel], Any] | None = None) -> list[Fused] | None:
    """One kernel per fused group of ``program``'s steps; None where there is none.

    A kernel with several outputs returns a tuple of them. ``build`` makes the callable kernel
    (CuPy's, by default; the tests pass an interpreter of the source, to run fused programs
    without a GPU).
    """
    fused = []
    for group in fusion_groups(program):
        kernel, inputs, outputs = generate(program, group)
        call = (build or _elementwise_kernel)(kernel)
        fused.append(Fused(kernel.name, call, tuple(group), tuple(inputs), tuple(outputs)))
    return fused or None
