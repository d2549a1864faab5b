"""Fused sigmoid kernels as effective bandwidth, next to the device's own copy bandwidth.

``python -m bench.sigmoid [--device cpu|cuda] [--quick] [--json PATH]``

An element-wise kernel is bound by memory, so its figure of merit is bytes moved per second,
counting the fewest bytes it must move: forward reads x and writes y (8 bytes per float32),
backward reads y and g and writes the gradient (12), both together 20. Each case times the ops
``gc.sigmoid`` and ``sigmoid_grad`` (the device's fused kernels) beside the same math as
separate array ops and, on the CPU, PyTorch's own sigmoid kernels on the same data. The copy
case (read n, write n) is the ceiling, measured in this run.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench import report
from bench.harness import check_agree, compare, machine_info, mark_target
from gradcore.backend import backend_for_device
from gradcore.ops import sigmoid, sigmoid_grad

BYTES_PER_ELEMENT = {"copy": 8, "forward": 8, "backward": 12, "forward+backward": 20}


def _unfused(device: str, xp: Any) -> tuple[Callable, Callable]:
    """The backend's own formulas, one array op per step (what a plain library evaluates)."""
    if device == "cpu":

        def forward(x: Any) -> Any:
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + xp.exp(-x))

    else:

        def forward(x: Any) -> Any:
            return xp.tanh(x * 0.5) * 0.5 + 0.5

    return forward, lambda y, g: g * y * (1.0 - y)


def _torch_cases(x: np.ndarray, g: np.ndarray) -> dict[str, dict[str, Callable]] | None:
    """torch.sigmoid and its backward kernel on the same host data (CPU only)."""
    try:
        import torch
    except ImportError:
        return None
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    ty, tgx = torch.empty_like(tx), torch.empty_like(tx)
    y = torch.sigmoid(tx)
    backward = torch.ops.aten.sigmoid_backward

    def preallocated() -> Any:
        torch.sigmoid(tx, out=ty)
        return backward(tg, ty, grad_input=tgx)

    return {
        "forward": {"torch": lambda: torch.sigmoid(tx)},
        "backward": {"torch": lambda: backward(tg, y)},
        "forward+backward": {
            "torch": lambda: backward(tg, torch.sigmoid(tx)),
            "torch (out= buffers)": preallocated,
        },
    }


def _cases(device: str, n: int) -> tuple[dict[str, dict[str, Callable]], list[str]]:
    backend = backend_for_device(device)
    xp = backend.xp
    rng = np.random.default_rng(0)
    host_x = (rng.standard_normal(n) * 4).astype(np.float32)
    host_g = rng.standard_normal(n).astype(np.float32)
    x, g = backend.asarray(host_x), backend.asarray(host_g)
    y = sigmoid(x)
    copy_target = xp.empty_like(x)

    def copy() -> Any:
        copy_target[...] = x
        return copy_target

    forward, backward = _unfused(device, xp)
    cases = {
        "copy": {"copy": copy},
        "forward": {"fused": lambda: sigmoid(x), "unfused": lambda: forward(x)},
        "backward": {
            "fused": lambda: sigmoid_grad(y, g),
            "unfused": lambda: backward(y, g),
        },
        "forward+backward": {
            "fused": lambda: sigmoid_grad(sigmoid(x), g),
            "unfused": lambda: backward(forward(x), g),
        },
    }
    notes = []
    if device == "cpu":
        torch_cases = _torch_cases(host_x, host_g)
        if torch_cases is None:
            notes.append("PyTorch is not installed: no torch rows")
        else:
            import torch

            notes.append(f"torch {torch.__version__} on {torch.get_num_threads()} threads")
            for case, impls in torch_cases.items():
                cases[case].update(impls)
    return cases, notes


def _check(cases: dict[str, dict[str, Callable]]) -> None:
    """Every implementation of a case computes the same numbers as the fused kernel."""
    for impls in cases.values():
        if "fused" in impls:
            outputs = {name: fn() for name, fn in impls.items()}
            check_agree(outputs, "fused", rtol=1e-5, atol=1e-6)


def _verdict(case: str, impl: str, target: str, measured: str, met: bool) -> dict[str, Any]:
    """A row that carries only a verdict: a comparison no single timing row holds."""
    row = {"case": case, "impl": impl, **dict.fromkeys(("median_s", "min_s", "ratio", "GB/s"))}
    mark_target(row, target, met, measured)
    return row


def _targets(device: str, rows: list[dict[str, Any]]) -> None:
    """Add the targets: the share of copy bandwidth on CUDA, the time against PyTorch on the CPU."""
    by = {(row["case"], row["impl"]): row for row in rows}
    if device == "cuda":
        ceiling = by["copy", "copy"]["GB/s"]
        for case in ("forward", "backward", "forward+backward"):
            share = by[case, "fused"]["GB/s"] / ceiling
            rows.append(
                _verdict(case, "fused", ">= 85% of copy bandwidth", f"{share:.0%}", share >= 0.85)
            )
        fused = by["forward+backward", "fused"]["median_s"]
        speedup = by["forward+backward", "unfused"]["median_s"] / fused
        measured = f"{speedup:.2f}x faster"
        rows.append(
            _verdict("forward+backward", "fused vs unfused", ">= 3x", measured, speedup >= 3.0)
        )
    elif ("forward+backward", "torch") in by:
        fused = by["forward+backward", "fused"]["median_s"]
        for impl in ("torch", "torch (out= buffers)"):
            ratio = fused / by["forward+backward", impl]["median_s"]
            measured = f"{ratio:.2f}x its time"
            rows.append(
                _verdict(
                    "forward+backward", f"fused vs {impl}", "within 1.0x", measured, ratio <= 1
                )
            )


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """The suite: each case timed side by side, with effective bandwidth in GB/s."""
    n = 1 << 16 if quick else (1 << 26 if device == "cuda" else 1 << 24)
    backend = backend_for_device(device)
    cases, notes = _cases(device, n)
    _check(cases)
    rows = []
    for case, impls in cases.items():
        reference = "copy" if case == "copy" else "fused"
        timed = compare(
            impls,
            reference,
            repeat=3 if quick else 15,
            warmup=1 if quick else 3,
            synchronize=backend.synchronize,
        )
        for row in timed:
            row["case"] = case
            row["GB/s"] = BYTES_PER_ELEMENT[case] * n / row["median_s"] / 1e9
        rows += timed
    _targets(device, rows)
    for row in rows:
        row["case"] = f"{row['case']}, {n:,} float32"
    notes += [
        f"GB/s counts the fewest bytes each case must move: {BYTES_PER_ELEMENT} per element",
        "ratios are to the fused kernel (the copy case: to itself)",
    ]
    if device == "cpu":
        notes.append("copy is NumPy's one-thread copy; the fused kernels use every core")
    else:
        notes.append(f"CuPy {backend.cupy.__version__}")
    return {"suite": "sigmoid", "reference": "fused", "rows": rows, "notes": notes}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sigmoid", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="tiny arrays, few repetitions")
    parser.add_argument("--json", type=Path, help="also write the result (and machine) here")
    args = parser.parse_args(argv)
    result = run(args.device, args.quick)
    print(report.suite_markdown(result))
    for line in report.targets({"suites": [result]}):
        print(line)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**result, "machine": machine_info()}, indent=2))


if __name__ == "__main__":
    main()
