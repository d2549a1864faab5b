"""Random numbers in traced and jitted code: a seeded generator whose state the step carries.

A training step that draws random numbers (dropout masks) must draw new ones at every step,
also when ``gc.jit`` replays it, and the same ones in every run from the same seed, eager or
jitted. Two designs do that. JAX's explicit keys make every draw a pure function of a key
that the caller splits and passes in; they need a counter-based generator written in array
ops (threefry: dozens of integer passes per draw, slow on NumPy) and a key argument threaded
through every function, the loss ``(params, x, y)`` that gradcore's trainer calls included.
gradcore takes the other: a ``Generator`` object, seeded once, that each draw advances, built
on the backend's own generator (NumPy's PCG64, cuRAND's Philox), held by the code that uses it.

What makes it work under ``gc.jit`` is that a draw is a primitive, ``random_uniform_like``,
that reads a traced array (the one whose shape it takes): a recorded program keeps such a step
and runs it at every replay (``jit`` freezes only what reads nothing that changes), so the
generator advances at every call exactly as it does eagerly. Draws come in program order, so
an eager run and a jitted run from one seed see the same numbers. The price is that a draw
depends on how many came before it (no splitting into independent streams), and that the
generator's state, not the step's arguments, says where a run is: a checkpoint saves
``get_state()``.
"""

from __future__ import annotations

import numbers
from typing import Any

from gradcore.backend import Backend, DeviceError, array_backend
from gradcore.tracer import primitive, stop_gradient

__all__ = ["Generator", "random_uniform_like"]


class Generator:
    """A seeded stream of random numbers on one device.

    ``device=None`` takes the device of the first array it draws for; drawing for an array on
    another device afterwards is refused (nothing moves between devices implicitly).
    """

    seed: int
    device: str | None  # None until the first draw names it

    def __init__(self, seed: int = 0, device: str | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise TypeError(f"Generator: seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.device = device
        self._rng: Any = None  # the backend's generator, made on the first draw
        self._pending_state: dict | None = None  # a state loaded before the first draw

    def __repr__(self) -> str:  # what gc.jit's describe() shows for a draw
        return f"Generator(seed={self.seed}, device={self.device!r})"

    def _backend_rng(self, backend: Backend) -> Any:
        if self.device is None:
            self.device = backend.device
        if backend.device != self.device:
            raise DeviceError(
                f"Generator: it draws on {self.device!r}, but the array is on "
                f"{backend.device!r}; use one generator per device"
            )
        if self._rng is None:
            self._rng = backend.rng(self.seed)
            if self._pending_state is not None:
                self._rng.set_state(self._pending_state)
                self._pending_state = None
        return self._rng

    def uniform(self, like: Any) -> Any:
        """Numbers uniform in [0, 1), float64, of the shape and on the device of ``like``."""
        backend = array_backend(like)
        rng = self._backend_rng(backend)
        return rng.uniform(tuple(like.shape), 0.0, 1.0, dtype=backend.xp.float64)

    def get_state(self) -> dict:
        """Where the stream stands: a JSON-able dict (what a checkpoint keeps)."""
        if self._rng is not None:
            return {"seed": self.seed, "started": True, "backend": self._rng.get_state()}
        if self._pending_state is not None:  # loaded, not drawn from since
            return {"seed": self.seed, "started": True, "backend": self._pending_state}
        return {"seed": self.seed, "started": False}

    def set_state(self, state: dict) -> None:
        """Continue from ``get_state()``: the next draws are those that followed it."""
        self.seed = int(state["seed"])
        self._rng = None
        self._pending_state = state["backend"] if state["started"] else None


def _uniform_like(x: Any, generator: Generator) -> Any:
    return generator.uniform(x)


_uniform_like_primitive = primitive(_uniform_like, name="random_uniform_like")


def random_uniform_like(x: Any, generator: Generator) -> Any:
    """Uniform [0, 1) float64 numbers shaped like ``x``, drawn from ``generator``.

    A constant for differentiation (gradients do not flow into random numbers), and a step
    that every ``gc.jit`` replay runs again: it reads ``x``, as a traced value while a jit
    records. (An ``x`` that does not depend on the jitted function's arguments is a constant
    of the program, and so is a draw shaped like it.)
    """
    return _uniform_like_primitive(stop_gradient(x), generator)
