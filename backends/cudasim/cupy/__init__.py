"""Simulated ``cupy`` (gradcore.backends.cudasim): a test double, never for speed figures.

Loaded as ``cupy`` only when ``GRADCORE_SIMULATE_CUDA`` is set (see the package docstring).
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
from cupy import _core, cuda, fft, linalg, random  # noqa: F401
from cupy._core import Ufunc, ndarray, run
from cupy._kernel import (  # noqa: F401 - the namespace
    ElementwiseKernel,
    RawKernel,
    RawModule,
    ReductionKernel,
    fuse,
)

__version__ = "14.2.0+gradcore.cudasim"

ufunc = Ufunc

# dtypes and constants: NumPy's own objects, as CuPy's are
for _name in (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intp",
    "uintp", "float16", "float32", "float64", "complex64", "complex128", "byte", "ubyte",
    "short", "ushort", "intc", "uintc", "int_", "uint", "longlong", "ulonglong", "half",
    "single", "double", "float64", "csingle", "cdouble", "dtype", "finfo", "iinfo", "generic",
    "number", "integer", "signedinteger", "unsignedinteger", "inexact", "floating",
    "complexfloating", "character", "flexible", "e", "pi", "inf", "nan", "newaxis", "euler_gamma",
):  # fmt: skip
    globals()[_name] = getattr(np, _name)
bool = np.bool_  # noqa: A001 - CuPy's name

# every NumPy ufunc that CuPy has, as a CuPy ufunc
UFUNCS = (
    "absolute", "add", "arccos", "arccosh", "arcsin", "arcsinh", "arctan", "arctan2", "arctanh",
    "bitwise_and", "bitwise_count", "bitwise_or", "bitwise_xor", "cbrt", "ceil", "conjugate",
    "copysign", "cos", "cosh", "deg2rad", "degrees", "divide", "divmod", "equal", "exp", "exp2",
    "expm1", "fabs", "float_power", "floor", "floor_divide", "fmax", "fmin", "fmod", "frexp",
    "gcd", "greater", "greater_equal", "heaviside", "hypot", "invert", "isfinite", "isinf",
    "isnan", "lcm", "ldexp", "left_shift", "less", "less_equal", "log", "log10", "log1p", "log2",
    "logaddexp", "logaddexp2", "logical_and", "logical_not", "logical_or", "logical_xor",
    "matmul", "maximum", "minimum", "modf", "multiply", "negative", "nextafter", "not_equal",
    "positive", "power", "rad2deg", "radians", "reciprocal", "remainder", "right_shift", "rint",
    "sign", "signbit", "sin", "sinh", "spacing", "sqrt", "square", "subtract", "tan", "tanh",
    "true_divide", "trunc", "vecdot",
)  # fmt: skip
for _name in UFUNCS:
    if isinstance(getattr(np, _name, None), np.ufunc):
        globals()[_name] = Ufunc(getattr(np, _name))
abs = absolute  # noqa: A001, F821 - CuPy's names
conj = conjugate  # noqa: F821
mod = remainder  # noqa: F821
bitwise_not = invert  # noqa: F821
fix = trunc  # noqa: F821


def _function(name: str, views: bool = False, reads: bool = False) -> Any:
    numpy_function = getattr(np, name)

    def function(*args: Any, **kwargs: Any) -> Any:
        if reads:
            _core.host_read(name)  # the result's size depends on the values
        result = run(numpy_function, args, kwargs, views=views)
        if name in BOOLEANS:  # CuPy answers on the device: reading it is a host read
            return _core.make(np.asarray(result), _core.current_id())
        return result

    function.__name__ = function.__qualname__ = name
    function.__doc__ = f"numpy.{name} on the current (simulated) device."
    return function


# NumPy returns a Python bool, CuPy a 0-d array
BOOLEANS = ("allclose", "array_equal", "array_equiv")
# functions that run kernels: every array must be on the current device
FUNCTIONS = (
    "all", "allclose", "amax", "amin", "any", "append", "argmax", "argmin", "argsort",
    "around", "array_equal", "array_equiv", "average", "clip", "column_stack", "concatenate",
    "convolve", "copyto", "corrcoef", "count_nonzero", "cov", "cross", "cumprod", "cumsum",
    "diag", "diagflat", "diff", "dot", "dstack", "einsum", "flip", "fliplr", "flipud", "hstack",
    "inner", "isclose", "isin", "kron", "max", "mean", "median", "min", "moveaxis", "nanargmax",
    "nanargmin", "nancumprod", "nancumsum", "nanmax", "nanmean", "nanmin", "nanprod", "nanstd",
    "nansum", "nanvar", "outer", "pad", "partition", "percentile", "prod", "ptp", "put",
    "put_along_axis", "quantile", "ravel_multi_index", "roll", "rot90", "round", "searchsorted",
    "sort", "stack", "std", "sum", "take", "take_along_axis", "tensordot", "tile", "trace",
    "tril", "triu", "unravel_index", "var", "vstack", "cumulative_sum",
    "cumulative_prod", "astype", "histogram", "interp", "select", "choose", "nan_to_num",
    "real_if_close", "angle", "sinc", "i0", "trapezoid", "lexsort", "argpartition", "vdot",
)  # fmt: skip
# functions that make views: arrays of any device, unless NumPy has to copy
VIEWS = (
    "atleast_1d", "atleast_2d", "atleast_3d", "broadcast_arrays", "broadcast_to",
    "expand_dims", "matrix_transpose", "permute_dims", "ravel", "real", "imag", "reshape",
    "split", "array_split", "hsplit", "vsplit", "dsplit", "squeeze", "swapaxes", "transpose",
    "unstack", "diagonal", "rollaxis",
)  # fmt: skip
# functions whose result size depends on the values: CuPy reads a count back to the host
READS = ("argwhere", "compress", "extract", "flatnonzero", "nonzero", "unique", "bincount")
# functions of types and shapes: no device data involved
METADATA = (
    "broadcast_shapes", "can_cast", "common_type", "isdtype", "iscomplexobj", "isrealobj",
    "isscalar", "issubdtype", "min_scalar_type", "ndim", "promote_types", "result_type",
    "shape", "size", "may_share_memory", "shares_memory",
)  # fmt: skip

for _name in FUNCTIONS:
    if hasattr(np, _name):
        globals()[_name] = _function(_name)
for _name in VIEWS:
    if hasattr(np, _name):
        globals()[_name] = _function(_name, views=True)
for _name in READS:
    globals()[_name] = _function(_name, reads=True)
for _name in METADATA:
    globals()[_name] = _function(_name, views=True)
concat = concatenate  # noqa: F821
pow = power  # noqa: A001, F821


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    """Three arguments: a kernel. One argument: ``nonzero``, which reads a count back."""
    if x is None and y is None:
        return nonzero(condition)  # noqa: F821
    return run(np.where, (condition, x, y), {})


# creation: host data is copied to the current device


def _on_device(array: np.ndarray) -> ndarray:
    return _core.make(array, _core.current_id())


def _host(obj: Any) -> Any:
    """Host data from ``obj``: device arrays inside lists are read on the device (as CuPy
    concatenates them there), host data passes."""
    if type(obj) is ndarray:
        _core.peer_check(obj, _core.current_id())
        return obj._array
    if type(obj) in (list, tuple):
        return type(obj)(_host(item) for item in obj)
    return obj


def array(obj: Any, dtype: Any = None, copy: Any = True, order: str = "K", subok: Any = False,
          ndmin: int = 0, blocking: Any = False) -> ndarray:  # fmt: skip
    if type(obj) is ndarray:
        if copy is False and (dtype is None or np.dtype(dtype) == obj.dtype) and ndmin <= obj.ndim:
            return obj
        result = obj.copy() if dtype is None else obj.astype(dtype)
        return result.reshape((1,) * (ndmin - result.ndim) + result.shape) if ndmin else result
    if copy is False:
        raise ValueError("Unable to avoid copy while creating an array from host data")
    with np.errstate(all="ignore"):
        return _on_device(np.array(_host(obj), dtype=dtype, order=order, ndmin=ndmin))


def asarray(a: Any, dtype: Any = None, order: Any = None, *, blocking: Any = False) -> ndarray:
    if type(a) is ndarray:
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    with np.errstate(all="ignore"):
        return _on_device(np.array(_host(a), dtype=dtype, order=order or "K"))


asanyarray = asarray


def ascontiguousarray(a: Any, dtype: Any = None) -> ndarray:
    a = asarray(a, dtype)
    return a if a.flags.c_contiguous else a.copy()


def asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> np.ndarray:  # fmt: skip
    if type(a) is ndarray:
        return a.get(stream=stream, order=order, out=out, blocking=blocking)
    result = np.asarray(a, order=order)
    if out is not None:
        out[...] = result
        return out
    return result


def copy(a: ndarray, order: str = "K") -> ndarray:
    return a.copy(order="C" if order == "K" else order)


def get_array_module(*args: Any) -> Any:
    import cupy

    return cupy if builtins.any(type(a) is ndarray for a in args) else np


def _creation(name: str) -> Any:
    numpy_function = getattr(np, name)

    def create(*args: Any, **kwargs: Any) -> ndarray:
        with np.errstate(all="ignore"):
            return _on_device(numpy_function(*_host(args), **kwargs))

    create.__name__ = create.__qualname__ = name
    return create


def _creation_like(name: str) -> Any:
    numpy_function = getattr(np, name)

    def create(prototype: Any, *args: Any, **kwargs: Any) -> ndarray:
        if type(prototype) is ndarray:
            prototype = prototype._array
        elif isinstance(prototype, np.ndarray):
            raise TypeError(f"Unsupported type {type(prototype)}")
        kwargs.pop("subok", None)
        return _on_device(numpy_function(prototype, *args, **kwargs))

    create.__name__ = create.__qualname__ = name
    return create


for _name in ("arange", "empty", "eye", "full", "identity", "linspace", "logspace", "ones",
              "zeros", "tri", "indices", "geomspace", "fromfunction", "meshgrid"):  # fmt: skip
    globals()[_name] = _creation(_name)
for _name in ("empty_like", "full_like", "ones_like", "zeros_like"):
    globals()[_name] = _creation_like(_name)


# memory pools

get_default_memory_pool = cuda.memory.get_default_memory_pool
get_default_pinned_memory_pool = cuda.memory.get_default_pinned_memory_pool


def _not_simulated(feature: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{feature} is not simulated by gradcore.backends.cudasim")

    refuse.__name__ = feature.rpartition(".")[2]
    return refuse


for _name in ("fromDlpack", "from_dlpack", "asfortranarray", "packbits", "unpackbits"):
    globals()[_name] = _not_simulated(f"cupy.{_name}")


def show_config(*args: Any, **kwargs: Any) -> None:
    print(f"CuPy {__version__}: gradcore's simulated CUDA device (no GPU code runs)")


def is_available() -> Any:
    return cuda.is_available()


# the namespace: what ``from cupy import *`` gives (array-api-compat's CuPy namespace does that)
_TABLES = {"BOOLEANS", "FUNCTIONS", "METADATA", "READS", "UFUNCS", "VIEWS"}
__all__ = sorted(
    name
    for name in globals()
    if not name.startswith("_") and name not in {"annotations", "Any", "np", "builtins", *_TABLES}
)
