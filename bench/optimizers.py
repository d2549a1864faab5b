"""The optimizer step alone: each gradcore optimizer beside ``torch.optim``'s (foreach).

``python -m bench.optimizers [--device cpu|cuda] [--quick]``

One case per optimizer (SGD with momentum, Adam, AdamW, RMSprop, Adagrad, each with Keras's
defaults): the parameters of one MLP, fixed gradients, and one update timed, with
``torch.optim`` on copies of the same arrays, ``foreach=True`` (its multi-tensor path: one
call per operation for all parameters). Before timing, three steps of each pair are checked
to agree. PyTorch is told the same hyperparameters (its eps is Keras's epsilon, its alpha
RMSprop's rho), so the two do the same arithmetic.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

import gradcore as gc
from bench import report
from bench.harness import check_agree, compare

SIZES = [784, 256, 128, 10]  # an MNIST MLP: 235k parameters in six arrays
QUICK_SIZES = [8, 6, 3]

# name -> (gradcore optimizer, torch.optim class name and its arguments for the same update)
OPTIMIZERS: dict[str, tuple[Callable[[], Any], str, dict[str, Any]]] = {
    "SGD momentum": (
        lambda: gc.optim.SGD(0.01, momentum=0.9), "SGD", {"lr": 0.01, "momentum": 0.9}
    ),
    "Adam": (gc.optim.Adam, "Adam", {"lr": 0.001, "eps": 1e-7}),
    "AdamW": (gc.optim.AdamW, "AdamW", {"lr": 0.001, "eps": 1e-7, "weight_decay": 0.004}),
    "RMSprop": (gc.optim.RMSprop, "RMSprop", {"lr": 0.001, "alpha": 0.9, "eps": 1e-7}),
    "Adagrad": (
        gc.optim.Adagrad,
        "Adagrad",
        {"lr": 0.001, "eps": 1e-7, "initial_accumulator_value": 0.1},
    ),
}  # fmt: skip


def problem(sizes: list[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Host float32 parameters of an MLP (as ``init_mlp`` draws them) and gradients."""
    params = gc.pytree.tree_leaves(gc.to_numpy(gc.nn.init_mlp(sizes, seed=0)))
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(p.shape).astype(np.float32) * 0.1 for p in params]
    return params, grads


class GradcoreStep:
    def __init__(self, make: Callable[[], Any], params, grads, device: str) -> None:
        self.optimizer = make()
        self.params = [gc.array(p, device=device) for p in params]
        self.grads = [gc.array(g, device=device) for g in grads]

    def __call__(self) -> None:
        self.optimizer.step(self.params, self.grads)

    def current(self) -> list[Any]:
        return self.params


class TorchStep:
    def __init__(self, name: str, kwargs: dict[str, Any], params, grads, device: str) -> None:
        import torch

        where = "cuda" if device == "cuda" else "cpu"
        self.params = [torch.tensor(p, device=where, requires_grad=True) for p in params]
        for p, g in zip(self.params, grads):
            p.grad = torch.tensor(g, device=where)
        self.optimizer = getattr(torch.optim, name)(self.params, foreach=True, **kwargs)

    def __call__(self) -> None:
        self.optimizer.step()

    def current(self) -> list[Any]:
        return self.params


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Every optimizer: agreement over three steps, then the step timed side by side."""
    backend = gc.backend.backend_for_device(device)
    has_torch = importlib.util.find_spec("torch") is not None
    sizes = QUICK_SIZES if quick else SIZES
    notes = [
        f"one optimizer step on the parameters of an MLP {sizes} (float32), fixed gradients; "
        "Keras's defaults, the same hyperparameters for torch.optim (foreach=True)",
        "agreement checked before timing: three steps from the same parameters agree",
    ]
    synchronize = backend.synchronize
    if has_torch:
        import torch

        if device == "cuda":

            def synchronize() -> None:  # PyTorch queues on streams of its own
                backend.synchronize()
                torch.cuda.synchronize()
    else:
        notes.append("PyTorch is not installed: gradcore alone (pip install -e '.[bench]')")
    params, grads = problem(sizes)
    reference = "torch.optim foreach" if has_torch else "gradcore"
    rows = []
    for case, (make, torch_name, torch_kwargs) in OPTIMIZERS.items():
        steps: dict[str, Callable[[], None]] = {
            "gradcore": GradcoreStep(make, params, grads, device)
        }
        if has_torch:
            steps[reference] = TorchStep(torch_name, torch_kwargs, params, grads, device)
        for _ in range(3):
            for step in steps.values():
                step()
        current = {name: step.current() for name, step in steps.items()}
        check_agree(current, reference, rtol=1e-4, atol=1e-6)
        repeat, number = (1, 1) if quick else (30, 20)
        timed = compare(steps, reference, repeat=repeat, number=number,
                        warmup=1 if quick else 5, synchronize=synchronize)  # fmt: skip
        for row in timed:
            row.update(case=case, repeat=f"{repeat}x{number}")
        rows += timed
    return {"suite": "optimizers", "reference": reference, "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.optimizers", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="a tiny MLP, one repetition")
    args = parser.parse_args()
    print(report.suite_markdown(run(args.device, args.quick)))


if __name__ == "__main__":
    main()
