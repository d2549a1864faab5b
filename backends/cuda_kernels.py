"""The fused CUDA kernels: their sources as plain strings, and the functions that launch them.

Each kernel is an element-wise body in CuPy's ``ElementwiseKernel`` form: ``T`` is the array
dtype (CuPy's ``float16``, ``float``, ``double``), inputs are read-only values, outputs are
references written in place, and scalars arrive by value. Arithmetic on CuPy's ``float16``
yields ``float``, so every value stored into a ``T`` is cast back explicitly. The bodies of
the sigmoid, its gradient, erf and GELU are not written here: ``cuda_c`` writes them from the
op's formula (``gradcore.formulas``), the one every device evaluates.

The launch functions are what the ops register for the "cuda" device ("module:function"
strings): each takes native CuPy arrays, and its ``dtypes`` attribute names the dtypes it
handles. Importing this module does not import CuPy; each ``ElementwiseKernel`` is built on
first use and kept, and CuPy compiles it once per dtype and layout (on disk, across processes).
Launches run on the GPU that holds the arrays, whichever GPU is current.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from gradcore.backends import cuda_c

from gradcore import formulas
from gradcore.backend import kernel

FLOAT_DTYPES = ("float16", "float32", "float64")


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


def formula_body(formula: Callable[..., Any], inputs: tuple[str, ...], output: str) -> str:
    """A kernel body that stores ``formula`` (from ``gradcore.formulas``) of ``inputs`` into
    ``output``, as the CUDA C that ``cuda_c`` writes for it."""
    lines, result = cuda_c.emit(formula, list(inputs), "t")
    return " ".join([*lines, f"{output} = (T){result};"])


def _formula_kernel(
    name: str, formula: Callable[..., Any], inputs: tuple[str, ...], output: str
) -> Kernel:
    """The kernel ``gradcore_<name>`` that stores ``formula`` of ``inputs`` into ``output``."""
    return Kernel(
        name=f"gradcore_{name}",
        inputs=inputs,
        scalars=(),
        outputs=(output,),
        body=formula_body(formula, inputs, output),
    )


SIGMOID = _formula_kernel("sigmoid", formulas.sigmoid, ("x",), "y")
# The backward pass needs only the forward output y, not x.
SIGMOID_GRAD = _formula_kernel("sigmoid_grad", formulas.sigmoid_grad, ("y", "g"), "gx")

# SGD with momentum and weight decay, in place on p and v; Nesterov in the Keras form. An if
# rather than ?: since the two branches have different types when T is float16.
SGD_UPDATE = Kernel(
    name="gradcore_sgd_update",
    inputs=("g",),
    scalars=("T lr", "T momentum", "T weight_decay", "bool nesterov"),
    outputs=("p", "v"),
    body=(
        "const T step = (T)(lr * (g + weight_decay * p)); "
        "v = (T)(momentum * v - step); "
        "if (nesterov) { p = (T)(p + (momentum * v - step)); } else { p = (T)(p + v); }"
    ),
)

# The standard has no erf; CUDA's own, one launch (the generic path is a few dozen).
ERF = _formula_kernel("erf", formulas.erf, ("x",), "y")
# GELU through CUDA's erf, as gc.jit's fused chains compute it.
GELU = _formula_kernel("gelu", formulas.gelu, ("x",), "y")

# The optimizers' element-wise updates (gradcore.optim), in place on the parameter and its
# state, each run over all parameters at once (``multi_tensor``). The gradient arrives
# clipped; the weight decay comes as two scalars: ``l2`` adds l2 * p to the gradient
# (PyTorch's weight_decay), ``decay`` multiplies p first (AdamW's decoupled decay,
# 1 - lr * wd; 1 otherwise). Scalars derived from hyperparameters (1 - beta, the bias
# corrections) are computed once per step on the host, in double, and passed in T.
_DECAYED_GRADIENT = "const T gi = (T)(g + l2 * p); "


def _adam(amsgrad: bool) -> Kernel:
    used = "v_max" if amsgrad else "v"
    return Kernel(
        name="gradcore_adam_amsgrad_update" if amsgrad else "gradcore_adam_update",
        inputs=("g",),
        scalars=(
            "T step_size",
            "T bias_correction2_sqrt",
            "T one_minus_beta_1",
            "T beta_2",
            "T one_minus_beta_2",
            "T epsilon",
            "T l2",
            "T decay",
        ),  # fmt: skip
        outputs=("p", "m", "v", "v_max") if amsgrad else ("p", "m", "v"),
        body=(
            _DECAYED_GRADIENT
            + "m = (T)(m + one_minus_beta_1 * (gi - m)); "
            + "v = (T)(beta_2 * v + one_minus_beta_2 * gi * gi); "
            + ("if (v > v_max) { v_max = v; } " if amsgrad else "")
            + f"const T denominator = (T)(sqrt({used}) / bias_correction2_sqrt + epsilon); "
            + "p = (T)(decay * p - step_size * m / denominator);"
        ),
    )


def _rmsprop(centered: bool, momentum: bool) -> Kernel:
    variant = "_centered" * centered + "_momentum" * momentum
    outputs = ("p", "r") + ("m",) * centered + ("b",) * momentum
    if centered:
        denominator = "m = (T)(m + one_minus_rho * (gi - m)); " + (
            "const T d = (T)(sqrt((T)(r - m * m)) + epsilon); "
        )
    else:
        denominator = "const T d = (T)(sqrt(r) + epsilon); "
    if momentum:
        update = "b = (T)(momentum * b + gi / d); p = (T)(p - lr * b);"
    else:
        update = "p = (T)(p - lr * gi / d);"
    return Kernel(
        name=f"gradcore_rmsprop{variant}_update",
        inputs=("g",),
        scalars=("T lr", "T rho", "T one_minus_rho", "T momentum", "T epsilon", "T l2"),
        outputs=outputs,
        body=(
            _DECAYED_GRADIENT
            + "r = (T)(rho * r + one_minus_rho * gi * gi); "
            + denominator
            + update
        ),
    )


ADAM_UPDATES = {amsgrad: _adam(amsgrad) for amsgrad in (False, True)}
RMSPROP_UPDATES = {(c, m): _rmsprop(c, m) for c in (False, True) for m in (False, True)}
ADAGRAD_UPDATE = Kernel(
    name="gradcore_adagrad_update",
    inputs=("g",),
    scalars=("T lr", "T epsilon", "T l2"),
    outputs=("p", "r"),
    body=_DECAYED_GRADIENT + "r = (T)(r + gi * gi); p = (T)(p - lr * gi / (sqrt(r) + epsilon));",
)

KERNELS = (
    SIGMOID,
    SIGMOID_GRAD,
    SGD_UPDATE,
    ERF,
    GELU,
    *ADAM_UPDATES.values(),
    *RMSPROP_UPDATES.values(),
    ADAGRAD_UPDATE,
)


@cache
def elementwise_kernel(kernel: Kernel) -> Any:
    """The ``cupy.ElementwiseKernel`` of ``kernel``, built once (a hot path must not rebuild it:
    building re-parses and re-hashes the source)."""
    import cupy

    return cupy.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.body, kernel.name)


@kernel(dtypes=FLOAT_DTYPES)
def sigmoid(x: Any) -> Any:
    """Logistic function of a CuPy array, one launch."""
    with x.device:
        return elementwise_kernel(SIGMOID)(x)


@kernel(dtypes=FLOAT_DTYPES)
def sigmoid_grad(y: Any, g: Any) -> Any:
    """``g * y * (1 - y)`` for CuPy arrays of one dtype and shape, one launch."""
    with y.device:
        return elementwise_kernel(SIGMOID_GRAD)(y, g)


@kernel(dtypes=FLOAT_DTYPES)
def erf(x: Any) -> Any:
    """The error function of a CuPy array, one launch."""
    with x.device:
        return elementwise_kernel(ERF)(x)


@kernel(dtypes=FLOAT_DTYPES)
def gelu(x: Any) -> Any:
    """``x Phi(x)`` of a CuPy array, one launch."""
    with x.device:
        return elementwise_kernel(GELU)(x)


@kernel(dtypes=FLOAT_DTYPES)
def sgd_update(
    param: Any,
    grad: Any,
    velocity: Any,
    learning_rate: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """In place: ``v = momentum v - lr (g + wd p)``, then ``p += v`` (or the Nesterov form).

    One launch per parameter; one per model when params, grads and velocities are views of
    three flat buffers (the kernel is element-wise, so pass the flat buffers).
    """
    with param.device:
        elementwise_kernel(SGD_UPDATE)(
            grad.astype(param.dtype, copy=False),
            float(learning_rate),
            float(momentum),
            float(weight_decay),
            bool(nesterov),
            param,
            velocity,
        )


# ---------------------------------------------------------------------------------------------
# Multi-tensor updates: one launch for every parameter of a dtype

MULTI_TENSOR_DTYPES = ("float32", "float64")
CTYPES = {"float32": "float", "float64": "double"}


def multi_tensor_params(kernel: Kernel, dtype: str) -> str:
    """``in_params`` of ``kernel`` over many tensors: the tables, then its scalars in ``dtype``."""
    scalars = [f"{dtype} {spec[2:]}" if spec.startswith("T ") else spec for spec in kernel.scalars]
    return ", ".join(["raw uint64 addresses", "raw int64 ends", "int32 n_tensors", *scalars])


def multi_tensor_operation(kernel: Kernel) -> str:
    """``kernel``'s element-wise body run at element i of several tensors laid end to end, as
    ``torch.optim``'s fused optimizers do: i belongs to tensor k, the first whose end
    ``ends[k]`` lies past i (found by bisection), where it is element j. ``addresses`` holds,
    per tensor, the addresses of its arrays in the kernel's order (inputs, then outputs), each
    C-contiguous; ``T`` is their element type."""
    arrays = (*kernel.inputs, *kernel.outputs)
    binds = [f"const T {name} = reinterpret_cast<const T*>(a[{k}])[j];"
             for k, name in enumerate(kernel.inputs)]  # fmt: skip
    binds += [
        f"T& {name} = reinterpret_cast<T*>(a[{len(kernel.inputs) + k}])[j];"
        for k, name in enumerate(kernel.outputs)
    ]
    return "\n".join([
        "int k = 0, last = n_tensors - 1;",
        "while (k < last) { const int mid = (k + last) / 2; "
        "if (ends[mid] > i) { last = mid; } else { k = mid + 1; } }",
        "const long long j = i - (k > 0 ? ends[k - 1] : 0);",
        f"const unsigned long long* a = &addresses[(long long)k * {len(arrays)}];",
        *binds,
        kernel.body,
    ])  # fmt: skip


@cache
def multi_tensor_kernel(kernel: Kernel, dtype: str) -> Any:
    """The ``cupy.ElementwiseKernel`` of ``kernel`` over many tensors of ``dtype``, built once;
    it has no element-wise arrays, so a launch gives its ``size``: all the tensors' elements."""
    import cupy

    return cupy.ElementwiseKernel(
        multi_tensor_params(kernel, dtype),
        "",
        multi_tensor_operation(kernel),
        f"{kernel.name}_all",
        preamble=f"typedef {CTYPES[dtype]} T;",
    )


