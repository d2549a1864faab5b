"""The simulated CUDA device itself (gradcore.backends.cudasim), against CuPy's documented
behaviour: its kernels from CuPy's documentation give the documented results, a kernel that does
not compile fails with the compiler's message, host reads are counted, implicit conversions and
mixed devices are refused as CuPy refuses them.

These run only on the simulator (``GRADCORE_SIMULATE_CUDA=1``, or 2 for the two-GPU tests); on a
real GPU they skip, since they test the stand-in, not CuPy.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import SIMULATED_GPUS, run_gradcore
from gradcore.backends import cudasim

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not SIMULATED_GPUS, reason=f"tests the simulated device: set {cudasim.ENV}=1"
    ),
]

two_gpus = pytest.mark.skipif(
    SIMULATED_GPUS < 2, reason=f"needs two GPUs: run with {cudasim.ENV}=2"
)


@pytest.fixture
def cp():
    import cupy

    assert cupy.__file__.startswith(str(cudasim.HERE))  # the stand-in, not a real CuPy
    return cupy


@pytest.fixture
def reads():
    with cudasim.host_reads.counting() as seen:
        yield seen


# ---------------------------------------------------------------------------------------------
# kernels, as CuPy's user guide writes them (docs.cupy.dev, "User-Defined Kernels")


def test_documented_squared_difference_broadcasts_and_takes_scalars(cp):
    squared_diff = cp.ElementwiseKernel(
        "float32 x, float32 y", "float32 z", "z = (x - y) * (x - y)", "squared_diff"
    )
    x = cp.arange(10, dtype=np.float32).reshape(2, 5)
    y = cp.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(squared_diff(x, y).get(), [[0] * 5, [25] * 5])
    np.testing.assert_array_equal(squared_diff(x, 5).get(), (np.arange(10).reshape(2, 5) - 5) ** 2)
    z = cp.empty((2, 5), dtype=np.float32)
    assert squared_diff(x, y, z) is z
    np.testing.assert_array_equal(z.get(), [[0] * 5, [25] * 5])


def test_documented_type_variable_is_resolved_from_the_arrays(cp):
    squared_diff = cp.ElementwiseKernel(
        "T x, T y", "T z", "z = (x - y) * (x - y)", "squared_diff_generic"
    )
    for dtype in ("float32", "float64", "int32"):
        x = cp.arange(4, dtype=dtype)
        z = squared_diff(x, 1)
        assert z.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(z.get(), (np.arange(4) - 1) ** 2)
    with pytest.raises(TypeError, match="Type is mismatched"):
        squared_diff(cp.arange(4, dtype="float32"), cp.arange(4, dtype="float64"))


def test_documented_raw_argument_and_loop_index(cp):
    add_reverse = cp.ElementwiseKernel(
        "T x, raw T y", "T z", "z = x + y[_ind.size() - i - 1]", "add_reverse"
    )
    x = cp.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(add_reverse(x, x).get(), [4, 4, 4, 4, 4])


def test_preamble_and_output_shape_checks(cp):
    kernel = cp.ElementwiseKernel(
        "T x", "T y", "y = twice(x)", "with_preamble", preamble="template <typename U> "
        "__device__ U twice(U v) { return v + v; }",
    )  # fmt: skip
    np.testing.assert_array_equal(kernel(cp.arange(3.0)).get(), [0.0, 2.0, 4.0])
    with pytest.raises(ValueError, match="Out shape is mismatched"):
        kernel(cp.zeros((2, 3)), cp.empty(3))
    with pytest.raises(ValueError, match=r"could not be broadcast together with shapes \(3,\)"):
        kernel(cp.arange(3.0), cp.empty(4))
    with pytest.raises(TypeError, match="Wrong number of arguments"):
        kernel()
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        kernel(np.arange(3.0))


def test_a_kernel_that_does_not_compile_fails_with_the_compilers_message(cp):
    broken = cp.ElementwiseKernel("T x", "T y", "y = no_such_function(x)", "broken")
    with pytest.raises(cp.cuda.compiler.CompileException) as error:
        broken(cp.arange(3.0))
    assert "no_such_function" in str(error.value) and "not declared" in str(error.value)
    assert error.value.name == "broken" and "no_such_function" in error.value.source


def test_cuda_math_semantics(cp):
    """fmaxf drops a NaN; float32 flushes subnormals (CuPy's -ftz=true), float64 does not;
    CuPy's float16 arithmetic runs in float and rounds once, when stored."""
    kernel = cp.ElementwiseKernel("T x, T y", "T z", "z = max(x, y)", "cuda_max")
    z = kernel(cp.asarray([np.nan, 1.0], "float32"), cp.asarray([2.0, np.nan], "float32"))
    np.testing.assert_array_equal(z.get(), [2.0, 1.0])
    halve = cp.ElementwiseKernel("T x", "T y", "y = x * (T)0.5", "halve")
    tiny32 = np.finfo(np.float32).tiny
    assert halve(cp.asarray([tiny32], "float32")).get()[0] == 0.0
    tiny64 = np.finfo(np.float64).tiny
    assert halve(cp.asarray([tiny64], "float64")).get()[0] == tiny64 / 2
    # 2049 is not a float16: (x * x) / x in float16 steps would round x * x first
    square_over = cp.ElementwiseKernel("T x", "T y", "y = x * x / x", "square_over")
    np.testing.assert_array_equal(square_over(cp.asarray([2049.0], "float16")).get(), [2048.0])
    wide = square_over(cp.asarray([300.0], "float16")).get()  # 90000 overflows float16, not float
    np.testing.assert_array_equal(wide, [300.0])
    # CuPy's float16 has its own copysign (a float16, so max picks float16's overload)
    signed = cp.ElementwiseKernel("T x", "T y", "y = max(copysign((T)2, x), x)", "signed_two")
    np.testing.assert_array_equal(signed(cp.asarray([-3.0, 5.0], "float16")).get(), [-2.0, 5.0])


def test_ufuncs_flush_float32_subnormals_as_cupys_kernels_do(cp):
    """CuPy's ufuncs are kernels compiled with -ftz=true too: float32 only."""
    subnormal = np.float32(1e-39)
    np.testing.assert_array_equal((cp.asarray([subnormal]) * 1.0).get(), [0.0])
    np.testing.assert_array_equal(cp.add(cp.asarray([subnormal]), 0.0).get(), [0.0])
    assert (cp.asarray([subnormal], "float64") * 1.0).get()[0] == np.float64(subnormal)


def test_kernels_are_built_once_per_types_and_layout(cp):
    from gradcore.backends import host_compiler as compiler

    kernel = cp.ElementwiseKernel("T x", "T y", "y = x + (T)1", "once_per_types")
    kernel(cp.arange(3.0))
    built = len(compiler._loaded)
    kernel(cp.arange(5.0))
    kernel(cp.arange(3.0).reshape(3, 1).T[0])  # a view: still contiguous, still one dimension
    assert len(compiler._loaded) == built
    kernel(cp.arange(3, dtype="float32"))
    assert len(compiler._loaded) == built + 1


# ---------------------------------------------------------------------------------------------
# arrays: host reads, conversions, devices


def test_every_host_read_is_counted(cp, reads):
    x = cp.asarray([1.0, -2.0, 3.0])
    x.get(), cp.asnumpy(x), x[0].item(), x.tolist(), float(x[1]), bool(x[0])
    x[x > 0], cp.nonzero(x), x.nonzero()
    y = x + 1  # kernels read nothing back
    y.sum(), y[1:], y.T
    assert reads == ["get", "get", "item", "tolist", "float", "bool", "boolean mask",
                     "nonzero", "nonzero"]  # fmt: skip


def test_allow_synchronize_refuses_host_reads(cp):
    import cupyx

    x = cp.arange(3.0)
    with cupyx.allow_synchronize(False):
        y = x * 2 + 1
        with pytest.raises(cupyx.DeviceSynchronized, match="item"):
            y[0].item()
        with pytest.raises(cupyx.DeviceSynchronized, match="boolean mask"):
            y[y > 1]
    assert y.get().tolist() == [1.0, 3.0, 5.0]


def test_implicit_conversions_are_refused_or_read_as_cupy_does(cp):
    x = cp.arange(3.0)
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array is not allowed"):
        np.asarray(x)
    with pytest.raises(TypeError, match="cannot be interpreted as an integer"):
        range(cp.asarray(3))
    with pytest.raises(ValueError, match="more than one element is ambiguous"):
        bool(x)
    with pytest.raises(TypeError, match="Unsupported type <class 'numpy.ndarray'>"):
        x + np.ones(3)


def test_results_are_arrays_on_the_device_never_numpy_scalars(cp):
    x = cp.arange(4.0)
    for result in (x.sum(), x[1], cp.max(x), x.mean(), (x > 1).any(), cp.allclose(x, x)):
        assert type(result) is cp.ndarray and result.ndim == 0


def test_views_keep_their_base_and_ufuncs_write_out(cp):
    x = cp.zeros((2, 3))
    assert x.base is None and x.T.base is x and x[0].base is x and x.reshape(6).base is x
    assert cp.may_share_memory(x, x[1]) and not cp.may_share_memory(x, x.copy())
    out = cp.empty((2, 3))
    assert cp.add(x, 1.0, out=out) is out
    cp.add.at(x, (cp.asarray([0, 0, 1]), cp.asarray([2, 2, 0])), 1.0)
    np.testing.assert_array_equal(x.get(), [[0, 0, 2], [1, 0, 0]])
    with pytest.raises(NotImplementedError, match="cupy_divide.at"):
        cp.divide.at(x, cp.asarray([0]), 2.0)


def test_streams_events_and_pools_are_ordered_no_ops_that_check_arguments(cp):
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        assert cp.cuda.get_current_stream() is stream
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        end.record(stream)
    assert cp.cuda.get_current_stream() is cp.cuda.Stream.null
    with pytest.raises(TypeError, match="Stream"):
        end.record("stream")
    with pytest.raises(NotImplementedError, match="never measures time"):
        cp.cuda.get_elapsed_time(start, end)
    cp.get_default_memory_pool().free_all_blocks()
    with pytest.raises(NotImplementedError, match="custom device allocators"):
        cp.cuda.set_allocator(lambda size: None)


def test_random_state_is_seeded_and_checks_its_generator(cp):
    philox = cp.cuda.curand.CURAND_RNG_PSEUDO_PHILOX4_32_10
    a = cp.random.RandomState(3, method=philox).normal(size=5, dtype="float32")
    b = cp.random.RandomState(3, method=philox).normal(size=5, dtype="float32")
    assert a.dtype == np.float32 and a.get().tolist() == b.get().tolist()
    with pytest.raises(ValueError, match="generator type"):
        cp.random.RandomState(3, method=7)
    with pytest.raises(TypeError, match="float32 and float64"):
        cp.random.RandomState(3).normal(size=5, dtype="float16")


def test_unmodelled_features_say_so(cp):
    with pytest.raises(NotImplementedError, match=r"cupy.ndarray.byteswap is not simulated"):
        cp.arange(3).byteswap()
    with pytest.raises(NotImplementedError, match="cupy.RawKernel is not simulated"):
        cp.RawKernel("", "k")
    with pytest.raises(NotImplementedError, match="cupy.fuse is not simulated"):
        cp.fuse(lambda x: x)


@two_gpus
def test_device_context_and_mixed_devices_fail_as_cupy_fails(cp):
    with cp.cuda.Device(1):
        on_1 = cp.arange(3.0)
        assert on_1.device.id == 1 and cp.cuda.runtime.getDevice() == 1
    on_0 = cp.arange(3.0)
    assert on_0.device.id == 0 and cp.cuda.runtime.getDevice() == 0
    peer = r"resides \(1\) is different from the current device \(0\)\. Peer access"
    with pytest.raises(ValueError, match=peer):
        on_0 + on_1
    with pytest.raises(ValueError, match=peer):
        on_1 * 2  # an array of another GPU, launched on the current one
    assert on_1.T.device.id == 1  # a view launches nothing
    np.testing.assert_array_equal(on_1.copy().get(), [0.0, 1.0, 2.0])  # copies across: allowed
    with pytest.raises(cp.cuda.runtime.CUDARuntimeError, match="invalid device ordinal"):
        cp.cuda.Device(2).use()


def test_nccl_refuses_an_array_of_another_gpu(cp):
    import cupyx.distributed

    comm = cupyx.distributed.NCCLBackend(1, 0, use_mpi=True)  # one rank: no mpiexec needed
    x = cp.arange(4.0)
    comm.all_reduce(x, x, "sum")
    np.testing.assert_array_equal(x.get(), [0.0, 1.0, 2.0, 3.0])
    with pytest.raises(RuntimeError, match="Unknown op"):
        comm.all_reduce(x, x, "mean")
    if SIMULATED_GPUS > 1:
        with cp.cuda.Device(1):
            other = cp.arange(4.0)
        with pytest.raises(cp.cuda.nccl.NcclError, match="GPU 1"):
            comm.broadcast(other)


@pytest.mark.slow
def test_gradcore_info_says_the_device_is_simulated():
    done = run_gradcore("info")
    assert done.returncode == 0, done.stderr
    assert "device cuda: available" in done.stdout
    assert "simulated CUDA device" in done.stdout and "no GPU code runs" in done.stdout


BUILD = """
import cupy
kernel = cupy.ElementwiseKernel("T x", "T y", "y = x * (T)3", "triple")
print(kernel(cupy.arange(3.0)).get().tolist())
"""


@pytest.mark.slow
def test_a_kernel_compiled_once_is_loaded_from_the_per_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRADCORE_CUDASIM_CACHE", str(tmp_path))
    script = f"from gradcore.backends import cudasim; cudasim.install()\n{BUILD}"
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert first.stdout.strip() == "[0.0, 3.0, 6.0]", first.stderr
    built = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.so")}
    assert len(built) == 1
    again = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert again.stdout == first.stdout
    assert {path: path.stat().st_mtime_ns for path in tmp_path.glob("*.so")} == built
