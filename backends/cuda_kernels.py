"""The fused CUDA kernels: their sources as plain strings, and the functions that launch them.

Each kernel is an element-wise body in CuPy's ``ElementwiseKernel`` form: ``T`` is the array
dtype (CuPy's ``float16``, ``float``, ``double``), inputs are read-only values, outputs are
references written in place, and scalars arrive by value. Arithmetic on CuPy's ``float16``
yields ``float``, so every value stored into a ``T`` is cast back explicitly. The sigmoid's
bodies are not written here: ``cuda_c`` writes them from the op's formula
(``gradcore.formulas``), the one every device evaluates.

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

from gradcore.backends import cuda_c

from gradcore import formulas

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


SIGMOID = Kernel(
    name="gradcore_sigmoid",
    inputs=("x",),
    scalars=(),
    outputs=("y",),
    body=formula_body(formulas.sigmoid, ("x",), "y"),
)

# The backward pass needs only the forward output y, not x.
SIGMOID_GRAD = Kernel(
    name="gradcore_sigmoid_grad",
    inputs=("y", "g"),
    scalars=(),
    outputs=("gx",),
    body=formula_body(formulas.sigmoid_grad, ("y", "g"), "gx"),
)

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

# The adaptive optimizers (gradcore.optim), one launch per parameter, in place on the parameter
# and its state. The gradient arrives clipped; the weight decay comes as two scalars: ``l2``
# adds l2 * p to the gradient (PyTorch's weight_decay), ``decay`` multiplies p first (AdamW's
# decoupled decay, 1 - lr * wd; 1 otherwise). Scalars derived from hyperparameters (1 - beta,
# the bias corrections) are computed once per step on the host, in double.
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


def sigmoid(x: Any) -> Any:
    """Logistic function of a CuPy array, one launch."""
    with x.device:
        return elementwise_kernel(SIGMOID)(x)


def sigmoid_grad(y: Any, g: Any) -> Any:
    """``g * y * (1 - y)`` for CuPy arrays of one dtype and shape, one launch."""
    with y.device:
        return elementwise_kernel(SIGMOID_GRAD)(y, g)


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


def adam_update(
    param: Any, grad: Any, state: list[Any], step_size: float, bias_correction2_sqrt: float,
    beta_1: float, beta_2: float, epsilon: float, l2: float, decay: float,
) -> None:  # fmt: skip
    """Adam's (or AdamW's, with ``decay``) update of one parameter, one launch; ``state`` is
    its first and second moments, and with amsgrad the maximum of the second."""
    kernel = ADAM_UPDATES[len(state) == 3]
    with param.device:
        elementwise_kernel(kernel)(
            grad.astype(param.dtype, copy=False), float(step_size), float(bias_correction2_sqrt),
            1.0 - beta_1, float(beta_2), 1.0 - beta_2, float(epsilon), float(l2), float(decay),
            param, *state,
        )  # fmt: skip


def rmsprop_update(
    param: Any, grad: Any, state: list[Any], learning_rate: float, rho: float, momentum: float,
    epsilon: float, l2: float, centered: bool,
) -> None:  # fmt: skip
    """RMSprop's update of one parameter, one launch; ``state`` is its mean square, then the
    mean gradient (centered) and the velocity (momentum), as the variant keeps them."""
    kernel = RMSPROP_UPDATES[centered, bool(momentum)]
    with param.device:
        elementwise_kernel(kernel)(
            grad.astype(param.dtype, copy=False), float(learning_rate), float(rho), 1.0 - rho,
            float(momentum), float(epsilon), float(l2), param, *state,
        )  # fmt: skip


def adagrad_update(
    param: Any, grad: Any, state: list[Any], learning_rate: float, epsilon: float, l2: float
) -> None:
    """Adagrad's update of one parameter, one launch; ``state`` is its accumulator."""
    with param.device:
        elementwise_kernel(ADAGRAD_UPDATE)(
            grad.astype(param.dtype, copy=False), float(learning_rate), float(epsilon),
            float(l2), param, *state,
        )  # fmt: skip


for _launch in (sigmoid, sigmoid_grad, sgd_update, adam_update, rmsprop_update, adagrad_update):
    _launch.dtypes = FLOAT_DTYPES
