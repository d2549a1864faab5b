"""The ``gpu`` suite: the GPU table that bench/gpu_run.sh writes.

``python -m bench --device cuda --suite gpu``

Two figures. The fused sigmoid, forward and backward together, as a fraction of the device's
memory bandwidth: the peak from its attributes (memory clock x bus width x 2, double data
rate) and the copy bandwidth measured in the same run. And gradcore's jitted MLP step
(784-256-256-10, softmax) against PyTorch CUDA eager and the hand-written CuPy floor, from
batch 32 to 4096. The implementations share one process here: on a GPU the work is the
device's, and no CPU thread pool of one peer competes with another's (the CPU suite ``mlp``
gives each peer a process of its own for that reason). On any other device it runs nothing and
says so; ``table`` runs the same code on any device (the tests run it on the CPU).
"""

from __future__ import annotations

import functools
from typing import Any

from bench import sigmoid
from bench.harness import compare
from bench.mlp import (
    FLOOR,
    Case,
    ExpertStep,
    JitStep,
    TorchStep,
    check_updates_agree,
    installed,
    one_step_params,
    problem,
)
from gradcore.backend import backend_for_device

BATCHES = (32, 128, 1024, 4096)
SIZES = (784, 256, 256, 10)


def peak_bandwidth(device: str) -> float | None:
    """The device's memory bandwidth in bytes per second from its attributes; None off CUDA or
    where the driver no longer reports the memory clock."""
    if device != "cuda":
        return None
    import cupy

    runtime, index = cupy.cuda.runtime, cupy.cuda.Device().id
    # cudaDevAttrMemoryClockRate (kHz) and cudaDevAttrGlobalMemoryBusWidth (bits)
    clock_khz = runtime.deviceGetAttribute(36, index)
    bus_bits = runtime.deviceGetAttribute(37, index)
    return 2 * clock_khz * 1e3 * bus_bits / 8 if clock_khz and bus_bits else None


def sigmoid_rows(device: str, n: int, repeat: int) -> list[dict[str, Any]]:
    """Copy and fused sigmoid forward+backward on ``n`` float32, each with its GB/s and its
    share of the peak and of the copy bandwidth."""
    cases, _ = sigmoid._cases(device, n)
    synchronize = backend_for_device(device).synchronize
    timed = {"copy": cases["copy"]["copy"], "fused": cases["forward+backward"]["fused"]}
    rows = compare(timed, "copy", repeat=repeat, warmup=2, synchronize=synchronize)
    peak = peak_bandwidth(device)
    by_impl = {row["impl"]: row for row in rows}
    copy_rate = sigmoid.BYTES_PER_ELEMENT["copy"] * n / by_impl["copy"]["median_s"]
    for row in rows:
        moved = sigmoid.BYTES_PER_ELEMENT["copy" if row["impl"] == "copy" else "forward+backward"]
        rate = moved * n / row["median_s"]
        row["case"] = f"sigmoid forward+backward, {n:,} float32"
        row["GB/s"] = rate / 1e9
        row["of_peak"] = None if peak is None else f"{rate / peak:.0%}"
        row["of_copy"] = f"{rate / copy_rate:.0%}"
        row["ratio"] = None  # the shares are the figures here, not a time ratio
        of_peak = "" if peak is None else f", {row['of_peak']} of peak"
        row["measured"] = f"{rate / 1e9:.0f} GB/s{of_peak}, {row['of_copy']} of copy"
    return rows


def mlp_rows(device: str, batches: tuple[int, ...], repeat: int) -> list[dict[str, Any]]:
    """gradcore's jitted step, PyTorch eager and the floor, side by side at each batch size;
    ratios to the floor, and ``vs_pytorch`` the jitted step's time over PyTorch's."""
    xp_name = "cupy" if device == "cuda" else "numpy"
    torch_name = "pytorch cuda" if device == "cuda" else "pytorch"
    rows = []
    for batch in batches:
        case = Case(SIZES, "softmax", batch)
        params, x, y = problem(case)
        factories = {
            FLOOR[device]: functools.partial(ExpertStep, xp_name=xp_name),
            "gradcore jit": functools.partial(JitStep, device=device),
        }
        if installed("torch"):
            factories[torch_name] = functools.partial(TorchStep, device=device)
        # one step of each from the same start moves every parameter alike, before any timing
        check_updates_agree(
            {name: one_step_params(f(params, x, y, case.loss)) for name, f in factories.items()},
            params,
        )
        steps = {name: f(params, x, y, case.loss) for name, f in factories.items()}

        def synchronize_all(steps: dict[str, Any] = steps) -> None:
            for step in steps.values():
                step.synchronize()

        timed = compare(
            steps, FLOOR[device], repeat=repeat, number=10, warmup=3, synchronize=synchronize_all
        )
        by_impl = {row["impl"]: row for row in timed}
        for row in timed:
            row["case"] = case.name
        if torch_name in by_impl:
            jit_row = by_impl["gradcore jit"]
            jit_row["vs_pytorch"] = jit_row["median_s"] / by_impl[torch_name]["median_s"]
        rows += timed
    return rows


def table(device: str, quick: bool = False) -> dict[str, Any]:
    """The suite's result on ``device``, whatever it is."""
    n = 1 << 16 if quick else 1 << 26
    repeat = 2 if quick else 20
    batches = BATCHES[:1] if quick else BATCHES
    notes = [
        "sigmoid: GB/s counts the fewest bytes moved, 20 per element for forward+backward "
        "(x, g read; y, the gradient written), 8 for the copy; of_peak: share of the memory "
        "bandwidth the device reports (clock x bus width x 2), of_copy: of the copy measured here",
        "mlp: one step (forward, backward, SGD momentum 0.9) of 784-256-256-10, softmax, "
        "float32; ratio to the floor, vs_pytorch: gradcore jit's time over PyTorch eager's",
    ]
    if not installed("torch"):
        notes.append("PyTorch is not installed: no PyTorch column")
    rows = sigmoid_rows(device, n, repeat) + mlp_rows(device, batches, repeat)
    return {"suite": "gpu", "reference": FLOOR[device], "rows": rows, "notes": notes}


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """The GPU table on "cuda"; elsewhere a note that says it was not measured."""
    if device != "cuda":
        notes = ["not run: the GPU table needs `--device cuda` (bench/gpu_run.sh runs it)"]
        return {"suite": "gpu", "reference": None, "rows": [], "notes": notes}
    return table(device, quick)
