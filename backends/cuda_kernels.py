"""CUDA sources of the fused kernels, as plain strings: no CuPy here.

Each kernel is an element-wise body in CuPy's ``ElementwiseKernel`` form: ``T`` is the array
dtype (float or double), inputs are read-only values, outputs are references written in place,
and scalars arrive by value in the array's dtype. The CuPy backend builds each kernel once, on
first use; CuPy compiles it for each dtype on first call and caches the binary. The test suite
compiles the same bodies with nvcc on machines without a GPU, via ``translation_unit``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kernel:
    name: str
    inputs: tuple[str, ...]  # per-element inputs, dtype T
    scalars: tuple[str, ...]  # per-launch scalars, "type name"
    outputs: tuple[str, ...]  # per-element outputs, dtype T, read-write
    body: str

    @property
    def in_params(self) -> str:
        """CuPy's ``in_params``: element-wise inputs first, then scalars."""
        return ", ".join([f"T {name}" for name in self.inputs] + list(self.scalars))

    @property
    def out_params(self) -> str:
        return ", ".join(f"T {name}" for name in self.outputs)

    def translation_unit(self) -> str:
        """A complete .cu file: the body as a ``__global__`` kernel for float and for double."""
        params = [f"const T* __restrict__ {name}_" for name in self.inputs]
        params += list(self.scalars)
        params += [f"T* __restrict__ {name}_" for name in self.outputs]
        params.append("long long n")
        loads = [f"    const T {name} = {name}_[i];" for name in self.inputs]
        loads += [f"    T& {name} = {name}_[i];" for name in self.outputs]
        kernel = "\n".join(
            [
                f"__global__ void {self.name}({', '.join(params)}) {{",
                "    const long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;",
                "    if (i >= n) return;",
                *loads,
                f"    {self.body}",
                "}",
            ]
        )
        return "\n".join(
            f"namespace {space} {{\ntypedef {ctype} T;\n{kernel}\n}}\n"
            for space, ctype in (("f32", "float"), ("f64", "double"))
        )


# tanh form: no exp to overflow for any finite x, and exact to rounding near 0 and 1.
SIGMOID = Kernel(
    name="gradcore_sigmoid",
    inputs=("x",),
    scalars=(),
    outputs=("y",),
    body="y = tanh(x * (T)0.5) * (T)0.5 + (T)0.5;",
)

# The backward pass needs only the forward output y, not x.
SIGMOID_GRAD = Kernel(
    name="gradcore_sigmoid_grad",
    inputs=("y", "g"),
    scalars=(),
    outputs=("gx",),
    body="gx = g * y * ((T)1 - y);",
)

# SGD with momentum and weight decay, in place on p and v; Nesterov in the Keras form.
SGD_UPDATE = Kernel(
    name="gradcore_sgd_update",
    inputs=("g",),
    scalars=("T lr", "T momentum", "T weight_decay", "bool nesterov"),
    outputs=("p", "v"),
    body=(
        "const T step = lr * (g + weight_decay * p); "
        "v = momentum * v - step; "
        "p += nesterov ? momentum * v - step : v;"
    ),
)

KERNELS = (SIGMOID, SIGMOID_GRAD, SGD_UPDATE)
