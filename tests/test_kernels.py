"""The fused kernels, checked on any machine: the CUDA sources compile (nvcc, no GPU needed), the
NumPy versions match their reference formulas, and the "cuda" device fails with a clear reason
where it cannot run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from gradcore.backends import cuda_kernels, cupy_backend, numpy_kernels

import gradcore as gc

NVCC = shutil.which("nvcc")
DTYPES = ["float32", "float64"]


# ---------------------------------------------------------------------------------------------
# CUDA sources


def _nvcc(source: str, tmp_path) -> subprocess.CompletedProcess:
    path = tmp_path / "kernel.cu"
    path.write_text(source)
    command = [NVCC, "--ptx", "-Werror", "all-warnings", str(path), "-o", str(tmp_path / "k.ptx")]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
@pytest.mark.parametrize("kernel", cuda_kernels.KERNELS, ids=lambda k: k.name)
def test_cuda_kernel_compiles_for_float_and_double(kernel, tmp_path):
    result = _nvcc(kernel.translation_unit(), tmp_path)
    assert result.returncode == 0, result.stderr
    ptx = (tmp_path / "k.ptx").read_text()
    assert ptx.count(".entry") == 2  # one kernel per dtype


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
def test_nvcc_check_catches_a_broken_body(tmp_path):
    broken = cuda_kernels.Kernel("broken", ("x",), (), ("y",), "y = no_such_function(x);")
    assert _nvcc(broken.translation_unit(), tmp_path).returncode != 0


class _FakeCupy:
    """Stands in for CuPy to count how often a kernel object is built."""

    built: list[str] = []

    class ElementwiseKernel:
        def __init__(self, in_params, out_params, body, name):
            _FakeCupy.built.append(name)


def test_cuda_kernels_are_built_once_and_not_at_import():
    first = cupy_backend._kernel(_FakeCupy, cuda_kernels.SIGMOID)
    for _ in range(3):
        assert cupy_backend._kernel(_FakeCupy, cuda_kernels.SIGMOID) is first
    assert _FakeCupy.built == ["gradcore_sigmoid"]


def test_cupy_accepts_every_kernel_signature():
    """CuPy parses parameters when a kernel is built, before any GPU is needed."""
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    for kernel in cuda_kernels.KERNELS:
        built = cupy.ElementwiseKernel(
            kernel.in_params, kernel.out_params, kernel.body, kernel.name
        )
        assert (built.nin, built.nout) == (
            len(kernel.inputs) + len(kernel.scalars),
            len(kernel.outputs),
        )


# ---------------------------------------------------------------------------------------------
# NumPy fused kernels against their formulas


def _extremes(dtype: str) -> np.ndarray:
    info = np.finfo(dtype)
    values = [0.0, info.smallest_subnormal, info.tiny, 1e-30, 0.5, 1.0, 10.0, 20.0, 40.0]
    values += [87.0, 89.0, 100.0, 700.0, 710.0, 1e4, 1e30, float(info.max)]
    values = np.array(values, dtype=np.float64)
    values = values[np.abs(values) <= info.max].astype(dtype)
    return np.concatenate([values, -values])


def _sigmoid_reference(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in extended precision, without overflow."""
    x = x.astype(np.longdouble)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _inputs(dtype: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) * 8).astype(dtype)


