"""Layer 5: multilayer perceptrons, dropout, and losses.

A network is plain data: a list of layers ``{"W": (fan_in, fan_out), "b": (fan_out,)}``, so
it is a pytree that ``grad`` differentiates and ``optim.SGD`` updates in place. Every loss
reduces by the mean over the batch, and every loss is written so that it stays finite for any
finite input (clipping, log-sum-exp, log-softmax).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gradcore import ops
from gradcore.backend import array_backend, isdtype, on_device_of
from gradcore.devices import array
from gradcore.ops import affine, shape
from gradcore.random import Generator, random_uniform_like
from gradcore.tracer import getval, stop_gradient

__all__ = [
    "accuracy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "dropout",
    "init_mlp",
    "mlp",
    "mse",
    "softmax_cross_entropy",
    "target_checks",
]

# Reading label values to check them waits for the device. ``fit`` checks every label once
# before training, then turns the checks off so that a training step never waits.
_check_values = contextvars.ContextVar("gradcore_nn_check_values", default=True)


@contextlib.contextmanager
def target_checks(enabled: bool) -> Iterator[None]:
    """Turn the losses' checks of target values (not shapes) on or off within a block."""
    token = _check_values.set(enabled)
    try:
        yield
    finally:
        _check_values.reset(token)


# ---------------------------------------------------------------------------------------------
# the network


def init_mlp(
    sizes: list[int],
    seed: int = 0,
    device: str | None = None,
    dtype: Any = "float32",
    init: str = "glorot",
) -> list[dict[str, Any]]:
    """Layers for ``sizes = [inputs, hidden..., outputs]``, weights drawn from ``seed``.

    ``init="glorot"`` draws U(-r, r) with r = sqrt(6 / (fan_in + fan_out)), which keeps
    sigmoid and tanh units out of saturation; ``init="he"`` draws N(0, 2 / fan_in), for ReLU.
    Biases start at zero. Weights are drawn on the host and then moved, so a seed gives the
    same network on every device.
    """
    if len(sizes) < 2 or any(int(n) != n or n < 1 for n in sizes):
        raise ValueError(f"init_mlp: sizes must be at least two positive integers, got {sizes}")
    if init not in ("glorot", "he"):
        raise ValueError(f"init_mlp: init must be 'glorot' or 'he', got {init!r}")
    rng = np.random.default_rng(seed)
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        if init == "glorot":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weights = rng.uniform(-limit, limit, (fan_in, fan_out))
        else:
            weights = rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_in, fan_out))
        layers.append(
            {
                "W": array(weights, dtype=dtype, device=device),
                "b": array(np.zeros(fan_out), dtype=dtype, device=device),
            }
        )
    return layers


def mlp(
    params: list[dict[str, Any]],
    x: Any,
    activation: Callable = ops.sigmoid,
    dropout_rate: float = 0.0,
    rng: Generator | None = None,
) -> Any:
    """The logits ``h @ W + b`` of the last layer; hidden layers apply ``activation``.

    The output layer is left linear so that the loss can fuse its own nonlinearity (the
    stable ``*_with_logits`` and log-softmax forms). With ``dropout_rate`` (and the ``rng`` to
    draw masks from) each hidden layer's output goes through ``dropout``: pass it when
    training, leave it out to evaluate.
    """
    for layer in params[:-1]:
        x = activation(affine(x, layer["W"], layer["b"]))
        if dropout_rate:
            x = dropout(x, dropout_rate, rng)
    last = params[-1]
    return affine(x, last["W"], last["b"])


def dropout(x: Any, rate: float, rng: Generator | None, training: bool = True) -> Any:
    """Inverted dropout: each element of ``x`` is zeroed with probability ``rate`` and the
    others are scaled by ``1 / (1 - rate)``, so the expected output is ``x`` and evaluation
    (``training=False``) returns ``x`` itself.

    The mask is drawn from ``rng`` (a ``gradcore.random.Generator``) at every call, and at
    every replay of a ``gc.jit`` program, so a seed gives the same masks eagerly and jitted;
    see ``gradcore.random`` for why a generator rather than keys. The gradient flows through
    the mask: ``d dropout(x) / dx = mask / (1 - rate)``.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"dropout: rate must be a number in [0, 1), got {type(rate).__name__}")
    if not 0.0 <= rate < 1.0:
        raise ValueError(
            f"dropout: rate must be in [0, 1) (the fraction of units dropped), got {rate}"
        )
    if not training or rate == 0.0:
        return x
    if not isinstance(rng, Generator):
        raise TypeError(
            "dropout: rng must be a gradcore.random.Generator (seeded once, outside the step), "
            f"got {type(rng).__name__}"
        )
    # The mask, scaled: a constant for differentiation, so backward is one product.
    with on_device_of(getval(x)):  # untraced, ``>=`` and ``*`` are CuPy's: on the current GPU
        keep = random_uniform_like(x, rng) >= float(rate)
        return x * (ops.astype(keep, x.dtype) * (1.0 / (1.0 - rate)))


# ---------------------------------------------------------------------------------------------
# checking targets


def _binary_targets(name: str, z: Any, y: Any) -> Any:
    """Targets as an array of ``z``'s dtype and shape; one output column may hold them."""
    if not hasattr(y, "shape"):
        raise TypeError(f"{name}: targets must be an array, got {type(y).__name__}")
    if shape(z) != shape(y):
        if shape(z) != (*shape(y), 1):
            raise ValueError(
                f"{name}: predictions of shape {shape(z)} and targets of shape {shape(y)}; "
                "they must match (a single output column (n, 1) may go with targets (n,))"
            )
        y = ops.reshape(y, shape(z))  # one output unit: reshape the targets, not z
    if y.dtype != z.dtype:
        y = ops.astype(y, z.dtype)
    if _check_values.get() and _outside_unit_interval(y):
        raise ValueError(f"{name}: targets must lie in [0, 1] (labels 0 and 1, or probabilities)")
    return y


