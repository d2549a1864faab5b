"""The ``mlp`` suite: one training step of a sigmoid MLP, gradcore against the floor and its peers.

A step is forward, backward and an SGD update with momentum 0.9, all in float32. The reference is
a hand-written NumPy (or, on "cuda", CuPy) step with gradients derived by hand: the same BLAS
calls as every other implementation, with no graph, so its time is the floor a framework can
approach but not beat. Every implementation starts from the same parameters and batch, and
before anything is timed one step of each must give the same parameter update as the floor.

Profile gradcore's step: ``python -m bench.mlp --profile BATCH [--loss bce]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import resource  # Unix only: page fault counts
except ImportError:
    resource = None

import gradcore as gc
from bench.harness import compare, mark_target

# PyTorch's OpenMP threads spin after each parallel region by default and steal the CPU from
# whatever the round-robin times next; passive waiting keeps the runs independent. This only
# takes effect if set before PyTorch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

LEARNING_RATE = 0.1
MOMENTUM = 0.9

# Median ratio to the floor that eager gradcore must reach, per batch size.
CPU_TARGETS = {32: 1.10, 128: 1.10, 1024: 1.03}
JIT_TARGET = 1.00  # the jitted step, at every batch size


def momentum_update(params: list[dict], velocities: list[dict], grads: list[dict]) -> None:
    """The hand-written SGD step with momentum that the NumPy floor and autograd share."""
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


class HandWrittenStep:
    """The floor: forward and backward derived by hand, on NumPy or CuPy (``xp``).

    It makes the BLAS calls any implementation must make, in place where that is natural
    (bias adds, the sigmoid, the update), computes the loss value like the others do, and
    computes every gradient before updating, as the frameworks do.
    """

    def __init__(self, params, x, y, loss: str, xp: Any) -> None:
        self.xp = xp
        self.params = [{k: xp.asarray(v).copy() for k, v in layer.items()} for layer in params]
        self.velocities = [{k: xp.zeros_like(v) for k, v in layer.items()} for layer in self.params]
        self.x, self.y, self.loss = xp.asarray(x), xp.asarray(y), loss
        self.rows = xp.arange(x.shape[0])

    def _sigmoid_(self, a: Any) -> Any:
        """In place, as ``1 / (1 + exp(-a))``: NumPy's exp is faster than its tanh."""
        with np.errstate(over="ignore"):  # exp(-a) = inf for a < -88 gives exactly 0
            self.xp.negative(a, out=a)
            self.xp.exp(a, out=a)
            a += 1.0
            self.xp.reciprocal(a, out=a)
        return a

    def _loss_and_dz(self, z: Any) -> tuple[Any, Any]:
        """Mean loss over the batch and its gradient with respect to the logits ``z``."""
        xp, n = self.xp, z.shape[0]
        if self.loss == "softmax":
            z -= z.max(axis=1, keepdims=True)
            e = xp.exp(z)
            total = e.sum(axis=1, keepdims=True)
            loss = xp.log(total).mean() - z[self.rows, self.y].mean()
            e /= total
            e[self.rows, self.y] -= 1.0
            e *= 1.0 / n
            return loss, e
        # binary cross-entropy with logits: softplus(z) - y z, stable for any z
        loss = (xp.maximum(z, 0.0) - z * self.y + xp.log1p(xp.exp(-xp.abs(z)))).mean()
        dz = self._sigmoid_(z.copy())
        dz -= self.y
        dz *= 1.0 / n
        return loss, dz

    def __call__(self) -> Any:
        activations = [self.x]
        for layer in self.params[:-1]:
            a = activations[-1] @ layer["W"]
            a += layer["b"]
            activations.append(self._sigmoid_(a))
        z = activations[-1] @ self.params[-1]["W"]
        z += self.params[-1]["b"]
        loss, delta = self._loss_and_dz(z)
        grads = [None] * len(self.params)
        for i in reversed(range(len(self.params))):
            h = activations[i]
            grads[i] = {"W": h.T @ delta, "b": delta.sum(axis=0)}
            if i:
                delta = delta @ self.params[i]["W"].T
                slope = 1.0 - h
                slope *= h
                delta *= slope
        momentum_update(self.params, self.velocities, grads)
        return loss

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

    def __call__(self) -> Any:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model(self.x), self.y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def current_params(self) -> list[dict[str, np.ndarray]]:
        linears = [m for m in self.model if isinstance(m, self.torch.nn.Linear)]
        return [
            {"W": m.weight.detach().cpu().numpy().T, "b": m.bias.detach().cpu().numpy()}
            for m in linears
        ]


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def blas_threads() -> int | None:
    """How many threads NumPy's BLAS uses, so that PyTorch can be given the same number."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    found = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return found[0] if found else None


def implementations(
    device: str, notes: list[str], with_torch: bool = True
) -> dict[str, Callable[..., Any]]:
    """Factories ``(params, x, y, loss) -> step`` for what is installed; the floor comes first."""
    found: dict[str, Callable[..., Any]] = {}
    if device == "cuda":
        import cupy

        found["cupy (hand-written)"] = lambda p, x, y, loss: HandWrittenStep(p, x, y, loss, cupy)
    else:
        found["numpy (hand-written)"] = lambda p, x, y, loss: HandWrittenStep(p, x, y, loss, np)
    found["gradcore"] = lambda p, x, y, loss: GradcoreStep(p, x, y, loss, device)
    found["gradcore jit"] = lambda p, x, y, loss: JitStep(p, x, y, loss, device)
    if device == "cpu":
        if installed("autograd"):
            found["autograd"] = AutogradStep
        else:
            notes.append("autograd is not installed: skipped (pip install -e '.[bench]')")
    if not with_torch:
        return found
    if installed("torch"):
        import torch

        if device == "cpu":
            threads = blas_threads()
            if threads:
                torch.set_num_threads(threads)
            notes.append(
                f"PyTorch {torch.__version__} runs on {torch.get_num_threads()} threads, "
                f"set to match NumPy's BLAS ({threads} threads)"
            )
        name = "pytorch cuda" if device == "cuda" else "pytorch"
        found[name] = lambda p, x, y, loss: TorchStep(p, x, y, loss, device)
    else:
        notes.append("PyTorch is not installed: skipped (pip install -e '.[bench]')")
    return found


def page_faults_per_step(step: Callable[[], Any], steps: int = 20) -> float | None:
    """Minor page faults per step, run alone: memory the allocator handed back to the OS and
    took again, each page zeroed by the kernel. None where the platform does not count them."""
    if resource is None:
        return None
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps


def check_updates_agree(steps: dict[str, Any], initial: list[dict[str, np.ndarray]]) -> None:
    """One step of each from the same start must move every parameter by the same amount.

    Comparing the updates (new minus initial parameters), not the parameters themselves, keeps
    the check sharp: an update is about lr times the gradient, small next to the parameters.
    """
    reference, *_ = steps
    updates = {}
    for name, step in steps.items():
        step()
        new = step.current_params()
        updates[name] = np.concatenate(
            [(new[i][k] - layer[k]).ravel() for i, layer in enumerate(initial) for k in layer]
        )
    expected = updates[reference]
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


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Every case, every installed implementation, checked for agreement, then timed."""
    backend = gc.backend.backend_for_device(device)
    notes: list[str] = [
        f"one step: forward, backward, SGD momentum {MOMENTUM}, lr {LEARNING_RATE}, float32",
        "agreement checked before timing: one step from the same parameters and batch gives "
        "the same update as the floor (within 1e-3 of the largest update)",
        "repeat RxN: R samples, round-robin across implementations, each the mean of N steps "
        "in a row; ratio is of medians, min_ratio of minima",
        "page_faults_per_step: minor page faults per step, each implementation run alone",
    ]
    factories = implementations(device, notes)
    reference = next(iter(factories))
    synchronize = backend.synchronize
    if device == "cuda" and installed("torch"):
        import torch

        def synchronize() -> None:  # PyTorch may queue work on streams of its own
            backend.synchronize()
            torch.cuda.synchronize()

    rows = []
    for case in cases(device, quick):
        params, x, y = problem(case)
        check_updates_agree({n: f(params, x, y, case.loss) for n, f in factories.items()}, params)
        steps = {name: factory(params, x, y, case.loss) for name, factory in factories.items()}
        # Each sample is `number` steps in a row, so that each implementation times its own
        # steady state: timed one step each in turn, one implementation's heap left the next
        # one to fault its pages back in (see page_faults_per_step).
        repeat, number = (1, 1) if quick else (40, max(3, 640 // case.batch))
        timed = compare(
            steps,
            reference,
            repeat=repeat,
            number=number,
            warmup=1 if quick else 5,
            synchronize=synchronize,
        )
        floor_min = next(row["min_s"] for row in timed if row["impl"] == reference)
        for row in timed:
            # Other processes only ever add time: the ratio of minima shows the undisturbed cost.
            row.update(case=case.name, batch=case.batch, repeat=f"{repeat}x{number}")
            row["min_ratio"] = row["min_s"] / floor_min
            row["page_faults_per_step"] = page_faults_per_step(steps[row["impl"]])
        _mark_targets(timed, case, device)
        rows += timed
    return {"suite": "mlp", "reference": reference, "rows": rows, "notes": notes}


def profile_step(case: Case, device: str = "cpu", steps: int = 200) -> None:
    """Print where gradcore's step in ``case`` spends its time (pyinstrument, else cProfile)."""
    params, x, y = problem(case)
    step = GradcoreStep(params, x, y, case.loss, device)
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
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    outputs = 10 if args.loss == "softmax" else 1
    profile_step(Case((784, 256, 256, outputs), args.loss, args.profile), args.device, args.steps)


if __name__ == "__main__":
    main()
