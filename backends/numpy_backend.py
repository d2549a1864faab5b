"""The "cpu" device: NumPy 2, which is itself an Array API standard namespace."""

from __future__ import annotations

from typing import Any

import numpy as np


class NumpyRng:
    """Seeded random numbers on the host; the state round-trips through checkpoints."""

    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return self.generator.standard_normal(shape, dtype=np.float64).astype(dtype, copy=False)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any = np.float32):
        return self.generator.uniform(low, high, shape).astype(dtype, copy=False)

    def permutation(self, n: int) -> np.ndarray:
        return self.generator.permutation(n)

    def get_state(self) -> dict:
        return self.generator.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.generator.bit_generator.state = state


class NumpyBackend:
    device = "cpu"
    xp = np
    # NumPy reductions return scalars (np.float32, ...), which are NumPy's too.
    array_types = (np.ndarray, *{t for t in np.sctypeDict.values() if issubclass(t, np.generic)})

    def for_array(self, x: Any) -> NumpyBackend:
        return self

    def array_device(self, x: Any) -> str:
        return "cpu"

    def asarray(self, obj: Any, dtype: Any = None) -> np.ndarray:
        return np.asarray(obj, dtype=dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        # tanh form: exact and free of overflow for every finite input.
        out = np.multiply(x, 0.5)
        np.tanh(out, out=out)
        out *= 0.5
        out += 0.5
        return out

    def sigmoid_grad(self, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        out = np.subtract(1.0, y, dtype=np.result_type(y, g))
        out *= y
        out *= g
        return out

    def sgd_update(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        velocity: np.ndarray,
        learning_rate: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
    ) -> None:
        step = grad if weight_decay == 0.0 else grad + weight_decay * param
        velocity *= momentum
        velocity -= learning_rate * step
        if nesterov:
            param += momentum * velocity - learning_rate * step
        else:
            param += velocity

    def scatter_add(self, target: np.ndarray, index: Any, values: Any) -> None:
        np.add.at(target, index, values)

    def rng(self, seed: int) -> NumpyRng:
        return NumpyRng(seed)

    def synchronize(self) -> None:
        pass


def load() -> NumpyBackend:
    return NumpyBackend()
