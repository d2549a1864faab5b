"""The "cuda" probe, device names and per-GPU allocation, on machines without a GPU: a stand-in
CuPy fails at each step the probe takes (driver version, device count, allocation, cuBLAS), and
each failure must become a DeviceError that says what to do, with the cuda tests skipping rather
than erroring. A broken CuPy install must be reported as broken, not as missing. "cuda:N" names
GPU N, and "cuda" is the current GPU's backend under both names.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from gradcore.backends import cupy_backend

import gradcore as gc
from gradcore import backend
from gradcore.backend import split_device

TESTS = Path(__file__).parent


class CUDARuntimeError(RuntimeError):
    """What cupy_backends raises for a failed CUDA runtime call."""


def fake_cupy(fail: str | None = None, count: int = 1) -> types.ModuleType:
    """A CuPy stand-in on NumPy that fails at step ``fail`` as the real one does there."""
    cupy = types.ModuleType("cupy")
    cupy.__version__ = "14.2.0"
    cupy.float32 = np.float32
    current = [0]  # the current GPU

    def driver_version() -> int:
        if fail == "driver":
            raise CUDARuntimeError(
                "cudaErrorInsufficientDriver: CUDA driver version is insufficient"
            )
        return 12090

    def device_count() -> int:
        if fail == "count":
            raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")
        return count

    class Device:
        def __init__(self, gpu_id: int | None = None) -> None:
            self.id = current[0] if gpu_id is None else gpu_id

        def __enter__(self) -> Device:
            self.previous, current[0] = current[0], self.id
            return self

        def __exit__(self, *exc: object) -> None:
            current[0] = self.previous

    class Array(np.ndarray):
        def get(self) -> np.ndarray:
            return np.asarray(self)

        def __matmul__(self, other: Array) -> Array:
            if fail == "cublas":
                raise RuntimeError(
                    "CuPy failed to load libcublas.so.12: OSError: libcublas.so.12: cannot open "
                    "shared object file: No such file or directory"
                )
            return np.matmul(self, other).view(Array)

    def arange(n: int, dtype: object = None) -> Array:
        if fail == "allocation":
            raise CUDARuntimeError("cudaErrorMemoryAllocation: out of memory")
        return np.arange(n, dtype=dtype).view(Array)

    runtime = types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError,
        runtimeGetVersion=lambda: 12090,
        driverGetVersion=driver_version,
        getDeviceCount=device_count,
        getDevice=lambda: current[0],
    )
    cupy.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    cupy.arange, cupy.ndarray, cupy.sign = arange, Array, np.sign
    cupy.current, cupy.asarray_on = current, []

    def asarray(obj: object, dtype: object = None) -> Array:
        cupy.asarray_on.append(current[0])
        return np.asarray(obj, dtype).view(Array)

    cupy.asarray = asarray
    return cupy


@pytest.fixture(autouse=True)
def _no_loaded_gpus(monkeypatch):
    """Each probe here starts from no loaded GPU, whatever this process loaded before (on a
    machine with a GPU, or on the simulated device, earlier tests may have)."""
    monkeypatch.setattr(cupy_backend, "_backends", {})


FAILURES = {
    "driver": (
        r"cannot read the NVIDIA driver's version \(CUDARuntimeError: cudaErrorInsufficientDriver",
        "install or repair the NVIDIA driver",
    ),
    "count": (
        r"CUDA reports no usable device \(CUDARuntimeError: cudaErrorNoDevice",
        "install or repair the NVIDIA driver",
    ),
    "allocation": (
        r"on GPU 0 of 1: a first allocation and kernel failed \(CUDARuntimeError: cudaErrorMemory",
        r"pip install 'gradcore\[cuda12\]' or 'gradcore\[cuda13\]'",
    ),
    "cublas": (
        r"a first matmul failed in cuBLAS \(RuntimeError: CuPy failed to load libcublas",
        r"pip install 'cupy-cuda12x\[ctk\]' or 'cupy-cuda13x\[ctk\]'",
    ),
}


@pytest.mark.parametrize("fail", FAILURES)
def test_each_probe_failure_is_a_device_error_saying_what_to_do(fail, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(fail))
    cause, remedy = FAILURES[fail]
    with pytest.raises(gc.DeviceError, match=f"^device 'cuda' is unavailable: .*{cause}") as caught:
        cupy_backend.load()
    assert caught.match(remedy)


def test_no_visible_gpu_and_a_gpu_number_out_of_range_say_which_names_exist(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=0))
    with pytest.raises(gc.DeviceError, match=r"no CUDA device is visible \(CUDA_VISIBLE_DEV"):
        cupy_backend.load()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=2))
    with pytest.raises(gc.DeviceError, match=r"^device 'cuda:2' is unavailable: this process sees"):
        cupy_backend.load(2)
    with pytest.raises(gc.DeviceError, match=r"sees 2 GPU\(s\) .*'cuda' or 'cuda:0' to 'cuda:1'"):
        cupy_backend.load(2)


PLUGIN = """
import sys
sys.path.insert(0, {tests!r})
from test_cuda_probe import fake_cupy
sys.modules["cupy"] = fake_cupy({fail!r})
"""


@pytest.mark.parametrize("fail", ["driver", "cublas"])
def test_cuda_tests_skip_with_the_probe_reason(fail, tmp_path):
    """Through the registry and conftest, as a test run on a machine with that fault sees it."""
    (tmp_path / "inject_cupy.py").write_text(PLUGIN.format(tests=str(TESTS), fail=fail))
    command = [sys.executable, "-m", "pytest", "-q", "-p", "inject_cupy", "-p", "no:cacheprovider"]
    command += ["-rs", str(TESTS / "test_cuda.py")]
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=TESTS.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" not in result.stdout and " error" not in result.stdout
    assert "skipped" in result.stdout
    assert "no GPU answers: device 'cuda' is unavailable" in result.stdout
    assert FAILURES[fail][0].replace("\\", "")[:40] in result.stdout


BROKEN = "raise ImportError('libcudart.so.12: cannot open shared object file')\n"


def test_a_broken_cupy_install_is_reported_as_broken_not_missing(tmp_path):
    (tmp_path / "cupy").mkdir()
    (tmp_path / "cupy" / "__init__.py").write_text(BROKEN)
    code = (
        "import gradcore as gc\n"
        "try:\n    gc.array(1.0, device='cuda')\n"
        "except gc.DeviceError as error:\n    print(error)\n"
    )
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "device 'cuda' is unavailable: CuPy is installed but fails to import (ImportError: "
        "libcudart.so.12: cannot open shared object file): a broken install"
    )
    assert "pip install 'gradcore[cuda12]'" in result.stdout


def test_allocations_land_on_the_backends_gpu_not_the_current_one():
    cupy = fake_cupy(count=2)
    made_on = []

    def recorder(name):
        def create(*args, device=None, **kwargs):
            made_on.append((name, cupy.current[0]))
            return np.zeros(3).view(cupy.ndarray)

        create.__name__ = name
        return create

    compat = types.ModuleType("array_api_compat.cupy")
    for name in cupy_backend.CREATION_FUNCTIONS:
        setattr(compat, name, recorder(name))
    compat.clip = compat.sign = None  # array-api-compat's mask-writing versions
    backend = cupy_backend.CupyBackend(cupy, compat, 1, "cuda:1")
    assert cupy.current == [0]
    backend.xp.zeros(3)
    backend.xp.ones_like(np.ones(2))
    backend.xp.asarray([1.0], device=cupy.cuda.Device(0))
    backend.asarray([1.0])
    assert made_on == [("zeros", 1), ("ones_like", 1), ("asarray", 0)]
    assert cupy.asarray_on == [1] and cupy.current == [0]
    assert backend.xp.clip is cupy_backend._clip and backend.xp.sign is cupy.sign


def test_device_names_split_into_a_name_and_a_gpu_number():
    assert split_device("cuda:1") == ("cuda", 1) and split_device("cuda:0") == ("cuda", 0)
    assert split_device("cuda") == ("cuda", None) and split_device("cpu") == ("cpu", None)
    for bad in ("cuda:", "cuda:x", "cuda:-1", "cuda:1:2", "cuda:１", 1, None):
        assert split_device(bad) == (None, None), bad


@pytest.fixture
def registry(monkeypatch):
    """The device registry with "cuda" not yet probed, restored after the test."""
    for name in ("_loaders", "_numbered", "_by_module", "_by_type"):
        monkeypatch.setattr(backend, name, copy.copy(getattr(backend, name)))
    probed = {k: v for k, v in backend._loaded.items() if split_device(k)[0] != "cuda"}
    monkeypatch.setattr(backend, "_loaded", probed)
    return backend


def test_numbered_devices_reach_their_loader_with_the_number(registry):
    calls = []

    def loader(*index):
        calls.append(index)
        return types.SimpleNamespace(device=f"fakegpu{index}", array_types=())

    registry.register_backend("fakegpu", loader, numbered=True)
    registry.register_backend("plain", loader)
    assert registry.backend_for_device("fakegpu:3").device == "fakegpu(3,)"
    assert registry.backend_for_device("fakegpu").device == "fakegpu()"
    registry.backend_for_device("fakegpu:3")  # probed once
    assert calls == [(3,), ()]
    for bad in ("plain:0", "fakegpu:x", "fakegpu:"):
        with pytest.raises(gc.DeviceError, match=f"^unknown device '{bad}'; known .*'fakegpu:N'"):
            registry.backend_for_device(bad)


def test_cuda_and_the_current_gpus_number_are_one_backend(registry, monkeypatch):
    cupy = fake_cupy(count=2)
    compat = types.ModuleType("array_api_compat.cupy")
    for name in (*cupy_backend.CREATION_FUNCTIONS, "clip", "sign"):
        setattr(compat, name, lambda *args, **kwargs: None)
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", compat)
    monkeypatch.setattr(cupy_backend, "_backends", {})
    current = registry.backend_for_device("cuda")
    assert current.device == "cuda" and current.gpu.id == 0
    assert registry.backend_for_device("cuda:0") is current
    other = registry.backend_for_device("cuda:1")
    assert other.device == "cuda:1" and other.gpu.id == 1
    on_gpu_1 = types.SimpleNamespace(device=cupy.cuda.Device(1))
    assert current.for_array(on_gpu_1) is other and other.for_array(on_gpu_1) is other
    with pytest.raises(gc.DeviceError, match="^device 'cuda:2' is unavailable: this process"):
        registry.backend_for_device("cuda:2")
