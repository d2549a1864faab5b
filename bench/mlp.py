"""The ``mlp`` suite: one training step of a sigmoid MLP, gradcore against the floor and its peers.

A step is forward, backward and an SGD update with momentum 0.9, all in float32. The reference is
the hand-written NumPy (or, on "cuda", CuPy) step an expert writes: gradients derived by hand,
every buffer allocated once, in-place ufuncs, ``out=`` for every product. It makes the BLAS
calls every implementation must make and no others, so its time is the floor a framework can
approach. Every implementation starts from the same parameters and batch, and before anything
is timed one step of each must give the same parameter update as the floor.

Each peer runs in a process of its own (``bench.harness.Worker``), timed in turn with the
others idle, and is timed alone too, before the suite starts; a case whose figure in the suite
is more than 1.2x the alone figure is flagged in the notes. The floor runs in two processes and
every ratio is taken against both (``bench.harness._rows``): one process of the very same step
can run a few percent off another for as long as it lives. The second process's ratio to the
first, the control, is given in the notes: the run's process-to-process noise.

Profile gradcore's step: ``python -m bench.mlp --profile BATCH [--loss bce] [--jit]``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import resource  # Unix only: page fault counts
except ImportError:
    resource = None

import gradcore as gc
from bench.harness import (
    FAIRNESS_LIMIT,
    Worker,
    WorkerError,
    mark_fairness,
    mark_target,
    time_alone,
    time_isolated,
)

LEARNING_RATE = 0.1
MOMENTUM = 0.9

# Median ratio to the floor that eager gradcore must reach, per batch size.
CPU_TARGETS = {32: 1.10, 128: 1.10, 1024: 1.03}
JIT_TARGET = 1.00  # the jitted step, at every batch size


def momentum_update(params: list[dict], velocities: list[dict], grads: list[dict]) -> None:
    """The SGD step with momentum, v <- m v - lr g; theta <- theta + v, for autograd's step."""
    for layer, velocity, grad in zip(params, velocities, grads):
        for k in layer:
            velocity[k] *= MOMENTUM
            velocity[k] -= LEARNING_RATE * grad[k]
            layer[k] += velocity[k]


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: layer sizes, output loss and batch size."""

    sizes: tuple[int, ...]
    loss: str  # "softmax" (softmax cross-entropy) or "bce" (sigmoid output, binary CE)
    batch: int

    @property
    def name(self) -> str:
        return f"{self.loss} {'-'.join(map(str, self.sizes))} b={self.batch}"


def cases(device: str, quick: bool) -> list[Case]:
    """The benchmark's cases; tiny ones under ``quick`` so the test suite runs them in seconds."""
    if quick:
        return [Case((20, 16, 16, 10), "softmax", 8), Case((20, 16, 16, 1), "bce", 8)]
    found = [
        Case((784, 256, 256, outputs), loss, batch)
        for loss, outputs in (("softmax", 10), ("bce", 1))
        for batch in (32, 128, 1024)
    ]
    if device == "cuda":
        found.append(Case((4096, 4096, 4096, 10), "softmax", 4096))
    return found


