"""The "cuda" device on CuPy. Importing this module does not import CuPy; ``load()`` does.

``load()`` is the availability probe, run once by the registry: it imports CuPy, asks for a
device, allocates on it, runs one element-wise kernel and copies the result back. Every way that
can fail becomes a ``DeviceError`` that says what failed and what to install. The fused kernels
(``cuda_kernels``) are built on first use and cached; CuPy compiles each one per dtype on its
first call and keeps the binary in its on-disk kernel cache.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from gradcore.backend import DeviceError

from . import cuda_kernels

INSTALL_HINT = (
    "install the CuPy wheel that matches your driver's CUDA version (the 'CUDA Version' that "
    "nvidia-smi prints): pip install 'gradcore[cuda12]' or 'gradcore[cuda13]'"
)
FUSED_DTYPES = ("float32", "float64")


def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{code % 1000 // 10}"


class CupyRng:
    """Seeded random numbers generated on the GPU (cuRAND Philox).

    The state is two integers, ``{"seed": s, "draws": k}``: draw number k comes from a fresh
    Philox generator keyed by (s, k), so a checkpoint that saves the state resumes the exact
    stream, and numbers never depend on how many were drawn by earlier calls.
    """

    def __init__(self, cupy: Any, seed: int, method: int) -> None:
        self.cupy = cupy
        self.seed = int(seed)
        self.draws = 0
        self.method = method

    def _next(self) -> Any:
        key = np.random.SeedSequence((self.seed, self.draws)).generate_state(1, np.uint32)[0]
        self.draws += 1
        return self.cupy.random.RandomState(int(key), method=self.method)

    def normal(self, shape: tuple[int, ...], dtype: Any = "float32") -> Any:
        return self._next().normal(size=shape, dtype=dtype)

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any = "float32"):
        return self._next().uniform(low, high, size=shape, dtype=dtype)

    def permutation(self, n: int) -> Any:
        return self._next().permutation(n)

    def get_state(self) -> dict:
        return {"seed": self.seed, "draws": self.draws}

    def set_state(self, state: dict) -> None:
        self.seed, self.draws = int(state["seed"]), int(state["draws"])


class CupyBackend:
    """One GPU: the current CuPy device when the backend was loaded."""

    device = "cuda"

    def __init__(self, cupy: Any, xp: Any) -> None:
        self.cupy = cupy
        self.xp = xp
        self.array_types = (cupy.ndarray,)
        self.gpu = cupy.cuda.Device()

    def for_array(self, x: Any) -> CupyBackend:
        if x.device.id != self.gpu.id:
            raise DeviceError(
                f"array on GPU {x.device.id}, but gradcore's 'cuda' device is GPU {self.gpu.id}; "
                "select the GPU with CUDA_VISIBLE_DEVICES"
            )
        return self

    def array_device(self, x: Any) -> Any:
        return x.device

    def asarray(self, obj: Any, dtype: Any = None) -> Any:
        with self.gpu:
            return self.cupy.asarray(obj, dtype=dtype)

    def to_numpy(self, x: Any) -> Any:
        return self.cupy.asnumpy(x)

    def sigmoid(self, x: Any) -> Any:
        if x.dtype.name in FUSED_DTYPES:
            return _kernel(self.cupy, cuda_kernels.SIGMOID)(x)
        return self.xp.tanh(x * 0.5) * 0.5 + 0.5

    def sigmoid_grad(self, y: Any, g: Any) -> Any:
        if type(g) is self.cupy.ndarray and g.dtype == y.dtype and y.dtype.name in FUSED_DTYPES:
            return _kernel(self.cupy, cuda_kernels.SIGMOID_GRAD)(y, g)
        return g * (y * (1.0 - y))

    def sgd_update(
        self,
        param: Any,
        grad: Any,
        velocity: Any,
        learning_rate: float,
        momentum: float,
        nesterov: bool,
        weight_decay: float,
    ) -> None:
        """One launch per parameter; one per model when params, grads and velocities are views
        of three flat buffers (the kernel is element-wise, so pass the flat buffers)."""
        grad = grad.astype(param.dtype, copy=False)
        _kernel(self.cupy, cuda_kernels.SGD_UPDATE)(
            grad,
            float(learning_rate),
            float(momentum),
            float(weight_decay),
            bool(nesterov),
            param,
            velocity,
        )

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        self.cupy.add.at(target, index, values)

    def rng(self, seed: int) -> CupyRng:
        try:
            philox = self.cupy.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
        except ImportError as error:  # CuPy loads cuRAND on first use
            raise DeviceError(
                f"random numbers on 'cuda' need cuRAND, which CuPy could not load ({error}); "
                "install the CUDA libraries for your CuPy wheel, e.g. pip install "
                "'cupy-cuda12x[ctk]' or 'cupy-cuda13x[ctk]'"
            ) from error
        return CupyRng(self.cupy, seed, philox)

    def synchronize(self) -> None:
        self.cupy.cuda.get_current_stream().synchronize()


@cache
def _kernel(cupy: Any, kernel: cuda_kernels.Kernel) -> Any:
    """The ElementwiseKernel for ``kernel``, built once; CuPy compiles it per dtype lazily."""
    return cupy.ElementwiseKernel(kernel.in_params, kernel.out_params, kernel.body, kernel.name)


NO_DEVICE_HINT = (
    "install or repair the NVIDIA driver (nvidia-smi must list the GPU) and leave "
    "CUDA_VISIBLE_DEVICES unset or naming that GPU"
)


def _unavailable(what: str) -> DeviceError:
    return DeviceError(f"device 'cuda' is unavailable: {what}")


def load() -> CupyBackend:
    """Import CuPy, find a GPU, allocate and run a kernel on it; else raise DeviceError."""
    try:
        import cupy
    except ImportError as error:
        raise _unavailable(f"CuPy is not installed ({error}); {INSTALL_HINT}") from error
    except Exception as error:  # a broken install: missing CUDA libraries and the like
        raise _unavailable(f"CuPy failed to import ({error}); {INSTALL_HINT}") from error
    runtime = cupy.cuda.runtime
    built_for = _cuda_version(runtime.runtimeGetVersion())
    driver = runtime.driverGetVersion()
    if driver == 0:
        raise _unavailable(
            f"no NVIDIA driver found (CuPy {cupy.__version__} is installed, built for CUDA "
            f"{built_for}); this machine has no usable GPU: {NO_DEVICE_HINT}"
        )
    if driver // 1000 < runtime.runtimeGetVersion() // 1000:  # minor versions are compatible
        raise _unavailable(
            f"the NVIDIA driver supports CUDA {_cuda_version(driver)}, but CuPy "
            f"{cupy.__version__} is built for CUDA {built_for}; {INSTALL_HINT}"
        )
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as error:
        raise _unavailable(f"CUDA reports no usable device ({error}); {NO_DEVICE_HINT}") from error
    if count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise _unavailable(
            f"no CUDA device is visible (CUDA_VISIBLE_DEVICES={visible!r}); {NO_DEVICE_HINT}"
        )
    try:
        import array_api_compat.cupy as xp

        probe = cupy.arange(4, dtype=cupy.float32)
        (probe + probe).get()
    except Exception as error:
        raise _unavailable(
            f"CuPy {cupy.__version__} (CUDA {built_for}) found {count} GPU(s), but a first "
            f"allocation and kernel failed ({type(error).__name__}: {error}); {INSTALL_HINT}"
        ) from error
    return CupyBackend(cupy, xp)
