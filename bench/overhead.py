"""Per-op overhead: forward + backward of a chain of 1000 cheap elementwise ops.

On a shape-(4,) array the arithmetic is nearly free, so the time per op is what the framework
itself costs: tracing, graph bookkeeping and dispatch. The chain repeats sin, * 1.001, + 0.1,
- 0.1; hand-written NumPy (forward keeping what backward needs, then the chain rule by hand) is
the reference. Run: ``python -m bench.overhead [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np

import gradcore as gc
from bench import report
from bench.harness import check_agree, compare, mark_target

OPS_PER_LINK = 4


def chain_numpy(x: np.ndarray, links: int) -> np.ndarray:
    """Gradient of sum(chain(x)) by hand: the floor, no graph at all."""
    saved = []
    for _ in range(links):
        saved.append(x)
        x = np.sin(x)
        x = x * 1.001
        x = x + 0.1
        x = x - 0.1
    g = np.ones_like(x)
    for x_in in reversed(saved):
        g = g * 1.001
        g = g * np.cos(x_in)
    return g


def chain(x: Any, links: int, sin: Callable[[Any], Any]) -> Any:
    """The forward chain, in any library whose arrays take * + - with Python numbers."""
    for _ in range(links):
        x = sin(x)
        x = x * 1.001
        x = x + 0.1
        x = x - 0.1
    return x


def implementations(links: int) -> dict[str, Callable[[np.ndarray], Any]]:
    """Every installed implementation of 'gradient of the chain at x'."""
    impls: dict[str, Callable[[np.ndarray], Any]] = {
        "numpy (by hand)": lambda x: chain_numpy(x, links),
        "gradcore": gc.grad(lambda x: gc.sum(chain(x, links, gc.sin))),
        "gradcore jit": gc.jit(gc.grad(lambda x: gc.sum(chain(x, links, gc.sin)))),
    }
    try:
        import autograd
        import autograd.numpy as anp

        impls["autograd"] = autograd.grad(lambda x: anp.sum(chain(x, links, anp.sin)))
    except ImportError:
        pass
    try:
        import torch

        def torch_chain(x):
            t = torch.tensor(x, requires_grad=True)
            chain(t, links, torch.sin).sum().backward()
            return t.grad

        impls["pytorch eager"] = torch_chain
    except ImportError:
        pass
    return impls


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """The suite: microseconds per op and ratio to hand-written NumPy, CPU only."""
    links = 25 if quick else 250
    repeat = 1 if quick else 30
    x = np.linspace(-1.0, 1.0, 4)
    impls = implementations(links)
    check_agree({name: fn(x) for name, fn in impls.items()}, "numpy (by hand)", 1e-10, 1e-12)
    rows = compare(
        {name: (lambda fn=fn: fn(x)) for name, fn in impls.items()},
        "numpy (by hand)",
        repeat=repeat,
        warmup=1 if quick else 3,
    )
    ops = links * OPS_PER_LINK
    targets = {"gradcore": 2.0, "gradcore jit": 1.0}  # us per op, forward and backward
    for row in rows:
        row["case"] = f"{ops} ops, float64 (4,)"
        row["us_per_op"] = row["median_s"] / ops * 1e6
        if row["impl"] in targets:
            limit = targets[row["impl"]]
            measured = f"{row['us_per_op']:.2f} us per op"
            mark_target(row, f"<= {limit:.1f} us per op", row["us_per_op"] <= limit, measured)
    notes = [
        "forward + backward time per op; gradcore jit records the chain once, then replays it",
    ]
    if device != "cpu":
        notes.append("the overhead suite measures the host-side cost and always runs on the CPU")
    return {"suite": "overhead", "reference": "numpy (by hand)", "rows": rows, "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    result = run(quick=parser.parse_args().quick)
    print(report.suite_markdown(result))
    for line in report.targets({"suites": [result]}):
        print(line)


if __name__ == "__main__":
    main()
