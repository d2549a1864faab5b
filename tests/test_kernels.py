"""The fused kernels, checked on any machine: the CUDA kernels compile through CuPy's own code
generation and NVRTC (no GPU needed), their bodies compiled as host C++ match the reference
formulas, and the NumPy versions match them too. The CUDA C that ``cuda_c`` writes for every
elementwise op's formula (what gc.jit's fused chains are made of) is checked the same two ways.
(The "cuda" device where it cannot run: tests/test_devices.py and tests/test_cuda_probe.py.)
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import sys
import tracemalloc
import types
import warnings
from typing import Any

import numpy as np
import pytest
from counting_backend import BACKEND
from gradcore.backends import cuda_c, cuda_kernels, host_compiler, numpy_kernels

import gradcore as gc
from gradcore import formulas

DTYPES = ["float32", "float64"]
CUDA_DTYPES = ["float16", "float32", "float64"]

# Every elementwise op's formula as a kernel of its own, written as the fused chains are.
FORMULA_OPS = sorted(
    name for name in vars(gc.ops) if getattr(getattr(gc.ops, name), "formula", None) is not None
)


def _formula_kernel(name: str) -> cuda_kernels.Kernel:
    formula = getattr(gc.ops, name).formula
    inputs = tuple(f"in{k}" for k in range(formula.__code__.co_argcount - 1))
    body = cuda_kernels.formula_body(formula, inputs, "out0")
    return cuda_kernels.Kernel(f"formula_{name}", inputs, (), ("out0",), body)


FORMULA_KERNELS = {name: _formula_kernel(name) for name in FORMULA_OPS}


# ---------------------------------------------------------------------------------------------
# CUDA kernels through CuPy's code generation and NVRTC, without a GPU

# The GPU CuPy would ask for; the front end accepts or refuses a source whatever the target.
ARCH = "90"
CUPY_PINNED = "14.2.0"  # pyproject.toml's cuda-check extra


def _skip_unless_ci(reason: str) -> None:
    """CI sets GRADCORE_REQUIRE_KERNEL_CHECKS=1 (.ci/run): there a missing tool fails the test."""
    if os.environ.get("GRADCORE_REQUIRE_KERNEL_CHECKS") == "1":
        pytest.fail(f"GRADCORE_REQUIRE_KERNEL_CHECKS=1, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cupy():
    """CuPy, which the cuda-check extra installs (cupy-cuda12x[ctk]==14.2.0): NVRTC needs no GPU."""
    try:
        import cupy
    except ImportError as error:
        _skip_unless_ci(f"CuPy does not import ({error}): pip install -e '.[test,cuda-check]'")
    return cupy


class _NoKernelCache:
    """CuPy's kernel-cache interface: nothing is found, so every kernel is compiled here."""

    def load(self, name):
        return None

    def save(self, name, payload, source):
        pass


@pytest.fixture
def nvrtc(cupy, monkeypatch):
    """``build(kernel, dtype, strided) -> (cubin, NVRTC options)``, as ``ElementwiseKernel``
    would build it for arrays of that dtype and layout: CuPy's own kernel source (its private
    code generation, pinned by cupy-cuda12x==14.2.0 in the cuda-check extra), headers and options
    (-ftz=true among them), compiled by NVRTC. Only the two steps that need a GPU are replaced:
    asking the device for its architecture, and loading the cubin into it."""
    if cupy.__version__ != CUPY_PINNED:
        _skip_unless_ci(
            f"this check calls CuPy {CUPY_PINNED}'s internals, not {cupy.__version__}'s"
        )
    from cupy._core import _carray, _kernel, _scalar, core
    from cupy.cuda import compiler, function

    class Unloaded(function.Module):
        def load(self, cubin):
            self.cubin = cubin

    options_seen = []
    compile_with_nvrtc = compiler._compile_using_nvrtc_no_warning

    def spy(source, options=(), arch=None, *args, **kwargs):
        options_seen.append((*options, f"arch {arch}"))
        return compile_with_nvrtc(source, options, arch, *args, **kwargs)

    monkeypatch.setattr(compiler, "_kernel_cache_backend", _NoKernelCache())
    monkeypatch.setattr(compiler, "_compile_using_nvrtc_no_warning", spy)
    unmemoized = compiler._get_arch_for_options_for_nvrtc.__wrapped__  # memoized per device
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc", unmemoized)
    monkeypatch.setattr(compiler, "function", types.SimpleNamespace(Module=Unloaded))
    ndarray_kind, indexer_kind, scalar_kind = 1, 2, 3  # cupy/_core/_kernel.pxd: _ArgKind

    def build(kernel: cuda_kernels.Kernel, dtype: str, strided: bool):
        built = cuda_kernels.elementwise_kernel(kernel)
        t = np.dtype(dtype).type
        n_in, n_scalars, n_out = len(kernel.inputs), len(kernel.scalars), len(kernel.outputs)
        in_types, _, type_map = built._decide_params_type(
            (t,) * n_in + (None,) * n_scalars, (t,) * n_out
        )
        # ElementwiseKernel.__call__ reduces contiguous arrays to 1-D; a transposed 2-D array
        # stays 2-D and non-contiguous.
        ndim = 2 if strided else 1
        array = _kernel._ArgInfo(ndarray_kind, cupy.ndarray, t, ndim, not strided, True)
        scalars = tuple(
            _kernel._ArgInfo(scalar_kind, _scalar.CScalar, s, 0, True, True)
            for s in in_types[n_in:]
        )
        indexer = _kernel._ArgInfo(indexer_kind, _carray.Indexer, None, ndim, True, True)
        arginfos = (array,) * n_in + scalars + (array,) * n_out + (indexer,)
        source = _kernel._get_elementwise_kernel_code(
            arginfos,
            type_map,
            built.params,
            built.operation,
            built.name,
            built.preamble,
            **built.kwargs,
        )
        # _get_simple_elementwise_kernel_from_code, with the architecture given
        module = core.compile_with_cache(source, built.kwargs.get("options", ()), arch=ARCH)
        return module.cubin, options_seen[-1]

    return build


