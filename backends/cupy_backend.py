"""The "cuda" devices on CuPy. Importing this module does not import CuPy; ``load()`` does.

``load(index)`` is the availability probe, run once per device by the registry: it imports
CuPy, asks the driver for its version and its GPUs, allocates on the GPU, runs one element-wise
kernel and one cuBLAS matmul and copies the results back. Every way that can fail becomes a
``DeviceError`` that says what failed and what to do.

"cuda" is the GPU that is current when it is first used; "cuda:N" is GPU N. The current GPU has
one backend under both names, so its arrays say "cuda"; arrays of any other GPU say "cuda:N".
Each backend's ``xp`` allocates on its own GPU (array-api-compat's CuPy namespace ignores
``device=`` in its creation functions), and its ``clip`` and ``sign`` are CuPy's own ufuncs,
which never wait for the GPU.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
from gradcore.backends import cuda_fusion

from gradcore.backend import Backend, DeviceError, backend_for_device

INSTALL_HINT = (
    "install the CuPy wheel that matches your driver's CUDA version (the 'CUDA Version' that "
    "nvidia-smi prints): pip install 'gradcore[cuda12]' or 'gradcore[cuda13]'"
)
NO_DEVICE_HINT = (
    "install or repair the NVIDIA driver (nvidia-smi must list the GPU) and leave "
    "CUDA_VISIBLE_DEVICES unset or naming that GPU"
)
LIBRARIES_HINT = (
    "install the CUDA libraries for your CuPy wheel: pip install 'cupy-cuda12x[ctk]' or "
    "'cupy-cuda13x[ctk]' (or the CUDA Toolkit of that version)"
)

# array-api-compat's creation functions that take ``device=`` and, on CuPy, ignore it.
CREATION_FUNCTIONS = (
    "arange",
    "asarray",
    "empty",
    "empty_like",
    "eye",
    "full",
    "full_like",
    "linspace",
    "ones",
    "ones_like",
    "zeros",
    "zeros_like",
)


# what makes a module a module, not part of the namespace it offers (unlike __array_api_version__)
MODULE_ATTRIBUTES = {
    "__builtins__", "__cached__", "__doc__", "__file__", "__loader__", "__name__", "__package__",
    "__path__", "__spec__",
}  # fmt: skip


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


def _on_device(create: Callable, gpu: Any) -> Callable:
    @functools.wraps(create)
    def on_device(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        with gpu if device is None else device:
            return create(*args, device=device, **kwargs)

    return on_device


def _clip(x: Any, min: Any = None, max: Any = None) -> Any:  # noqa: A002 - the Array API's names
    """CuPy's own clip ufunc: array-api-compat's writes through boolean masks, and CuPy reads
    each mask's size back to the host, so every call would wait for the GPU."""
    with x.device:
        return x.copy() if min is None and max is None else x.clip(min, max)


def gpu_namespace(cupy: Any, compat: ModuleType, gpu: Any) -> ModuleType:
    """array-api-compat's CuPy namespace ``compat``, bound to ``gpu`` (a ``cupy.cuda.Device``).

    Creation functions allocate on ``device=`` when given, else on ``gpu``, never on whichever
    GPU happens to be current. ``clip`` and ``sign`` are CuPy's ufuncs: array-api-compat's write
    through boolean masks, and each mask's size is read back to the host.
    """
    namespace = ModuleType(f"{compat.__name__}[gpu {gpu.id}]", compat.__doc__)
    namespace.__dict__.update(
        (name, value) for name, value in vars(compat).items() if name not in MODULE_ATTRIBUTES
    )
    for name in CREATION_FUNCTIONS:
        setattr(namespace, name, _on_device(getattr(compat, name), gpu))
    vars(namespace).update(clip=_clip, sign=cupy.sign)
    return namespace