@pytest.fixture
def no_warnings():
    """Any floating-point warning, in this thread or a worker thread, fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# sizes: below the chunk, several chunks on one thread, and split between threads
SIZES = [7, 3 * numpy_kernels.CHUNK + 5, numpy_kernels.PARALLEL_MIN + 12_345]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_numpy_sigmoid_matches_formula(dtype, n, no_warnings):
    x = _inputs(dtype, n)
    extremes = _extremes(dtype)[: n // 2]
    x[: len(extremes)] = x[-len(extremes) :] = extremes  # for the caller's and a helper's share
    y = numpy_kernels.sigmoid(x)
    assert y.dtype == np.dtype(dtype) and y.shape == x.shape
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    np.testing.assert_allclose(y, _sigmoid_reference(x), rtol=4 * eps, atol=tiny)
    assert np.all((y >= 0) & (y <= 1))


def test_numpy_sigmoid_keeps_shape_layout_and_scalars(no_warnings):
    x = _inputs("float32", 24).reshape(4, 6)
    strided = numpy_kernels.sigmoid(x.T)
    np.testing.assert_array_equal(strided, numpy_kernels.sigmoid(x).T)
    assert numpy_kernels.sigmoid(np.float32(0.0)).shape == ()
    assert numpy_kernels.sigmoid(np.array(0.0, dtype=np.float32)) == np.float32(0.5)
    assert numpy_kernels.sigmoid(np.array([0, 1])).dtype == np.float64  # integers: like np.exp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_numpy_sigmoid_grad_matches_formula(dtype, n, no_warnings):
    y = numpy_kernels.sigmoid(_inputs(dtype, n))
    g = _inputs(dtype, n, seed=1)
    gx = numpy_kernels.sigmoid_grad(y, g)
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    assert gx.dtype == np.dtype(dtype)
    np.testing.assert_allclose(gx, g64 * y64 * (1 - y64), rtol=8 * np.finfo(dtype).eps)


def test_sigmoid_grad_op_broadcasts_and_keeps_dtype(no_warnings):
    """The op takes the fused kernel for equal shapes and the plain expression otherwise."""
    y = numpy_kernels.sigmoid(_inputs("float32", 12).reshape(3, 4))
    expected = y * (1 - y)
    np.testing.assert_allclose(gc.ops.sigmoid_grad(y, 2.0), 2 * expected, rtol=1e-6)
    np.testing.assert_allclose(gc.ops.sigmoid_grad(y, np.ones(4, np.float32)), expected, rtol=1e-6)
    assert gc.ops.sigmoid_grad(y, 2.0).dtype == np.float32
    np.testing.assert_allclose(gc.ops.sigmoid_grad(y.T, y.T), (y * expected).T, rtol=1e-6)


CONFIGS = {
    "plain": dict(momentum=0.0, nesterov=False, weight_decay=0.0),
    "momentum": dict(momentum=0.9, nesterov=False, weight_decay=0.0),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=0.0),
    "weight_decay": dict(momentum=0.9, nesterov=False, weight_decay=1e-2),
    "nesterov_weight_decay": dict(momentum=0.5, nesterov=True, weight_decay=1e-1),
}


def sgd_reference(p, g, v, learning_rate, momentum, nesterov, weight_decay):
    """The update, written as the formula: returns new (p, v)."""
    step = g + weight_decay * p
    v = momentum * v - learning_rate * step
    p = p + (momentum * v - learning_rate * step if nesterov else v)
    return p, v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_numpy_sgd_update_follows_formula_step_by_step(dtype, config, no_warnings):
    rng = np.random.default_rng(0)
    param = rng.standard_normal((5, 3)).astype(dtype)
    velocity = np.zeros_like(param)
    p64, v64 = param.astype(np.float64), velocity.astype(np.float64)
    param_buffer, velocity_buffer = param.ctypes.data, velocity.ctypes.data
    for step in range(6):
        grad = rng.standard_normal(param.shape).astype(dtype)
        rate = 0.1 / (step + 1)
        gc.optim.sgd_update(param, grad, velocity, rate, **CONFIGS[config])
        p64, v64 = sgd_reference(p64, grad.astype(np.float64), v64, rate, **CONFIGS[config])
        tolerance = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(param, p64, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(velocity, v64, rtol=tolerance, atol=tolerance)
    assert param.dtype == velocity.dtype == np.dtype(dtype)
    assert (param.ctypes.data, velocity.ctypes.data) == (param_buffer, velocity_buffer)


# ---------------------------------------------------------------------------------------------
# the "cuda" device where it cannot run

NO_CUPY = """
import sys
sys.modules["cupy"] = None  # makes `import cupy` raise ImportError, as if it were not installed
import gradcore as gc
import gradcore.backends.cupy_backend
try:
    gc.array(1.0, device="cuda")
except gc.DeviceError as error:
    print(error)
print(gc.available_devices())
"""


def test_cuda_without_cupy_raises_device_error_saying_what_to_install():
    result = subprocess.run([sys.executable, "-c", NO_CUPY], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    message, devices = result.stdout.strip().splitlines()
    assert "device 'cuda' is unavailable: CuPy is not installed" in message
    assert "pip install 'gradcore[cuda12]' or 'gradcore[cuda13]'" in message
    assert devices == "['cpu']"


def test_importing_gradcore_does_not_import_cupy():
    code = "import sys, gradcore; gradcore.array(1.0); print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_cupy_without_a_gpu_raises_device_error_with_the_reason():
    pytest.importorskip("cupy", reason="CuPy is not installed")
    if "cuda" in gc.available_devices():
        pytest.skip("a GPU answers here; tests/test_cuda.py covers it")
    with pytest.raises(gc.DeviceError, match="device 'cuda' is unavailable: .*CuPy") as caught:
        gc.array(1.0, device="cuda")
    assert "unavailable" in str(caught.value)
    with pytest.raises(gc.DeviceError):  # the probe's answer is cached, and stays an error
        gc.to_device(np.ones(2), "cuda")


def test_mixing_devices_in_a_fused_op_names_the_op_and_both_devices():
    """The array-api-strict backend stands in for a second device on CPU-only machines."""
    y = gc.array([0.5, 0.25], device="cpu")
    g = gc.array([1.0, 1.0], device="strict")
    with pytest.raises(gc.DeviceError, match=r"sigmoid_grad: .*'cpu' and 'strict'"):
        gc.ops.sigmoid_grad(y, g)