@pytest.mark.parametrize("strided", [False, True], ids=["contiguous", "strided"])
@pytest.mark.parametrize("dtype", CUDA_DTYPES)
@pytest.mark.parametrize("kernel", cuda_kernels.KERNELS, ids=lambda k: k.name)
def test_cuda_kernel_compiles_with_nvrtc_as_cupy_builds_it(nvrtc, kernel, dtype, strided):
    cubin, options = nvrtc(kernel, dtype, strided)
    assert cubin.startswith(b"\x7fELF")
    assert "-ftz=true" in options and f"arch {ARCH}" in options


@pytest.mark.parametrize("dtype", DTYPES)  # what gc.jit fuses
@pytest.mark.parametrize("name", FORMULA_OPS)
def test_each_ops_formula_compiles_with_nvrtc_as_cupy_builds_it(nvrtc, name, dtype):
    cubin, _ = nvrtc(FORMULA_KERNELS[name], dtype, False)
    assert cubin.startswith(b"\x7fELF")


def test_the_sigmoid_kernels_are_written_from_the_ops_formulas():
    """One formula: the CUDA sigmoid is what ``cuda_c`` writes for ``gradcore.formulas``."""
    assert gc.ops.sigmoid.formula is formulas.sigmoid
    assert cuda_kernels.SIGMOID.body == cuda_kernels.formula_body(formulas.sigmoid, ("x",), "y")
    assert cuda_kernels.SIGMOID.body.startswith("const T t0 = (T)exp((-fabs(x)));")  # e, once
    grad = cuda_kernels.formula_body(formulas.sigmoid_grad, ("y", "g"), "gx")
    assert cuda_kernels.SIGMOID_GRAD.body == grad == "gx = (T)(g * (y * (((T)1.0) - y)));"


def _square_of_exp_above_one(m, x):
    e = m.exp(x)
    return m.where(x > 1, e * e, 2)


def test_the_cuda_writer_binds_values_read_twice_and_refuses_foreign_values():
    lines, result = cuda_c.emit(_square_of_exp_above_one, ["a"], "t")
    assert lines == ["const T t0 = (T)exp(a);"]  # e, read twice; a, a leaf, is not bound
    assert result == "((a > ((T)1.0)) ? (T)(t0 * t0) : (T)((T)2.0))"
    with pytest.raises(TypeError, match="takes values and Python numbers, not 'x'"):
        cuda_c.emit(lambda m, x: x + "x", ["a"], "t")


def test_nvrtc_check_reports_a_broken_body(nvrtc, cupy, monkeypatch):
    broken = cuda_kernels.Kernel("broken", ("x",), (), ("y",), "y = no_such_function(x);")
    with pytest.raises(cupy.cuda.compiler.CompileException, match="no_such_function"):
        nvrtc(broken, "float32", False)


def test_cuda_kernels_are_built_once_and_not_at_import(cupy):
    first = cuda_kernels.elementwise_kernel(cuda_kernels.SIGMOID)
    assert isinstance(first, cupy.ElementwiseKernel)
    assert cuda_kernels.elementwise_kernel(cuda_kernels.SIGMOID) is first
    code = "import sys, gradcore.backends.cuda_kernels; print('cupy' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


def test_launch_functions_pass_arguments_in_each_kernels_order(monkeypatch):
    """What the NVRTC check compiles is what the launch functions call: same parameters, same
    order, scalars as Python numbers (a NumPy float64 scalar would not be the kernel's T)."""
    launched = []

    def recorder(kernel):
        def launch(*args):
            launched.append((kernel, args))

        return launch

    monkeypatch.setattr(cuda_kernels, "elementwise_kernel", recorder)
    p, v = BACKEND.asarray(np.ones(3, "float32")), BACKEND.asarray(np.zeros(3, "float32"))
    g = BACKEND.asarray(np.ones(3, "float64"))
    cuda_kernels.sigmoid(p)
    cuda_kernels.sigmoid_grad(p, v)
    cuda_kernels.sgd_update(p, g, v, np.float64(0.1), 0.9, 1, 0)
    (_, sigmoid), (_, sigmoid_grad), (kernel, sgd) = launched
    assert sigmoid == (p,) and sigmoid_grad == (p, v)
    assert len(sgd) == len(kernel.inputs) + len(kernel.scalars) + len(kernel.outputs)
    assert sgd[0].dtype == np.float32 and sgd[5] is p and sgd[6] is v
    assert [type(a) for a in sgd[1:5]] == [float, float, float, bool]
    assert sgd[1:5] == (0.1, 0.9, 0.0, True)
    assert [k for k, _ in launched] == [cuda_kernels.SIGMOID, cuda_kernels.SIGMOID_GRAD, kernel]
    assert kernel is cuda_kernels.SGD_UPDATE


