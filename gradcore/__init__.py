"""gradcore: reverse-mode automatic differentiation on NumPy ("cpu") or CuPy ("cuda").

>>> import gradcore as gc
>>> gc.grad(lambda x: gc.sum(gc.tanh(x)))(gc.array([0.0, 1.0]))
array([1.       , 0.4199743], dtype=float32)
"""

# The application modules import the modules they use, never this package face, so they may
# come first: nothing here depends on the order of these lines.
from gradcore import nn, optim, rules, train
from gradcore.backend import Backend, DeviceError, register_backend
from gradcore.devices import array, available_devices, device_of, to_device, to_numpy
from gradcore.differential_operators import (
    check_grads,
    elementwise_grad,
    grad,
    hessian,
    hvp,
    jacfwd,
    jacrev,
    jvp,
    to_dot,
    value_and_grad,
    vjp,
)
from gradcore.jit import jit
from gradcore.ops import (
    abs,
    add,
    argmax,
    astype,
    broadcast_to,
    clip,
    concatenate,
    cos,
    cumsum,
    divide,
    dot,
    equal,
    erf,
    exp,
    expand_dims,
    expm1,
    flip,
    gelu,
    greater,
    greater_equal,
    leaky_relu,
    less,
    less_equal,
    log,
    log1p,
    log_softmax,
    logaddexp,
    logsumexp,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    multiply,
    negative,
    norm,
    not_equal,
    ones_like,
    power,
    prod,
    relu,
    reshape,
    sigmoid,
    sin,
    softmax,
    softplus,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    subtract,
    sum,
    tanh,
    transpose,
    true_divide,
    unbroadcast,
    var,
    where,
    zeros_like,
)
from gradcore.tracer import Box, defjvp, defvjp, primitive, stop_gradient
from gradcore.train import CheckpointError
from gradcore.version import __version__ as __version__

__all__ = [
    "Backend", "Box", "CheckpointError", "DeviceError", "abs", "add", "argmax", "array",
    "astype", "available_devices", "broadcast_to", "check_grads", "clip", "concatenate", "cos",
    "cumsum", "defjvp", "defvjp", "device_of", "divide", "dot", "elementwise_grad", "equal",
    "erf", "exp", "expand_dims", "expm1", "flip", "gelu", "grad", "greater", "greater_equal",
    "hessian", "hvp", "jacfwd", "jacrev", "jit", "jvp", "leaky_relu", "less", "less_equal",
    "log", "log1p", "log_softmax", "logaddexp", "logsumexp", "matmul", "max", "maximum",
    "mean", "min", "minimum", "multiply", "negative", "nn", "norm", "not_equal", "ones_like",
    "optim", "power", "primitive", "prod", "register_backend", "relu", "reshape", "rules",
    "sigmoid", "sin", "softmax", "softplus", "sqrt", "square", "squeeze", "stack", "std",
    "stop_gradient", "subtract", "sum", "tanh", "to_device", "to_dot", "to_numpy", "train",
    "transpose", "true_divide", "unbroadcast", "value_and_grad", "var", "vjp", "where",
    "zeros_like",
]  # fmt: skip


def __getattr__(name: str) -> object:
    """``gc.MLPClassifier``, ``gc.MLPRegressor``: imported on first use, so that ``import
    gradcore`` does not import scikit-learn (PEP 562)."""
    if name in ("MLPClassifier", "MLPRegressor"):
        from gradcore import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'gradcore' has no attribute {name!r}")
