"""Devices: creating arrays, moving them explicitly, ops and gradients that follow their inputs'
device, and clear errors for unknown or unavailable devices and for arrays of two devices mixed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import cuda_unavailable_reason, host

import gradcore as gc


def _cuda_runtime_sees_a_gpu() -> bool:
    """Asked of CuPy directly, not through gradcore's probe."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: all mean no GPU
        return False


def test_the_cpu_is_always_available_and_cuda_where_a_gpu_is():
    devices = gc.available_devices()
    assert devices[0] == "cpu"
    assert ("cuda" in devices) == _cuda_runtime_sees_a_gpu()


def test_array_defaults_to_float32_on_the_cpu():
    x = gc.array([1.0, 2.0])
    assert isinstance(x, np.ndarray)  # native arrays: nothing is wrapped
    assert x.dtype == np.float32
    assert gc.device_of(x) == "cpu"
    assert gc.array(3.0).dtype == np.float32


def test_array_on_each_device(device):
    x = gc.array([[1.0, 2.0], [3.0, 4.0]], device=device)
    assert gc.device_of(x) == device
    assert host(x).dtype == np.float32  # float32 is the default on every device
    np.testing.assert_array_equal(host(x), [[1.0, 2.0], [3.0, 4.0]])
    assert host(gc.array([1, 2], device=device)).dtype.kind == "i"  # integers stay integers
    x64 = gc.array([1.0], dtype="float64", device=device)
    assert host(x64).dtype == np.float64


def test_array_keeps_the_dtype_of_an_array_and_copies_it(device):
    source = np.array([1.0, 2.0], dtype=np.float64)
    x = gc.array(source, device=device)
    assert host(x).dtype == np.float64
    source[0] = 99.0
    assert host(x)[0] == 1.0  # a copy, not a view


def test_to_device_and_to_numpy_on_pytrees(device):
    tree = {"w": np.ones((2, 3), np.float32), "layers": [np.arange(3.0), (np.zeros(1), 2.5)]}
    moved = gc.to_device(tree, device)
    assert gc.device_of(moved["w"]) == device
    assert gc.device_of(moved["layers"][1][0]) == device
    assert moved["layers"][1][1] == 2.5  # Python numbers live on no device and stay as they are
    assert isinstance(moved["layers"][1], tuple)
    back = gc.to_numpy(moved)
    assert isinstance(back["w"], np.ndarray) and back["w"].dtype == np.float32
    np.testing.assert_array_equal(back["layers"][0], np.arange(3.0))


def test_to_device_leaves_arrays_already_there_alone(device):
    x = gc.array([1.0, 2.0], device=device)
    assert gc.to_device(x, device) is x


def test_moving_between_the_strict_backends_two_devices():
    a = gc.array([1.0, 2.0], device="strict")
    b = gc.to_device(a, "strict1")
    assert gc.device_of(b) == "strict1"
    assert gc.device_of(gc.array(b, device="strict")) == "strict"
    np.testing.assert_array_equal(host(b), [1.0, 2.0])


def test_ops_and_gradients_follow_the_device_of_their_inputs():
    """On the second device, every intermediate and every gradient stays there."""
    w = gc.array([[0.5, -0.2], [0.1, 0.3]], device="strict1")
    x = gc.array([1.0, 2.0], device="strict1")
    out = gc.softmax(gc.tanh(w @ x + 1.0))
    assert gc.device_of(out) == "strict1"

    def loss(w):
        z = gc.sigmoid(gc.matmul(w, x))
        return gc.sum(gc.log_softmax(gc.concatenate([z, gc.max(w, axis=0)])))

    g = gc.grad(loss)(w)
    assert gc.device_of(g) == "strict1"
    gc.check_grads(loss, gc.array(host(w), dtype="float64", device="strict1"), order=2)


def test_device_of_a_traced_value(device):
    x = gc.array([1.0], device=device)
    seen = []
    gc.grad(lambda x: seen.append(gc.device_of(x)) or gc.sum(x))(x)
    assert seen == [device]


def test_device_of_a_python_number_is_refused():
    with pytest.raises(TypeError, match="device_of: a Python float lives on no device"):
        gc.device_of(1.5)