def test_every_launch_function_says_its_dtypes():
    for launch in ("sigmoid", "sigmoid_grad", "sgd_update"):
        assert getattr(cuda_kernels, launch).dtypes == ("float16", "float32", "float64")


# ---------------------------------------------------------------------------------------------
# CUDA kernel bodies compiled as host C++ (g++), on NumPy data

GXX = shutil.which("g++")
HOST_TYPES = {"float32": ("float", ctypes.c_float), "float64": ("double", ctypes.c_double)}


def _host_source(kernel: cuda_kernels.Kernel) -> str:
    """The body as an inline function over T, and per dtype a C loop over arrays around it."""
    params = [f"const T& {name}" for name in kernel.inputs] + list(kernel.scalars)
    params += [f"T& {name}" for name in kernel.outputs]
    names = [s.split()[-1] for s in kernel.scalars]
    lines = [
        "namespace body {",
        "using namespace std;",
        "template <typename T>",
        f"inline void {kernel.name}({', '.join(params)}) {{ {kernel.body} }}",
        "}",
    ]
    for ctype, _ in HOST_TYPES.values():
        signature = [f"const {ctype}* {n}" for n in kernel.inputs]  # the kernel's order
        signature += [s.replace("T ", f"{ctype} ") for s in kernel.scalars]
        signature += [f"{ctype}* {n}" for n in kernel.outputs]
        args = [f"{n}[i]" for n in kernel.inputs] + names + [f"{n}[i]" for n in kernel.outputs]
        lines += [
            f'extern "C" void {kernel.name}_{ctype}(long long n, {", ".join(signature)}) {{',
            f"  for (long long i = 0; i < n; ++i) body::{kernel.name}<{ctype}>({', '.join(args)});",
            "}",
        ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """``host(kernel, dtype)``: the kernel body compiled by g++ into a shared library, called
    through ctypes on contiguous NumPy arrays (inputs, then scalars, then outputs in place)."""
    if GXX is None:
        _skip_unless_ci("g++ is not on the PATH")
    folder = tmp_path_factory.mktemp("host_kernels")
    source = folder / "kernels.cpp"
    source.write_text(
        "#include <cmath>\n"
        + "\n".join(_host_source(k) for k in (*cuda_kernels.KERNELS, *FORMULA_KERNELS.values()))
    )
    command = [GXX, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", "k.so", source.name]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    library = ctypes.CDLL(str(folder / "k.so"))

    def run(kernel: cuda_kernels.Kernel, dtype: str, *arrays_and_scalars) -> None:
        ctype, scalar_type = HOST_TYPES[dtype]
        function = getattr(library, f"{kernel.name}_{ctype}")
        arrays = [a for a in arrays_and_scalars if isinstance(a, np.ndarray)]
        assert all(a.dtype == dtype and a.flags.c_contiguous for a in arrays)
        args = [ctypes.c_longlong(arrays[0].size)]
        for a in arrays_and_scalars:
            if isinstance(a, np.ndarray):
                args.append(a.ctypes.data_as(ctypes.c_void_p))
            else:
                args.append(ctypes.c_bool(a) if isinstance(a, bool) else scalar_type(a))
        function(*args)

    return run


def _sigmoid_inputs(dtype: str) -> np.ndarray:
    """Extremes, a wide spread, and the lower tail where the tanh form lost its digits."""
    tail = -np.linspace(0.0, 100.0 if dtype == "float32" else 740.0, 2001)
    return np.concatenate([_extremes(dtype), _inputs(dtype, 20_000), tail.astype(dtype)])


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sigmoid_body_matches_formula_on_the_host(host, dtype):
    x = _sigmoid_inputs(dtype)
    y = np.empty_like(x)
    host(cuda_kernels.SIGMOID, dtype, x, y)
    eps, tiny = np.finfo(dtype).eps, np.finfo(dtype).tiny
    np.testing.assert_allclose(y, _sigmoid_reference(x), rtol=4 * eps, atol=tiny)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_sigmoid_grad_body_matches_formula_on_the_host(host, dtype):
    y = numpy_kernels.sigmoid(_inputs(dtype, 10_001))
    g = _inputs(dtype, 10_001, seed=1)
    gx = np.empty_like(y)
    host(cuda_kernels.SIGMOID_GRAD, dtype, y, g, gx)
    y64, g64 = y.astype(np.float64), g.astype(np.float64)
    np.testing.assert_allclose(gx, g64 * y64 * (1 - y64), rtol=8 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", FORMULA_OPS)
def test_each_ops_formula_written_as_cuda_computes_the_op_on_the_host(host, name, dtype):
    """What a fused chain computes for an op, compiled by g++, against the op on NumPy."""
    kernel = FORMULA_KERNELS[name]
    args = [np.linspace(0.25, 3.0, 64), np.linspace(-2.0, 2.0, 64), np.linspace(-1.0, 1.0, 64)]
    if name == "where":  # a condition, as the kernel reads it: a T that is 0 or 1
        args[0] = (args[0] > 1.0).astype(np.float64)
    args = [a.astype(dtype) for a in args[: len(kernel.inputs)]]
    out = np.empty_like(args[0])
    host(kernel, dtype, *args, out)
    if name == "where":
        args[0] = args[0].astype(bool)
    np.testing.assert_allclose(out, getattr(gc.ops, name)(*args), rtol=4 * np.finfo(dtype).eps)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", ["plain", "momentum", "nesterov", "nesterov_weight_decay"])
def test_cuda_sgd_update_body_follows_formula_on_the_host(host, dtype, config):
    rng = np.random.default_rng(0)
    param = rng.standard_normal(257).astype(dtype)
    velocity = np.zeros_like(param)
    p64, v64 = param.astype(np.float64), velocity.astype(np.float64)
    c = CONFIGS[config]
    for step in range(6):
        grad = rng.standard_normal(param.shape).astype(dtype)
        rate = 0.1 / (step + 1)
        host(
            cuda_kernels.SGD_UPDATE, dtype, grad, rate, c["momentum"], c["weight_decay"],
            c["nesterov"], param, velocity,
        )  # fmt: skip
        p64, v64 = sgd_reference(p64, grad.astype(np.float64), v64, rate, **c)
        tolerance = 1e-6 if dtype == "float32" else 1e-14
        np.testing.assert_allclose(param, p64, rtol=tolerance, atol=tolerance)
        np.testing.assert_allclose(velocity, v64, rtol=tolerance, atol=tolerance)


OPTIMIZER_KERNELS = [
    cuda_kernels.SGD_UPDATE,
    *cuda_kernels.ADAM_UPDATES.values(),
    *cuda_kernels.RMSPROP_UPDATES.values(),
    cuda_kernels.ADAGRAD_UPDATE,
]


@pytest.mark.parametrize("dtype", cuda_kernels.MULTI_TENSOR_DTYPES)
@pytest.mark.parametrize("kernel", OPTIMIZER_KERNELS, ids=lambda k: k.name)
def test_multi_tensor_kernel_compiles_with_nvrtc_as_cupy_builds_it(nvrtc, cupy, kernel, dtype):
    """As the ``nvrtc`` fixture builds an element-wise kernel, for one whose arrays are all raw
    (the two tables) and whose size is given at the launch."""
    from cupy._core import _carray, _kernel, _scalar, core

    built = cuda_kernels.multi_tensor_kernel(kernel, dtype)
    n_scalars = built.nin - 2  # n_tensors and the scalars, after the two tables
    in_types, _, type_map = built._decide_params_type(
        (np.uint64, np.int64) + (None,) * n_scalars, ()
    )
    ndarray_kind, indexer_kind, scalar_kind = 1, 2, 3  # cupy/_core/_kernel.pxd: _ArgKind
    arginfos = tuple(_kernel._ArgInfo(ndarray_kind, cupy.ndarray, t, 1, True, True)
                     for t in in_types[:2])  # fmt: skip
    arginfos += tuple(_kernel._ArgInfo(scalar_kind, _scalar.CScalar, t, 0, True, True)
                      for t in in_types[2:])  # fmt: skip
    arginfos += (_kernel._ArgInfo(indexer_kind, _carray.Indexer, None, 1, True, True),)
    source = _kernel._get_elementwise_kernel_code(
        arginfos, type_map, built.params, built.operation, built.name, built.preamble,
        **built.kwargs,
    )  # fmt: skip
    module = core.compile_with_cache(source, built.kwargs.get("options", ()), arch=ARCH)
    assert module.cubin.startswith(b"\x7fELF")


def _host_multi_tensor_source(kernel: cuda_kernels.Kernel, dtype: str) -> str:
    """The multi-tensor kernel as a host function: one loop over i, as one GPU thread."""
    ctype = HOST_TYPES[dtype][0]
    scalars = [
        (ctype if words[0] == dtype else {"int32": "int", "bool": "bool"}[words[0]], words[1])
        for words in (p.split()[-2:] for p in cuda_kernels.multi_tensor_params(kernel, dtype)
                      .split(", ")[2:])
    ]  # fmt: skip
    signature = ", ".join(f"{c} {name}" for c, name in scalars)
    return "\n".join([
        f"namespace {kernel.name}_{ctype} {{",
        f"typedef {ctype} T;",
        f'extern "C" void {kernel.name}_all_{ctype}(const unsigned long long* addresses, '
        f"const long long* ends, long long size, {signature}) {{",
        "  for (long long i = 0; i < size; ++i) {",
        cuda_kernels.multi_tensor_operation(kernel),
        "  }",
        "}",
        "}",
    ])  # fmt: skip


@pytest.fixture(scope="module")
def host_multi_tensor(tmp_path_factory):
    """``run(kernel, dtype, addresses, ends, scalars, device)``, what ``_launch_on_device``
    does on a GPU, done by the multi-tensor kernels compiled by g++."""
    if GXX is None:
        _skip_unless_ci("g++ is not on the PATH")
    folder = tmp_path_factory.mktemp("host_multi_tensor")
    units = [_host_multi_tensor_source(k, dtype) for k in OPTIMIZER_KERNELS for dtype in DTYPES]
    (folder / "multi.cpp").write_text("#include <cmath>\nusing namespace std;\n" + "\n".join(units))
    command = [GXX, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", "m.so", "multi.cpp"]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    library = ctypes.CDLL(str(folder / "m.so"))

    def run(kernel, dtype, addresses, ends, scalars, device) -> None:
        ctype, scalar_type = HOST_TYPES[dtype]
        function = getattr(library, f"{kernel.name}_all_{ctype}")
        arguments = [addresses.ctypes.data_as(ctypes.c_void_p),
                     ends.ctypes.data_as(ctypes.c_void_p), ctypes.c_longlong(int(ends[-1])),
                     ctypes.c_int(len(ends))]  # fmt: skip
        for value in scalars:
            arguments.append(
                ctypes.c_bool(value) if isinstance(value, bool) else scalar_type(value)
            )
        function(*arguments)

    return run


OPTIMIZER_CASES = {  # every multi-tensor kernel, through its optimizer and launch function
    "sgd_nesterov": lambda: gc.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "adam": lambda: gc.optim.Adam(0.01, weight_decay=0.01),
    "adam_amsgrad_clipnorm": lambda: gc.optim.Adam(0.01, amsgrad=True, clipnorm=0.5),
    "adamw": lambda: gc.optim.AdamW(0.01, weight_decay=0.1),
    "rmsprop": lambda: gc.optim.RMSprop(0.01, weight_decay=0.01),
    "rmsprop_centered": lambda: gc.optim.RMSprop(0.01, centered=True),
    "rmsprop_momentum": lambda: gc.optim.RMSprop(0.01, momentum=0.9),
    "rmsprop_centered_momentum": lambda: gc.optim.RMSprop(0.01, centered=True, momentum=0.5),
    "adagrad": lambda: gc.optim.Adagrad(0.1, weight_decay=0.01, global_clipnorm=1.0),
}


@pytest.mark.parametrize("dtype", cuda_kernels.MULTI_TENSOR_DTYPES)
@pytest.mark.parametrize("case", OPTIMIZER_CASES)
def test_multi_tensor_updates_follow_the_generic_ones_on_the_host(
    host_multi_tensor, monkeypatch, case, dtype
):
    """Each optimizer on the "counting" device (CuPy's namespace over NumPy) with its CUDA
    launch function registered there, and the launch itself done by the kernel compiled by
    g++: what runs is the optimizer's choice of kernel, its scalars and tensor tables, the
    launch function's packing and the kernel's source, all but CuPy's copy and launch. Ten
    steps of three parameters, in one launch per step, match the generic update on the CPU."""
    from counting_backend import register

    register()
    launches = []

    def launch(*arguments):
        launches.append(arguments[3])  # the tensors' ends
        host_multi_tensor(*arguments)

    monkeypatch.setattr(cuda_kernels, "_launch_on_device", launch)
    monkeypatch.setattr(cuda_kernels, "_address", lambda x: x.ctypes.data)
    fused, generic = OPTIMIZER_CASES[case](), OPTIMIZER_CASES[case]()
    table = type(fused)._kernels
    monkeypatch.setattr(table, "_paths", {**table._paths, "counting": table._paths["cuda"]})
    monkeypatch.setattr(table, "_loaded", {})
    monkeypatch.setattr(table, "_found", {})
    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    start = [rng.standard_normal(shape).astype(dtype) for shape in shapes]
    on_counting = [gc.array(p, device="counting") for p in start]
    on_cpu = [p.copy() for p in start]
    for _ in range(10):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in start]
        fused.step(on_counting, [gc.array(g, device="counting") for g in grads])
        generic.step(on_cpu, grads)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    for got, want in zip(on_counting, on_cpu):
        np.testing.assert_allclose(np.asarray(got), want, rtol=tolerance, atol=tolerance)
    assert [list(ends) for ends in launches] == [[15, 22, 30]] * 10  # one launch per step


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
def test_the_outer_product_gives_the_bits_of_numpys_matmul(dtype):
    """A column times a row as a broadcast multiply: the same bits as the BLAS call, -0, both
    infinities, NaN, subnormals and overflow included, for contiguous and strided operands."""
    rng = np.random.default_rng(7)
    info = np.finfo(dtype)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, info.smallest_subnormal, -info.tiny,
                        info.max, -info.max, 1.0, -1.0, 1e-30, 1e30], dtype)  # fmt: skip
    column = rng.standard_normal((40, 1)).astype(dtype)
    row = rng.standard_normal((1, 30)).astype(dtype)
    column[: len(special), 0] = special
    row[0, ::3] = rng.choice(special, size=10)
    bits = np.dtype(f"uint{8 * np.dtype(dtype).itemsize}")
    for c, r in [(column, row), (np.asfortranarray(column), row),
                 (np.ascontiguousarray(column.T).T, np.ascontiguousarray(row.T).T),
                 (column[::2], row[:, ::2])]:  # fmt: skip
        with np.errstate(all="ignore"):
            expected, found = np.matmul(c, r), numpy_kernels.outer_product(c, r)
        assert found.dtype == expected.dtype and found.shape == expected.shape
        np.testing.assert_array_equal(found.view(bits), expected.view(bits))


def test_matmul_calls_the_outer_product_kernel_for_a_column_times_a_row_only():
    f32 = np.ones((3, 1), np.float32)
    kernel_for = gc.ops._outer_product_kernel
    assert kernel_for(f32, f32.T) is numpy_kernels.outer_product
    assert kernel_for(f32, np.ones((1, 4), np.float32)) is numpy_kernels.outer_product
    for x, y in [(f32.T, f32),  # a row times a column: one sum, BLAS's dot
                 (np.ones((3, 2), np.float32), np.ones((2, 4), np.float32)),
                 (f32, np.ones((3, 4), np.float32)),  # (3, 1) @ (3, 4): matmul's error
                 (f32, f32.T.astype(np.float64)),  # mixed dtypes: matmul promotes
                 (f32.astype(np.int64), f32.T.astype(np.int64)),  # no BLAS for integers
                 (np.ones(1, np.float32), np.ones((1, 4), np.float32)),  # 1-d: promoted
                 (np.ones((2, 3, 1), np.float32), np.ones((2, 1, 4), np.float32))]:  # fmt: skip
        assert kernel_for(x, y) is None, (x.shape, y.shape, x.dtype, y.dtype)
    with pytest.raises(ValueError, match="matmul"):
        gc.matmul(f32, np.ones((3, 4), np.float32))  # not broadcast into a (3, 4) product
    # a width-1 layer's backward, recorded and replayed: the replay calls the kernel
    w = np.linspace(-1, 1, 6, dtype=np.float32).reshape(6, 1)
    x = np.linspace(-2, 2, 24, dtype=np.float32).reshape(4, 6)
    grad = gc.grad(lambda w, x: gc.sum(gc.sigmoid(x @ w)), argnum=1)
    jitted = gc.jit(grad)
    np.testing.assert_array_equal(jitted(w, x), grad(w, x))
    (program,) = jitted.programs.values()
    assert numpy_kernels.outer_product in [fun for fun, _, _ in program.compiled]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_numpy_sgd_update_with_the_gradient_as_scratch_gives_the_same_bits(dtype, config):
    rng = np.random.default_rng(0)
    param, grad = rng.standard_normal((2, 5, 3)).astype(dtype)
    velocity = rng.standard_normal(param.shape).astype(dtype)
    expected = [param.copy(), velocity.copy()]
    gc.optim.sgd_update(*expected[:1], grad, expected[1], 0.1, **CONFIGS[config])
    scratch = grad.copy()
    gc.optim.sgd_update(param, scratch, velocity, 0.1, **CONFIGS[config], grad_is_scratch=True)
    np.testing.assert_array_equal(param, expected[0])
    np.testing.assert_array_equal(velocity, expected[1])


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


@pytest.mark.parametrize("n", SIZES)
def test_numpy_kernels_written_over_an_argument_give_the_same_bits(n, no_warnings):
    """What gc.jit runs when an argument is dead: the result over its memory, bit for bit."""
    x = _inputs("float32", n)
    y = numpy_kernels.sigmoid(x)
    over = x.copy()
    assert numpy_kernels.sigmoid(over, out=over) is over
    np.testing.assert_array_equal(over, y)
    g = _inputs("float32", n, seed=1)
    expected = numpy_kernels.sigmoid_grad(y, g)
    for argnum in (0, 1):
        args = [y.copy(), g.copy()]
        assert numpy_kernels.sigmoid_grad(*args, out=args[argnum]) is args[argnum]
        np.testing.assert_array_equal(args[argnum], expected)


@pytest.mark.parametrize("shape", [(4, 6), (400, 300)], ids=["one chunk", "chunked"])
def test_numpy_kernels_write_into_a_strided_output(shape, no_warnings):
    x = _inputs("float32", math.prod(shape)).reshape(shape)
    out = np.empty(shape[::-1], np.float32).T  # not C-contiguous
    numpy_kernels.sigmoid(x, out=out)
    np.testing.assert_array_equal(out, numpy_kernels.sigmoid(x))
    numpy_kernels.sigmoid_grad(x, x, out=out)
    np.testing.assert_array_equal(out, numpy_kernels.sigmoid_grad(x, x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_sigmoid_of_zeros_infinities_and_nan_on_every_path(host, dtype, no_warnings):
    """The formula's numerator max(e, x >= 0): 1 at -0.0 too, and NaN from NaN everywhere."""
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan], dtype)
    expected = np.array([0.5, 0.5, 1.0, 0.0, np.nan], dtype)
    cuda = np.empty_like(x)
    host(cuda_kernels.SIGMOID, dtype, x, cuda)
    python = [gc.sigmoid(float(value)) for value in x]
    for got in (numpy_kernels.sigmoid(x), formulas.sigmoid(np, x), cuda, python):
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------------------
# the compiled loops (host C) against NumPy's calls: the same bits

PROGRAMS = {"sigmoid": numpy_kernels._SIGMOID, "sigmoid_grad": numpy_kernels._SIGMOID_GRAD}
KERNELS = {"sigmoid": numpy_kernels.sigmoid, "sigmoid_grad": numpy_kernels.sigmoid_grad}


def _bits(x: np.ndarray) -> np.ndarray:
    return x.view(f"uint{8 * x.itemsize}")


def _compiled_or_skip(program: Any, dtype: str) -> None:
    if program.compiled is None or program.compiled.calls(np.dtype(dtype)) is None:
        _skip_unless_ci(f"the CPU loops are not compiled here: {numpy_kernels.compiled_loops()}")


def _special_inputs(name: str, dtype: str) -> list[np.ndarray]:
    """Above COMPILED_MIN elements, led by signed zeros, infinities, NaN, subnormals and the
    exponents where e^x overflows (finite cotangents: inf * 0 would warn on both paths)."""
    tiny = np.finfo(dtype).smallest_subnormal
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, tiny, -tiny, 88.5, -88.5, 104.0, -104.0,
               709.0, -709.0, 746.0, -746.0]  # fmt: skip
    x = _inputs(dtype, numpy_kernels.COMPILED_MIN + 3)
    with np.errstate(over="ignore"):
        x[: len(special)] = np.array(special).astype(dtype)
    if name == "sigmoid":
        return [x]
    g = _inputs(dtype, x.size, seed=1)
    g[:3] = [np.nan, -0.0, tiny]
    return [numpy_kernels.sigmoid(x), g]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", PROGRAMS)
