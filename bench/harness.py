"""Timing side by side: every implementation in one process, interleaved, reported as ratios.

Each suite builds a dict ``{implementation name: zero-argument callable}`` for one case and calls
``compare``. Implementations are first checked to agree numerically, then warmed up, then timed
round-robin (one repetition of each in turn), so that a change in machine load hits all of them
alike. The result rows carry the median and minimum seconds per call and each implementation's
ratio of medians to the reference.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _host(value: Any) -> Any:
    """A host NumPy copy of an array, a CuPy/PyTorch array or a pytree of them."""
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_host(v) for v in value]
    if hasattr(value, "detach"):  # torch
        return value.detach().cpu().numpy()
    if hasattr(value, "get"):  # cupy
        return value.get()
    return np.asarray(value)


def check_agree(outputs: dict[str, Any], reference: str, rtol: float, atol: float) -> None:
    """Raise AssertionError unless every implementation's output matches the reference's."""
    expected = _host(outputs[reference])
    for name, value in outputs.items():
        got = _host(value)
        flat_expected = np.concatenate([np.ravel(a) for a in _leaves(expected)])
        flat_got = np.concatenate([np.ravel(a) for a in _leaves(got)])
        if flat_expected.shape != flat_got.shape or not np.allclose(
            flat_got, flat_expected, rtol=rtol, atol=atol
        ):
            same_shape = flat_got.shape == flat_expected.shape
            worst = np.max(np.abs(flat_got - flat_expected)) if same_shape else "shape"
            raise AssertionError(f"{name} disagrees with {reference}: max |difference| {worst}")


def _leaves(tree: Any) -> list:
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    if isinstance(tree, list):
        return [leaf for v in tree for leaf in _leaves(v)]
    return [np.asarray(tree, dtype=np.float64)]


def compare(
    implementations: dict[str, Callable[[], Any]],
    reference: str,
    *,
    repeat: int = 20,
    number: int = 1,
    warmup: int = 3,
    synchronize: Callable[[], None] = lambda: None,
) -> list[dict[str, Any]]:
    """Time each implementation ``repeat`` times (``number`` calls each), round-robin.

    Ratios are of medians, to ``reference``.
    """
    for fn in implementations.values():
        for _ in range(warmup):
            fn()
        synchronize()
    samples: dict[str, list[float]] = {name: [] for name in implementations}
    for _ in range(repeat):
        for name, fn in implementations.items():
            synchronize()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            synchronize()
            samples[name].append((time.perf_counter() - start) / number)
    reference_median = statistics.median(samples[reference])
    return [
        {
            "impl": name,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "ratio": statistics.median(times) / reference_median,
        }
        for name, times in samples.items()
    ]


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info

        infos = [i for i in threadpool_info() if i.get("user_api") == "blas"]
        if infos:
            i = infos[0]
            return f"{i.get('internal_api')} {i.get('version')} ({i.get('num_threads')} threads)"
    except ImportError:
        pass
    return "unknown"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _gpu_name() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, BLAS, GPU, library versions, date."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "blas": _blas(),
        "gpu": _gpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def mark_target(row: dict[str, Any], target: str, met: bool | None, measured: str = "") -> None:
    """Give a result row its target, the one way every suite declares one (``bench.report``
    lists each row that has a target with its verdict). ``measured`` words the figure held
    against the target when it is not the row's ratio."""
    row["target"] = target
    row["met"] = met
    if measured:
        row["measured"] = measured