def _address(x: Any) -> int:
    return x.data.ptr


def _launch_on_device(kernel: Kernel, dtype: str, addresses, ends, scalars, device) -> None:
    """Copy the tables to the GPU (CuPy stages them in pinned memory: no wait) and launch."""
    import cupy

    with device:
        table, bounds = cupy.asarray(addresses), cupy.asarray(ends)
        launch = multi_tensor_kernel(kernel, dtype)
        launch(table, bounds, len(ends), *scalars, size=int(ends[-1]))


def multi_tensor(kernel: Kernel, tensors: list[list[Any]], scalars: tuple) -> None:
    """``kernel``'s body over every element of ``tensors`` (per tensor: its arrays in the
    kernel's order, inputs then outputs, all of one dtype), in one launch. Outputs must be
    C-contiguous; inputs are cast and made so."""
    n_in = len(kernel.inputs)
    first = tensors[0][n_in]
    tensors = [
        [x.astype(first.dtype, copy=False).reshape(-1) for x in arrays[:n_in]] + arrays[n_in:]
        for arrays in tensors
    ]
    addresses = np.array([[_address(x) for x in arrays] for arrays in tensors], np.uint64)
    ends = np.cumsum([arrays[n_in].size for arrays in tensors], dtype=np.int64)
    _launch_on_device(kernel, str(first.dtype), addresses, ends, scalars, first.device)