def test_the_compiled_loops_give_the_bits_of_numpys_calls(name, dtype, monkeypatch, no_warnings):
    """From COMPILED_MIN elements a kernel runs loops of host C, below it (and without a
    compiler) NumPy's calls: one result either way, into its own array or over an argument."""
    program = PROGRAMS[name]
    _compiled_or_skip(program, dtype)
    inputs = _special_inputs(name, dtype)
    compiled = [KERNELS[name](*inputs)]
    for argnum in range(len(inputs)):
        args = [a.copy() for a in inputs]
        compiled.append(KERNELS[name](*args, out=args[argnum]))
    monkeypatch.setattr(program, "compiled", None)
    expected = KERNELS[name](*inputs)
    for got in compiled:
        np.testing.assert_array_equal(_bits(got), _bits(expected))


def test_a_compiled_formula_runs_its_transcendental_functions_as_numpy_calls():
    """The sigmoid: -|x| in one loop, exp by NumPy, the rest in another loop."""
    units = numpy_kernels._SIGMOID.compiled.units
    assert [u[0] if isinstance(u[0], str) else u[0].__name__ for u in units] == [
        "gradcore_sigmoid_0",
        "exp",
        "gradcore_sigmoid_2",
    ]
    assert len(numpy_kernels._SIGMOID_GRAD.compiled.units) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_the_compiled_sgd_update_gives_the_bits_of_numpys_calls(dtype, config, monkeypatch):
    if numpy_kernels._sgd_function(np.dtype(dtype)) is None:
        _skip_unless_ci(f"the CPU loops are not compiled here: {numpy_kernels.compiled_loops()}")
    rng = np.random.default_rng(0)
    param, grad, velocity = rng.standard_normal((3, 40, 7)).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    param[0, :4], grad[0, :4] = [0.0, -0.0, tiny, 1e3], [-0.0, tiny, 0.0, -1e3]
    compiled = [param.copy(), velocity.copy()]
    assert numpy_kernels.sgd_update(compiled[0], grad, compiled[1], 0.1, **CONFIGS[config])
    monkeypatch.setattr(numpy_kernels, "_sgd_function", lambda dtype: None)
    gc.optim.sgd_update(param, grad, velocity, 0.1, **CONFIGS[config])
    np.testing.assert_array_equal(_bits(compiled[0]), _bits(param))
    np.testing.assert_array_equal(_bits(compiled[1]), _bits(velocity))


