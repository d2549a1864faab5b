"""The op unit: an op declares its rules and what backward keeps in one ``defvjp`` call, and its
fused kernels per device in a ``KernelTable``; the backend protocol is array plumbing only;
Python numbers go through every op and ``grad`` without becoming arrays.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import host, on
from gradcore.backends import numpy_kernels

import gradcore as gc
from gradcore import formulas, ops
from gradcore.backend import Backend, KernelTable, backend_for_device
from gradcore.tracer import NotKeptError

# ---------------------------------------------------------------------------------------------
# what backward keeps


def _cube(saves: str, reads: str):
    """x**3 as a primitive whose rule reads ``ans`` or the argument ``x``."""

    @gc.primitive
    def cube(x):
        return x * x * x

    if reads == "ans":
        gc.defvjp(cube, lambda g, ans, x: g * 3.0 * ans / x, saves=saves)
    else:
        gc.defvjp(cube, lambda g, ans, x: g * 3.0 * x * x, saves=saves)
    return cube


@pytest.mark.parametrize("saves", ["args", "both"])
def test_a_rule_that_reads_what_it_keeps_works(device, saves):
    x = on(device, [1.0, 2.0])
    g = gc.grad(lambda x: gc.sum(_cube(saves, "args")(x)))(x)
    np.testing.assert_allclose(host(g), [3.0, 12.0])


@pytest.mark.parametrize(
    "saves, reads, what",
    [("args", "ans", r"the output \(ans\)"), ("ans", "args", "an argument's values"),
     ("shapes", "args", "an argument's values"), ("shapes", "ans", r"the output \(ans\)")],
)  # fmt: skip
def test_a_rule_that_reads_what_it_did_not_keep_fails_loudly(device, saves, reads, what):
    cube = _cube(saves, reads)
    x = on(device, [1.0, 2.0])
    with pytest.raises(NotKeptError, match=rf"cube: a VJP rule read {what}.*saves="):
        gc.grad(lambda x: gc.sum(cube(x)))(x)


def test_a_shape_only_rule_still_reads_shape_and_dtype():
    @gc.primitive
    def double(x):
        return x * 2.0

    seen = []
    gc.defvjp(double, lambda g, ans, x: seen.append((x.shape, x.dtype, x.ndim)) or g * 2.0,
              saves="shapes")  # fmt: skip
    gc.grad(lambda x: gc.sum(double(x)))(np.ones((2, 3), np.float32))
    assert seen == [((2, 3), np.float32, 2)]


def test_saves_is_checked():
    with pytest.raises(ValueError, match=r"defvjp\(sin\): saves must be one of 'both', 'args'"):
        gc.defvjp(gc.sin, lambda g, ans, x: g, saves="inputs")


def test_every_op_declares_what_backward_keeps():
    """No op is left on the default (keep everything) by accident: each chose, and the op tests
    (check_grads at order 2, which runs backward without the values kept) prove the choice."""
    prims = [v for v in vars(ops).values() if callable(v) and hasattr(v, "saves_args")]
    assert len(prims) > 35
    keep_everything = {p.name for p in prims if p.saves_args and p.saves_ans}
    assert keep_everything == {
        "maximum",
        "minimum",
        "clip",
        "max",
        "min",
        "logsumexp",
        "std",
        "norm",
    }


def test_varargs_ops_have_one_rule_for_every_argument():
    assert ops._concatenate.vjps == () and callable(ops._concatenate.vjp_argnum)
    a, b, c = np.ones(2), np.ones(3), np.ones(1)
    grads = gc.grad(lambda a, b, c: gc.sum(gc.concatenate([a, b * 2.0, c * 3.0])), (0, 1, 2))(
        a, b, c
    )
    assert [g.tolist() for g in grads] == [[1.0, 1.0], [2.0, 2.0, 2.0], [3.0]]


def test_true_divide_is_divide_and_maximum_minimum_share_their_rule():
    assert gc.true_divide is gc.divide
    assert gc.maximum.vjps[0] is gc.minimum.vjps[0]


# ---------------------------------------------------------------------------------------------
# kernel tables


@pytest.fixture
def kernel_module(monkeypatch):
    """A module of fake kernels, importable by name, that records its calls."""
    module = types.ModuleType("fake_kernels")
    module.calls = []

    def double(x):
        module.calls.append(str(x.dtype))
        return x * 2.0

    double.dtypes = ("float32",)
    module.double = double
    monkeypatch.setitem(sys.modules, "fake_kernels", module)
    return module


def test_a_kernel_is_imported_on_first_use_and_only_for_its_device_and_dtypes(kernel_module):
    table = KernelTable("double")
    table.register("cpu", "fake_kernels:double")
    table.register("cuda", "no_such_module_is_imported:double")  # never looked up here
    cpu = backend_for_device("cpu")
    assert table.lookup(cpu, np.dtype("float32")) is kernel_module.double
    assert table.lookup(cpu, np.dtype("float64")) is None  # not in its dtypes: the generic path
    assert table.lookup(backend_for_device("strict"), None) is None  # no kernel for the device
    assert sorted(table.devices()) == ["cpu", "cuda"]


def test_an_op_runs_its_device_kernel_and_otherwise_the_generic_expression(kernel_module):
    @gc.primitive
    def double(x):
        backend = gc.backend.backend_of(x)
        kernel = double.kernels.lookup(backend, x.dtype)
        return kernel(x) if kernel is not None else x + x

    double.kernel("cpu", "fake_kernels:double")
    gc.defvjp(double, lambda g, ans, x: 2.0 * g, saves="shapes")
    np.testing.assert_array_equal(double(np.ones(2, np.float32)), [2.0, 2.0])
    np.testing.assert_array_equal(double(np.ones(2)), [2.0, 2.0])
    np.testing.assert_array_equal(host(double(on("strict", [1.0]))), [2.0])
    assert kernel_module.calls == ["float32"]
    assert host(gc.grad(lambda x: gc.sum(double(x)))(np.ones(2, np.float32))).tolist() == [2, 2]


def test_a_kernel_name_is_checked():
    with pytest.raises(ValueError, match="sigmoid: a kernel is named 'module:function'"):
        gc.sigmoid.kernel("cpu", "gradcore.backends.numpy_kernels.sigmoid")


def test_sigmoid_kernels_are_registered_next_to_the_op():
    assert sorted(gc.sigmoid.kernels.devices()) == ["cpu", "cuda"]
    assert sorted(ops.sigmoid_grad.kernels.devices()) == ["cpu", "cuda"]
    assert sorted(gc.optim.SGD_KERNELS.devices()) == ["cpu", "cuda"]


@pytest.fixture
def no_fp_warnings():
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        yield


@pytest.mark.parametrize("n", [605, 3 * numpy_kernels.CHUNK + 7])
def test_the_generic_sigmoid_is_the_cpu_kernel_bit_for_bit(no_fp_warnings, n):
    """One formula: the op's generic path and the NumPy kernel (chunked) evaluate the same."""
    x = np.linspace(-30, 30, n).astype(np.float32)
    x[:5] = [-1e4, 1e4, 0.0, -0.0, -100.0]
    generic = ops.sigmoid.formula(np, x)
    np.testing.assert_array_equal(generic, gc.sigmoid(x))
    assert ops.sigmoid.formula is formulas.sigmoid
    assert generic[0] == 0.0 and generic[1] == 1.0 and generic[2] == generic[3] == 0.5
    assert 0 < generic[4] < 1e-43  # -100: a subnormal, not 0 (the form 1 / (1 + e^-x) gives 0)


