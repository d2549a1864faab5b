"""The simulated ``cupy.ndarray`` and the rules every operation follows.

An array is a host NumPy array and the id of the simulated GPU that holds it. Operations run
NumPy under CuPy's rules: they run on the current device and refuse an array of another one
(CuPy's error when peer access is unavailable), refuse NumPy arrays as operands, return 0-d
arrays where NumPy returns scalars, never emit NumPy's floating-point warnings, and count every
read of device data by the host.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
from gradcore.backends import cudasim

PY_SCALARS = (bool, int, float, complex)


class CUDARuntimeError(RuntimeError):
    """cupy_backends.cuda.api.runtime.CUDARuntimeError."""

    def __init__(self, status: int, name: str, message: str) -> None:
        self.status = status
        super().__init__(f"{name}: {message}")


class DeviceSynchronized(RuntimeError):
    """cupyx.DeviceSynchronized: the host waited for the device where it was not allowed."""


# -------------------------------------------------------------------------------------------
# devices


_state = threading.local()


def device_count() -> int:
    return cudasim.device_count()


def current_id() -> int:
    return getattr(_state, "device", 0)


def set_current(device_id: int) -> None:
    check_id(device_id)
    _state.device = device_id


def check_id(device_id: int) -> None:
    if not 0 <= device_id < device_count():
        raise CUDARuntimeError(101, "cudaErrorInvalidDevice", "invalid device ordinal")


def peer_check(x: ndarray, device_id: int) -> None:
    """CuPy's ``_check_peer_access``: the simulated GPUs have no peer access."""
    if x._device != device_id:
        raise ValueError(
            f"The device where the array resides ({x._device}) is different from the current "
            f"device ({device_id}). Peer access is unavailable between these devices."
        )


def host_read(what: str) -> None:
    cudasim.host_reads.record(what, DeviceSynchronized)


# -------------------------------------------------------------------------------------------
# moving between the simulated arrays and NumPy


def operand(x: Any, device_id: int) -> Any:
    """What a kernel launch takes: an array of the current device, or a scalar."""
    if type(x) is ndarray:
        peer_check(x, device_id)
        return x._array
    if isinstance(x, PY_SCALARS) or isinstance(x, np.generic):
        return x
    raise TypeError(f"Unsupported type {type(x)}")


def unwrap(x: Any, device_id: int | None) -> Any:
    """The arguments of a namespace function: arrays anywhere in lists and tuples become host
    arrays, checked to live on ``device_id`` (unless None: functions that launch no kernel)."""
    if type(x) is ndarray:
        if device_id is not None:
            peer_check(x, device_id)
        return x._array
    if isinstance(x, np.ndarray):
        raise TypeError(f"Unsupported type {type(x)}")
    if type(x) in (list, tuple):
        return type(x)(unwrap(item, device_id) for item in x)
    return x