def test_the_compiled_loops_leave_to_numpy_what_they_cannot_address():
    """Views with gaps, mixed dtypes or shapes and read-only outputs take NumPy's calls (which
    raise where NumPy raises), never a loop over memory it does not own."""
    p, g, v = np.ones((3, 8, 6), np.float32)
    assert numpy_kernels.sgd_update(p[:, ::2], g[:, ::2], v[:, ::2], 0.1, 0.9, False, 0.0) is False
    assert numpy_kernels.sgd_update(p, g.astype(np.float64), v, 0.1, 0.9, False, 0.0) is False
    assert numpy_kernels.sgd_update(p, g[:4], v, 0.1, 0.9, False, 0.0) is False
    # velocity one element ahead of the parameter in one buffer: the loop writes nothing
    flat = np.arange(1.0, 50.0, dtype=np.float32)
    before = flat.copy()
    step = np.full(48, 0.5, np.float32)
    assert numpy_kernels.sgd_update(flat[:-1], step, flat[1:], 0.1, 0.9, False, 0.0) is False
    np.testing.assert_array_equal(flat, before)
    assert numpy_kernels.sgd_update(flat[1:], flat[:-1], step, 0.1, 0.9, False, 0.0) is False
    np.testing.assert_array_equal(flat, before)
    n = numpy_kernels.COMPILED_MIN
    x = _inputs("float32", 2 * n).reshape(2, n)
    np.testing.assert_array_equal(
        numpy_kernels.sigmoid(x[:, ::2]), numpy_kernels.sigmoid(x)[:, ::2]
    )
    shifted = x.reshape(-1).copy()  # out one element ahead of its input: NumPy buffers it
    expected = numpy_kernels.sigmoid(shifted[:-1])
    np.testing.assert_array_equal(numpy_kernels.sigmoid(shifted[:-1], out=shifted[1:]), expected)
    frozen = np.empty_like(x)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        numpy_kernels.sigmoid(x, out=frozen)


