"""Simulated ``cupy.cuda.runtime``: the device count comes from ``GRADCORE_SIMULATE_CUDA``."""

from __future__ import annotations

from typing import Any

from cupy import _core
from cupy._core import CUDARuntimeError  # noqa: F401

is_hip = False
CUDA_VERSION = 12080


def runtimeGetVersion() -> int:
    return CUDA_VERSION


def driverGetVersion() -> int:
    return CUDA_VERSION


def getDeviceCount() -> int:
    return _core.device_count()


def getDevice() -> int:
    return _core.current_id()


def setDevice(device: int) -> None:
    _core.set_current(device)


def deviceSynchronize() -> None:
    _core.host_read("deviceSynchronize")


def getDeviceProperties(device: int) -> dict[str, Any]:
    _core.check_id(device)
    return {
        "name": b"gradcore simulated CUDA device (host CPU; no GPU code runs)",
        "totalGlobalMem": 0,
        "major": 9,
        "minor": 0,
        "multiProcessorCount": 1,
    }


def memGetInfo() -> tuple[int, int]:
    raise NotImplementedError("device memory limits are not simulated (runtime.memGetInfo)")
