"""``python -m bench [--device cpu|cuda] [--suite NAME ...] [--quick] [--out DIR]``.

Runs the chosen suites (the ``mlp`` suite starts a process for each peer), prints a Markdown
table, and writes the run as JSON, Markdown and a PNG chart of the ratios under ``--out``. A
suite that fails is recorded with the error and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from gradcore.backends import cudasim

import gradcore as gc
from bench import report
from bench.harness import machine_info

# Before any suite imports PyTorch (and inherited by the mlp suite's worker processes): its
# OpenMP threads would otherwise spin after each parallel region and take the cores from
# whatever runs next; on a loaded 2-core machine PyTorch's own step is faster this way too.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# suite name -> module whose run(device, quick) returns the suite's result dict
SUITES = {
    "mlp": "bench.mlp",
    "memory": "bench.memory",
    "overhead": "bench.overhead",
    "sigmoid": "bench.sigmoid",
    "train": "bench.train_time",
    "checkpoint": "bench.checkpoint_cost",
    "scaling": "bench.scaling",  # launches its own mpiexec jobs
    "gpu": "bench.gpu",  # the GPU table of bench/gpu_run.sh; on the CPU only a note
    "estimators": "bench.estimators",
    "csv": "bench.csv_load",
    "optimizers": "bench.optimizers",
}


def versions() -> dict[str, str]:
    """Versions of gradcore and of the peers it is compared with, where installed."""
    distributions = {
        "gradcore": ("gradcore",),
        "autograd": ("autograd",),
        "torch": ("torch",),
        "jax": ("jax",),
        "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy"),  # CuPy ships one wheel per CUDA
    }
    found = {}
    for package, names in distributions.items():
        for name in names:
            try:
                found[package] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                continue
            break
    return found


def _load_average() -> float | None:
    """Other processes steal time from benchmarks; the load average records how much."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def run_suite(name: str, device: str, quick: bool) -> dict[str, Any]:
    """One suite's result; a missing suite module or a failure becomes a result with a note."""
    module_name = SUITES[name]
    empty = {"suite": name, "reference": None, "rows": []}
    started, load_before = time.perf_counter(), _load_average()
    try:
        result = importlib.import_module(module_name).run(device=device, quick=quick)
    except Exception as error:  # noqa: BLE001 - recorded, reported and turned into exit status 1
        if isinstance(error, ModuleNotFoundError) and error.name == module_name:
            path = module_name.replace(".", "/") + ".py"
            return {**empty, "notes": [f"not run: {path} is not there yet"]}
        traceback.print_exc()
        return {**empty, "notes": [f"failed: {type(error).__name__}: {error}"], "failed": True}
    result["seconds"] = time.perf_counter() - started
    result["load_average"] = [load_before, _load_average()]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="gradcore side by side with its peers, as ratios"
    )
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--suite", nargs="+", choices=list(SUITES), default=list(SUITES), metavar="NAME",
        help=f"suites to run (default: all of {', '.join(SUITES)})",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--out", type=Path, default=report.RESULTS_DIR, help="results folder")
    args = parser.parse_args(argv)
    if args.device == "cuda" and cudasim.device_count():
        print(
            f"python -m bench: {cudasim.ENV} is set: the simulated CUDA device is a test double "
            "and never gives a speed figure; unset it to measure a real GPU",
            file=sys.stderr,
        )
        return 2
    try:
        gc.backend.backend_for_device(args.device)
    except gc.DeviceError as error:
        print(f"python -m bench: {error}", file=sys.stderr)
        return 2

    # What was measured, not where it was written: --out is left out.
    command = f"python -m bench --device {args.device}"
    if args.suite != list(SUITES):
        command += " --suite " + " ".join(args.suite)
    run = {"command": command + " --quick" * args.quick, "device": args.device, "quick": args.quick}
    run["machine"] = machine_info()
    run["versions"] = versions()
    run["suites"] = []
    for name in args.suite:
        print(f"[bench] {name} on {args.device}{' (quick)' if args.quick else ''}", flush=True)
        run["suites"].append(run_suite(name, args.device, args.quick))
    print(report.markdown(run))
    for path in report.write_run(run, args.out):
        print(f"[bench] wrote {path}")
    return 1 if any(suite.get("failed") for suite in run["suites"]) else 0


if __name__ == "__main__":
    sys.exit(main())
