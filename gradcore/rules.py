"""Layer 5: the two classic learning rules for a single unit, as Geena Kim's lecture notes "Math
behind Neural Network Training" state them.

Both cycle through the instances one at a time. They are written branch-free on the device
(a mistake becomes a 0/1 factor rather than an ``if``), so they run on any backend and read
back to the host only once per epoch.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

from typing import Any

from gradcore.backend import array_backend
from gradcore.devices import array

__all__ = ["delta_rule", "perceptron"]


def _with_bias(name: str, X: Any, y: Any) -> tuple[Any, Any, Any]:
    """X with a column of ones appended (the bias input), y as a column of X's dtype, and xp."""
    X = X if hasattr(X, "shape") else array(X)
    y = y if hasattr(y, "shape") else array(y)
    xp = array_backend(X).xp
    if not xp.isdtype(X.dtype, "real floating"):
        X = xp.astype(X, xp.float32)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"{name}: X must have shape (n, features) and y shape (n,), got {tuple(X.shape)} "
            f"and {tuple(y.shape)}"
        )
    ones = xp.ones((X.shape[0], 1), dtype=X.dtype, device=array_backend(X).array_device(X))
    return xp.concat([X, ones], axis=1), xp.astype(y, X.dtype), xp


def perceptron(X: Any, y: Any, epochs: int = 100) -> tuple[Any, list[int]]:
    """Rosenblatt's rule: on a misclassified instance, ``W += x`` if it is positive, else
    ``W -= x``; correct instances change nothing.

    Labels are -1/+1 or 0/1. An instance counts as misclassified unless ``y (W . x) > 0``, so
    the all-zero start learns from the first instance. Stops after an epoch without mistakes
    (which comes when the data are linearly separable). Returns the weights, bias last, and
    the number of mistakes in each epoch.
    """
    X, y, xp = _with_bias("perceptron", X, y)
    plus_minus = bool(xp.all((y == 1.0) | (y == -1.0)))
    if not plus_minus and not bool(xp.all((y == 1.0) | (y == 0.0))):
        raise ValueError("perceptron: labels must be all -1/+1 or all 0/1")
    sign = 2.0 * xp.astype(y > 0.0, X.dtype) - 1.0  # +x for a positive instance, -x else
    weights = xp.zeros_like(X[0, ...])
    mistakes = []
    for _ in range(epochs):
        count = xp.zeros((), dtype=X.dtype, device=array_backend(X).array_device(X))
        for i in range(X.shape[0]):
            wrong = xp.astype(sign[i] * xp.vecdot(weights, X[i, ...]) <= 0.0, X.dtype)
            weights = weights + (wrong * sign[i]) * X[i, ...]
            count = count + wrong
        mistakes.append(int(count))
        if mistakes[-1] == 0:
            break
    return weights, mistakes


def delta_rule(X: Any, y: Any, learning_rate: float = 0.01, epochs: int = 10) -> Any:
    """Widrow-Hoff: for each instance, ``w <- w - a (y_hat - y) x`` with ``y_hat = w . x``.

    This is gradient descent on ``1/2 (y_hat - y)^2`` with a batch of one. The unit is linear
    with a bias (last weight); weights start at zero and instances come in order.
    """
    X, y, xp = _with_bias("delta_rule", X, y)
    learning_rate = float(learning_rate)
    weights = xp.zeros_like(X[0, ...])
    for _ in range(epochs):
        for i in range(X.shape[0]):
            error = xp.vecdot(weights, X[i, ...]) - y[i]
            weights = weights - (learning_rate * error) * X[i, ...]
    return weights