def _outside_unit_interval(x: Any) -> bool:
    """Whether a value of ``x`` lies outside [0, 1] (one read of the device)."""
    raw = getval(x)
    with on_device_of(raw):  # CuPy's operators launch on the current GPU, not raw's
        outside = array_backend(raw).xp.any((raw < 0.0) | (raw > 1.0))
    return bool(outside)


def _check_probabilities(name: str, p: Any) -> None:
    if _check_values.get() and _outside_unit_interval(p):
        raise ValueError(
            f"{name}: predictions must be probabilities in [0, 1]; for logits use "
            "binary_cross_entropy_with_logits"
        )


# ---------------------------------------------------------------------------------------------
# losses


def binary_cross_entropy(p: Any, y: Any, eps: float = 1e-7) -> Any:
    """``-mean(y log p + (1 - y) log(1 - p))`` for probabilities ``p``.

    ``p`` is clipped to ``[eps, 1 - eps]`` so that a saturated sigmoid costs a large but
    finite loss instead of ``log(0)``. From logits, prefer ``binary_cross_entropy_with_logits``.
    """
    y = _binary_targets("binary_cross_entropy", p, y)
    _check_probabilities("binary_cross_entropy", p)
    p = ops.clip(p, eps, 1.0 - eps)
    # Traced values on the left: a raw array's own operators need not know about boxes.
    return -ops.mean(ops.log(p) * y + ops.log(1.0 - p) * (1.0 - y))


def binary_cross_entropy_with_logits(z: Any, y: Any) -> Any:
    """``binary_cross_entropy(sigmoid(z), y)`` without rounding ``sigmoid(z)`` to 0 or 1.

    Finite for every finite ``z``; its gradient with respect to ``z`` is
    ``(sigmoid(z) - y) / n``, the output-layer delta of backpropagation.
    """
    y = _binary_targets("binary_cross_entropy_with_logits", z, y)
    return ops.mean(ops.sigmoid_cross_entropy(z, y))


def softmax_cross_entropy(logits: Any, labels: Any) -> Any:
    """``-mean(log softmax(logits)[label])`` over a batch of ``(n, classes)`` logits.

    ``labels`` are integer class indices of shape ``(n,)``, or one-hot (or probability) rows of
    the logits' shape. Integer labels become a one-hot mask on the device, which keeps the
    backward pass a product instead of a scatter.
    """
    name = "softmax_cross_entropy"
    if len(shape(logits)) != 2:
        raise ValueError(f"{name}: logits must have shape (n, classes), got {shape(logits)}")
    n, classes = shape(logits)
    backend = array_backend(getval(labels))  # soft labels may be traced too
    xp = backend.xp
    check = _check_values.get()
    if isdtype(getval(labels), "integral"):
        if shape(labels) != (n,):
            raise ValueError(
                f"{name}: integer labels must have shape ({n},) for logits of shape "
                f"{shape(logits)}, got {shape(labels)}"
            )
        if check and bool(xp.any((getval(labels) < 0) | (getval(labels) >= classes))):
            raise ValueError(f"{name}: integer labels must lie in [0, {classes})")
        classes_row = xp.arange(classes, device=backend.array_device(getval(labels)))
        targets = ops.astype(labels[:, None] == classes_row, logits.dtype)
    else:
        if shape(labels) != (n, classes):
            raise ValueError(
                f"{name}: one-hot labels must have the logits' shape {shape(logits)}, got "
                f"{shape(labels)} (integer class labels have shape ({n},))"
            )
        if check and _outside_unit_interval(labels):
            raise ValueError(f"{name}: one-hot labels must lie in [0, 1]")
        targets = labels if labels.dtype == logits.dtype else ops.astype(labels, logits.dtype)
    return ops.softmax_cross_entropy(logits, targets)


def mse(pred: Any, target: Any) -> Any:
    """Mean squared error, ``mean((pred - target)^2)``; the shapes must match."""
    if shape(pred) != shape(target):
        raise ValueError(f"mse: prediction shape {shape(pred)} != target shape {shape(target)}")
    return ops.mean(ops.square(ops.subtract(pred, target)))


def accuracy(logits: Any, labels: Any) -> float:
    """The fraction of correct predictions, as a Python float (this reads the device).

    One output (shape ``(n,)`` or ``(n, 1)``) predicts class 1 where the logit is positive,
    that is where sigmoid(logit) > 1/2; several outputs predict the argmax. ``labels`` are
    class indices, 0/1 targets or one-hot rows.
    """
    logits = stop_gradient(logits)
    xp = array_backend(logits).xp
    if logits.ndim == 2 and logits.shape[1] > 1:
        predicted = xp.argmax(logits, axis=1)
        if labels.ndim == 2:
            labels = xp.argmax(labels, axis=1)
    else:
        predicted = xp.reshape(logits > 0.0, (-1,))
        labels = xp.reshape(xp.astype(labels, logits.dtype), (-1,)) > 0.5
    if predicted.shape != labels.shape:
        raise ValueError(f"accuracy: {predicted.shape[0]} predictions for {labels.shape[0]} labels")
    correct = xp.astype(predicted == xp.astype(labels, predicted.dtype), xp.float64)
    return float(xp.mean(correct))