def problem(case: Case) -> tuple[list[dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Initial parameters (from ``gc.nn.init_mlp``), a batch and its targets, on the host."""
    params = gc.to_numpy(gc.nn.init_mlp(list(case.sizes), seed=0, device="cpu", dtype="float32"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((case.batch, case.sizes[0]), dtype=np.float32)
    if case.loss == "softmax":
        y = rng.integers(0, case.sizes[-1], case.batch)
    else:
        y = rng.integers(0, 2, (case.batch, 1)).astype(np.float32)
    return params, x, y


def _copy(params: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{k: v.copy() for k, v in layer.items()} for layer in params]


# ---------------------------------------------------------------------------------------------
# implementations: each is built from host params and a host batch, and its __call__ is one step


class GradcoreStep:
    """Idiomatic gradcore: ``value_and_grad`` of a loss built with ``gc.nn``, then ``SGD.step``."""

    def __init__(self, params, x, y, loss: str, device: str) -> None:
        # A copy: on "cpu" to_device may hand back the very arrays, which step() updates.
        self.params = gc.to_device(_copy(params), device)
        self.x, self.y = gc.to_device(x, device), gc.to_device(y, device)
        if loss == "softmax":
            objective = lambda p, xb, yb: gc.nn.softmax_cross_entropy(gc.nn.mlp(p, xb), yb)
        else:
            objective = lambda p, xb, yb: gc.nn.binary_cross_entropy_with_logits(
                gc.nn.mlp(p, xb), yb
            )
        self.value_and_grad = gc.value_and_grad(objective)
        self.optimizer = gc.optim.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
        self.synchronize = gc.backend.backend_for_device(device).synchronize

    def __call__(self) -> Any:
        # As gc.train.fit runs a step: labels are checked once before training, not per step.
        with gc.nn.target_checks(False):
            loss, grads = self.value_and_grad(self.params, self.x, self.y)
        self.optimizer.step(self.params, grads)
        return loss

    def current_params(self) -> list[dict[str, np.ndarray]]:
        return gc.to_numpy(self.params)


class JitStep(GradcoreStep):
    """The same step, forward, backward and update, recorded once by ``gc.jit`` and replayed."""

    def __init__(self, params, x, y, loss: str, device: str) -> None:
        super().__init__(params, x, y, loss, device)

        def step(params: Any, x: Any, y: Any) -> Any:
            with gc.nn.target_checks(False):
                loss, grads = self.value_and_grad(params, x, y)
            self.optimizer.step(params, grads)
            return loss

        self.step = gc.jit(step)

    def __call__(self) -> Any:
        return self.step(self.params, self.x, self.y)


class ExpertStep:
    """The floor: forward and backward derived by hand, on NumPy or CuPy (``xp_name``).

    What an expert writes for speed: every activation, delta and gradient buffer allocated once,
    every product written with ``out=`` into its buffer, every elementwise step an in-place ufunc,
    the loss value computed as the others compute it, and every gradient computed before the
    update, as the frameworks do.
    """

    def __init__(self, params, x, y, loss: str, xp_name: str = "numpy") -> None:
        xp = self.xp = importlib.import_module(xp_name)
        self.params = [{k: xp.array(v) for k, v in layer.items()} for layer in params]
        self.velocities = [{k: xp.zeros_like(v) for k, v in layer.items()} for layer in self.params]
        self.grads = [{k: xp.empty_like(v) for k, v in layer.items()} for layer in self.params]
        self.x, self.y, self.loss = xp.asarray(x), xp.asarray(y), loss
        batch = x.shape[0]
        widths = [layer["W"].shape[1] for layer in params]
        # activations[i + 1] is layer i's output; deltas[i] the loss gradient at layer i's input
        self.activations = [self.x] + [xp.empty((batch, n), xp.float32) for n in widths]
        self.deltas = [None] + [xp.empty((batch, n), xp.float32) for n in widths[:-1]]
        self.slopes = [None] + [xp.empty((batch, n), xp.float32) for n in widths[:-1]]
        self.row_max = xp.empty((batch, 1), xp.float32)
        self.row_sum = xp.empty((batch, 1), xp.float32)
        self.rows = xp.arange(batch)

    def _sigmoid_(self, a: Any) -> Any:
        """In place, as ``1 / (1 + exp(-a))``: NumPy's exp is faster than its tanh."""
        xp = self.xp
        with np.errstate(over="ignore"):  # exp(-a) = inf for a < -88 gives exactly 0
            xp.negative(a, out=a)
            xp.exp(a, out=a)
            a += 1.0
            xp.reciprocal(a, out=a)
        return a

    def _loss_and_dz_(self, z: Any) -> Any:
        """Mean loss over the batch; ``z`` (the logits) is overwritten with its gradient."""
        xp, n = self.xp, z.shape[0]
        if self.loss == "softmax":
            xp.max(z, axis=1, keepdims=True, out=self.row_max)
            z -= self.row_max
            picked = z[self.rows, self.y]
            xp.exp(z, out=z)
            xp.sum(z, axis=1, keepdims=True, out=self.row_sum)
            loss = xp.log(self.row_sum).mean() - picked.mean()
            z /= self.row_sum
            z[self.rows, self.y] -= 1.0
        else:  # binary cross-entropy with logits: softplus(z) - y z, stable for any z
            loss = (xp.maximum(z, 0.0) - z * self.y + xp.log1p(xp.exp(-xp.abs(z)))).mean()
            self._sigmoid_(z)
            z -= self.y
        z *= 1.0 / n
        return loss

    def __call__(self) -> Any:
        xp, params, h = self.xp, self.params, self.activations
        last = len(params) - 1
        for i, layer in enumerate(params):
            xp.matmul(h[i], layer["W"], out=h[i + 1])
            h[i + 1] += layer["b"]
            if i < last:
                self._sigmoid_(h[i + 1])
        loss = self._loss_and_dz_(h[-1])
        delta = h[-1]
        for i in reversed(range(len(params))):
            xp.matmul(h[i].T, delta, out=self.grads[i]["W"])
            xp.sum(delta, axis=0, out=self.grads[i]["b"])
            if i:
                # through layer i's input, h[i] = sigmoid(...): times h (1 - h)
                xp.matmul(delta, params[i]["W"].T, out=self.deltas[i])
                slope = self.slopes[i]
                xp.subtract(1.0, h[i], out=slope)
                slope *= h[i]
                self.deltas[i] *= slope
                delta = self.deltas[i]
        for layer, velocity, grad in zip(params, self.velocities, self.grads):
            for k in layer:
                velocity[k] *= MOMENTUM
                grad[k] *= LEARNING_RATE
                velocity[k] -= grad[k]
                layer[k] += velocity[k]
        return loss

    @property
    def buffer_bytes(self) -> int:
        """The buffers kept from step to step (the memory suite counts them in the peak)."""
        kept = self.activations[1:] + self.deltas[1:] + self.slopes[1:]
        kept += [g for layer in self.grads for g in layer.values()]
        return sum(a.nbytes for a in kept) + self.row_max.nbytes + self.row_sum.nbytes

    def synchronize(self) -> None:
        if self.xp is not np:
            self.xp.cuda.Device().synchronize()

    def current_params(self) -> list[dict[str, np.ndarray]]:
        return gc.to_numpy(self.params)


class AutogradStep:
    """HIPS autograd, idiomatically: ``value_and_grad`` over autograd.numpy, NumPy update."""

    def __init__(self, params, x, y, loss: str) -> None:
        import autograd
        import autograd.numpy as anp
        from autograd.scipy.special import logsumexp

        def mlp(p, xb):
            for layer in p[:-1]:
                xb = 0.5 * anp.tanh(0.5 * (anp.dot(xb, layer["W"]) + layer["b"])) + 0.5
            return anp.dot(xb, p[-1]["W"]) + p[-1]["b"]

        def softmax_ce(p, xb, yb):
            z = mlp(p, xb)
            log_p = z - logsumexp(z, axis=1, keepdims=True)
            return -anp.mean(log_p[anp.arange(xb.shape[0]), yb])

        def bce(p, xb, yb):
            z = mlp(p, xb)
            return anp.mean(anp.logaddexp(0.0, z) - yb * z)

        self.value_and_grad = autograd.value_and_grad(softmax_ce if loss == "softmax" else bce)
        self.params = _copy(params)
        self.velocities = [{k: np.zeros_like(v) for k, v in layer.items()} for layer in params]
        self.x, self.y = x, y

    def __call__(self) -> Any:
        loss, grads = self.value_and_grad(self.params, self.x, self.y)
        momentum_update(self.params, self.velocities, grads)
        return loss

    def current_params(self) -> list[dict[str, np.ndarray]]:
        return self.params


class TorchStep:
    """PyTorch eager, idiomatically: ``nn.Linear`` layers, ``F`` losses, ``torch.optim.SGD``.

    PyTorch's momentum form (``v = m v + g; p -= lr v``) equals gradcore's
    (``v = m v - lr g; p += v``) for a constant learning rate.
    """

    def __init__(self, params, x, y, loss: str, device: str) -> None:
        import torch
        import torch.nn.functional as F  # noqa: N812 - PyTorch's own spelling

        self.torch = torch
        torch_device = "cuda" if device == "cuda" else "cpu"
        layers: list[Any] = []
        for layer in params:
            linear = torch.nn.Linear(*layer["W"].shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(layer["W"].T))
                linear.bias.copy_(torch.from_numpy(layer["b"]))
            layers += [linear, torch.nn.Sigmoid()]
        self.model = torch.nn.Sequential(*layers[:-1]).to(torch_device)
        self.x = torch.from_numpy(x).to(torch_device)
        self.y = torch.from_numpy(y).to(torch_device)
        self.loss = F.cross_entropy if loss == "softmax" else F.binary_cross_entropy_with_logits
        self.optimizer = torch.optim.SGD(
            self.model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM
        )
        self.device = torch_device

    def __call__(self) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def synchronize(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def current_params(self) -> list[dict[str, np.ndarray]]:
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [
            {"W": m.weight.detach().cpu().numpy().T, "b": m.bias.detach().cpu().numpy()}
            for m in linears
        ]


class TorchCompiledStep(TorchStep):
    """The same PyTorch step through ``torch.compile``, as PyTorch's tutorials compile a training
    step: the model and its loss as one graph (Inductor generates the forward and the backward
    kernels) and the optimizer's update as another; ``backward()`` between them stays eager.
    On the CPU Inductor needs a C++ compiler."""

    # Each instance (a worker holds one per case) is a new object Dynamo's guards see: allow
    # more recompilations of the same code than the default 8, or later cases would run eager.
    RECOMPILE_LIMIT = 64

    def __init__(self, params, x, y, loss: str, device: str) -> None:
        super().__init__(params, x, y, loss, device)
        import torch._dynamo.config

        config = torch._dynamo.config
        config.recompile_limit = max(config.recompile_limit, self.RECOMPILE_LIMIT)
        self.objective = self.torch.compile(lambda: self.loss(self.model(self.x), self.y))
        self.update = self.torch.compile(self.optimizer.step)

    def __call__(self) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.objective()
        loss.backward()
        self.update()
        return loss.detach()


class JaxStep:
    """JAX: ``jax.jit`` of the whole step (value_and_grad, momentum update) on its CPU device,
    the parameters and velocities donated so that XLA updates their buffers in place."""

    def __init__(self, params, x, y, loss: str) -> None:
        import jax
        import jax.numpy as jnp

        def mlp(p, xb):
            for layer in p[:-1]:
                xb = jax.nn.sigmoid(xb @ layer["W"] + layer["b"])
            return xb @ p[-1]["W"] + p[-1]["b"]

        def softmax_ce(p, xb, yb):
            log_p = jax.nn.log_softmax(mlp(p, xb))
            return -jnp.mean(jnp.take_along_axis(log_p, yb[:, None], axis=1))

        def bce(p, xb, yb):
            z = mlp(p, xb)
            return jnp.mean(jax.nn.softplus(z) - yb * z)

        value_and_grad = jax.value_and_grad(softmax_ce if loss == "softmax" else bce)

        def step(p, v, xb, yb):
            value, g = value_and_grad(p, xb, yb)
            v = jax.tree.map(lambda v, g: MOMENTUM * v - LEARNING_RATE * g, v, g)
            return jax.tree.map(jnp.add, p, v), v, value

        self.jax = jax
        self.step = jax.jit(step, donate_argnums=(0, 1))
        self.params = jax.tree.map(jnp.asarray, params)
        self.velocities = jax.tree.map(jnp.zeros_like, self.params)
        self.x, self.y = jnp.asarray(x), jnp.asarray(y)

    def __call__(self) -> Any:
        self.params, self.velocities, loss = self.step(self.params, self.velocities, self.x, self.y)
        return loss

    def synchronize(self) -> None:  # JAX dispatches asynchronously
        self.jax.block_until_ready(self.params)

    def current_params(self) -> list[dict[str, np.ndarray]]:
        return [{k: np.asarray(v) for k, v in layer.items()} for layer in self.params]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


FLOOR = {"cpu": "numpy (expert)", "cuda": "cupy (expert)"}
CONTROL = "the floor, again"  # the floor's second process: half its figure, and the control


def implementations(
    device: str, notes: list[str], peers: bool = True, quick: bool = False
) -> dict[str, Callable[..., Any]]:
    """Factories ``(params, x, y, loss) -> step`` for what is installed; the floor comes first.

    Each factory pickles (a class or a ``functools.partial`` of one), so that a worker process
    can build it. ``peers=False``: only the floor, gradcore and autograd (all NumPy).
    """
    xp_name = "cupy" if device == "cuda" else "numpy"
    found: dict[str, Callable[..., Any]] = {
        FLOOR[device]: functools.partial(ExpertStep, xp_name=xp_name),
        "gradcore": functools.partial(GradcoreStep, device=device),
        "gradcore jit": functools.partial(JitStep, device=device),
    }
    if device == "cpu":
        if installed("autograd"):
            found["autograd"] = AutogradStep
        else:
            notes.append("autograd is not installed: skipped (pip install -e '.[bench]')")
    if not peers:
        return found
    if installed("torch"):
        name = "pytorch cuda" if device == "cuda" else "pytorch"
        found[name] = functools.partial(TorchStep, device=device)
        compiler = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
        if quick:
            notes.append("torch.compile is not run under --quick: each case compiles for seconds")
        elif device == "cpu" and compiler is None:
            notes.append("torch.compile skipped: it needs a C++ compiler on the CPU (none on PATH)")
        else:
            found[f"{name} compile"] = functools.partial(TorchCompiledStep, device=device)
    else:
        notes.append("PyTorch is not installed: skipped (pip install -e '.[bench]')")
    if device == "cpu" and installed("jax"):
        found["jax jit"] = JaxStep
    elif device == "cpu":
        notes.append("JAX is not installed: skipped (pip install -e '.[bench]')")
    else:
        notes.append("JAX is not run on cuda: the bench extra installs its CPU build only")
    return found


def page_faults_per_step(step: Callable[[], Any], steps: int = 20) -> float | None:
    """Minor page faults per step, in the step's own process: memory the allocator handed back
    to the OS and took again, each page zeroed by the kernel. None where nobody counts them."""
    if resource is None:
        return None
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def one_step_params(step: Any) -> list[dict[str, np.ndarray]]:
    """One step, then the parameters on the host (run in the step's worker)."""
    step()
    return step.current_params()


def check_updates_agree(
    stepped: dict[str, list[dict[str, np.ndarray]]], initial: list[dict[str, np.ndarray]]
) -> None:
    """One step of each from the same start (``stepped``: the parameters after it) must move
    every parameter by the same amount as the first, the floor.

    Comparing the updates (new minus initial parameters), not the parameters themselves, keeps
    the check sharp: an update is about lr times the gradient, small next to the parameters.
    """
    updates = {
        name: np.concatenate(
            [(new[i][k] - layer[k]).ravel() for i, layer in enumerate(initial) for k in layer]
        )
        for name, new in stepped.items()
    }
    reference, expected = next(iter(updates.items()))
    scale = float(np.max(np.abs(expected)))
    for name, update in updates.items():
        worst = float(np.max(np.abs(update - expected)))
        if not worst <= 1e-3 * scale + 1e-7:
            raise AssertionError(
                f"mlp: {name}'s parameter update differs from {reference}'s by up to {worst:.3g} "
                f"(largest update {scale:.3g})"
            )


def target(case: Case, device: str) -> str:
    """The target for eager gradcore in this case, as text."""
    if device == "cuda":
        return "<= pytorch cuda" if case.batch >= 1024 else ""
    limit = CPU_TARGETS.get(case.batch)
    return f"<= {limit:.2f}x" if limit else ""


def _mark_targets(rows: list[dict[str, Any]], case: Case, device: str) -> None:
    goal = target(case, device)
    if not goal:
        return
    by_impl = {row["impl"]: row for row in rows}
    row = by_impl["gradcore"]
    if device == "cuda":
        torch_row = by_impl.get("pytorch cuda")
        met = None if torch_row is None else row["median_s"] <= torch_row["median_s"]
        mark_target(row, goal, met)
    else:
        mark_target(row, goal, row["ratio"] <= CPU_TARGETS[case.batch])
        jit_row = by_impl["gradcore jit"]
        mark_target(jit_row, f"<= {JIT_TARGET:.2f}x", jit_row["ratio"] <= JIT_TARGET)


@dataclass(frozen=True)
class Timing:
    """How long a suite times: ``rounds`` slices of ``samples`` samples of ``number(batch)``
    steps per peer, in the suite and again alone."""

    rounds: int = 8
    samples: int = 5
    warmup: int = 5
    settle_s: float = 0.25  # untimed; OpenBLAS's threads spin ~0.1 s after a call, then sleep

    def number(self, batch: int) -> int:
        return max(3, 640 // batch)


QUICK = Timing(rounds=1, samples=1, warmup=1, settle_s=0.0)


def start_workers(
    factories: dict[str, Callable[..., Any]], case_list: list[Case], notes: list[str]
) -> dict[str, Worker]:
    """A worker per implementation, each case built in it (key: the case's name) and checked to
    agree with the floor; a peer that fails to build or to step (``torch.compile`` compiles at
    its first step) is dropped with the reason in notes."""
    workers: dict[str, Worker] = {}
    stepped: dict[str, dict[str, Any]] = {case.name: {} for case in case_list}
    for name, factory in factories.items():
        worker = Worker(name)
        try:
            for case in case_list:
                worker.build(case.name, factory, *problem(case), case.loss)
                worker.build(("check", case.name), factory, *problem(case), case.loss)
                stepped[case.name][name] = worker.apply(("check", case.name), one_step_params)
        except WorkerError as error:
            worker.close()
            if not workers:  # the floor itself: nothing to compare with
                raise
            reason = str(error).strip().splitlines()[-1]
            notes.append(f"{name} skipped: it failed to build or to step ({reason})")
            for found in stepped.values():
                found.pop(name, None)
            continue
        workers[name] = worker
    for case in case_list:
        check_updates_agree(stepped[case.name], problem(case)[0])
    return workers


def time_each_alone(
    factories: dict[str, Callable[..., Any]], case_list: list[Case], timing: Timing
) -> dict[str, dict[str, list[float]]]:
    """Each peer's samples alone (name -> case -> seconds), before the suite starts a worker.

    Before, not after: in the minute after the suite's workers exited, the NumPy peers' steps
    ran 1.2-2.5x slower alone on the README's VM (torch and JAX, timed alone later, did not),
    while the same alone timing run by itself was as fast as the suite; the cause, the
    machine's, was not found. A peer that fails to build is left out here; ``start_workers``
    drops it with the reason."""
    numbers = {case.name: timing.number(case.batch) for case in case_list}
    alone = {}
    for name, factory in factories.items():
        builds = {case.name: (factory, (*problem(case), case.loss)) for case in case_list}
        try:
            alone[name] = time_alone(
                name,
                builds,
                rounds=timing.rounds,
                samples=timing.samples,
                number=numbers,
                warmup=timing.warmup,
                settle_s=timing.settle_s,
            )
        except WorkerError:
            continue
    return alone


def run(device: str = "cpu", quick: bool = False, timing: Timing | None = None) -> dict[str, Any]:
    """Every case, every installed implementation, checked for agreement, then timed."""
    gc.backend.backend_for_device(device)  # a clear DeviceError before any worker starts
    timing = timing or (QUICK if quick else Timing())
    notes: list[str] = [
        f"one step: forward, backward, SGD momentum {MOMENTUM}, lr {LEARNING_RATE}, float32",
        "agreement checked before timing: one step from the same parameters and batch gives "
        "the same update as the floor (within 1e-3 of the largest update)",
        "each implementation in a process of its own (the floor in two), timed in turn with the "
        f"others idle: {timing.rounds} rounds of {timing.samples} samples each, after "
        f"{timing.settle_s} s of untimed steps, a sample the mean of N steps in a row (repeat "
        "RxN); ratio: the median over rounds of the ratio of the round's medians (a change in "
        "the machine's speed between rounds cancels), min_ratio: of minima",
        "vs_alone: the suite's median over the median of the same implementation timed alone "
        "(a fresh process, no other running, before the suite started) in as many rounds and "
        "samples",
        "page_faults_per_step: minor page faults per step, in the implementation's own process",
    ]
    if device == "cpu":
        from gradcore.backends.numpy_kernels import compiled_loops

        notes.append(f"gradcore's fused CPU loops: {compiled_loops()}")
    case_list = cases(device, quick)
    factories = implementations(device, notes, quick=quick)
    alone = time_each_alone(factories, case_list, timing)
    workers = start_workers(factories, case_list, notes)
    reference = next(iter(workers))
    control = start_control(factories[reference], case_list)
    control_ratios = {}
    rows = []
    try:
        for case in case_list:
            number = timing.number(case.batch)
            timed = time_isolated(
                {**workers, CONTROL: control},
                case.name,
                reference,
                rounds=timing.rounds,
                samples=timing.samples,
                number=number,
                warmup=timing.warmup,
                settle_s=timing.settle_s,
                replica=CONTROL,
            )
            floor_row = next(row for row in timed if row["impl"] == reference)
            control_ratios[case.name] = floor_row.pop("replica_ratio")
            for row in timed:
                processes = 2 if row is floor_row else 1
                row.update(
                    case=case.name,
                    batch=case.batch,
                    repeat=f"{processes * timing.rounds * timing.samples}x{number}",
                    page_faults_per_step=workers[row["impl"]].apply(
                        case.name, page_faults_per_step
                    ),
                )
            _mark_targets(timed, case, device)
            rows += timed
    finally:
        for worker in [*workers.values(), control]:
            worker.close()
    notes.append(control_note(control_ratios))
    unfair = []
    for name in [name for name in workers if name in alone]:
        for row in rows:
            if row["impl"] == name and not mark_fairness(row, alone[name][row["case"]]):
                unfair.append(f"{row['case']} · {name} ({row['vs_alone']:.2f}x)")
    if unfair:
        notes.append(
            f"**unfair**: in the suite more than {FAIRNESS_LIMIT}x the time alone: "
            + "; ".join(unfair)
        )
    else:
        notes.append(f"fair: every figure within {FAIRNESS_LIMIT}x of the same step timed alone")
    if drift := machine_drift(rows, reference):
        notes.append(drift)
    return {
        "suite": "mlp",
        "reference": reference,
        "rows": rows,
        "notes": notes,
        "control": control_ratios,
    }


def start_control(floor: Callable[..., Any], case_list: list[Case]) -> Worker:
    """The floor's second process, timed as one more peer: its samples join the floor's, and its
    ratio to the first is what an implementation gets for being another process, nothing else."""
    worker = Worker(CONTROL)
    for case in case_list:
        worker.build(case.name, floor, *problem(case), case.loss)
    return worker


def control_note(ratios: dict[str, float]) -> str:
    """What the control measured, as the notes say it: the noise every ratio of the run carries.

    On the README's 2-core VM two processes running the very same NumPy step differed by up to
    5% in its fast state and up to 12% in its slow one, for as long as both lived (in one suite
    run the control was 0.76x at batch 32). A ratio within that of 1.00x says nothing about the
    implementation."""
    low, high = min(ratios.values()), max(ratios.values())
    return (
        f"control: the floor's second process, timed as a peer, ran at {low:.2f}-{high:.2f}x "
        "its first ("
        + ", ".join(f"{case} {ratio:.2f}x" for case, ratio in ratios.items())
        + "): ideally 1.00x, so this is the machine's process-to-process noise in this run; the "
        "floor's figure is both processes' (each round, the geometric mean of their medians), "
        "so every ratio carries about half of it, and a ratio that close to 1.00x is not a "
        "difference between implementations"
    )


def machine_drift(rows: list[dict[str, Any]], reference: str) -> str | None:
    """A note when the floor itself, one NumPy process that shares nothing with the others, was
    more than the fairness limit off its own alone figure: then the machine's speed changed
    between the suite and the alone runs, and so may every other peer's figure."""
    off = [row["vs_alone"] for row in rows if row["impl"] == reference]
    if not off or max(max(off), 1 / min(off)) <= FAIRNESS_LIMIT:
        return None
    return (
        f"**machine drift**: the floor was {min(off):.2f}-{max(off):.2f}x its own time alone: "
        "the machine's speed changed between the suite and the alone runs, so a flag above "
        "may be the machine's rather than the suite's (the ratios, taken round by round, "
        "much less so)"
    )


def profile_step(case: Case, device: str = "cpu", steps: int = 200, jit: bool = False) -> None:
    """Print where gradcore's step (``jit``: its replay) spends its time (pyinstrument, else
    cProfile)."""
    params, x, y = problem(case)
    step = (JitStep if jit else GradcoreStep)(params, x, y, case.loss, device)
    step()
    if installed("pyinstrument"):
        from pyinstrument import Profiler

        with Profiler(interval=0.0002) as profiler:
            for _ in range(steps):
                step()
        # Self time per function first (where the time goes), then the call tree (why).
        print(profiler.output_text(unicode=False, color=False, flat=True))
        print(profiler.output_text(unicode=False, color=False))
    else:
        import cProfile

        cProfile.runctx("for _ in range(n): step()", {}, {"n": steps, "step": step}, sort="tottime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", metavar="BATCH", type=int, required=True)
    parser.add_argument("--loss", choices=("softmax", "bce"), default="softmax")
    parser.add_argument("--jit", action="store_true", help="profile the gc.jit replay")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    outputs = 10 if args.loss == "softmax" else 1
    case = Case((784, 256, 256, outputs), args.loss, args.profile)
    profile_step(case, args.device, args.steps, args.jit)


if __name__ == "__main__":
    main()