def test_mixing_two_devices_names_the_op_and_both_devices():
    a = gc.array([1.0, 2.0], device="strict")
    b = gc.array([3.0, 4.0], device="strict1")
    for op in [gc.add, gc.subtract, gc.multiply, gc.divide, gc.maximum, gc.matmul]:
        name = op.__name__
        with pytest.raises(gc.DeviceError, match=rf"{name}.*'strict'.*'strict1'.*to_device"):
            op(a, b)
    with pytest.raises(gc.DeviceError, match=r"concatenate.*'strict'.*'strict1'"):
        gc.concatenate([a, b])
    with pytest.raises(gc.DeviceError, match=r"where.*'strict'.*'strict1'"):
        gc.where(gc.greater(a, 1.5), a, b)


def test_mixing_two_devices_inside_a_trace_is_refused():
    a = gc.array([1.0, 2.0], device="strict")
    b = gc.array([3.0, 4.0], device="strict1")
    with pytest.raises(gc.DeviceError, match=r"multiply.*'strict'.*'strict1'"):
        gc.grad(lambda a: gc.sum(gc.multiply(a, b)))(a)


def test_mixing_the_cpu_with_another_device_is_refused():
    a = gc.array([1.0, 2.0])
    b = gc.array([3.0, 4.0], device="strict")
    with pytest.raises(gc.DeviceError, match=r"add.*'cpu'.*'strict'"):
        gc.add(a, b)


def test_nothing_is_moved_to_the_cpu_implicitly_by_python_numbers(device):
    x = gc.array([1.0, 2.0], device=device)
    assert gc.device_of(x * 2.0 + 1.0) == device
    assert gc.device_of(gc.maximum(x, 0.0)) == device


def test_an_unknown_device_is_refused_with_the_known_ones():
    with pytest.raises(gc.DeviceError, match=r"unknown device 'tpu'; known devices: 'cpu', 'cuda'"):
        gc.array([1.0], device="tpu")
    with pytest.raises(gc.DeviceError, match="unknown device 'gpu'"):
        gc.to_device(np.ones(2), "gpu")


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="a GPU answers here")
def test_cuda_without_a_gpu_says_why_and_what_to_install():
    with pytest.raises(gc.DeviceError, match=r"device 'cuda' is unavailable: ") as caught:
        gc.array([1.0], device="cuda")
    message = str(caught.value)
    assert "install" in message, f"the message says nothing about what to install: {message}"
    assert "cuda" not in gc.available_devices()
    # asked again: the same answer (the probe ran once and was cached)
    with pytest.raises(gc.DeviceError) as again:
        gc.to_device(np.ones(2), "cuda")
    assert str(again.value) == message


@pytest.fixture
def without_cupy(monkeypatch):
    """The "cuda" device as on a machine where CuPy is not installed; re-probed afterwards."""
    monkeypatch.setitem(sys.modules, "cupy", None)  # ``import cupy`` now raises ImportError
    gc.register_backend("cuda", "gradcore.backends.cupy_backend", array_modules=("cupy",))
    yield
    monkeypatch.undo()
    gc.register_backend("cuda", "gradcore.backends.cupy_backend", array_modules=("cupy",))


def test_cuda_without_cupy_says_so_and_names_the_extras_to_install(without_cupy):
    with pytest.raises(
        gc.DeviceError, match=r"'cuda' is unavailable: CuPy is not installed.*pip install"
    ) as caught:
        gc.array([1.0], device="cuda")
    assert "gradcore[cuda12]" in str(caught.value) and "gradcore[cuda13]" in str(caught.value)
    assert gc.available_devices()[0] == "cpu" and "cuda" not in gc.available_devices()


def test_traced_values_cannot_leave_the_trace_by_moving(device):
    x = gc.array([1.0, 2.0], device=device)

    def f(x):
        with pytest.raises(TypeError, match="to_numpy: got a traced value.*stop_gradient"):
            gc.to_numpy(x)
        with pytest.raises(TypeError, match="to_device: got a traced value"):
            gc.to_device(x, "cpu")
        with pytest.raises(TypeError, match="array: got a traced value"):
            gc.array(x)
        return gc.sum(x)

    gc.grad(f)(x)


@pytest.mark.slow
def test_importing_gradcore_does_not_import_cupy():
    code = "import sys, gradcore; gradcore.array(1.0); print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
