"""The ``scaling`` suite: data-parallel steps on 1 and 2 ranks, and what the allreduce costs.

For two MLPs, the 784-256-256-10 one (1.08 MB of float32 gradients) and a wide 784-4096-2304-10
one (50.7 MB), it times a training step (forward, backward, ``allreduce_mean`` of the gradients
on 2 ranks, SGD update) at 32 rows per rank: steps per second, rows per second, and the share
of the step spent in the allreduce (which includes waiting for the slower rank). Each rank count
runs as its own ``mpiexec -n K python -m mpi4py -m bench.scaling --worker`` job with one BLAS
thread per rank: K ranks on K cores, the data-parallel layout, and a baseline that other
processes on a shared machine disturb less than a multithreaded one.

Then it times one in-place ``Allreduce`` of 4 KB to 64 MB against the ring bound
``2 (K - 1) / K x bytes / bandwidth``: the bytes each rank must send and receive, over a link
whose bandwidth is taken to be that of one ``memcpy`` (``np.copyto`` of 64 MB), which is what
MPI's shared-memory transport does on one machine.

``python -m bench.scaling [--device cpu|cuda] [--quick]`` runs it alone and prints the table.
"""

# ruff: noqa: N806 - X is a data matrix

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODELS = {  # name -> layer sizes
    "mlp 784-256-256-10": (784, 256, 256, 10),
    "wide 784-4096-2304-10": (784, 4096, 2304, 10),
}
BATCH = 32  # rows per rank and step
MARK = "SCALING "  # prefixes the worker's JSON line on stdout


def _gradient_bytes(sizes: tuple[int, ...]) -> int:
    return 4 * sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))


def _median_and_min(times: list[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times)}


# ---------------------------------------------------------------------------------------------
# one rank of a job


def _time_steps(device: str, sizes: tuple[int, ...], steps: int) -> dict[str, Any]:
    """Per-step and per-allreduce times of ``steps`` training steps on this rank."""
    import gradcore as gc
    import gradcore.distributed as gd

    rng = np.random.default_rng(gd.rank())
    X = gc.array(rng.normal(size=(BATCH, sizes[0])), dtype="float32", device=device)
    y = gc.array(rng.integers(0, sizes[-1], size=BATCH), device=device)
    params = gc.nn.init_mlp(list(sizes), seed=0, device=device)
    optimizer = gc.optim.SGD(0.01, momentum=0.9)
    value_and_grad = gc.value_and_grad(
        lambda params, xb, yb: gc.nn.softmax_cross_entropy(gc.nn.mlp(params, xb), yb)
    )
    backend = gc.backend.backend_for_device(device)
    parallel = gd.size() > 1
    step_times, reduce_times = [], []
    for step in range(steps + 2):  # two warm-up steps
        gd.barrier()
        started = time.perf_counter()
        _, grads = value_and_grad(params, X, y)
        backend.synchronize()
        computed = time.perf_counter()
        if parallel:
            gd.allreduce_mean(grads)
            backend.synchronize()
        reduced = time.perf_counter()
        optimizer.step(params, grads)
        backend.synchronize()
        if step >= 2:
            step_times.append(time.perf_counter() - started)
            reduce_times.append(reduced - computed)
    return {
        "step": _median_and_min(step_times),
        "allreduce_share": sum(reduce_times) / sum(step_times) if parallel else None,
    }