def test_the_sigmoid_of_python_numbers_is_the_formula_of_float64():
    for value in (-800.0, -30.0, -1.5, -0.0, 0.0, 2.0, 40.0, 800.0, math.inf, -math.inf):
        expected = ops.sigmoid.formula(np, np.array([value]))[0]
        assert math.isclose(gc.sigmoid(value), expected, rel_tol=1e-15, abs_tol=1e-300)
    assert math.isnan(gc.sigmoid(math.nan))
    assert gc.ops.sigmoid_grad(0.25, 2.0) == 2.0 * (0.25 * 0.75)


ELEMENTWISE_ARGUMENTS = {  # by arity: where takes a condition, an array and a number
    1: (np.float64([0.3, 1.7, 2.5]),),
    2: (np.float64([0.3, -1.7, 2.5]), np.float64([1.5, 0.5, -2.0])),
    3: (np.array([True, False, True]), np.float64([1.0, 2.0, 3.0]), 0.5),
}


@pytest.mark.parametrize(
    "name", sorted(n for n in dir(ops) if getattr(getattr(ops, n), "formula", None) is not None)
)
def test_an_elementwise_ops_formula_computes_the_op(name):
    """What the CUDA fusion writes for an op (its formula) is what the op computes."""
    op = getattr(ops, name)
    arity = op.formula.__code__.co_argcount - 1
    args = ELEMENTWISE_ARGUMENTS[arity]
    if name in ("log", "sqrt", "power"):
        args = tuple(np.abs(a) for a in args)
    np.testing.assert_allclose(op.formula(np, *args), op(*args), rtol=1e-15)


