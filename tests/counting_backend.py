"""A test-only stand-in for CuPy on NumPy that counts every read of device data by the host.

On a GPU, reading an array's values on the host waits for every queued kernel: ``bool(x)``,
``float(x)``, ``int(x)``, ``x.item()``, ``x.tolist()``, ``x.get()``, and any boolean-mask
index, since CuPy reads the mask's count back to size the result. ``CountingArray`` is a NumPy
array that records each of these (and functions whose output size depends on the data, such as
``nonzero``), so a CPU-only run shows where a CUDA training step would wait for the GPU.

The device "counting" gets the same ``xp`` the CuPy backend builds for a GPU
(``cupy_backend.gpu_namespace``), over array-api-compat's NumPy namespace with every result
turned into a ``CountingArray``: what runs here is the "cuda" namespace's code, clip and sign
included, on arrays that tell when they are read.
"""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat.numpy as compat_numpy
import numpy as np
from gradcore.backends import cupy_backend

import gradcore as gc


class HostReads:
    """Host reads, split by whether they happened inside a training step."""

    def __init__(self) -> None:
        self.inside = 0
        self.steps = 0
        self.in_step: list[str] = []
        self.elsewhere: list[str] = []

    def record(self, what: str) -> None:
        (self.in_step if self.inside else self.elsewhere).append(what)

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        self.inside += 1
        self.steps += 1
        try:
            yield
        finally:
            self.inside -= 1

    def reset(self) -> None:
        self.__init__()


READS = HostReads()

# functions whose result size depends on the values: CuPy reads a count back to size it
# (np.nonzero calls the method, counted below)
DATA_DEPENDENT = {np.argwhere, np.flatnonzero, np.unique, np.extract, np.compress}


def _is_mask(key: Any) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, np.ndarray) and k.dtype == np.bool_ for k in keys)


def _base(x: Any) -> Any:
    return x.view(np.ndarray) if isinstance(x, CountingArray) else x


def _counting(result: Any) -> Any:
    """NumPy arrays and scalars as CountingArrays (0-d for scalars), through tuples and lists."""
    if isinstance(result, CountingArray):
        return result
    if isinstance(result, (np.ndarray, np.generic)):
        return np.asarray(result).view(CountingArray)
    if isinstance(result, (tuple, list)):
        return type(result)(_counting(r) for r in result)
    return result


class FakeGpu:
    """The device object: a context manager, like ``cupy.cuda.Device``."""

    id = 0

    def __enter__(self) -> FakeGpu:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


GPU = FakeGpu()


class CountingArray(np.ndarray):
    """A NumPy array standing for a GPU array: reading its values on the host is recorded."""

    @property
    def device(self) -> FakeGpu:
        return GPU

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_base(o) for o in out)
        result = getattr(ufunc, method)(*(_base(x) for x in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _counting(result)

    def __array_function__(self, func: Callable, types: Any, args: Any, kwargs: Any) -> Any:
        if func in DATA_DEPENDENT:
            READS.record(func.__name__)
        return _counting(super().__array_function__(func, types, args, kwargs))

    def __getitem__(self, key: Any) -> Any:
        if _is_mask(key):
            READS.record("boolean-mask index")
        return _counting(super().__getitem__(key))

    def __setitem__(self, key: Any, value: Any) -> None:
        if _is_mask(key):
            READS.record("boolean-mask assignment")
        super().__setitem__(key, value)

    def _read(what: str) -> Callable:  # noqa: N805 - builds the methods below
        def read(self: CountingArray, *args: Any) -> Any:
            READS.record(what)
            return _counting(getattr(self.view(np.ndarray), what)(*args))

        return read

    __bool__ = _read("__bool__")
    __float__ = _read("__float__")
    __int__ = _read("__int__")
    __index__ = _read("__index__")
    __complex__ = _read("__complex__")
    item = _read("item")
    tolist = _read("tolist")
    nonzero = _read("nonzero")
    del _read

    def get(self) -> np.ndarray:
        """CuPy's copy to the host."""
        READS.record("get")
        return np.array(self.view(np.ndarray), copy=True)


def _returning_counting(function: Callable) -> Callable:
    @functools.wraps(function)
    def call(*args: Any, device: Any = None, **kwargs: Any) -> Any:
        return _counting(function(*args, **kwargs))  # ``device`` is the fake GPU: dropped

    return call


def _counting_compat() -> types.ModuleType:
    """array-api-compat's NumPy namespace, each function returning CountingArrays."""
    namespace = types.ModuleType("counting_compat", compat_numpy.__doc__)
    for name, value in vars(compat_numpy).items():
        if name.startswith("__"):
            continue
        plain_function = callable(value) and not isinstance(value, type)
        setattr(namespace, name, _returning_counting(value) if plain_function else value)
    return namespace


class CountingRng:
    def __init__(self, seed: int) -> None:
        self.generator = np.random.default_rng(seed)

    def normal(self, shape: tuple[int, ...], dtype: Any = "float32") -> CountingArray:
        return _counting(self.generator.standard_normal(shape).astype(dtype))

    def uniform(self, shape: tuple[int, ...], low: float, high: float, dtype: Any = "float32"):
        return _counting(self.generator.uniform(low, high, shape).astype(dtype))

    def permutation(self, n: int) -> CountingArray:
        return _counting(self.generator.permutation(n))


class CountingBackend:
    device = "counting"
    array_types = (CountingArray,)

    def __init__(self) -> None:
        self.gpu = GPU
        cupy_like = types.SimpleNamespace(sign=np.sign)  # what gpu_namespace takes from CuPy
        self.xp = cupy_backend.gpu_namespace(cupy_like, _counting_compat(), self.gpu)

    def for_array(self, x: Any) -> CountingBackend:
        return self

    def array_device(self, x: Any) -> FakeGpu:
        return self.gpu

    def asarray(self, obj: Any, dtype: Any = None) -> CountingArray:
        return np.array(_base(obj), dtype=dtype, copy=True).view(CountingArray)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get()

    def scatter_add(self, target: Any, index: Any, values: Any) -> None:
        np.add.at(_base(target), _base(index), _base(values))

    def may_overwrite(self, x: Any, others: list[Any]) -> bool:
        return (
            isinstance(x, np.ndarray)
            and x.flags.owndata
            and not any(np.may_share_memory(x, o) for o in others if isinstance(o, np.ndarray))
        )

    def rng(self, seed: int) -> CountingRng:
        return CountingRng(seed)

    def synchronize(self) -> None:
        pass


BACKEND = CountingBackend()


def register() -> None:
    gc.register_backend("counting", lambda: BACKEND)
