"""A simulated CUDA device: a stand-in for CuPy that runs gradcore's CUDA code on the host CPU.

This is a test double. It exists so that the real ``cupy_backend``, the CUDA kernel modules and
the NCCL branch of ``gradcore.distributed`` execute in CI, on machines without a GPU. No GPU code
runs: arrays are NumPy arrays tagged with a device id, the namespace is NumPy's (with CuPy's
rules where they differ), and the ``ElementwiseKernel`` sources gradcore generates are compiled
by g++ into host code. It never produces a speed figure; a real GPU (bench/gpu_run.sh) outranks
it.

``GRADCORE_SIMULATE_CUDA=N`` (N >= 1 simulated GPUs) switches it on: ``install()`` puts a finder
first on ``sys.meta_path`` so that ``import cupy`` (and ``cupyx``) load the modules in this
folder under CuPy's own names. The library never asks whether it runs on the simulator; only the
place that imports CuPy (``cupy_backend``) and the test suite's conftest call ``install()``.

What it models, faithfully enough that CuPy-specific mistakes fail on it: arrays that live on a
device id and refuse ``__array__`` (``bool``, ``int`` and ``float`` read the value back, as in
CuPy); every read of device data by the host, counted (``host_reads``) and refused inside
``cupyx.allow_synchronize(False)``; ``cupy.cuda.Device`` as a context with a current device, and
CuPy's error when an operation meets an array of another device (no peer access); kernels with
CUDA's math (``fmaxf`` drops a NaN, float32 flushes subnormals to zero as under CuPy's
``-ftz=true``, float16 arithmetic yields float); streams, events and memory pools as ordered
no-ops that check their arguments; NCCL over mpi4py. A CuPy feature it does not model raises
``NotImplementedError`` naming the feature.

What it cannot model: timing and concurrency (kernels run one after another, synchronously),
cuRAND's streams (the numbers differ from a GPU's), fused multiply-add contraction and the
last-ulp differences of CUDA's math library, NVRTC's own diagnostics (g++ compiles the
kernels, so its messages differ and a few things NVRTC refuses may pass), peer access between
GPUs, and memory limits.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ENV", "HostReads", "device_count", "host_reads", "install", "installed"]

ENV = "GRADCORE_SIMULATE_CUDA"

# the top-level modules the simulator provides, in this folder
MODULES = ("cupy", "cupyx")
HERE = Path(__file__).parent


def device_count() -> int:
    """How many simulated GPUs ``GRADCORE_SIMULATE_CUDA`` asks for; 0 when it is unset or 0."""
    value = os.environ.get(ENV, "").strip()
    if value in ("", "0"):
        return 0
    if not value.isdigit():
        raise ValueError(f"{ENV}={value!r}: expected the number of simulated GPUs, e.g. 1 or 2")
    return int(value)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``cupy`` and ``cupyx`` in this folder; their submodules follow their ``__path__``."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - importlib's API
        if name not in MODULES:
            return None
        return importlib.machinery.PathFinder.find_spec(name, [str(HERE)])


_finder = _Finder()


def installed() -> bool:
    """Whether ``import cupy`` gives the simulator in this process."""
    return _finder in sys.meta_path


def install() -> None:
    """Make ``import cupy`` (and ``cupyx``) load the simulator, with ``device_count()`` GPUs.

    Refuses when the real CuPy is already imported: its arrays and the simulator's must never
    meet in one process.
    """
    count = device_count()
    if count == 0:
        raise ValueError(f"{ENV} is unset or 0: no simulated GPU was asked for")
    if installed():
        return
    for name in MODULES:
        module = sys.modules.get(name)
        if module is not None and not str(getattr(module, "__file__", "")).startswith(str(HERE)):
            raise RuntimeError(
                f"{ENV} is set, but the real {name} was imported first ({module.__file__}); "
                "set the variable before anything imports CuPy"
            )
    sys.meta_path.insert(0, _finder)


class HostReads:
    """Every read of device data by the host, in order (what a GPU would wait for).

    ``events`` holds one line per read (``"get"``, ``"item"``, ``"boolean mask"``...);
    ``counting()`` gives the reads of one block. Inside ``forbid()`` (what
    ``cupyx.allow_synchronize(False)`` uses) a read raises.
    """

    def __init__(self) -> None:
        self.events: list[str] = []
        self._listeners: list[list[str]] = []
        self._local = threading.local()

    @property
    def allowed(self) -> bool:
        return getattr(self._local, "allowed", True)

    def record(self, what: str, error: type[Exception]) -> None:
        self.events.append(what)
        for listener in self._listeners:
            listener.append(what)
        if not self.allowed:
            raise error(f"device synchronization is not allowed here: {what}")

    @contextlib.contextmanager
    def forbid(self, forbidden: bool = True) -> Iterator[None]:
        before = self.allowed
        self._local.allowed = not forbidden
        try:
            yield
        finally:
            self._local.allowed = before

    @contextlib.contextmanager
    def counting(self) -> Iterator[list[str]]:
        """The reads made inside the block, appended to the list as they happen."""
        seen: list[str] = []
        self._listeners.append(seen)
        try:
            yield seen
        finally:
            self._listeners.remove(seen)


host_reads = HostReads()