def test_the_backend_protocol_is_array_plumbing_only():
    members = {name for name in vars(Backend) if not name.startswith("_")}
    members |= set(Backend.__annotations__)
    assert members == {
        "device", "xp", "array_types", "for_array", "array_device", "asarray", "to_numpy",
        "scatter_add", "may_overwrite", "rng", "synchronize",
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# errors


def test_a_refused_op_names_the_op_and_dtypes_whatever_the_library_error_class():
    """NumPy's UFuncTypeError cannot be rebuilt from a message; the op's error still names it."""
    with pytest.raises(TypeError, match=r"add\(<U1\(1,\), float\): ufunc 'add' did not contain"):
        gc.add(np.array(["a"]), 1.0)
    with pytest.raises(TypeError, match=r"multiply\(<U1\(1,\), float64\(1,\)\)"):
        gc.grad(lambda x: gc.sum(gc.multiply(np.array(["a"]), x)))(np.ones(1))


# ---------------------------------------------------------------------------------------------
# Python numbers


@pytest.mark.parametrize(
    "op, arg, expected",
    [(gc.relu, 1.0, 1.0), (gc.relu, -2.0, 0.0), (gc.sum, 2.0, 2.0), (gc.mean, 2.0, 2.0),
     (gc.max, 3.0, 3.0), (gc.exp, 0.5, np.exp(0.5)), (gc.sigmoid, -40.0, 1 / (1 + np.exp(40.0))),
     (gc.square, 3.0, 9.0), (gc.logsumexp, 1.5, 1.5), (gc.sqrt, 4.0, 2.0)],
)  # fmt: skip
def test_ops_on_python_numbers_return_python_numbers(op, arg, expected):
    result = op(arg)
    assert type(result) is float
    assert result == pytest.approx(expected, rel=1e-15)


def test_clip_maximum_and_sigmoid_grad_of_python_numbers():
    assert gc.clip(5.0, 0.0, 1.0) == 1.0 and gc.clip(-5.0, 0.0) == 0.0
    assert gc.maximum(1.0, 2.0) == 2.0 and gc.minimum(1.0, 2.0) == 1.0
    assert ops.sigmoid_grad(0.5, 2.0) == 0.5


def test_grad_with_respect_to_a_python_float_beside_another_device_stays_a_float():
    """Autograd's behaviour: the gradient of a float is a float. It is never turned into a CPU
    float64 array, which would be refused beside another device and promote float32 work."""
    x = on("strict1", [1.0, 2.0, 3.0], "float32")
    seen = []

    def loss(scale):
        out = gc.sum(gc.sigmoid(x * scale))
        seen.append((gc.device_of(out), str(out.dtype).rpartition(".")[2]))
        return out

    g = gc.grad(loss)(0.5)
    assert type(g) is float
    y = 1 / (1 + np.exp(-0.5 * np.array([1.0, 2.0, 3.0])))
    assert g == pytest.approx(float(np.sum(y * (1 - y) * [1.0, 2.0, 3.0])), rel=1e-6)
    assert seen == [("strict1", "float32")]


def test_second_derivative_with_respect_to_a_python_float():
    assert gc.grad(gc.grad(lambda s: s * s * s))(2.0) == 12.0
    with warnings.catch_warnings():  # relu' depends on x (its mask): no "does not depend"
        warnings.simplefilter("error")
        assert gc.grad(gc.grad(gc.relu))(1.0) == 0.0  # relu'' is 0 away from 0
        assert gc.grad(gc.grad(gc.relu))(-1.0) == 0.0


# ---------------------------------------------------------------------------------------------
# imports


@pytest.mark.slow
@pytest.mark.parametrize("module", ["gradcore.nn", "gradcore.train", "gradcore.optim"])
def test_an_application_module_imports_first_in_a_fresh_interpreter(module):
    result = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# found in review


def test_a_cast_to_integers_or_bool_carries_no_gradient():
    x = np.array([1.7, 2.2, -0.4])
    g = gc.grad(lambda x: gc.sum(gc.astype(gc.astype(x, np.int64), np.float64) * x))(x)
    np.testing.assert_array_equal(g, np.trunc(x))  # d/dx [trunc(x) x] = trunc(x)
    g = gc.grad(lambda x: gc.sum(gc.astype(gc.astype(x, bool), np.float64)))(x)
    np.testing.assert_array_equal(g, np.zeros(3))
    np.testing.assert_array_equal(gc.grad(lambda x: gc.sum(gc.astype(x, np.float32)))(x), 1.0)


@pytest.mark.parametrize(
    "fun, expected",
    [(lambda s: gc.sum(s * s), 4.0), (lambda s: gc.mean(s * s), 4.0), (gc.max, 1.0),
     (gc.logsumexp, 1.0), (lambda s: gc.maximum(s, 0.1), 1.0), (lambda s: gc.minimum(s, 0.1), 0.0),
     (lambda s: gc.maximum(s, 2.0), 0.5)],
)  # fmt: skip
def test_reductions_and_extrema_of_a_python_float(fun, expected):
    g = gc.grad(fun)(2.0)
    assert type(g) is float and g == expected


def test_affine_with_a_bias_of_another_dtype_is_x_at_w_plus_b():
    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    b = np.full(4, 0.5, np.float64)
    np.testing.assert_array_equal(ops.affine(x, w, b), x @ w + b)
    assert ops.affine(x, w, b).dtype == (x @ w + b).dtype == np.float64


def test_float16_sigmoid_keeps_its_small_outputs():
    x = np.array([-12.0, -8.0, 0.0, 8.0], np.float16)
    expected = 1 / (1 + np.exp(-x.astype(np.float64)))
    np.testing.assert_allclose(gc.sigmoid(x), expected, rtol=2e-3)


# ---------------------------------------------------------------------------------------------
# the import contracts, on the installed layout


def _lint_installed_layout(folder: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with pyproject.toml's contracts over gradcore as installed: the folder
    backends/ as gradcore/backends (at the repository root, import-linter sees no
    gradcore.backends module, since setuptools maps them from another folder)."""
    lint = shutil.which("lint-imports")
    if lint is None:
        pytest.skip("lint-imports is not on the PATH: pip install -e '.[test]'")
    config = Path(gc.__file__).parents[1] / "pyproject.toml"
    command = [lint, "--no-cache", str(config)]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_core_imports_no_cuda_module_and_the_backends_no_tracing(tmp_path):
    shutil.copytree(Path(gc.__file__).parent, tmp_path / "gradcore")
    shutil.copytree(Path(numpy_kernels.__file__).parent, tmp_path / "gradcore" / "backends")
    result = _lint_installed_layout(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    # and the check can fail: the cycle that jit.py and cuda_fusion.py once had
    with open(tmp_path / "gradcore" / "jit.py", "a") as jit:
        jit.write("\nfrom gradcore.backends import cuda_fusion\n")
    with open(tmp_path / "gradcore" / "backends" / "cuda_fusion.py", "a") as fusion:
        fusion.write("\nfrom gradcore.jit import Step\n")
    result = _lint_installed_layout(tmp_path)
    assert result.returncode != 0
    assert "gradcore.jit -> gradcore.backends.cuda_fusion" in result.stdout
    assert "gradcore.backends.cuda_fusion -> gradcore.jit" in result.stdout
