"""The "cuda" devices on a real GPU: fused kernels against their formulas, exact transfers, one
training step that matches the CPU's, no host waits in clip and sign, "cuda:N" names, and the
refusal to mix devices. Skipped, with the probe's reason, where no GPU answers (conftest.py).

CuPy compiles every kernel with -ftz=true: float32 results (and inputs) below the smallest
normal number flush to zero on the GPU, so no test here expects float32 subnormals to equal the
CPU's; tolerances have ``atol`` at least ``finfo.tiny``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gradcore.backends import cuda_kernels
from test_kernels import (
    CONFIGS,
    CUDA_DTYPES,
    _extremes,
    _inputs,
    _sigmoid_reference,
    sgd_reference,
)

import gradcore as gc
from gradcore.backend import backend_for_device
from gradcore.pytree import tree_leaves

pytestmark = pytest.mark.cuda


@pytest.fixture
def gpu():
    return backend_for_device("cuda")


# float16 arithmetic in CuPy rounds after every operation: a few more ulp than the wider types.
ULPS = {"float16": 8, "float32": 4, "float64": 4}


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_sigmoid_kernel_matches_formula(gpu, dtype):
    x = np.concatenate([_extremes(dtype), _inputs(dtype, 100_003), -np.arange(0, 120, 0.01)])
    x = x.astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = cuda_kernels.sigmoid(gpu.asarray(x))
    assert type(y) is gpu.cupy.ndarray and y.dtype == np.dtype(dtype)
    info = np.finfo(dtype)
    np.testing.assert_allclose(
        gpu.to_numpy(y), _sigmoid_reference(x), rtol=ULPS[dtype] * info.eps, atol=info.tiny
    )


def test_sigmoid_kernel_follows_strides(gpu):
    x = gpu.asarray(_inputs("float32", 24).reshape(4, 6))
    strided, contiguous = cuda_kernels.sigmoid(x.T), cuda_kernels.sigmoid(x)
    np.testing.assert_array_equal(gpu.to_numpy(strided), gpu.to_numpy(contiguous).T)


@pytest.mark.parametrize("dtype", CUDA_DTYPES)
def test_sigmoid_grad_kernel_matches_formula(gpu, dtype):
    y = cuda_kernels.sigmoid(gpu.asarray(_inputs(dtype, 100_003)))
    g = gpu.asarray(_inputs(dtype, 100_003, seed=1))
    gx = cuda_kernels.sigmoid_grad(y, g)
    y64, g64 = gpu.to_numpy(y).astype(np.float64), gpu.to_numpy(g).astype(np.float64)
    assert gx.dtype == np.dtype(dtype)
    info = np.finfo(dtype)
    np.testing.assert_allclose(
        gpu.to_numpy(gx), g64 * y64 * (1 - y64), rtol=2 * ULPS[dtype] * info.eps, atol=info.tiny
    )


def test_float32_subnormal_results_flush_to_zero_or_match(gpu):
    """-ftz=true: a subnormal result may be 0 on the GPU; either answer is right."""
    y = np.array([1e-39, 2e-41, 1e-45], np.float32)  # all subnormal
    gx = gpu.to_numpy(cuda_kernels.sigmoid_grad(gpu.asarray(y), gpu.asarray(np.ones(3, "f4"))))
    expected = y * (1 - y)
    assert np.all((gx == 0) | (gx == expected)), gx


def test_sgd_update_kernel_takes_float16(gpu):
    param = gpu.asarray(np.ones(5, np.float16))
    velocity = gpu.xp.zeros_like(param)
    cuda_kernels.sgd_update(
        param, gpu.asarray(np.ones(5, np.float16)), velocity, 0.5, 0.9, True, 0.0
    )
    assert param.dtype == velocity.dtype == np.float16
    np.testing.assert_allclose(gpu.to_numpy(param), 1 - 0.5 - 0.9 * 0.5, rtol=1e-3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_sgd_update_kernel_follows_formula_step_by_step(gpu, dtype, config):
    rng = np.random.default_rng(0)
    param = gpu.asarray(rng.standard_normal((65, 33)).astype(dtype))
    velocity = gpu.xp.zeros_like(param)
    pointers = (param.data.ptr, velocity.data.ptr)
    p64, v64 = gpu.to_numpy(param).astype(np.float64), np.zeros(param.shape)
    for step in range(6):
        grad = rng.standard_normal(param.shape).astype(dtype)
        rate = 0.1 / (step + 1)
        cuda_kernels.sgd_update(param, gpu.asarray(grad), velocity, rate, **CONFIGS[config])
        p64, v64 = sgd_reference(p64, grad.astype(np.float64), v64, rate, **CONFIGS[config])
        tolerance = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(gpu.to_numpy(param), p64, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(gpu.to_numpy(velocity), v64, rtol=tolerance, atol=tolerance)
    assert param.dtype == velocity.dtype == np.dtype(dtype)
    assert (param.data.ptr, velocity.data.ptr) == pointers  # in place


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_to_device_round_trip_is_exact(dtype):
    host = np.arange(-50, 50).astype(dtype).reshape(10, 10)
    if host.dtype.kind == "f":
        host[0, :4] = [np.nan, np.inf, -0.0, np.finfo(dtype).smallest_subnormal]
    on_gpu = gc.to_device(host, "cuda")
    assert gc.device_of(on_gpu) == "cuda" and on_gpu.dtype == host.dtype
    for back in (gc.to_numpy(on_gpu), gc.to_device(on_gpu, "cpu")):
        assert type(back) is np.ndarray and back.dtype == host.dtype
        np.testing.assert_array_equal(back.view(np.uint8), host.view(np.uint8))  # bit for bit


def test_one_sgd_step_matches_the_cpu():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)), rng.integers(0, 2, 64)

    def loss(params, x, y):
        return gc.nn.binary_cross_entropy_with_logits(gc.nn.mlp(params, x)[:, 0], y)

    results = {}
    for device in ("cpu", "cuda"):
        params = gc.nn.init_mlp([8, 16, 1], seed=0, device=device)
        xb, yb = gc.array(x, device=device), gc.array(y, dtype="float32", device=device)
        optimizer = gc.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        for _ in range(2):
            optimizer.step(params, gc.grad(loss)(params, xb, yb))
        results[device] = gc.to_numpy(params)
    for cpu_layer, gpu_layer in zip(results["cpu"], results["cuda"]):
        for name in ("W", "b"):
            assert gpu_layer[name].dtype == np.float32
            np.testing.assert_allclose(gpu_layer[name], cpu_layer[name], rtol=1e-5, atol=1e-6)


def test_mixing_cpu_and_cuda_arrays_raises_naming_op_and_devices():
    a, b = gc.array([1.0, 2.0], device="cpu"), gc.array([1.0, 2.0], device="cuda")
    with pytest.raises(gc.DeviceError, match=r"add: .*'cpu' and 'cuda'"):
        gc.add(a, b)
    with pytest.raises(gc.DeviceError, match=r"multiply: .*'cuda' and 'cpu'"):
        gc.grad(lambda w: gc.sum(gc.multiply(w, a)))(b)


def test_rng_is_seeded_on_device_and_its_state_resumes(gpu):
    first, second = gpu.rng(7), gpu.rng(7)
    a = first.normal((1000,), "float32")
    assert type(a) is gpu.cupy.ndarray and a.dtype == np.float32
    np.testing.assert_array_equal(gpu.to_numpy(a), gpu.to_numpy(second.normal((1000,), "float32")))
    state = first.get_state()
    expected = gpu.to_numpy(first.uniform((10,), -1.0, 1.0, "float32"))
    first.set_state(state)
    np.testing.assert_array_equal(
        gpu.to_numpy(first.uniform((10,), -1.0, 1.0, "float32")), expected
    )
    assert sorted(gpu.to_numpy(first.permutation(50)).tolist()) == list(range(50))


def test_scatter_add_adds_at_repeated_indices(gpu):
    target = gpu.xp.zeros(4, dtype=gpu.xp.float32)
    gpu.scatter_add(target, gpu.asarray([0, 2, 2, 2]), gpu.asarray([1.0, 1.0, 2.0, 3.0], "float32"))
    np.testing.assert_array_equal(gpu.to_numpy(target), [1.0, 0.0, 6.0, 0.0])


def test_clip_sign_and_a_bce_step_never_wait_for_the_gpu(gpu):
    import cupyx

    x = gpu.asarray(_inputs("float32", 1000))
    y = gpu.asarray((_inputs("float32", 1000, seed=1) > 0).astype("float32"))
    # a host wait raises DeviceSynchronized; the targets' value checks read them, as fit knows
    with cupyx.allow_synchronize(False), gc.nn.target_checks(False):
        clipped, signs = gc.clip(x, -1.0, 1.0), gc.ops.sign(x)
        loss, grad = gc.value_and_grad(
            lambda z: gc.nn.binary_cross_entropy(gc.sigmoid(z), y) + gc.sum(gc.abs(z))
        )(x)
    host = gpu.to_numpy(x)
    np.testing.assert_array_equal(gpu.to_numpy(clipped), np.clip(host, -1.0, 1.0))
    np.testing.assert_array_equal(gpu.to_numpy(signs), np.sign(host))
    assert clipped.dtype == signs.dtype == grad.dtype == np.float32
    nan = gpu.asarray(np.array([np.nan, -0.0, 2.0], "float32"))
    np.testing.assert_array_equal(gpu.to_numpy(gc.ops.sign(nan)), [np.nan, 0.0, 1.0])


def test_available_devices_lists_cuda_and_each_gpu(gpu):
    count = gpu.cupy.cuda.runtime.getDeviceCount()
    devices = gc.available_devices()
    assert devices[:2] == ["cpu", "cuda"]
    assert [d for d in devices if d.startswith("cuda:")] == [f"cuda:{i}" for i in range(count)]


def test_numbered_devices_name_the_gpu_and_share_the_current_one(gpu):
    count = gpu.cupy.cuda.runtime.getDeviceCount()
    current = gpu.cupy.cuda.runtime.getDevice()
    assert backend_for_device(f"cuda:{current}") is gpu
    x = gc.array([1.0, 2.0], device=f"cuda:{current}")
    assert gc.device_of(x) == "cuda" and x.device.id == current
    with pytest.raises(gc.DeviceError, match=f"sees {count} GPU.*'cuda:{count - 1}'"):
        gc.array(1.0, device=f"cuda:{count}")
    for other in (i for i in range(count) if i != current):  # with a second GPU
        y = gc.array([1.0, 2.0], device=f"cuda:{other}")
        assert gc.device_of(y) == f"cuda:{other}" and y.device.id == other
        zeros = backend_for_device(f"cuda:{other}").xp.zeros(3)
        assert zeros.device.id == other  # not the current GPU
        with pytest.raises(gc.DeviceError, match=f"'cuda' and 'cuda:{other}'"):
            gc.add(x, y)


def test_ops_on_a_gpu_that_is_not_the_current_one_run_on_that_gpu(gpu):
    count = gpu.cupy.cuda.runtime.getDeviceCount()
    if count < 2:
        pytest.skip("needs a second GPU (GRADCORE_SIMULATE_CUDA=2 simulates two)")
    other = next(i for i in range(count) if i != gpu.cupy.cuda.runtime.getDevice())
    x = gc.array([[1.0, 2.0], [3.0, 4.0]], device=f"cuda:{other}")
    y = gc.grad(lambda w: gc.sum(gc.sigmoid(w @ w) * w))(x)
    assert gc.device_of(y) == f"cuda:{other}" and y.device.id == other


@pytest.fixture
def other_gpu(gpu):
    """A GPU that is not the current one: ops on its arrays must still run there."""
    count = gpu.cupy.cuda.runtime.getDeviceCount()
    if count < 2:
        pytest.skip("needs a second GPU (GRADCORE_SIMULATE_CUDA=2 simulates two)")
    current = gpu.cupy.cuda.runtime.getDevice()
    other = next(i for i in range(count) if i != current)
    yield f"cuda:{other}"
    assert gpu.cupy.cuda.runtime.getDevice() == current  # entered, then left


def _on(device, x):
    return gc.array(np.asarray(x, dtype=np.float32), device=device)


def _loss(w):
    return gc.sum(gc.sigmoid(w @ w) * w)


def test_jvp_and_second_derivatives_on_a_gpu_that_is_not_the_current_one(other_gpu):
    x = _on(other_gpu, [[1.0, 2.0], [3.0, 4.0]])
    host = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    _, tangent = gc.jvp(_loss, (x,), (gc.ones_like(x),))
    _, expected = gc.jvp(_loss, (host,), (np.ones_like(host),))
    assert gc.device_of(tangent) == other_gpu
    np.testing.assert_allclose(gc.to_numpy(tangent), expected, rtol=1e-5)
    hvp = gc.grad(lambda w: gc.sum(gc.grad(_loss)(w) * w))(x)
    assert gc.device_of(hvp) == other_gpu


def test_jit_replay_and_its_fused_kernels_run_on_the_arrays_gpu(other_gpu):
    step = gc.jit(gc.grad(lambda w: gc.sum(gc.tanh(gc.sigmoid(w * 2.0 + 1.0) * w) - w)))
    x = _on(other_gpu, [[1.0, -2.0], [3.0, 0.5]])
    host = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    recorded, replayed = step(x), step(x)  # the second call replays the program
    assert "fused group" in step.describe()
    expected = gc.grad(lambda w: gc.sum(gc.tanh(gc.sigmoid(w * 2.0 + 1.0) * w) - w))(host)
    for result in (recorded, replayed):
        assert gc.device_of(result) == other_gpu
        np.testing.assert_allclose(gc.to_numpy(result), expected, rtol=1e-5, atol=1e-6)


def test_fused_sigmoid_kernels_on_a_gpu_that_is_not_the_current_one(other_gpu):
    x = _on(other_gpu, [-30.0, -1.0, 0.0, 2.0])
    y, g = gc.sigmoid(x), gc.grad(lambda v: gc.sum(gc.sigmoid(v)))(x)
    expected = 1.0 / (1.0 + np.exp(-gc.to_numpy(x)))
    np.testing.assert_allclose(gc.to_numpy(y), expected, rtol=1e-6)
    np.testing.assert_allclose(gc.to_numpy(g), expected * (1 - expected), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("make", [lambda: gc.optim.SGD(0.1, momentum=0.9),
                                  lambda: gc.optim.Adam(0.01, global_clipnorm=1.0)],
                         ids=["sgd", "adam"])  # fmt: skip
def test_an_optimizer_step_eager_and_jitted_on_a_gpu_that_is_not_the_current_one(other_gpu, make):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4)), rng.integers(0, 2, 16)

    def loss(params, x, y):
        return gc.nn.binary_cross_entropy_with_logits(gc.nn.mlp(params, x)[:, 0], y)

    results = {}
    for device in ("cpu", other_gpu):
        xb, yb = gc.array(x, device=device), gc.array(y, dtype="float32", device=device)
        params = gc.nn.init_mlp([4, 8, 1], seed=0, device=device)
        optimizer = make()

        @gc.jit
        def train_step(params, x, y, optimizer=optimizer):
            optimizer.step(params, gc.grad(loss)(params, x, y))

        optimizer.step(params, gc.grad(loss)(params, xb, yb))  # eager
        for _ in range(2):  # recorded, then replayed
            train_step(params, xb, yb)
        results[device] = gc.to_numpy(params)
        assert all(gc.device_of(a) == device for a in tree_leaves(params))
    for cpu_layer, gpu_layer in zip(results["cpu"], results[other_gpu]):
        for name in ("W", "b"):
            np.testing.assert_allclose(gpu_layer[name], cpu_layer[name], rtol=1e-5, atol=1e-6)


def test_dropout_draws_on_a_gpu_that_is_not_the_current_one(other_gpu):
    x = _on(other_gpu, np.ones((4, 8)))
    out = gc.nn.dropout(x, 0.5, gc.random.Generator(seed=1))
    assert gc.device_of(out) == other_gpu
    assert set(np.unique(gc.to_numpy(out))) <= {0.0, 2.0}


def test_grad_of_a_loss_with_operators_on_its_labels_on_a_gpu_that_is_not_the_current_one(
    other_gpu,
):
    p, y = _on(other_gpu, [0.2, 0.9, 0.6]), _on(other_gpu, [0.0, 1.0, 1.0])
    g = gc.grad(gc.nn.binary_cross_entropy)(p, y)  # 1 - y: CuPy's operator on raw labels
    host = gc.grad(gc.nn.binary_cross_entropy)(gc.to_numpy(p), gc.to_numpy(y))
    assert gc.device_of(g) == other_gpu
    np.testing.assert_allclose(gc.to_numpy(g), host, rtol=1e-6)
