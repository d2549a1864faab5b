"""Layer 5: the optimizers (SGD, Adam, AdamW, RMSprop, Adagrad) and learning-rate schedules.

Notation is the lecture's (the Deep Learning book, ch. 8): parameters theta, the gradient
estimate g, the learning rate epsilon_k at update k (Keras's ``learning_rate``), and for the
adaptive methods the moments s and r with their decay rates rho (Keras's ``beta_1``,
``beta_2``, ``rho``) and the small constant delta (Keras's ``epsilon``). Arguments have
Keras's names and defaults; the arithmetic is PyTorch's, so each optimizer follows
``torch.optim`` step for step.

What every optimizer shares lives in ``Optimizer``: one in-place update of all parameters per
``step``, declared to ``gc.jit`` (``update_in_place``) so that a replay runs it again; Keras's
gradient clipping; the update count, from which schedules and bias corrections are computed
on the host (no device read); the state per parameter, which ``state_dict`` hands out as
numbers and lists of arrays (what checkpoints store).
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
    "Adagrad",
    "Adam",
    "AdamW",
    "Optimizer",
    "RMSprop",
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
    work: Any = None,
) -> None:
    """In place: ``v = momentum v - lr (g + wd p)``, then ``p += v`` (or the Nesterov form).

    The scalars must be Python floats: a NumPy float64 scalar would promote float32 arrays.
    With ``grad_is_scratch`` the gradient's memory may be reused (``gc.jit`` says so when
    nothing else reads it), else ``lr g`` goes into ``work`` (an array of the parameter's shape
    and dtype) if given; either way the CPU allocates nothing. A device kernel (the CPU's
    compiled loop, CUDA's) computes it in one pass; a kernel returning False leaves it here.
    """
    backend = array_backend(param)
    kernel = SGD_KERNELS.lookup(backend, param.dtype)
    args = (param, grad, velocity, learning_rate, momentum, nesterov, weight_decay)
    if kernel is not None and kernel(*args) is not False:
        return  # done by the device's kernel (the CPU's declines arrays it cannot loop over)
    # ``step = lr (g + wd p)`` is taken before p changes; the rest is in place.
    if grad_is_scratch:
        step = grad
        step *= learning_rate
    elif work is not None and grad.dtype == param.dtype:
        step = _ufuncs(backend).multiply(grad, learning_rate, out=work)
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
        param += _ufuncs(backend).multiply(velocity, momentum, out=step)  # step is ours
    else:
        param += velocity


SGD_KERNELS = KernelTable("sgd_update")
SGD_KERNELS.register("cpu", "gradcore.backends.numpy_kernels:sgd_update")
SGD_KERNELS.register("cuda", "gradcore.backends.cuda_kernels:sgd_update")


class _OutForm:
    """NumPy's ufunc form ``f(a, b, out=o)`` for an Array API namespace, which has no ``out=``:
    the result is computed, then copied into ``out``. The updates are written in this form so
    that on NumPy they allocate nothing; elsewhere each call costs one temporary."""

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    def add(self, a: Any, b: Any, out: Any) -> Any:
        out[...] = a + b
        return out

    def subtract(self, a: Any, b: Any, out: Any) -> Any:
        out[...] = a - b
        return out

    def multiply(self, a: Any, b: Any, out: Any) -> Any:
        out[...] = a * b
        return out

    def divide(self, a: Any, b: Any, out: Any) -> Any:
        out[...] = a / b
        return out

    def sqrt(self, a: Any, out: Any) -> Any:
        out[...] = self.xp.sqrt(a)
        return out

    def maximum(self, a: Any, b: Any, out: Any) -> Any:
        out[...] = self.xp.maximum(a, b)
        return out

    def clip(self, a: Any, low: float, high: float, out: Any) -> Any:
        out[...] = self.xp.clip(a, low, high)
        return out


def _ufuncs(backend: Any) -> Any:
    """The ufuncs an update calls: NumPy's own on the CPU, ``_OutForm`` elsewhere."""
    return backend.xp if backend.device == "cpu" else _OutForm(backend.xp)


def _contiguous(x: Any) -> bool:
    """Whether ``x`` is C-contiguous, as a multi-tensor kernel addresses its elements."""
    flags = getattr(x, "flags", None)
    return flags is not None and bool(flags.c_contiguous)


def _check_number(owner: str, name: str, value: Any, schedule: bool = False) -> None:
    """A TypeError that names the argument, for anything but a real number (bools included:
    ``momentum=True`` is a slip, not 1.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        also = " or a schedule (a function step -> rate)" * schedule
        raise TypeError(
            f"{owner}: {name} must be a number{also}, got {type(value).__name__} {value!r}"
            + (f"; write {value} without quotes" * isinstance(value, str))
        )


def _check_flag(owner: str, name: str, value: Any) -> None:
    if value not in (True, False):
        raise TypeError(f"{owner}: {name} must be True or False, got {value!r}")


def _check_range(owner: str, name: str, value: float, within: bool, text: str) -> None:
    """A ValueError that names the argument, its allowed range and its value, unless ``within``
    (a comparison, which NaN fails)."""
    if not within:
        raise ValueError(f"{owner}: {name} must be {text}, got {value}")


class Optimizer:
    """What every optimizer shares. A subclass names its state (``_slots``) and writes its
    arithmetic for one parameter (``_apply``), in place, in NumPy's ``out=`` form.

    ``learning_rate`` is a float or a schedule ``k -> epsilon_k``, called with the number of
    updates done so far (0 for the first); it may be reassigned between steps (a callback
    lowering it on a plateau). ``weight_decay`` adds ``weight_decay * theta`` to g (L2
    regularization, PyTorch's ``weight_decay``; AdamW decouples it instead).

    Gradient clipping is Keras's, one of: ``clipnorm`` scales each parameter's gradient to a
    norm of at most c (``g <- g c / max(||g||, c)``), ``global_clipnorm`` scales all of them by
    one factor so that their joint norm is at most c, ``clipvalue`` clips each element to
    ``[-c, c]``. Clipping comes before weight decay, as ``torch.nn.utils.clip_grad_norm_`` comes
    before ``torch.optim``. An infinite norm turns the step into NaN (inf * 0), which the
    trainer's divergence guard reports, rather than into a silent zero step.

    On a device with a fused update for the parameters' dtype (``_kernels``: CUDA), one launch
    updates all of them (multi-tensor, as ``torch.optim``'s fused optimizers), weight decay
    included; other devices run ``_apply`` per parameter.

    The update count ``iterations`` is a Python int on the host, as ``torch.optim`` keeps its
    ``step`` in a host tensor: ``gc.jit`` calls the update at every replay, so the count, the
    schedule and the bias corrections computed from it advance at every step (nothing is
    frozen at the recording's t = 1), and reading it costs no device synchronisation. State
    arrays live on each parameter's device, in its dtype. The update computes in two scratch
    buffers per device and dtype, as large as the largest parameter, so that a step allocates
    nothing on the CPU.
    """

    _l2_in_gradient = True  # weight decay as g + wd theta (PyTorch's), not decoupled (AdamW)
    _kernels = KernelTable("optimizer")  # fused updates per device, each taken by ``_launch``

    def __init__(
        self,
        learning_rate: float | Schedule,
        weight_decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        name = type(self).__name__
        if not callable(learning_rate):
            _check_number(name, "learning_rate", learning_rate, schedule=True)
            ok = 0 < learning_rate < math.inf
            _check_range(name, "learning_rate", learning_rate, ok, "positive")
        _check_number(name, "weight_decay", weight_decay)
        ok = 0 <= weight_decay < math.inf
        _check_range(name, "weight_decay", weight_decay, ok, "non-negative")
        clipping = {
            "clipnorm": clipnorm,
            "clipvalue": clipvalue,
            "global_clipnorm": global_clipnorm,
        }
        given = {key: value for key, value in clipping.items() if value is not None}
        for key, value in given.items():
            _check_number(name, key, value)
            _check_range(name, key, value, 0 < value < math.inf, "positive")
        if len(given) > 1:
            raise ValueError(
                f"{name}: only one of clipnorm, clipvalue and global_clipnorm can be set, got "
                + ", ".join(f"{key}={value}" for key, value in given.items())
            )
        self.learning_rate = learning_rate
        # Python floats: a NumPy float64 scalar would promote float32 parameters.
        self.weight_decay = float(weight_decay)
        self.clipnorm, self.clipvalue, self.global_clipnorm = (
            None if value is None else float(value) for value in clipping.values()
        )
        self._iterations = 0
        self._state: dict[str, list[Any]] | None = None  # slot -> one array per parameter
        self._placed = False  # state checked against the parameters' devices and shapes
        self._scratch: list[tuple[Any, Any]] = []  # per parameter: two scratch views

        def update(*arrays: Any, scratch: bool = False) -> None:
            self._update(*arrays, scratch=scratch)

        # What gc.jit's describe() shows for the step: "Adam._update(s0, s1, ...)".
        update.__qualname__ = f"{type(self).__name__}._update"
        self._declared_update = update

    @property
    def _arrays(self) -> dict[str, list[Any]]:
        """The state's arrays, slot by slot: made by the first update, or by a load."""
        if self._state is None:
            raise RuntimeError(f"{type(self).__name__}: no state before the first update")
        return self._state

    def _slots(self) -> dict[str, float]:
        """The state arrays of each parameter, by name, with the value each starts at."""
        return {}

    def _launch(
        self, kernel: Callable, params: Any, group: list[tuple[int, Any]], lr: float
    ) -> None:
        """Update the parameters ``i`` of ``group``, pairs ``(i, clipped gradient)``, with one
        call of the device's fused ``kernel`` (from ``_kernels``), weight decay included."""
        raise NotImplementedError

    def _tensors(self, params: Any, group: list[tuple[int, Any]]) -> list[list[Any]]:
        """Per parameter of ``group``: its gradient, itself, its state (the kernels' order)."""
        slots = list(self._slots())
        return [[grad, params[i], *(self._arrays[s][i] for s in slots)] for i, grad in group]

    def _apply(
        self, i: int, param: Any, grad: Any, lr: float, f: Any, work: Any, writable: bool
    ) -> None:
        """Update parameter ``i`` in place from its gradient (clipped, decayed), with the
        ufuncs ``f`` and ``work``, a scratch array of the parameter's shape; ``grad`` may be
        overwritten if ``writable``."""
        raise NotImplementedError

    @property
    def iterations(self) -> int:
        """The number of updates done so far."""
        return self._iterations

    def current_learning_rate(self) -> float:
        """The rate the next ``step`` will use."""
        if callable(self.learning_rate):
            return float(self.learning_rate(self.iterations))
        return float(self.learning_rate)

    def step(self, params: Any, grads: Any) -> None:
        """Update the arrays of ``params`` in place from ``grads`` (a pytree of the same shape).

        Declared to ``gc.jit`` as one in-place update of all parameters, so that a jitted
        training step runs ``_update`` at every call: the count and the schedule advance there.
        """
        leaves, grad_leaves = tree_leaves(params), tree_leaves(grads)
        if len(leaves) != len(grad_leaves):
            raise ValueError(
                f"{type(self).__name__}.step: {len(leaves)} parameter arrays but "
                f"{len(grad_leaves)} gradients; pass the gradient of every parameter (the grad "
                "of the same pytree)"
            )
        consumed = range(len(leaves), 2 * len(leaves))
        update_in_place(self._declared_update, *leaves, *grad_leaves, consumed=consumed)

    def _update(self, *arrays: Any, scratch: bool = False) -> None:
        """The update itself, on the parameter arrays followed by their gradients (which it may
        overwrite if ``scratch``: a jit replay says so when nothing else reads them)."""
        params, grads = arrays[: len(arrays) // 2], arrays[len(arrays) // 2 :]
        if not self._placed:
            self._place(params)
        lr = self.current_learning_rate()
        self._iterations += 1
        norms = self._norms(grads)
        fused: dict[tuple, list[tuple[int, Any]]] = {}  # (kernel, device, dtype) -> (i, g)
        for i, (param, grad) in enumerate(zip(params, grads)):
            backend = array_backend(param)
            f = _ufuncs(backend)
            work, copy = self._scratch[i]
            writable = scratch
            if grad.dtype != param.dtype:
                grad, writable = backend.xp.astype(grad, param.dtype), True
            kernel = self._kernels.lookup(backend, param.dtype)
            if kernel is not None and _contiguous(param):
                if norms is not None or self.clipvalue is not None:  # kept until the launch
                    grad = self._clipped(i, grad, norms, f, out=grad if writable else None)
                key = (kernel, device_of(param), str(param.dtype))
                fused.setdefault(key, []).append((i, grad))
                continue
            if norms is not None or self.clipvalue is not None:
                grad = self._clipped(i, grad, norms, f, out=grad if writable else copy)
                writable = True
            if self.weight_decay and self._l2_in_gradient:
                f.multiply(param, self.weight_decay, out=work)
                grad = f.add(grad, work, out=grad if writable else copy)
                writable = True
            self._apply(i, param, grad, lr, f, work, writable)
        for (kernel, _, _), group in fused.items():
            self._launch(kernel, params, group, lr)

    def _clipped(self, i: int, grad: Any, norms: list[Any] | None, f: Any, out: Any) -> Any:
        """g clipped as Keras clips it, written into ``out`` (None: a new array)."""
        xp = array_backend(grad).xp
        if self.clipvalue is not None:
            low, high = -self.clipvalue, self.clipvalue
            return xp.clip(grad, low, high) if out is None else f.clip(grad, low, high, out=out)
        limit = self.clipnorm or self.global_clipnorm  # g c / max(||g||, c)
        assert norms is not None  # _norms gives them when a norm clips
        scaled = grad * limit if out is None else f.multiply(grad, limit, out=out)
        scaled /= xp.maximum(norms[i], limit)
        return scaled

    def _norms(self, grads: Any) -> list[Any] | None:
        """The norm that clips each gradient, as 0-d arrays on its device (nothing is read
        back): its own for ``clipnorm``, the joint one for ``global_clipnorm``; else None."""
        if self.clipnorm is None and self.global_clipnorm is None:
            return None
        squares = []
        for i, grad in enumerate(grads):
            backend = array_backend(grad)
            work = self._scratch[i][0]
            squares.append(backend.xp.sum(_ufuncs(backend).multiply(grad, grad, out=work)))
        if self.clipnorm is not None:
            return [array_backend(s).xp.sqrt(s) for s in squares]
        total = squares[0]
        for s in squares[1:]:
            total = total + s
        return [array_backend(total).xp.sqrt(total)] * len(grads)

    def _place(self, params: Any) -> None:
        """State on first use: new (each slot at its initial value), or loaded and moved to its
        parameter's device and dtype after checking it fits; then the scratch buffers."""
        slots = self._slots()
        if self._state is None:
            self._state = {
                slot: [self._filled(param, value) for param in params]
                for slot, value in slots.items()
            }
        else:
            self._state = {slot: self._fitted(slot, self._arrays[slot], params) for slot in slots}
        self._scratch = self._scratch_views(params)
        self._placed = True

    @staticmethod
    def _filled(param: Any, value: float) -> Any:
        xp = array_backend(param).xp
        return xp.full(
            param.shape, value, dtype=param.dtype, device=array_backend(param).array_device(param)
        )

    def _fitted(self, slot: str, arrays: list[Any], params: Any) -> list[Any]:
        if len(arrays) != len(params):
            raise ValueError(
                f"{type(self).__name__}: the loaded state has {len(arrays)} {slot} arrays but "
                f"params have {len(params)} arrays"
            )
        placed = []
        for param, value in zip(params, arrays):
            if tuple(value.shape) != tuple(param.shape):
                raise ValueError(
                    f"{type(self).__name__}: a loaded {slot} array has shape "
                    f"{tuple(value.shape)} but its parameter has shape {tuple(param.shape)}"
                )
            value = to_device(value, device_of(param))
            placed.append(array_backend(param).xp.astype(value, param.dtype, copy=True))
        return placed

    def _scratch_views(self, params: Any) -> list[tuple[Any, Any]]:
        """Two scratch arrays per parameter (for ``_apply``, and for a changed gradient), views
        of two flat buffers per device and dtype as large as the largest parameter there."""
        sizes: dict[tuple, int] = {}
        for param in params:
            key = (device_of(param), str(param.dtype))
            sizes[key] = max(sizes.get(key, 0), math.prod(param.shape))
        buffers = {}
        for param in params:
            key = (device_of(param), str(param.dtype))
            if key not in buffers:
                backend = array_backend(param)
                where = backend.array_device(param)
                buffers[key] = [
                    backend.xp.empty((sizes[key],), dtype=param.dtype, device=where)
                    for _ in range(2)
                ]
        views = []
        for param in params:
            xp, n = array_backend(param).xp, math.prod(param.shape)
            pair = buffers[device_of(param), str(param.dtype)]
            views.append(tuple(xp.reshape(buffer[:n], param.shape) for buffer in pair))
        return views

    def reset(self) -> None:
        """Forget the update count and the state: the next step is a first step."""
        self.load_state_dict({"iterations": 0, **{slot: [] for slot in self._slots()}})

    def state_dict(self) -> dict[str, Any]:
        """Copies of what ``step`` changes: ``iterations``, and one list of arrays per state
        slot (empty before the first step). Numbers and lists of arrays, as checkpoints store."""
        state: dict[str, Any] = {"iterations": self.iterations}
        for slot in self._slots():
            arrays = [] if self._state is None else self._state.get(slot, [])
            state[slot] = [array(a) for a in arrays]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state_dict()``; arrays may be on any device (host included)."""
        expected = {"iterations", *self._slots()}
        if set(state) != expected:
            raise ValueError(
                f"{type(self).__name__}: the state to load holds {sorted(state)} but this "
                f"optimizer keeps {sorted(expected)}; was it saved by another optimizer or with "
                "other options?"
            )
        lists = [list(state[slot]) for slot in self._slots()]
        self._iterations = int(state["iterations"])
        self._state = dict(zip(self._slots(), lists)) if all(lists) else None
        self._placed = False


class SGD(Optimizer):
    """Minibatch SGD with optional (Nesterov) momentum, the lecture's update (Algorithm 8.1
    with momentum), Keras's signature::

        v <- alpha v - epsilon_k (g + lambda theta)        theta <- theta + v

    with ``momentum`` alpha and ``weight_decay`` lambda; Nesterov momentum is Keras's form,
    ``theta <- theta + alpha v - epsilon_k (g + lambda theta)`` with the new v. Off CUDA the
    arithmetic is ``sgd_update``, computing in the gradient's memory or in a scratch array.
    """

    def __init__(
        self,
        learning_rate: float | Schedule = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        # Types first, by name: SGD("0.1") would otherwise fail later with an unrelated error.
        _check_number(type(self).__name__, "momentum", momentum)
        _check_flag(type(self).__name__, "nesterov", nesterov)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)
        _check_range(type(self).__name__, "momentum", momentum, 0.0 <= momentum < 1.0, "in [0, 1)")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _slots(self) -> dict[str, float]:
        return {"velocity": 0.0}

    _kernels = KernelTable("sgd_update_all")

    def _launch(self, kernel, params, group, lr) -> None:  # noqa: D102
        tensors = self._tensors(params, group)
        kernel(tensors, lr, self.momentum, self.nesterov, self.weight_decay)

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        velocity = self._arrays["velocity"][i]
        # weight_decay 0: it is in the gradient already
        sgd_update(param, grad, velocity, lr, self.momentum, self.nesterov, 0.0,
                   grad_is_scratch=writable, work=work)  # fmt: skip


def _check_decay_rate(owner: str, name: str, value: Any) -> float:
    _check_number(owner, name, value)
    _check_range(owner, name, value, 0.0 <= value < 1.0, "in [0, 1)")
    return float(value)


def _check_epsilon(owner: str, value: Any) -> float:
    _check_number(owner, "epsilon", value)
    _check_range(owner, "epsilon", value, 0.0 <= value < math.inf, "non-negative")
    return float(value)


class Adam(Optimizer):
    """Adam (the Deep Learning book's Algorithm 8.7) with PyTorch's arithmetic. At update t
    (1 for the first), with ``beta_1`` rho_1, ``beta_2`` rho_2, ``epsilon`` delta and
    ``weight_decay`` lambda::

        g <- g + lambda theta                          (L2, when lambda > 0)
        s <- rho_1 s + (1 - rho_1) g                   first moment
        r <- rho_2 r + (1 - rho_2) g * g               second moment
        r_max <- max(r_max, r), used in place of r     (amsgrad)
        theta <- theta - epsilon_k / (1 - rho_1^t) * s / (sqrt(r) / sqrt(1 - rho_2^t) + delta)

    delta is added to the bias-corrected sqrt(r_hat), as ``torch.optim.Adam`` does (Keras adds
    it before the correction, which differs while t is small). The bias corrections are
    computed on the host from the update count, so they advance under ``gc.jit`` too.
    """

    def __init__(
        self,
        learning_rate: float | Schedule = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        name = type(self).__name__
        self.beta_1 = _check_decay_rate(name, "beta_1", beta_1)
        self.beta_2 = _check_decay_rate(name, "beta_2", beta_2)
        self.epsilon = _check_epsilon(name, epsilon)
        _check_flag(name, "amsgrad", amsgrad)
        self.amsgrad = bool(amsgrad)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)

    def _slots(self) -> dict[str, float]:
        slots = {"first_moment": 0.0, "second_moment": 0.0}
        if self.amsgrad:
            slots["max_second_moment"] = 0.0
        return slots

    _kernels = KernelTable("adam_update")

    def _launch(self, kernel, params, group, lr) -> None:  # noqa: D102
        t, wd = self.iterations, self.weight_decay
        l2, decay = (wd, 1.0) if self._l2_in_gradient else (0.0, 1.0 - lr * wd)
        kernel(self._tensors(params, group), lr / (1.0 - self.beta_1**t),
               math.sqrt(1.0 - self.beta_2**t), self.beta_1, self.beta_2, self.epsilon, l2,
               decay)  # fmt: skip

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        t = self.iterations
        s, r = self._arrays["first_moment"][i], self._arrays["second_moment"][i]
        f.subtract(grad, s, out=work)  # s + (1 - rho_1) (g - s), PyTorch's lerp
        work *= 1.0 - self.beta_1
        s += work
        r *= self.beta_2
        f.multiply(grad, grad, out=work)
        work *= 1.0 - self.beta_2
        r += work
        if self.amsgrad:
            r = f.maximum(self._arrays["max_second_moment"][i], r,
                          out=self._arrays["max_second_moment"][i])  # fmt: skip
        f.sqrt(r, out=work)
        work /= math.sqrt(1.0 - self.beta_2**t)
        work += self.epsilon
        f.divide(s, work, out=work)
        work *= -lr / (1.0 - self.beta_1**t)
        param += work


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's arithmetic: first
    ``theta <- theta - epsilon_k lambda theta`` (``weight_decay`` lambda, not added to g), then
    Adam's update above. Keras's defaults, ``weight_decay=0.004`` among them.
    """

    _l2_in_gradient = False

    def __init__(
        self,
        learning_rate: float | Schedule = 0.001,
        weight_decay: float = 0.004,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay,
                         clipnorm, clipvalue, global_clipnorm)  # fmt: skip

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        if self.weight_decay:
            param *= 1.0 - lr * self.weight_decay
        super()._apply(i, param, grad, lr, f, work, writable)


class RMSprop(Optimizer):
    """RMSprop (the Deep Learning book's Algorithm 8.5) with PyTorch's arithmetic, delta
    outside the square root. With ``rho`` rho, ``epsilon`` delta, ``momentum`` alpha and
    ``weight_decay`` lambda::

        g <- g + lambda theta                          (L2, when lambda > 0)
        r <- rho r + (1 - rho) g * g
        m <- rho m + (1 - rho) g;  d = sqrt(r - m * m) + delta     (centered)
                                   d = sqrt(r) + delta             (otherwise)
        b <- alpha b + g / d;  theta <- theta - epsilon_k b        (momentum alpha > 0)
        theta <- theta - epsilon_k g / d                           (otherwise)
    """

    def __init__(
        self,
        learning_rate: float | Schedule = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        weight_decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        name = type(self).__name__
        self.rho = _check_decay_rate(name, "rho", rho)
        self.momentum = _check_decay_rate(name, "momentum", momentum)
        self.epsilon = _check_epsilon(name, epsilon)
        _check_flag(name, "centered", centered)
        self.centered = bool(centered)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)

    def _slots(self) -> dict[str, float]:
        slots = {"mean_square": 0.0}
        if self.centered:
            slots["mean_gradient"] = 0.0
        if self.momentum:
            slots["velocity"] = 0.0
        return slots

    _kernels = KernelTable("rmsprop_update")

    def _launch(self, kernel, params, group, lr) -> None:  # noqa: D102
        kernel(self._tensors(params, group), lr, self.rho, self.momentum, self.epsilon,
               self.weight_decay, self.centered)  # fmt: skip

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        r = self._arrays["mean_square"][i]
        r *= self.rho
        f.multiply(grad, grad, out=work)
        work *= 1.0 - self.rho
        r += work
        if self.centered:
            m = self._arrays["mean_gradient"][i]
            f.subtract(grad, m, out=work)  # m + (1 - rho) (g - m), PyTorch's lerp
            work *= 1.0 - self.rho
            m += work
            f.multiply(m, m, out=work)
            f.subtract(r, work, out=work)
            f.sqrt(work, out=work)
        else:
            f.sqrt(r, out=work)
        work += self.epsilon
        f.divide(grad, work, out=work)
        if self.momentum:
            b = self._arrays["velocity"][i]
            b *= self.momentum
            b += work
            f.multiply(b, -lr, out=work)
        else:
            work *= -lr
        param += work


class Adagrad(Optimizer):
    """Adagrad (the Deep Learning book's Algorithm 8.4) with PyTorch's arithmetic. With
    ``epsilon`` delta, ``weight_decay`` lambda, and r starting at
    ``initial_accumulator_value``::

        g <- g + lambda theta                          (L2, when lambda > 0)
        r <- r + g * g
        theta <- theta - epsilon_k g / (sqrt(r) + delta)
    """

    def __init__(
        self,
        learning_rate: float | Schedule = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
    ) -> None:
        value = initial_accumulator_value
        name = type(self).__name__
        _check_number(name, "initial_accumulator_value", value)
        ok = 0.0 <= value < math.inf
        _check_range(name, "initial_accumulator_value", value, ok, "non-negative")
        self.initial_accumulator_value = float(value)
        self.epsilon = _check_epsilon(name, epsilon)
        super().__init__(learning_rate, weight_decay, clipnorm, clipvalue, global_clipnorm)

    def _slots(self) -> dict[str, float]:
        return {"accumulator": self.initial_accumulator_value}

    _kernels = KernelTable("adagrad_update")

    def _launch(self, kernel, params, group, lr) -> None:  # noqa: D102
        kernel(self._tensors(params, group), lr, self.epsilon, self.weight_decay)

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        r = self._arrays["accumulator"][i]
        f.multiply(grad, grad, out=work)
        r += work
        f.sqrt(r, out=work)
        work += self.epsilon
        f.divide(grad, work, out=work)
        work *= -lr
        param += work


for _optimizer, _launcher in ((SGD, "sgd"), (Adam, "adam"), (RMSprop, "rmsprop"),
                              (Adagrad, "adagrad")):  # fmt: skip
    _optimizer._kernels.register("cuda", f"gradcore.backends.cuda_kernels:{_launcher}_update_all")
