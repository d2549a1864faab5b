"""Simulated ``cupyx``: ``allow_synchronize`` and ``DeviceSynchronized`` (host reads refused),
``cupyx.distributed`` (NCCL over MPI). Part of gradcore's test double for CUDA."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cupy._core import DeviceSynchronized
from gradcore.backends import cudasim

__all__ = ["DeviceSynchronized", "allow_synchronize"]


@contextlib.contextmanager
def allow_synchronize(allow: bool) -> Iterator[None]:
    """Inside ``allow_synchronize(False)``, a read of device data by the host raises
    ``DeviceSynchronized``, as on CuPy."""
    with cudasim.host_reads.forbid(not allow):
        yield


def __getattr__(name: str) -> object:
    if name in ("scipy", "jit", "profiler", "optimizing", "time"):
        raise NotImplementedError(f"cupyx.{name} is not simulated by gradcore.backends.cudasim")
    raise AttributeError(f"module 'cupyx' has no attribute {name!r}")