def test_without_a_compiler_the_kernels_are_numpys_calls(monkeypatch, no_warnings):
    monkeypatch.setattr(numpy_kernels, "C_COMPILER", "gradcore-no-such-compiler")
    program = numpy_kernels._Program(formulas.sigmoid_grad, 2)  # built after: none compiled
    assert program.compiled.calls(np.dtype("float32")) is None
    y, g = (_inputs("float32", numpy_kernels.COMPILED_MIN, seed) for seed in (0, 1))
    np.testing.assert_array_equal(program(None, y, g), formulas.sigmoid_grad(np, y, g))
    monkeypatch.setattr(numpy_kernels, "COMPILE", False)  # GRADCORE_CPU_COMPILE=0
    assert numpy_kernels.build_c("void f(void) {}") is None


def test_a_compiler_that_refuses_a_loop_is_reported_with_its_message():
    if host_compiler.compiler_version(numpy_kernels.C_COMPILER) is None:
        _skip_unless_ci(f"the CPU loops are not compiled here: {numpy_kernels.compiled_loops()}")
    with pytest.warns(UserWarning, match="the CPU kernels run as NumPy calls: kernel.c:.*error"):
        assert numpy_kernels.build_c("this is not C;") is None


ARBITRARY_FORMULAS = {  # values read twice, in place and not, numbers on either side
    "square": (lambda m, x: x * x, 1),
    "shared": (lambda m, x, y: m.maximum(x * y, m.exp(-x)) - (x - y) / (1.0 + m.abs(y)), 2),
    "condition": (lambda m, x, y: m.minimum(m.astype(x < y, m.result_type(x)), 0.5) * y, 2),
}