@kernel(dtypes=MULTI_TENSOR_DTYPES)
def sgd_update_all(tensors: list[list[Any]], learning_rate: float, momentum: float,
                   nesterov: bool, weight_decay: float) -> None:  # fmt: skip
    """SGD over every parameter: per tensor ``[g, p, v]``; one launch."""
    multi_tensor(SGD_UPDATE, tensors, (learning_rate, momentum, weight_decay, nesterov))


@kernel(dtypes=MULTI_TENSOR_DTYPES)
def adam_update_all(
    tensors: list[list[Any]], step_size: float, bias_correction2_sqrt: float, beta_1: float,
    beta_2: float, epsilon: float, l2: float, decay: float,
) -> None:  # fmt: skip
    """Adam (AdamW with ``decay``) over every parameter: per tensor ``[g, p, m, v]``, and the
    maximum of v after them with amsgrad; one launch."""
    kernel = ADAM_UPDATES[len(tensors[0]) == 5]
    multi_tensor(kernel, tensors, (step_size, bias_correction2_sqrt, 1.0 - beta_1, beta_2,
                                   1.0 - beta_2, epsilon, l2, decay))  # fmt: skip


@kernel(dtypes=MULTI_TENSOR_DTYPES)
def rmsprop_update_all(
    tensors: list[list[Any]], learning_rate: float, rho: float, momentum: float, epsilon: float,
    l2: float, centered: bool,
) -> None:  # fmt: skip
    """RMSprop over every parameter: per tensor ``[g, p, r]``, then the mean gradient
    (centered) and the velocity (momentum); one launch."""
    kernel = RMSPROP_UPDATES[centered, bool(momentum)]
    multi_tensor(kernel, tensors, (learning_rate, rho, 1.0 - rho, momentum, epsilon, l2))


@kernel(dtypes=MULTI_TENSOR_DTYPES)
def adagrad_update_all(tensors: list[list[Any]], learning_rate: float, epsilon: float,
                       l2: float) -> None:  # fmt: skip
    """Adagrad over every parameter: per tensor ``[g, p, r]``; one launch."""
    multi_tensor(ADAGRAD_UPDATE, tensors, (learning_rate, epsilon, l2))