def wrap(result: Any, device_id: int, sources: tuple = ()) -> Any:
    """NumPy results as arrays of ``device_id``: scalars become 0-d arrays, views keep ``base``,
    and an argument returned unchanged comes back as itself."""
    if isinstance(result, np.ndarray):
        for source in sources:
            if result is source._array:
                return source
        if result.base is not None:
            for source in sources:
                if np.may_share_memory(result, source._array):
                    return make(result, source._device, source._root())
        return make(result, device_id)
    if isinstance(result, np.generic):
        return make(np.asarray(result), device_id)
    if isinstance(result, tuple):
        items = [wrap(item, device_id, sources) for item in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if isinstance(result, list):
        return [wrap(item, device_id, sources) for item in result]
    return result


def arrays_in(args: Any) -> tuple:
    found = []

    def walk(x: Any) -> None:
        if type(x) is ndarray:
            found.append(x)
        elif type(x) in (list, tuple):
            for item in x:
                walk(item)

    walk(args)
    return tuple(found)


def make(array: np.ndarray, device_id: int, base: ndarray | None = None) -> ndarray:
    new = object.__new__(ndarray)
    new._array = array
    new._device = device_id
    new._base = base
    return new


def run(function: Callable, args: tuple, kwargs: dict, views: bool = False) -> Any:
    """``function`` (NumPy's) over arrays of the current device, its results on that device.

    ``views``: the function makes views (no kernel), so arrays of any device are accepted,
    unless NumPy had to copy.
    """
    device_id = current_id()
    sources = arrays_in((args, tuple(kwargs.values())))
    check = None if views else device_id
    host_args = unwrap(args, check)
    host_kwargs = {name: unwrap(value, check) for name, value in kwargs.items()}
    with np.errstate(all="ignore"):  # a GPU never warns
        result = function(*host_args, **host_kwargs)
    if views:
        copies = [r for r in _host_arrays(result) if not _shares(r, sources)]
        if copies:
            for source in sources:
                peer_check(source, device_id)
    return wrap(result, device_id, sources)


def device_function(numpy_function: Callable, name: str) -> Callable:
    """NumPy's ``numpy_function`` as CuPy's ``name``: ``run`` over arrays of the current device."""

    def function(*args: Any, **kwargs: Any) -> Any:
        return run(numpy_function, args, kwargs)

    function.__name__ = function.__qualname__ = name
    return function


def _host_arrays(result: Any) -> list:
    if isinstance(result, np.ndarray):
        return [result]
    if isinstance(result, (list, tuple)):
        return [r for item in result for r in _host_arrays(item)]
    return []


def _shares(result: np.ndarray, sources: tuple) -> bool:
    return any(np.may_share_memory(result, source._array) for source in sources)


# -------------------------------------------------------------------------------------------
# the array


class Flags:
    """``ndarray.flags``: CuPy's has no ``writeable`` (device memory is always writeable)."""

    def __init__(self, array: np.ndarray, owns: bool) -> None:
        self.c_contiguous = array.flags.c_contiguous
        self.f_contiguous = array.flags.f_contiguous
        self.owndata = owns

    def __getitem__(self, name: str) -> bool:
        return {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous,
                "OWNDATA": self.owndata}[name]  # fmt: skip


class MemoryPointer:
    """``ndarray.data``: the address of the first element and the device that holds it."""

    def __init__(self, array: ndarray) -> None:
        self.ptr = array._array.__array_interface__["data"][0]
        self.device_id = array._device

    @property
    def device(self) -> Any:
        from cupy.cuda import Device

        return Device(self.device_id)


def _is_mask(index: Any) -> bool:
    if type(index) is ndarray:
        return index.dtype == np.bool_ and index.ndim > 0
    if type(index) is tuple:
        return any(_is_mask(item) for item in index)
    if type(index) is list:
        return len(index) > 0 and all(type(item) is bool for item in index)
    return False


def _index(index: Any, device_id: int) -> Any:
    """An index for NumPy: arrays of this device become host arrays; NumPy arrays are refused
    as CuPy refuses them."""
    if type(index) is ndarray:
        peer_check(index, device_id)
        return index._array
    if isinstance(index, np.ndarray):
        raise TypeError(f"Unsupported type {type(index)}")
    if type(index) is tuple:
        return tuple(_index(item, device_id) for item in index)
    return index


def _scatter_value(value: Any, device_id: int) -> Any:
    if type(value) is ndarray:
        peer_check(value, device_id)
        return value._array
    return value  # host data (numbers, lists, NumPy arrays) is copied to the device


class ndarray:
    """A simulated ``cupy.ndarray``: host memory, a device id, CuPy's behaviour."""

    __slots__ = ("_array", "_device", "_base", "__weakref__")
    __array_priority__ = 100

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:  # fmt: skip
        if memptr is not None or strides is not None:
            raise NotImplementedError("cupy.ndarray(memptr=..., strides=...) is not simulated")
        self._array = np.empty(shape, dtype, order=order)
        self._device = current_id()
        self._base = None

    # --- what the array is
    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)
    itemsize = property(lambda self: self._array.itemsize)
    nbytes = property(lambda self: self._array.nbytes)
    strides = property(lambda self: self._array.strides)
    base = property(lambda self: self._base)
    data = property(lambda self: MemoryPointer(self))

    @shape.setter
    def shape(self, value: Any) -> None:
        self._array.shape = value

    @property
    def flags(self) -> Flags:
        return Flags(self._array, self._base is None)

    @property
    def device(self) -> Any:
        from cupy.cuda import Device

        return Device(self._device)

    @property
    def T(self) -> ndarray:  # noqa: N802 - NumPy's name
        return make(self._array.T, self._device, self._root())

    @property
    def mT(self) -> ndarray:  # noqa: N802 - NumPy's name
        return make(self._array.mT, self._device, self._root())

    @property
    def real(self) -> ndarray:
        return self._view(self._array.real)

    @property
    def imag(self) -> ndarray:
        return self._view(self._array.imag)

    def _root(self) -> ndarray:
        return self if self._base is None else self._base

    def _view(self, result: np.ndarray) -> ndarray:
        """A NumPy result of a view-making method: a view of this array, or a copy made by a
        kernel on the current device."""
        if result is self._array:
            return self
        if np.may_share_memory(result, self._array):
            return make(result, self._device, self._root())
        peer_check(self, current_id())
        return make(result, self._device)

    # --- host reads
    def get(self, stream: Any = None, order: str = "C", out: Any = None,
            blocking: bool = True) -> np.ndarray:  # fmt: skip
        host_read("get")
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained fromcupy.ndarray")
            if self.dtype != out.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if self.shape != out.shape:
                raise ValueError(
                    f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}"
                )
            out[...] = self._array
            return out
        return np.array(self._array, order=order, copy=True)

    def item(self, *args: Any) -> Any:
        host_read("item")
        return self._array.item(*args)

    def tolist(self) -> Any:
        host_read("tolist")
        return self._array.tolist()

    def __bool__(self) -> bool:
        if self.size == 0:
            raise ValueError("The truth value of an empty array is ambiguous.")
        if self.size > 1:
            raise ValueError(
                "The truth value of an array with more than one element is ambiguous. Use "
                "a.any() or a.all()"
            )
        host_read("bool")
        return bool(self._array)

    def __int__(self) -> int:
        host_read("int")
        return int(self._array)

    def __float__(self) -> float:
        host_read("float")
        return float(self._array)

    def __complex__(self) -> complex:
        host_read("complex")
        return complex(self._array)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    def __repr__(self) -> str:
        host_read("repr")
        return repr(self._array)

    def __str__(self) -> str:
        host_read("str")
        return str(self._array)

    def __format__(self, spec: str) -> str:
        if self.ndim == 0:
            host_read("format")
            return format(self._array.item(), spec)
        return format(str(self), spec)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self) -> Any:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[k] for k in range(self.shape[0]))

    def __hash__(self) -> int:
        raise TypeError("unhashable type: 'cupy.ndarray'")

    def __reduce__(self) -> Any:
        raise NotImplementedError("pickling a simulated cupy.ndarray is not simulated")

    # --- indexing
    def __getitem__(self, index: Any) -> ndarray:
        device_id = current_id()
        if _is_mask(index):
            peer_check(self, device_id)
            host_read("boolean mask")  # CuPy reads the mask's count back to size the result
        if not _basic(index):
            peer_check(self, device_id)
        result = self._array[_index(index, device_id)]
        if np.isscalar(result) or isinstance(result, np.generic):
            return make(np.asarray(result), self._device)
        return self._view(result)

    def __setitem__(self, index: Any, value: Any) -> None:
        device_id = current_id()
        peer_check(self, device_id)
        if _is_mask(index):
            host_read("boolean mask")
        with np.errstate(all="ignore"):
            self._array[_index(index, device_id)] = _scatter_value(value, device_id)

    # --- conversions and copies
    def astype(self, dtype: Any, order: str = "K", casting: Any = None, subok: Any = None,
               copy: bool = True) -> ndarray:  # fmt: skip
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        peer_check(self, current_id())
        with np.errstate(all="ignore"):
            return make(self._array.astype(dtype, order=order), self._device)

    def copy(self, order: str = "C") -> ndarray:
        """On the current device: CuPy copies across devices here (contiguous arrays only)."""
        device_id = current_id()
        if self._device != device_id and not (
            self._array.flags.c_contiguous or self._array.flags.f_contiguous
        ):
            raise NotImplementedError("CuPy cannot copy non-contiguous array between devices.")
        return make(self._array.copy(order=order), device_id)

    def view(self, dtype: Any = None) -> ndarray:
        return self._view(self._array.view() if dtype is None else self._array.view(dtype))

    def fill(self, value: Any) -> None:
        peer_check(self, current_id())
        self._array.fill(_scatter_value(value, self._device))

    def set(self, array: np.ndarray, stream: Any = None) -> None:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, not {type(array)}")
        if array.shape != self.shape or array.dtype != self.dtype:
            raise ValueError("Shape or dtype mismatch")
        self._array[...] = array

    def nonzero(self) -> tuple:
        host_read("nonzero")
        return run(np.nonzero, (self,), {})

    def _scatter_op(self, indices: Any, values: Any, op: str) -> None:
        device_id = current_id()
        peer_check(self, device_id)
        ufunc = {"add": np.add, "max": np.maximum, "min": np.minimum}[op]
        with np.errstate(all="ignore"):
            ufunc.at(self._array, _index(indices, device_id), _scatter_value(values, device_id))

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        import cupy

        ours = getattr(cupy, ufunc.__name__, None)
        if not isinstance(ours, Ufunc) or method != "__call__":
            return NotImplemented
        return ours(*inputs, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        import cupy

        ours = getattr(cupy, func.__name__, None)
        if ours is None:
            return NotImplemented
        return ours(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        """A NumPy attribute this stand-in lacks is a feature it does not model: said so."""
        if not name.startswith("__") and hasattr(np.ndarray, name):
            raise NotImplementedError(f"cupy.ndarray.{name} is not simulated")
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("DLPack export of a simulated cupy.ndarray is not simulated")


def _basic(index: Any) -> bool:
    """Whether ``index`` is basic indexing (a view, no kernel): no arrays, lists or masks."""
    items = index if type(index) is tuple else (index,)
    return all(type(item) in (int, slice) or item is None or item is Ellipsis for item in items)


ndarray.__module__ = "cupy"


def _method(name: str) -> Callable:
    def call(a: np.ndarray, *rest: Any, **kw: Any) -> Any:
        return getattr(a, name)(*rest, **kw)

    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        return run(call, (self, *args), kwargs)

    method.__name__ = name
    return method


def _view_method(name: str) -> Callable:
    def method(self: ndarray, *args: Any, **kwargs: Any) -> Any:
        host_args = unwrap(args, self._device)
        return self._view(getattr(self._array, name)(*host_args, **kwargs))

    method.__name__ = name
    return method


for _name in ("reshape", "transpose", "ravel", "squeeze", "swapaxes", "diagonal"):
    setattr(ndarray, _name, _view_method(_name))

for _name in (
    "all", "any", "argmax", "argmin", "argsort", "clip", "conj", "conjugate", "cumprod",
    "cumsum", "dot", "flatten", "max", "mean", "min", "prod", "repeat", "round", "sort",
    "std", "sum", "take", "trace", "var", "partition", "argpartition",
):  # fmt: skip
    setattr(ndarray, _name, _method(_name))


# -------------------------------------------------------------------------------------------
# ufuncs


# CuPy's math ufuncs are kernels calling CUDA's math library (``out0 = exp(in0)``), the same
# functions a fused kernel calls; here both call the host's C library, so that eager and fused
# results agree as they do on a GPU (NumPy's own SIMD versions differ in the last bit).
MATH = {
    "exp": "exp", "exp2": "exp2", "expm1": "expm1", "log": "log", "log2": "log2",
    "log10": "log10", "log1p": "log1p", "sin": "sin", "cos": "cos", "tan": "tan",
    "arcsin": "asin", "arccos": "acos", "arctan": "atan", "sinh": "sinh", "cosh": "cosh",
    "tanh": "tanh", "arcsinh": "asinh", "arccosh": "acosh", "arctanh": "atanh", "cbrt": "cbrt",
}  # fmt: skip
# The same for CuPy's binary math ufuncs on floats (``out0 = pow(in0, in1)``).
BINARY_MATH = {"power": "pow"}
FLOATS = (np.dtype("float16"), np.dtype("float32"), np.dtype("float64"))
_math_kernels: dict[str, Any] = {}


TINY32 = np.finfo(np.float32).tiny


def flush_subnormals(x: Any, in_place: bool = False) -> Any:
    """float32 subnormals as zeros of their sign: CuPy compiles every kernel, its ufuncs'
    included, with ``-ftz=true``, which flushes float32 inputs and results (not float64)."""
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        return x
    subnormal = (np.abs(x) < TINY32) & (x != 0)
    if not subnormal.any():
        return x
    flushed = x if in_place else x.copy()
    flushed[subnormal] = np.copysign(np.float32(0), x[subnormal])
    return flushed


def _float_array(x: Any) -> bool:
    return type(x) is ndarray and x.dtype in FLOATS


def _math_kernel(name: str, function: str, arity: int = 1) -> Any:
    kernel = _math_kernels.get(name)
    if kernel is None:
        from cupy._kernel import ElementwiseKernel

        params = ", ".join(f"T in{k}" for k in range(arity))
        call = ", ".join(f"in{k}" for k in range(arity))
        kernel = ElementwiseKernel(params, "T out0", f"out0 = {function}({call})", f"cupy_{name}")
        _math_kernels[name] = kernel
    return kernel


def _same_float(args: tuple) -> bool:
    """Float arrays of one dtype, or one such array and Python numbers (cast to its type)."""
    arrays = [a for a in args if type(a) is ndarray]
    return (
        bool(arrays)
        and all(_float_array(a) and a.dtype == arrays[0].dtype for a in arrays)
        and all(type(a) in (int, float) for a in args if type(a) is not ndarray)
    )


class Ufunc:
    """A CuPy ufunc: ``out=`` (arrays of the current device only), ``dtype=``, ``casting=``,
    ``_where=`` (CuPy's spelling), ``.at`` for add/maximum/minimum, ``.reduce`` for add and
    multiply, as CuPy offers them."""

    SCATTER = {"add": "add", "maximum": "max", "minimum": "min"}

    def __init__(self, numpy_ufunc: np.ufunc) -> None:
        self._ufunc = numpy_ufunc
        self.__name__ = numpy_ufunc.__name__
        self.name = f"cupy_{numpy_ufunc.__name__}"
        self.nin, self.nout, self.nargs = numpy_ufunc.nin, numpy_ufunc.nout, numpy_ufunc.nargs
        self.types = numpy_ufunc.types

    def __repr__(self) -> str:
        return f"<ufunc '{self.name}'>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        math = MATH.get(self.__name__)
        if math is not None and len(args) == 1 and not kwargs and _float_array(args[0]):
            return _math_kernel(self.__name__, math)(args[0])
        math = BINARY_MATH.get(self.__name__)
        if math is not None and len(args) == 2 and not kwargs and _same_float(args):
            return _math_kernel(self.__name__, math, arity=2)(*args)
        out = kwargs.pop("out", None)
        where = kwargs.pop("_where", None)
        dtype = kwargs.pop("dtype", None)
        casting = kwargs.pop("casting", "same_kind")
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if not self.nin <= len(args) <= self.nargs:
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                f"{self.nargs} (with outputs), but given {len(args)}."
            )
        outs = args[self.nin :]
        if out is not None:
            if outs:
                raise ValueError("Cannot specify 'out' as both a positional and keyword argument")
            outs = out if isinstance(out, tuple) else (out,)
        device_id = current_id()
        inputs = [flush_subnormals(operand(x, device_id)) for x in args[: self.nin]]
        host_outs = []
        for o in outs:
            if o is None:
                host_outs.append(None)
                continue
            if type(o) is not ndarray:
                raise TypeError("Output arguments type must be cupy.ndarray")
            peer_check(o, device_id)
            host_outs.append(o._array)
        options: dict[str, Any] = {"casting": casting}
        if dtype is not None:
            options["dtype"] = dtype
        if where is not None:
            options["where"] = operand(where, device_id)
        if any(o is not None for o in host_outs):
            options["out"] = tuple(host_outs) + (None,) * (self.nout - len(host_outs))
        with np.errstate(all="ignore"):
            result = self._ufunc(*inputs, **options)
        for array in result if self.nout > 1 else (result,):
            flush_subnormals(array, in_place=True)
        if self.nout == 1:
            return outs[0] if host_outs and outs[0] is not None else wrap(result, device_id)
        return tuple(
            outs[k] if k < len(outs) and outs[k] is not None else wrap(r, device_id)
            for k, r in enumerate(result)
        )

    def at(self, a: ndarray, indices: Any, b: Any = None) -> None:
        op = self.SCATTER.get(self.__name__)
        if op is None:
            raise NotImplementedError(f"`{self.name}.at` is not supported yet")
        a._scatter_op(indices, b, op)

    def reduce(self, array: ndarray, axis: Any = 0, dtype: Any = None, out: Any = None,
               keepdims: bool = False) -> Any:  # fmt: skip
        if self.__name__ == "add":
            return array.sum(axis, dtype, out, keepdims)
        if self.__name__ == "multiply":
            return array.prod(axis, dtype, out, keepdims)
        raise NotImplementedError(f"`{self.name}.reduce` is not supported yet")

    def outer(self, a: Any, b: Any, **kwargs: Any) -> Any:
        return self(a.reshape(a.shape + (1,) * b.ndim), b.reshape((1,) * a.ndim + b.shape),
                    **kwargs)  # fmt: skip


_HANDLED = object()


def _should_use_rop(x: Any, y: Any) -> bool:
    """CuPy's rule (NEP 13, then ``__array_priority__``) for deferring to ``y``'s operator."""
    y_ufunc = getattr(y, "__array_ufunc__", _HANDLED)
    if y_ufunc is not _HANDLED:
        return y_ufunc is None
    return getattr(x, "__array_priority__", 0) < getattr(y, "__array_priority__", 0)


def _binary(name: str, reflected: bool = False) -> Callable:
    def method(self: ndarray, other: Any) -> Any:
        import cupy

        if type(other) is not ndarray and _should_use_rop(self, other):
            return NotImplemented
        ufunc = getattr(cupy, name)
        return ufunc(other, self) if reflected else ufunc(self, other)

    return method


def _inplace(name: str) -> Callable:
    def method(self: ndarray, other: Any) -> ndarray:
        import cupy

        getattr(cupy, name)(self, other, out=self)
        return self

    return method


def _unary(name: str) -> Callable:
    def method(self: ndarray) -> Any:
        import cupy

        return getattr(cupy, name)(self)

    return method


for _dunder, _ufunc in {
    "add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
    "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "matmul": "matmul",
    "and": "bitwise_and", "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift",
    "rshift": "right_shift",
}.items():  # fmt: skip
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))
    setattr(ndarray, f"__r{_dunder}__", _binary(_ufunc, reflected=True))
    setattr(ndarray, f"__i{_dunder}__", _inplace(_ufunc))

for _dunder, _ufunc in {
    "eq": "equal", "ne": "not_equal", "lt": "less", "le": "less_equal", "gt": "greater",
    "ge": "greater_equal",
}.items():  # fmt: skip
    setattr(ndarray, f"__{_dunder}__", _binary(_ufunc))

for _dunder, _ufunc in {"neg": "negative", "pos": "positive", "abs": "absolute",
                        "invert": "invert"}.items():  # fmt: skip
    setattr(ndarray, f"__{_dunder}__", _unary(_ufunc))
