"""Layer 1: the backend protocol and the registry that maps devices and array types to backends.

A backend is a small object that owns one device. The tracing core talks to arrays only through
``backend.xp`` (an Array API namespace) and the few extras the standard lacks, so the same
autodiff code runs on NumPy, CuPy or the test-only array-api-strict backend. A backend is array
plumbing only: fused kernels belong to the op or optimizer that owns them (``KernelTable``).
One optional extra: a backend that generates code for its device may fuse ``gc.jit``'s chains
of elementwise steps (``Fuser``); the jit asks it and gets back kernels, or nothing. This module
never imports an array library: backends and kernels are loaded by module name on first use.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = [
    "Backend",
    "DeviceError",
    "DeviceScoped",
    "Fused",
    "Fuser",
    "KernelTable",
    "array_backend",
    "backend_for_device",
    "backend_of",
    "common_backend",
    "device_scopes",
    "isdtype",
    "kernel",
    "on_device_of",
    "register_backend",
    "registered_devices",
    "split_device",
]

DEFAULT_DEVICE = "cpu"

# Python numbers carry no device; they combine with arrays of any backend.
PY_SCALARS = (bool, int, float)


class DeviceError(RuntimeError):
    """A device is unavailable, or arrays from two devices met in one operation."""


@runtime_checkable
class Backend(Protocol):
    """What the core needs from an array library, beyond the Array API standard."""

    device: str  # "cpu", "cuda", or a test backend's name
    xp: Any  # an Array API standard namespace
    array_types: tuple[type, ...]  # the native array (and scalar) types this backend owns

    def for_array(self, x: Any) -> Backend:
        """The backend that owns ``x``: ``self``, unless one library serves several devices."""

    def array_device(self, x: Any) -> Any:
        """The library's own device object for ``x`` (what ``xp.zeros(..., device=)`` takes)."""

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        """Copy host data (numbers, lists, NumPy arrays) onto this device."""

    def to_numpy(self, x: Any) -> Any:
        """A host ``numpy.ndarray`` copy of ``x``."""

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        """In place ``target[index] += values``, adding (not overwriting) at repeated indices."""

    def may_overwrite(self, x: Any, others: list[Any]) -> bool:
        """Whether ``x`` is a writeable array owning its memory, none of it shared with any of
        ``others``: ``gc.jit`` then writes a later result over ``x`` once ``x`` is dead."""

    def rng(self, seed: int) -> Any:
        """A seeded generator with ``normal``, ``uniform`` and ``permutation`` on this device."""

    def synchronize(self) -> None:
        """Wait for queued device work (a no-op on the CPU)."""


@dataclass(frozen=True)
class Fused:
    """One kernel a ``Fuser`` made of consecutive steps of a ``gc.jit`` program.

    ``fun(*values of inputs)`` computes the values of ``outputs`` (a tuple of them when there
    are several); the jit replaces the steps at indices ``steps`` by that one call.
    """

    name: str
    fun: Callable
    steps: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


class Fuser(Protocol):
    """What a backend offers, besides ``Backend``, if it can fuse elementwise steps.

    ``fuse`` reads a recorded ``gradcore.jit.Program``: ``program.steps`` (each with
    ``primitive``, whose ``formula`` an elementwise op has, its argument ``slots`` ``args``
    and result slot ``out``), ``program.specs`` (a slot's (shape, dtype name), None for a
    Python value), ``program.template`` (a slot's constant value) and ``program.outputs``.
    It returns the kernels that replace runs of those steps, or None to fuse nothing. A
    backend without ``fuse`` fuses nothing.
    """

    def fuse(self, program: Any) -> list[Fused] | None: ...


class DeviceScoped(Protocol):
    """What a backend offers, besides ``Backend``, if its library launches work on a *current*
    device rather than on its arrays' (CuPy launches on the current GPU and refuses arrays of
    another without peer access). ``device_scope(x)`` is the context inside which work on
    ``x`` runs on ``x``'s device; ops, ``gc.jit``'s replays and optimizer updates enter it, as
    Chainer's functions enter their arrays' device. A backend without it needs nothing entered.
    """

    def device_scope(self, x: Any) -> AbstractContextManager: ...


