"""Simulated ``cupy.cuda.device``: ``Device``, a context that sets the current GPU."""

from __future__ import annotations

from typing import Any

from cupy import _core


def is_available() -> bool:
    return _core.device_count() > 0


def get_device_id() -> int:
    return _core.current_id()


class Device:
    """A simulated GPU. As a context, it is the current device inside the block."""

    def __init__(self, device: Any = None) -> None:
        if device is None:
            self.id = _core.current_id()
        elif isinstance(device, Device):
            self.id = device.id
        elif isinstance(device, int) and not isinstance(device, bool):
            self.id = device
        else:
            raise TypeError(f"Device id must be an int or None, not {type(device).__name__}")
        self._previous: list[int] = []

    def __enter__(self) -> Device:
        _core.check_id(self.id)
        self._previous.append(_core.current_id())
        _core.set_current(self.id)
        return self

    def __exit__(self, *exc: Any) -> None:
        _core.set_current(self._previous.pop())

    def use(self) -> None:
        _core.set_current(self.id)

    def synchronize(self) -> None:
        _core.check_id(self.id)
        _core.host_read("Device.synchronize")

    @property
    def compute_capability(self) -> str:
        _core.check_id(self.id)
        return "90"

    @property
    def mem_info(self) -> tuple[int, int]:
        raise NotImplementedError("device memory limits are not simulated (Device.mem_info)")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("cupy.cuda.Device", self.id))

    def __int__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"
