"""Layer 5: stochastic gradient descent with momentum, and learning-rate schedules.

The update is the Deep Learning book's (ch. 8), in the Keras parametrisation::

    v <- momentum * v - lr * g        theta <- theta + v

Nesterov momentum is Keras's form, ``theta <- theta + momentum * v - lr * g`` (with the new
``v``). The arithmetic is ``sgd_update``: in place, nothing read back to the host; a few
in-place Array-API passes on any device, one fused kernel per parameter on CUDA.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

from gradcore.backend import KernelTable, array_backend
from gradcore.devices import array, device_of, to_device
from gradcore.jit import update_in_place
from gradcore.pytree import tree_leaves

__all__ = [
    "SGD",
    "Schedule",
    "exponential_decay",
    "linear_decay",
    "sgd_update",
    "step_decay",
]

Schedule = Callable[[int], float]  # number of updates done so far -> learning rate


def linear_decay(initial: float, final: float, steps: int) -> Schedule:
    """Algorithm 8.1's schedule: ``eps_k = (1 - a) eps_0 + a eps_tau``, ``a = k / tau``.

    Decays linearly from ``initial`` at step 0 to ``final`` at step ``steps`` (tau), then
    stays at ``final``.
    """
    if steps < 1:
        raise ValueError(f"linear_decay: steps must be at least 1, got {steps}")

    def rate(k: int) -> float:
        a = min(k / steps, 1.0)
        return (1.0 - a) * initial + a * final

    return rate


def exponential_decay(
    initial: float, decay_rate: float, decay_steps: int, staircase: bool = False
) -> Schedule:
    """``initial * decay_rate ** (k / decay_steps)``; with ``staircase`` the power is floored."""
    if decay_steps < 1:
        raise ValueError(f"exponential_decay: decay_steps must be at least 1, got {decay_steps}")

    def rate(k: int) -> float:
        power = k // decay_steps if staircase else k / decay_steps
        return initial * decay_rate**power

    return rate


def step_decay(initial: float, drop: float, every: int) -> Schedule:
    """``initial * drop ** (k // every)``: multiply the rate by ``drop`` every ``every`` steps."""
    if every < 1:
        raise ValueError(f"step_decay: every must be at least 1, got {every}")

    def rate(k: int) -> float:
        return initial * drop ** (k // every)

    return rate


def sgd_update(
    param: Any,
    grad: Any,
    velocity: Any,
    learning_rate: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    grad_is_scratch: bool = False,
) -> None:
    """In place: ``v = momentum v - lr (g + wd p)``, then ``p += v`` (or the Nesterov form).

    The scalars must be Python floats: a NumPy float64 scalar would promote float32 arrays.
    With ``grad_is_scratch`` the gradient's memory may be reused (``gc.jit`` says so when
    nothing else reads it), which saves a temporary the size of the parameter.
    """
    backend = array_backend(param)
    kernel = SGD_KERNELS.lookup(backend, param.dtype)
    if kernel is not None:
        kernel(param, grad, velocity, learning_rate, momentum, nesterov, weight_decay)
        return
    # ``step = lr (g + wd p)`` is taken before p changes; the rest is in place.
    if grad_is_scratch:
        step = grad
        step *= learning_rate
    else:
        step = grad * learning_rate
    if weight_decay:
        step += param * (learning_rate * weight_decay)
    if step.dtype != param.dtype:
        step = backend.xp.astype(step, param.dtype)
    velocity *= momentum
    velocity -= step
    if nesterov:  # Keras form: p += momentum * v_new - lr * (g + wd * p)
        param -= step
        param += velocity * momentum
    else:
        param += velocity


SGD_KERNELS = KernelTable("sgd_update")
SGD_KERNELS.register("cuda", "gradcore.backends.cuda_kernels:sgd_update")


class SGD:
    """Minibatch SGD with optional (Nesterov) momentum and L2 weight decay, Keras's signature.

    ``learning_rate`` is a float or a schedule ``k -> rate``, called with the number of updates
    done so far (0 for the first). ``weight_decay`` adds ``weight_decay * theta`` to each
    gradient. One velocity per parameter lives on that parameter's device.
    """

    def __init__(
        self,
        learning_rate: float | Schedule = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
    ) -> None:
        # Types first, by name: SGD("0.1") would otherwise fail later with an unrelated error.
        numbers_given = {"momentum": momentum, "weight_decay": weight_decay}
        if not callable(learning_rate):
            numbers_given["learning_rate"] = learning_rate
        for name, value in numbers_given.items():
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                schedule = " or a schedule (a function step -> rate)" * (name == "learning_rate")
                raise TypeError(
                    f"SGD: {name} must be a number{schedule}, got {type(value).__name__} "
                    f"{value!r}" + (f"; write {value} without quotes" * isinstance(value, str))
                )
        if nesterov not in (True, False):
            raise TypeError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        if not callable(learning_rate) and not 0 < learning_rate < math.inf:
            raise ValueError(f"SGD: learning_rate must be positive, got {learning_rate}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum}")
        if not 0 <= weight_decay < math.inf:
            raise ValueError(f"SGD: weight_decay must be non-negative, got {weight_decay}")
        self.learning_rate = learning_rate
        # Python floats: a NumPy float64 scalar would promote float32 parameters.
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.iterations = 0
        self._velocity: list[Any] | None = None
        self._placed = False  # velocities checked against the parameters' devices and shapes

    def current_learning_rate(self) -> float:
        """The rate the next ``step`` will use."""
        if callable(self.learning_rate):
            return float(self.learning_rate(self.iterations))
        return float(self.learning_rate)

    def step(self, params: Any, grads: Any) -> None:
        """Update the arrays of ``params`` in place from ``grads`` (a pytree of the same shape).

        Declared to ``gc.jit`` as an in-place update, so that a jitted training step runs
        ``_update`` at every call: the schedule and the update count advance there.
        """
        leaves, grad_leaves = tree_leaves(params), tree_leaves(grads)
        consumed = range(len(leaves), len(leaves) + len(grad_leaves))
        update_in_place(self._update, *leaves, *grad_leaves, consumed=consumed)

    def _update(self, *arrays: Any, scratch: bool = False) -> None:
        """The update itself, on the parameter arrays followed by their gradients (which it may
        overwrite if ``scratch``: a jit replay says so when nothing else reads them)."""
        leaves, grads = arrays[: len(arrays) // 2], arrays[len(arrays) // 2 :]
        if not self._placed:
            self._place_velocity(list(leaves))
        lr = self.current_learning_rate()
        velocities = self._velocity
        assert velocities is not None  # _place_velocity made them
        for param, grad, velocity in zip(leaves, grads, velocities):
            sgd_update(param, grad, velocity, lr, self.momentum, self.nesterov, self.weight_decay,
                       grad_is_scratch=scratch)  # fmt: skip
        self.iterations += 1

    def _place_velocity(self, leaves: list[Any]) -> None:
        """Zero velocities on first use; loaded ones moved to their parameter's device."""
        if self._velocity is None:
            self._velocity = [array_backend(p).xp.zeros_like(p) for p in leaves]
        elif len(self._velocity) != len(leaves):
            raise ValueError(
                f"SGD: the loaded state has {len(self._velocity)} velocities but params have "
                f"{len(leaves)} arrays"
            )
        else:
            placed = []
            for param, velocity in zip(leaves, self._velocity):
                if tuple(velocity.shape) != tuple(param.shape):
                    raise ValueError(
                        f"SGD: a loaded velocity has shape {tuple(velocity.shape)} but its "
                        f"parameter has shape {tuple(param.shape)}"
                    )
                xp = array_backend(param).xp
                velocity = to_device(velocity, device_of(param))
                placed.append(xp.astype(velocity, param.dtype, copy=True))
            self._velocity = placed
        self._placed = True

    def state_dict(self) -> dict[str, Any]:
        """Copies of what ``step`` changes: the update count and the velocities."""
        velocity = [] if self._velocity is None else [array(v) for v in self._velocity]
        return {"iterations": self.iterations, "velocity": velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; velocities may be on any device (host included)."""
        self.iterations = int(state["iterations"])
        self._velocity = list(state["velocity"]) or None
        self._placed = False