# device name -> loader that returns the backend or raises DeviceError (given N for "device:N")
_loaders: dict[str, Callable[..., Backend]] = {}
# device name -> the loaded backend, or the DeviceError its probe raised (probed once)
_loaded: dict[str, Backend | DeviceError] = {}
# native array type -> backend; the hot path of every op
_by_type: dict[type, Backend] = {}
# top-level module of an array library -> device whose backend owns its arrays
_by_module: dict[str, str] = {}
# native array type -> its backend's ``device_scope`` (``DeviceScoped``). Empty while no such
# backend is loaded: the CPU's hot paths then test this dict and enter nothing.
device_scopes: dict[type, Callable[[Any], AbstractContextManager]] = {}
_NO_SCOPE = contextlib.nullcontext()


# device names whose loader also takes a number: "cuda:1" calls the "cuda" loader with 1
_numbered: set[str] = set()


def _module_loader(module_name: str) -> Callable[..., Backend]:
    def load(*index: int) -> Backend:
        return importlib.import_module(module_name).load(*index)

    return load


def register_backend(
    device: str,
    loader: Callable[..., Backend] | str,
    array_modules: tuple[str, ...] = (),
    numbered: bool = False,
) -> None:
    """Make ``device`` resolvable. ``loader`` is a callable or a module with a ``load()``.

    ``array_modules`` names the libraries whose arrays this device owns, so that an array
    created outside gradcore (say ``cupy.ones(3)``) finds its backend on first sight.
    ``numbered``: "device:N" is accepted too, and loaded by ``loader(N)`` (and stays accepted
    when the device is registered again).
    """
    _loaders[device] = _module_loader(loader) if isinstance(loader, str) else loader
    _loaded.pop(device, None)
    if numbered:
        _numbered.add(device)
    for module in array_modules:
        _by_module[module] = device


def registered_devices() -> list[str]:
    return list(_loaders)