def _time_allreduce(nbytes: int, repeat: int) -> dict[str, float]:
    """One in-place Allreduce of ``nbytes`` of float32, the buffer method, ``repeat`` times."""
    from mpi4py import MPI

    buffer = np.ones(nbytes // 4, np.float32)
    times = []
    for _ in range(repeat + 1):
        MPI.COMM_WORLD.Barrier()
        started = time.perf_counter()
        MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times.append(time.perf_counter() - started)
    return _median_and_min(times[1:])


def _memcpy_bandwidth(nbytes: int = 64 * 2**20, repeat: int = 10) -> float:
    """Bytes per second of ``np.copyto`` between two buffers of ``nbytes`` (median)."""
    source, target = np.ones(nbytes // 4, np.float32), np.empty(nbytes // 4, np.float32)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - started)
    return nbytes / statistics.median(times)


def worker(device: str, quick: bool) -> None:
    """One rank: time the models' steps and, on several ranks, the allreduce sweep; rank 0
    prints the result as one JSON line."""
    import gradcore.distributed as gd

    device = gd.init(device)
    steps = {
        "mlp 784-256-256-10": 20 if quick else 200,
        "wide 784-4096-2304-10": 2 if quick else 12,
    }
    result: dict[str, Any] = {"ranks": gd.size(), "models": {}, "allreduce": {}}
    for name, sizes in MODELS.items():
        result["models"][name] = _time_steps(device, sizes, steps[name])
    if gd.size() > 1 and device == "cpu":
        sweep = [2**16, 2**20] if quick else [2**12, 2**16, 2**20, 2**24, 2**26]
        for nbytes in sweep + [_gradient_bytes(s) for s in MODELS.values()]:
            repeat = 3 if quick else int(min(200, max(5, 2**28 // nbytes)))
            result["allreduce"][nbytes] = _time_allreduce(nbytes, repeat)
    result["memcpy_bytes_per_s"] = _memcpy_bandwidth()
    if gd.is_root():
        print(MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# the suite: launch the jobs, turn their numbers into rows


def _launch(ranks: int, device: str, quick: bool) -> dict[str, Any]:
    """Run one job of ``ranks`` ranks, one BLAS thread each (one rank per core), and read its
    JSON line."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    command = ["mpiexec", "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "bench.scaling"]
    command += ["--worker", "--device", device] + ["--quick"] * quick
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return json.loads(lines[-1][len(MARK) :])


def _gpus() -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceCount()


def _mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.3g} MB"


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Rows per model and rank count (ratios of step times to 1 rank), then the allreduce sweep."""
    suite: dict[str, Any] = {"suite": "scaling", "reference": "1 rank", "rows": []}
    if importlib.util.find_spec("mpi4py") is None or shutil.which("mpiexec") is None:
        suite["notes"] = ["not run: needs mpi4py and mpiexec: pip install 'gradcore[mpi]'"]
        return suite
    counts = (1, 2) if device == "cpu" or _gpus() >= 2 else (1,)  # NCCL: one GPU per rank
    jobs = {ranks: _launch(ranks, device, quick) for ranks in counts}
    for name, sizes in MODELS.items():
        single = jobs[1]["models"][name]["step"]["median_s"]
        for ranks, job in jobs.items():
            measured = job["models"][name]
            step = measured["step"]
            suite["rows"].append(
                {
                    "case": f"{name} ({_mb(_gradient_bytes(sizes))} of gradients)",
                    "impl": f"{ranks} rank" + "s" * (ranks > 1),
                    **step,
                    "ratio": step["median_s"] / single,
                    "steps/s": 1 / step["median_s"],
                    "rows/s": ranks * BATCH / step["median_s"],
                    "speedup": ranks * single / step["median_s"],
                    "allreduce_share": measured["allreduce_share"],
                }
            )
    if 2 not in jobs:
        suite["notes"] = ["one GPU: 2 ranks not run (NCCL needs one GPU per rank)"]
        return suite
    ranks, job = 2, jobs[2]
    bandwidth = job["memcpy_bytes_per_s"]
    for nbytes, timing in sorted(job["allreduce"].items(), key=lambda item: int(item[0])):
        bound = 2 * (ranks - 1) / ranks * int(nbytes) / bandwidth
        suite["rows"].append(
            {
                "case": f"Allreduce {_mb(int(nbytes))}",
                "impl": f"{ranks} ranks",
                **timing,
                "ratio": None,
                "ring_bound_s": bound,
                "times_bound": timing["median_s"] / bound,
            }
        )
    suite["notes"] = [
        f"one `mpiexec -n K python -m mpi4py` job per K, one BLAS thread per rank; step = "
        f"{BATCH} rows per rank, forward + backward + allreduce_mean of the gradients (K > 1) "
        "+ SGD update, float32",
        "ratio: time per step to 1 rank's (each rank's step also covers K times the rows); "
        "speedup: rows per second to 1 rank's; allreduce_share: allreduce time / step time on "
        "rank 0, waiting for the slower rank included",
        f"ring bound: 2 (K-1)/K x bytes / bandwidth, bandwidth = one 64 MB np.copyto: "
        f"{bandwidth / 1e9:.2f} GB/s; times_bound: measured / bound",
    ]
    return suite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--quick", action="store_true", help="few steps, two buffer sizes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.device, args.quick)
        return 0
    from bench import report

    suite = run(args.device, args.quick)
    print(report.suite_table(suite) if suite["rows"] else "")
    print("\n".join(f"- {note}" for note in suite["notes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