@pytest.mark.parametrize("n", [5, 3 * numpy_kernels.CHUNK + 5])
@pytest.mark.parametrize("name", ARBITRARY_FORMULAS)
def test_a_formula_traced_into_ufunc_calls_computes_it_bit_for_bit(name, n):
    """Buffers reused by liveness never hold a value still to be read, ``out`` an input or not."""
    formula, arity = ARBITRARY_FORMULAS[name]
    program = numpy_kernels._Program(formula, arity)
    inputs = [_inputs("float64", n, seed) for seed in range(arity)]
    expected = formula(np, *inputs)
    for argnum in (None, *range(arity)):  # out: its own array, then over each argument
        args = [a.copy() for a in inputs]
        out = np.empty(n) if argnum is None else args[argnum]
        assert program(out, *args) is out
        np.testing.assert_array_equal(out, expected)


def test_a_formula_that_ends_in_an_argument_is_refused():
    with pytest.raises(TypeError, match="<lambda>: a NumPy kernel's formula ends in an operation"):
        numpy_kernels._Program(lambda m, x: x, 1)


def test_the_numpy_kernels_allocate_no_temporaries(no_warnings):
    """Each chunk's passes run in this thread's scratch chunks, made once and reused."""
    x = _inputs("float32", 3 * numpy_kernels.CHUNK + 5)
    g, out = _inputs("float32", x.size, seed=1), np.empty_like(x)
    for _ in range(2):  # the first call makes the scratch chunks
        tracemalloc.start()
        try:
            numpy_kernels.sigmoid(x, out=out)
            numpy_kernels.sigmoid_grad(out, g, out=g)
            numpy_kernels.sigmoid(x[:1000], out=out[:1000])  # one chunk of its own shape
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 16_384  # views and 0-d numbers; a chunk of float32 is 128 KiB


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, (0, 1)])
@pytest.mark.parametrize("name", ["sum", "mean"])
def test_numpy_reductions_are_numpys_bit_for_bit(name, dtype, axis):
    x = _inputs(dtype, 3 * 1001).reshape(3, 1001)
    for keepdims in (False, True):
        expected = getattr(np, name)(x, axis=axis, keepdims=keepdims)
        got = getattr(numpy_kernels, name)(x, axis=axis, keepdims=keepdims)
        assert type(got) is type(expected) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)


