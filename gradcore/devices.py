"""Layer 4: the device-facing public API: creating arrays and moving them between devices.

Moving data is always explicit. Arrays are the backends' native arrays; a traced value is
refused here, since copying it to another device would silently cut it out of the gradient.
"""

from __future__ import annotations

from typing import Any

from gradcore.backend import (
    PY_SCALARS,
    DeviceError,
    array_backend,
    backend_for_device,
    backend_of,
    registered_devices,
)
from gradcore.pytree import tree_map
from gradcore.tracer import Box

__all__ = ["array", "available_devices", "device_of", "to_device", "to_numpy"]

DEFAULT_FLOAT = "float32"


def available_devices() -> list[str]:
    """The devices that answer here, e.g. ``["cpu"]`` or ``["cpu", "cuda", "cuda:0", "cuda:1"]``.

    A backend with numbered devices (one per GPU) names them in ``numbered_devices()``; each
    that answers is listed after the device's plain name.
    """
    found = []
    for device in registered_devices():
        try:
            backend = backend_for_device(device)
        except DeviceError:
            continue
        found.append(device)
        numbered = backend.numbered_devices() if hasattr(backend, "numbered_devices") else []
        for unit in numbered:
            try:
                backend_for_device(unit)
            except DeviceError:
                continue
            found.append(unit)
    return found


def _dtype_name(dtype: Any) -> str:
    """'float32' from a string, a NumPy/CuPy dtype or type, or an Array API dtype."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "__name__", None) or str(dtype)
    return name.rpartition(".")[2]


def _refuse_traced(op_name: str, x: Any) -> None:
    if type(x) is Box:
        raise TypeError(
            f"{op_name}: got a traced value; it cannot leave the trace without cutting the "
            "gradient (use gradcore.stop_gradient(x) if that is what you want)"
        )


def _source_backend(obj: Any):
    """The backend owning ``obj`` if it is an array; None for numbers, lists and the like."""
    if type(obj) in PY_SCALARS or isinstance(obj, (list, tuple)):
        return None
    try:
        return backend_of(obj)
    except TypeError:
        return None


def array(obj: Any, dtype: Any = None, device: str | None = None) -> Any:
    """A new native array on ``device`` (default: the array's own device, else "cpu").

    Python floats become float32, the default dtype on every device; arrays keep their dtype.
    """
    _refuse_traced("array", obj)
    source = _source_backend(obj)
    if device is None:
        target = source if source is not None else backend_for_device("cpu")
    else:
        target = backend_for_device(device)
    xp = target.xp
    wanted = None if dtype is None else getattr(xp, _dtype_name(dtype))
    if source is not None and source is not target:
        return target.asarray(source.to_numpy(obj), dtype=wanted)
    if source is not None:
        return xp.asarray(obj, dtype=wanted, copy=True)
    result = target.asarray(obj, dtype=wanted)
    if wanted is None and xp.isdtype(result.dtype, "real floating"):
        # through the backend, which converts on the array's own GPU (not the current one)
        result = target.asarray(result, dtype=getattr(xp, DEFAULT_FLOAT))
    return result


def to_device(tree: Any, device: str) -> Any:
    """The arrays of a pytree on ``device``: moved when elsewhere, unchanged when there."""
    target = backend_for_device(device)

    def move(x: Any) -> Any:
        _refuse_traced("to_device", x)
        if type(x) in PY_SCALARS:
            return x
        source = array_backend(x)
        return x if source is target else target.asarray(source.to_numpy(x))

    return tree_map(move, tree)


def to_numpy(tree: Any) -> Any:
    """Host NumPy copies of the arrays of a pytree (this waits for the device)."""

    def copy(x: Any) -> Any:
        _refuse_traced("to_numpy", x)
        return x if type(x) in PY_SCALARS else array_backend(x).to_numpy(x)

    return tree_map(copy, tree)


def device_of(x: Any) -> str:
    """The device ("cpu", "cuda") an array, or a traced array, lives on."""
    while type(x) is Box:
        x = x._value
    if type(x) in PY_SCALARS:
        raise TypeError(f"device_of: a Python {type(x).__name__} lives on no device")
    return array_backend(x).device