class CupyRng:
    """Seeded random numbers generated on one GPU (cuRAND Philox).

    The state is two integers, ``{"seed": s, "draws": k}``: draw number k comes from a fresh
    Philox generator keyed by (s, k), so a checkpoint that saves the state resumes the exact
    stream, and numbers never depend on how many were drawn by earlier calls.
    """

    def __init__(self, cupy: Any, gpu: Any, seed: int, method: int) -> None:
        self.cupy = cupy
        self.gpu = gpu
        self.seed = int(seed)
        self.draws = 0
        self.method = method

    def _next(self) -> Any:
        key = np.random.SeedSequence((self.seed, self.draws)).generate_state(1, np.uint32)[0]
        self.draws += 1
        return self.cupy.random.RandomState(int(key), method=self.method)

    def normal(self, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
        with self.gpu:
            return self._next().normal(size=shape, dtype=dtype)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any = "float32"):
        with self.gpu:
            return self._next().uniform(low, high, size=shape, dtype=dtype)

    def permutation(self, n: int) -> Any:
        with self.gpu:
            return self._next().permutation(n)

    def get_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def set_state(self, state: dict) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])


class CupyBackend:
    """One GPU. ``device`` is "cuda" for the GPU that was current at load time, else "cuda:N"."""

    fuse = staticmethod(cuda_fusion.fuse)  # gradcore.backend.Fuser: gc.jit's elementwise chains

    def __init__(self, cupy: Any, compat: ModuleType, gpu_id: int, device: str) -> None:
        self.cupy = cupy
        self.gpu = cupy.cuda.Device(gpu_id)
        self.device = device
        self.xp = gpu_namespace(cupy, compat, self.gpu)
        self.array_types: tuple[type, ...] = (cupy.ndarray,)

    def numbered_devices(self) -> list[str]:
        """ "cuda:0" to "cuda:N-1": every GPU this process sees (``gc.available_devices``)."""
        return [f"cuda:{i}" for i in range(self.cupy.cuda.runtime.getDeviceCount())]

    @property
    def description(self) -> str:
        """What ``gradcore info`` prints: the GPU's own name (a simulated one says so)."""
        name = self.cupy.cuda.runtime.getDeviceProperties(self.gpu.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        return f"GPU {self.gpu.id}: {name}, CuPy {self.cupy.__version__}"

    def for_array(self, x: Any) -> Backend:
        gpu_id = x.device.id
        if gpu_id == self.gpu.id:
            return self
        return backend_for_device(f"cuda:{gpu_id}")

    def array_device(self, x: Any) -> Any:
        return x.device

    def device_scope(self, x: Any) -> Any:
        """``x``'s GPU as the current one (``gradcore.backend.DeviceScoped``): CuPy launches
        on the current GPU, whichever GPU an op's arrays live on."""
        return x.device

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        with self.gpu:
            return self.cupy.asarray(obj, dtype=dtype)

    def to_numpy(self, x: Any) -> Any:
        return self.cupy.asnumpy(x)

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        with self.gpu:
            self.cupy.add.at(target, index, values)

    def may_overwrite(self, x: Any, others: list[Any]) -> bool:
        ndarray = self.cupy.ndarray
        return (
            type(x) is ndarray
            and x.base is None
            and not any(self.cupy.may_share_memory(x, o) for o in others if type(o) is ndarray)
        )

    def rng(self, seed: int) -> CupyRng:
        try:
            philox = self.cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        except ImportError as error:  # CuPy loads cuRAND on first use
            raise DeviceError(
                f"random numbers on {self.device!r} need cuRAND, which CuPy could not load "
                f"({error}); {LIBRARIES_HINT}"
            ) from error
        return CupyRng(self.cupy, self.gpu, seed, philox)

    def synchronize(self) -> None:
        with self.gpu:
            self.cupy.cuda.get_current_stream().synchronize()


# GPU id -> its backend: "cuda" and "cuda:N" of the current GPU are one backend, one device.
_backends: dict[int, CupyBackend] = {}


def import_cupy(name: str = "cuda") -> Any:
    """CuPy, or with ``GRADCORE_SIMULATE_CUDA`` set, the simulated device's stand-in for it
    (gradcore.backends.cudasim, a test double), installed under CuPy's name first; a
    ``DeviceError`` about device ``name`` if neither imports."""
    try:
        from gradcore.backends import cudasim

        if cudasim.device_count():
            cudasim.install()
    except (ValueError, RuntimeError) as error:
        raise _unavailable(name, f"the simulated CUDA device cannot start: {error}") from error
    try:
        import cupy
    except Exception as error:
        if isinstance(error, ImportError) and importlib.util.find_spec("cupy") is None:
            raise _unavailable(name, f"CuPy is not installed ({error}); {INSTALL_HINT}") from error
        raise _unavailable(
            name,
            f"CuPy is installed but fails to import ({type(error).__name__}: {error}): a broken "
            f"install, or CUDA libraries missing; reinstall it: {INSTALL_HINT}",
        ) from error
    return cupy


def _unavailable(name: str, what: str) -> DeviceError:
    return DeviceError(f"device {name!r} is unavailable: {what}")


def load(index: int | None = None) -> CupyBackend:
    """The backend of GPU ``index`` (None: the current GPU), once CuPy, the driver, a first
    allocation and kernel, and cuBLAS have answered on it; else raise DeviceError."""
    name = "cuda" if index is None else f"cuda:{index}"
    cupy = import_cupy(name)
    runtime = cupy.cuda.runtime
    try:
        built_for = _cuda_version(runtime.runtimeGetVersion())
        driver = runtime.driverGetVersion()
    except Exception as error:  # a missing or stub libcuda, a driver that does not answer
        raise _unavailable(
            name,
            f"CuPy {cupy.__version__} cannot read the NVIDIA driver's version "
            f"({type(error).__name__}: {error}); {NO_DEVICE_HINT}",
        ) from error
    if driver == 0:
        raise _unavailable(
            name,
            f"no NVIDIA driver found (CuPy {cupy.__version__} is installed, built for CUDA "
            f"{built_for}); this machine has no usable GPU: {NO_DEVICE_HINT}",
        )
    if driver // 1000 < runtime.runtimeGetVersion() // 1000:  # minor versions are compatible
        raise _unavailable(
            name,
            f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, but CuPy "
            f"{cupy.__version__} is built for CUDA {built_for}; {INSTALL_HINT}",
        )
    try:
        count = runtime.getDeviceCount()
        current = runtime.getDevice()
    except Exception as error:
        raise _unavailable(
            name, f"CUDA reports no usable device ({type(error).__name__}: {error}); "
            f"{NO_DEVICE_HINT}"
        ) from error  # fmt: skip
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if count == 0:
        raise _unavailable(
            name, f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible!r}); {NO_DEVICE_HINT}"
        )
    # the backend already named "cuda", if any: it keeps that name (and "cuda" keeps that GPU,
    # even if another is current now)
    named = next((backend for backend in _backends.values() if backend.device == "cuda"), None)
    if index is None and named is not None:
        return named
    gpu_id = current if index is None else index
    if not 0 <= gpu_id < count:
        raise _unavailable(
            name,
            f"this process sees {count} GPU(s) (CUDA_VISIBLE_DEVICES={visible!r}): use 'cuda' "
            f"or 'cuda:0' to 'cuda:{count - 1}'",
        )
    if gpu_id in _backends:
        return _backends[gpu_id]
    where = f"CuPy {cupy.__version__} (CUDA {built_for}) on GPU {gpu_id} of {count}"
    try:
        with cupy.cuda.Device(gpu_id):
            probe = cupy.arange(4, dtype=cupy.float32)
            (probe + probe).get()
    except Exception as error:
        raise _unavailable(
            name,
            f"{where}: a first allocation and kernel failed ({type(error).__name__}: {error}); "
            f"{INSTALL_HINT}",
        ) from error
    try:
        with cupy.cuda.Device(gpu_id):
            matrix = probe.reshape(2, 2)
            (matrix @ matrix).get()
    except Exception as error:
        raise _unavailable(
            name, f"{where}: a first matmul failed in cuBLAS ({type(error).__name__}: {error}); "
            f"{LIBRARIES_HINT}"
        ) from error  # fmt: skip
    try:
        import array_api_compat.cupy as compat
    except Exception as error:
        raise _unavailable(
            name, f"array-api-compat cannot wrap {where} ({type(error).__name__}: {error}); "
            "pip install --upgrade 'array-api-compat>=1.9'"
        ) from error  # fmt: skip
    device = "cuda" if gpu_id == current and named is None else f"cuda:{gpu_id}"
    backend = _backends[gpu_id] = CupyBackend(cupy, compat, gpu_id, device)
    return backend
