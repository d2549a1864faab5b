"""Timing side by side, reported as ratios: in one process (``compare``) or one process per peer.

``compare`` times zero-argument callables of one process round-robin (one repetition of each in
turn), so that a change in machine load hits all of them alike. That is fair to implementations
that share a thread pool, and unfair to libraries with thread pools of their own: OpenBLAS's and
PyTorch's OpenMP workers keep spinning for a while after each call and take the cores from
whatever is timed next. So the ``mlp`` suite gives every peer a ``Worker``, a process of its own
that builds and times it on request; only one worker runs at a time, the others idle, and
each slice starts with ``settle_s`` of untimed steps, long enough for the last worker's threads
to go to sleep (``time_isolated``). ``time_alone`` times a peer with no other worker alive, and
``mark_fairness`` flags a case whose figure in the suite is more than 1.2x that.

Result rows carry the median and minimum seconds per call and each implementation's ratio to
the reference, taken round by round (``_rows``): a shared VM's speed changes from one minute to
the next (on this 2-core one, the floor's B=32 step is 0.33 ms or 0.60 ms, for seconds to
minutes at a time), and a ratio of two medians taken over a change compares slow samples with
fast ones.
"""

from __future__ import annotations

import gc as garbage_collector
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import time
import traceback
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

import gradcore


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

    Ratios are taken round by round (see ``_rows``); ``min_ratio`` is of minima.
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
    return _rows(samples, reference)


def _rows(
    samples: dict[str, list[float]],
    reference: str,
    per_round: int = 1,
    replica: str | None = None,
) -> list[dict[str, Any]]:
    """Median and minimum, and the ratios to the reference's, one row per implementation.

    The samples are in rounds of ``per_round`` per implementation, every implementation timed in
    each round: ``ratio`` is the median over rounds of the ratio of the round's medians, so that
    a change in the machine's speed between rounds cancels; ``min_ratio`` is of minima.

    ``replica`` names a second process running the reference's very step. The reference's
    figure is then both processes' (in each round the geometric mean of their medians; its
    median and minimum of their samples pooled): one process of a step can run a few percent
    faster or slower than another for as long as it lives, and every ratio carries the
    reference's share of that; two processes halve its variance. The replica gets no row of its
    own; the reference's row gives ``replica_ratio``, the second process over the first, the
    size of that noise in this run.
    """

    def rounds(times: list[float]) -> list[float]:
        return [
            statistics.median(times[i : i + per_round]) for i in range(0, len(times), per_round)
        ]

    reference_times, reference_rounds = samples[reference], rounds(samples[reference])
    replica_ratio = None
    if replica is not None:
        second = rounds(samples[replica])
        replica_ratio = statistics.median(
            b / a for a, b in zip(reference_rounds, second, strict=True)
        )
        reference_rounds = [math.sqrt(a * b) for a, b in zip(reference_rounds, second)]
        reference_times = reference_times + samples[replica]
    timed = {name: times for name, times in samples.items() if name != replica}
    timed[reference] = reference_times
    rows = []
    for name, times in timed.items():
        mine = reference_rounds if name == reference else rounds(times)
        rows.append(
            {
                "impl": name,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "ratio": statistics.median(
                    a / b for a, b in zip(mine, reference_rounds, strict=True)
                ),
                "min_ratio": min(times) / min(reference_times),
            }
        )
    if replica_ratio is not None:
        rows[list(timed).index(reference)]["replica_ratio"] = replica_ratio
    return rows


# ---------------------------------------------------------------------------------------------
# one process per peer


class WorkerError(RuntimeError):
    """An implementation failed in its worker process; the message is the worker's traceback."""


def _time_calls(
    step: Any, number: int, samples: int, warmup: int, warm_s: float = 0.0
) -> list[float]:
    """Seconds per call of ``step``: ``samples`` means of ``number`` calls in a row each, after
    ``warmup`` untimed calls and, if it takes longer, ``warm_s`` seconds of them."""
    synchronize = getattr(step, "synchronize", lambda: None)  # a device step's own
    warm_until = time.perf_counter() + warm_s
    calls = 0
    while calls < warmup or time.perf_counter() < warm_until:
        step()
        synchronize()  # one at a time: an asynchronous step would queue thousands
        calls += 1
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        for _ in range(number):
            step()
        synchronize()
        times.append((time.perf_counter() - start) / number)
    return times


def _serve(connection: Any) -> None:
    """A worker's loop: build implementations under keys, run functions on them, time them.

    It first loads gradcore's CPU backend, which asks glibc to keep freed blocks: every peer
    then allocates under the setting gradcore's own steps run with (without it, autograd's
    batch-1024 step faulted 2,400 pages back in per step, in the suite but not alone)."""
    gradcore.backend.backend_for_device("cpu")
    built: dict[Any, Any] = {}
    while True:
        command, *payload = connection.recv()
        if command == "close":
            return
        try:
            if command == "build":
                key, factory, args = payload
                built[key] = factory(*args)
                answer = None
            elif command == "apply":
                key, function = payload
                answer = function(built[key])
            else:  # "time"
                key, number, samples, warmup, warm_s = payload
                answer = _time_calls(built[key], number, samples, warmup, warm_s)
        except Exception:  # noqa: BLE001 - sent to the parent, which raises WorkerError
            connection.send(("error", traceback.format_exc()))
        else:
            connection.send(("ok", answer))


