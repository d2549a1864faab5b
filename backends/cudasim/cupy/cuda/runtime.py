"""Simulated ``cupy.cuda.runtime``: the device count comes from ``GRADCORE_SIMULATE_CUDA``."""

from __future__ import annotations

from typing import Any

from cupy import _core
from cupy._core import CUDARuntimeError  # noqa: F401

is_hip = False
CUDA_VERSION = 12080


def runtimeGetVersion() -> int:  # noqa: N802 - CUDA's names
    return CUDA_VERSION


def driverGetVersion() -> int:  # noqa: N802
    return CUDA_VERSION


def getDeviceCount() -> int:  # noqa: N802
    return _core.device_count()


def getDevice() -> int:  # noqa: N802
    return _core.current_id()


def setDevice(device: int) -> None:  # noqa: N802
    _core.set_current(device)


def deviceSynchronize() -> None:  # noqa: N802
    _core.host_read("deviceSynchronize")


def getDeviceProperties(device: int) -> dict[str, Any]:  # noqa: N802
    _core.check_id(device)
    return {
        "name": b"gradcore simulated CUDA device (host CPU; no GPU code runs)",
        "totalGlobalMem": 0,
        "major": 9,
        "minor": 0,
        "multiProcessorCount": 1,
    }


def memGetInfo() -> tuple[int, int]:  # noqa: N802
    raise NotImplementedError("device memory limits are not simulated (runtime.memGetInfo)")