ASTYPE_INPUTS = {"bool": np.arange(6).reshape(2, 3) > 2, "scalar": np.float32(2.5),
                 "float64": np.linspace(-2, 2, 5)}  # fmt: skip


@pytest.mark.parametrize("value", ASTYPE_INPUTS.values(), ids=ASTYPE_INPUTS.keys())
def test_numpy_astype_is_np_astype(value):
    for dtype in (np.float32, np.float64, np.int64):
        expected = np.astype(value, dtype) if isinstance(value, np.ndarray) else value.astype(dtype)
        got = numpy_kernels.astype(value, dtype)
        assert type(got) is type(expected) and got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert got is not value


def test_numpy_mean_of_empty_arrays_is_numpys():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy warns of the empty slice
        for shape, axis in [((3, 0), 0), ((0, 3), 0), ((0,), None)]:
            x = np.zeros(shape)
            np.testing.assert_array_equal(numpy_kernels.mean(x, axis=axis), np.mean(x, axis=axis))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [0, -1])
def test_numpy_log_softmax_is_the_generic_formula_bit_for_bit(dtype, axis):
    x = _inputs(dtype, 40).reshape(4, 10) * 30
    x[0, :3] = -np.inf  # masked entries of a row with finite ones
    shifted = x - np.max(x, axis=axis, keepdims=True)
    expected = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    np.testing.assert_array_equal(numpy_kernels.log_softmax(x, axis=axis), expected)