def split_device(device: Any) -> tuple[str | None, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``, ``"cpu"`` -> ``("cpu", None)``; ``(None, None)`` for
    anything else (a non-string, "cuda:", "cuda:x", "cuda:-1")."""
    if not isinstance(device, str):
        return None, None
    base, colon, number = device.partition(":")
    if not colon:
        return base, None
    if not number.isdigit() or not number.isascii():
        return None, None
    return base, int(number)


def backend_for_device(device: str | None = None) -> Backend:
    """The backend for a device name, probing its availability once and caching the answer."""
    if device is None:
        device = DEFAULT_DEVICE
    base, index = split_device(device)
    if base not in _loaders or (index is not None and base not in _numbered):
        known = ", ".join(repr(d) for d in _loaders)
        numbered = "".join(f", '{d}:N'" for d in sorted(_numbered))
        raise DeviceError(f"unknown device {device!r}; known devices: {known}{numbered}")
    found = _loaded.get(device)
    if found is None:
        try:
            found = _loaders[base]() if index is None else _loaders[base](index)
        except DeviceError as error:
            found = error
        else:
            scope = getattr(found, "device_scope", None)
            for array_type in found.array_types:
                _by_type[array_type] = found
                if scope is not None:
                    device_scopes[array_type] = scope
        _loaded[device] = found
    if isinstance(found, DeviceError):
        raise DeviceError(str(found))
    return found


def on_device_of(*values: Any) -> AbstractContextManager:
    """The context in which work on ``values`` runs on their device: the ``device_scope`` of
    the first array (or first array of a list) whose backend has one, else one that does
    nothing. The hot paths test ``device_scopes`` first: the CPU never gets here from them."""
    for value in values:
        if type(value) in (list, tuple) and value:
            value = value[0]
        scope = device_scopes.get(type(value))
        if scope is not None:
            return scope(value)
    return _NO_SCOPE


_dtype_kinds: dict[tuple[type, Any, str], bool] = {}


def isdtype(x: Any, kind: str) -> bool:
    """``xp.isdtype(x.dtype, kind)`` for an array of any backend, remembered per dtype.

    NumPy's isdtype is written in Python and costs microseconds; the hot paths ask it of the
    same few dtypes at every step.
    """
    key = (type(x), x.dtype, kind)  # the type first: dtypes of two libraries never compare
    found = _dtype_kinds.get(key)
    if found is None:
        found = _dtype_kinds[key] = bool(array_backend(x).xp.isdtype(x.dtype, kind))
    return found


def backend_of(x: Any) -> Backend | None:
    """The backend that owns array ``x``; None for a Python number."""
    backend = _by_type.get(type(x))
    if backend is None:
        if type(x) in PY_SCALARS:
            return None
        device = _by_module.get(type(x).__module__.partition(".")[0])
        if device is None:
            raise TypeError(
                f"expected an array or a Python number, got {type(x).__name__}; "
                "convert it with gradcore.array(...)"
            )
        backend = backend_for_device(device)
    return backend.for_array(x)


def array_backend(x: Any) -> Backend:
    """The backend that owns array ``x``, which must be an array (not a Python number)."""
    backend = backend_of(x)
    if backend is None:
        raise TypeError(f"expected an array, got the Python number {x!r}")
    return backend


def common_backend(op_name: str, *values: Any) -> Backend:
    """The one backend that owns every array among ``values``; refuses to mix devices."""
    found = None
    for value in values:
        backend = _by_type.get(type(value))
        if backend is not None:
            backend = backend.for_array(value)
        elif type(value) in PY_SCALARS or value is None:
            continue
        else:
            backend = array_backend(value)
        if found is None:
            found = backend
        elif backend is not found:
            raise DeviceError(
                f"{op_name}: arrays on different devices, {found.device!r} and "
                f"{backend.device!r}; gradcore never moves data implicitly: "
                "use gradcore.to_device(x, device) first"
            )
    return found if found is not None else backend_for_device(DEFAULT_DEVICE)


KernelFunction = TypeVar("KernelFunction", bound=Callable[..., Any])


def kernel(
    dtypes: tuple[str, ...] | None = None, takes_out: bool = False
) -> Callable[[KernelFunction], KernelFunction]:
    """Declare what is read of a kernel function besides calling it: the dtype names it
    handles (``KernelTable.lookup`` gives None for others; None: every dtype), and whether its
    last parameter is an ``out`` (gc.jit may then hand it a dead argument's memory)."""

    def declare(function: KernelFunction) -> KernelFunction:
        vars(function).update(dtypes=dtypes, takes_out=takes_out)
        return function

    return declare


class KernelTable:
    """The fused kernels of one op or optimizer, per device.

    A kernel is registered as ``"module:function"`` and imported on first use, so that the op
    can name its CUDA kernel without the core importing CuPy. The function takes the op's own
    arguments (native arrays of that device). If it has a ``dtypes`` attribute (dtype names),
    arrays of other dtypes get ``None`` from ``lookup``: the caller then runs the generic
    Array-API expression, which is also what every device without a kernel gets.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._paths: dict[str, str] = {}
        self._loaded: dict[str, Callable | None] = {}
        self._found: dict[tuple, Callable | None] = {}  # (backend, dtype) -> lookup's answer

    def register(self, device: str, path: str) -> None:
        """Use ``path`` ("module:function") for arrays of ``device``."""
        module, _, function = path.partition(":")
        if not module or not function:
            raise ValueError(f"{self.owner}: a kernel is named 'module:function', got {path!r}")
        self._paths[device] = path
        self._loaded.pop(device, None)
        self._found.clear()

    def devices(self) -> list[str]:
        return list(self._paths)

    def lookup(self, backend: Backend, dtype: Any) -> Callable | None:
        """The kernel for this backend's device and ``dtype``, or None for the generic path
        (remembered: every op and every optimizer update asks)."""
        try:
            return self._found[backend, dtype]
        except KeyError:
            found = self._found[backend, dtype] = self._find(backend, dtype)
            return found

    def _find(self, backend: Backend, dtype: Any) -> Callable | None:
        device = backend.device.partition(":")[0]  # "cuda:1" runs the kernels of "cuda"
        try:
            kernel = self._loaded[device]
        except KeyError:
            kernel = self._loaded[device] = self._load(device)
        if kernel is None:
            return None
        dtypes = getattr(kernel, "dtypes", None)
        if dtypes is not None and _dtype_name(dtype) not in dtypes:
            return None
        return kernel

    def _load(self, device: str) -> Callable | None:
        path = self._paths.get(device)
        if path is None:
            return None
        module, _, function = path.partition(":")
        return getattr(importlib.import_module(module), function)


_dtype_names: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    """The dtype's name ("float32"), cached: NumPy computes ``dtype.name`` in
    Python at every access and kernels are looked up at every op."""
    try:
        return _dtype_names[dtype]
    except KeyError:
        name = _dtype_names[dtype] = getattr(dtype, "name", None) or str(dtype)
        return name


register_backend("cpu", "gradcore.backends.numpy_backend", array_modules=("numpy",))
register_backend("cuda", "gradcore.backends.cupy_backend", array_modules=("cupy",), numbered=True)