class Worker:
    """A process of its own for one peer: its imports, heap and thread pools share nothing.

    Factories and functions sent to it must be picklable (module-level functions, classes,
    ``functools.partial`` of them); it starts by ``spawn``, so nothing of this process leaks in.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), name=name, daemon=True)
        self._process.start()
        child.close()

    def _ask(self, *message: Any) -> Any:
        try:
            self._connection.send(message)
            status, answer = self._connection.recv()
        except (EOFError, BrokenPipeError):
            raise WorkerError(
                f"{self.name}: the worker process died (exit code {self._process.exitcode}); "
                "a script that starts workers must guard its code with "
                "`if __name__ == '__main__':`"
            ) from None
        if status == "error":
            raise WorkerError(f"{self.name}: {answer}")
        return answer

    def build(self, key: Any, factory: Callable[..., Any], *args: Any) -> None:
        """``factory(*args)``, kept in the worker under ``key``."""
        self._ask("build", key, factory, args)

    def apply(self, key: Any, function: Callable[[Any], Any]) -> Any:
        """``function(built)`` run in the worker on what ``key`` holds; its result comes back."""
        return self._ask("apply", key, function)

    def time(
        self, key: Any, number: int, samples: int, warmup: int, warm_s: float = 0.0
    ) -> list[float]:
        """Seconds per call of what ``key`` holds (see ``_time_calls``)."""
        return self._ask("time", key, number, samples, warmup, warm_s)

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._connection.send(("close",))
            except (BrokenPipeError, OSError):
                pass
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._connection.close()

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def time_isolated(
    workers: dict[str, Worker],
    key: Any,
    reference: str,
    *,
    rounds: int,
    samples: int,
    number: int,
    warmup: int,
    settle_s: float,
    replica: str | None = None,
) -> list[dict[str, Any]]:
    """Time what ``key`` holds in every worker: ``rounds`` rounds, each a slice of ``samples``
    samples per worker in turn (the order rotating every round), so that a change in load hits
    all alike. Each slice starts with ``settle_s`` seconds of untimed steps (and at least
    ``warmup`` in the first round): the previous worker's thread pools go to sleep meanwhile, and
    the step is timed in its own steady state, not in the caches the previous worker left nor
    with thread pools and cores woken from sleep (after a pause of 0.1 s or more, JAX's B=32
    step ran about 1.3x slower for the whole slice). ``replica``: a worker that runs the
    reference's step again, its second process (see ``_rows``)."""
    names = list(workers)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            slice_warmup = warmup if round_ == 0 else 1
            times[name] += workers[name].time(key, number, samples, slice_warmup, settle_s)
    return _rows(times, reference, per_round=samples, replica=replica)


def time_alone(
    name: str,
    builds: dict[Any, tuple[Callable[..., Any], tuple]],
    *,
    rounds: int,
    samples: int,
    number: int | dict[Any, int],
    warmup: int,
    settle_s: float = 0.0,
) -> dict[Any, list[float]]:
    """Each of ``builds`` (key -> factory and its arguments) built and timed in a fresh worker,
    with no other worker running: the figure the same peer gets alone in its own process.

    Timed as ``time_isolated`` times it, ``rounds`` slices of ``samples`` samples after
    ``settle_s`` of untimed steps, every key once per round: as many samples, taken the same way
    and spread as widely, so that only the other peers' presence differs (ten samples in a row,
    a tenth of a second, caught whatever state the VM was in at that moment)."""
    found: dict[Any, list[float]] = {key: [] for key in builds}
    with Worker(name) as worker:
        for key, (factory, args) in builds.items():
            worker.build(key, factory, *args)
        for round_ in range(rounds):
            for key in builds:
                calls = number[key] if isinstance(number, dict) else number
                slice_warmup = warmup if round_ == 0 else 1
                found[key] += worker.time(key, calls, samples, slice_warmup, settle_s)
    return found


FAIRNESS_LIMIT = 1.2  # a suite figure more than this multiple of the alone figure is flagged


def peak_cpu_bytes(step: Callable[[], Any]) -> int:
    """The most host memory ``step`` holds at once beyond what was allocated before it (its
    result included), by tracemalloc, to which NumPy reports its buffers."""
    garbage_collector.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - start


def mark_fairness(row: dict[str, Any], alone: list[float]) -> bool:
    """Record the alone median beside the suite's; False when the suite's is over the limit."""
    row["alone_median_s"] = statistics.median(alone)
    row["vs_alone"] = row["median_s"] / row["alone_median_s"]
    return row["vs_alone"] <= FAIRNESS_LIMIT


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
