"""A test-only backend on array-api-strict, which refuses anything outside the Array API standard
and refuses to combine arrays of two devices. The whole op/VJP suite runs on it, which proves the
core speaks only the protocol; its two fake devices stand in for "cpu" and "cuda" on machines
without a GPU.
"""

from __future__ import annotations

from typing import Any

import array_api_strict as xp
import numpy as np
from array_api_strict._array_object import Array

import gradcore as gc

DEVICES = {"strict": xp.Device("CPU_DEVICE"), "strict1": xp.Device("device1")}


class StrictRng:
    def __init__(self, seed: int, device: Any) -> None:
        self.generator = np.random.default_rng(seed)
        self.device = device

    def normal(self, shape, dtype=xp.float32):
        host = self.generator.standard_normal(shape)
        return xp.asarray(host, dtype=dtype, device=self.device)

    def uniform(self, shape, low, high, dtype=xp.float32):
        host = self.generator.uniform(low, high, shape)
        return xp.asarray(host, dtype=dtype, device=self.device)

    def permutation(self, n):
        return xp.asarray(self.generator.permutation(n), device=self.device)


class StrictBackend:
    xp = xp
    array_types = (Array,)

    def __init__(self, device: str) -> None:
        self.device = device
        self.strict_device = DEVICES[device]

    def for_array(self, x):
        return _backend_for(x.device)

    def array_device(self, x):
        return x.device

    def asarray(self, obj, dtype=None):
        return xp.asarray(obj, dtype=dtype, device=self.strict_device)

    def to_numpy(self, x):
        return np.asarray(xp.asarray(x, device=xp.Device("CPU_DEVICE")), copy=True)

    def scatter_add(self, target, index, values):
        # The standard has no scatter-add; the test backend does it on the host.
        host = self.to_numpy(target)
        np.add.at(host, _host_index(index), self.to_numpy(values))
        target[...] = xp.asarray(host, device=self.strict_device)

    def may_overwrite(self, x, others):
        # array-api-strict keeps a NumPy array in each of its arrays (private, but this is a
        # test backend): ownership is NumPy's.
        data = x._array
        return (
            isinstance(x, Array)
            and data.flags.owndata
            and data.flags.writeable
            and not any(np.may_share_memory(data, o._array) for o in others if isinstance(o, Array))
        )

    def rng(self, seed):
        return StrictRng(seed, self.strict_device)

    def synchronize(self):
        pass


def _host_index(index):
    if isinstance(index, tuple):
        return tuple(_host_index(i) for i in index)
    if isinstance(index, Array):
        return np.asarray(xp.asarray(index, device=xp.Device("CPU_DEVICE")))
    return index


def _defer_to_traced(method):
    def operator(self, other):
        # Box, and the stand-ins for values backward did not keep, opt out of array operators
        # by NumPy's protocol, so that their own reflected operators answer.
        if getattr(type(other), "__array_ufunc__", True) is None:
            return NotImplemented
        return method(self, other)

    return operator


# Python's operator protocol lets the other operand answer when one returns NotImplemented;
# NumPy and CuPy do that for a Box (``raw_array * box`` becomes ``box.__rmul__``), but
# array-api-strict raises TypeError instead. Teach it to defer, so higher derivatives (where a
# raw cotangent meets a traced value) run here as they do on the real backends.
for _name in [
    f"__{prefix}{op}__"
    for op in ("add", "sub", "mul", "truediv", "pow", "matmul")
    for prefix in ("", "r")
] + ["__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__"]:
    setattr(Array, _name, _defer_to_traced(getattr(Array, _name)))

_BACKENDS = {name: StrictBackend(name) for name in DEVICES}
_BY_DEVICE = {DEVICES[name]: backend for name, backend in _BACKENDS.items()}


def _backend_for(device):
    return _BY_DEVICE[device]


def register() -> None:
    for name, backend in _BACKENDS.items():
        gc.register_backend(name, lambda backend=backend: backend)
