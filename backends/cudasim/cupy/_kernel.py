"""``cupy.ElementwiseKernel`` on the simulated device: CuPy's parameter rules, the kernel body
compiled by g++ (``gradcore.backends.cudasim.compiler``) and run over the host buffers.

What CuPy does and this repeats: typed parameter strings (``T x``, ``float32 lr``, ``raw T a``),
type variables resolved from the arrays (mismatches are refused, inputs are never cast),
scalars converted to their parameter's type, non-raw arrays broadcast together (outputs
included, and an output must have the broadcast shape), outputs allocated when not given, the
loop index ``i``, ``preamble``, ``no_return``, ``return_tuple`` and ``size``. One translation
unit per (body, types, layout), as CuPy compiles one per (types, dimensions).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from cupy import _core
from cupy._core import ndarray
from gradcore.backends.cudasim import compiler

# CuPy's C type names (cupy/_core/_scalar.pyx: _typenames_base)
TYPENAMES = {
    np.dtype("float64"): "double", np.dtype("float32"): "float", np.dtype("float16"): "float16",
    np.dtype("int64"): "long long", np.dtype("int32"): "int", np.dtype("int16"): "short",
    np.dtype("int8"): "signed char", np.dtype("uint64"): "unsigned long long",
    np.dtype("uint32"): "unsigned int", np.dtype("uint16"): "unsigned short",
    np.dtype("uint8"): "unsigned char", np.dtype("bool"): "bool",
}  # fmt: skip


def _typename(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    name = TYPENAMES.get(dtype)
    if name is None:
        raise NotImplementedError(f"kernel parameters of dtype {dtype} are not simulated")
    return name


class ParameterInfo:
    """One parameter: ``[raw] type name``; a one-letter type is a type variable."""

    def __init__(self, text: str, is_const: bool) -> None:
        words = text.split()
        if len(words) < 2:
            raise Exception(f"Syntax error: {text}")  # CuPy raises a bare Exception
        kind, self.name = words[-2:]
        self.raw = False
        self.is_const = is_const
        for word in words[:-2]:
            if word == "raw":
                self.raw = True
            elif word == "_non_const":
                self.is_const = False
            else:
                raise Exception(f'Unknown keyword "{word}"')
        self.dtype = None if len(kind) == 1 else np.dtype(kind)
        self.ctype = kind if len(kind) == 1 else _typename(self.dtype)


def _parameters(text: str, is_const: bool) -> tuple[ParameterInfo, ...]:
    text = text.strip()
    return tuple(ParameterInfo(p, is_const) for p in text.split(",")) if text else ()


def _decide_types(in_params, out_params, in_dtypes, out_dtypes):  # noqa: ANN001, ANN202
    """CuPy's ``_decide_params_type_core``: type variables from the arrays, checked."""
    types: dict[str, np.dtype] = {}
    # Outputs first, as CuPy does: their dtypes bind the type variables the inputs then meet.
    for p, a in [*zip(out_params, out_dtypes), *zip(in_params, in_dtypes)]:
        if a is None:  # an input given as a Python scalar
            continue
        if p.dtype is not None:
            if np.dtype(a) != p.dtype:
                raise TypeError(f"Type is mismatched. {p.name} {a} {p.dtype}")
        elif p.ctype in types:
            if types[p.ctype] != np.dtype(a):
                raise TypeError(f"Type is mismatched. {p.name} {a} {types[p.ctype]} {p.ctype}")
        else:
            types[p.ctype] = np.dtype(a)
    in_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in in_params)
    out_types = tuple(types[p.ctype] if p.dtype is None else p.dtype for p in out_params)
    return in_types, out_types, tuple(sorted(types.items()))


def _is_valid_name(name: str) -> bool:
    return name.isidentifier()


class ElementwiseKernel:
    """A user-defined elementwise kernel (CuPy's), compiled for the host on first call."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str = "kernel",
                 reduce_dims: bool = True, preamble: str = "", no_return: bool = False,
                 return_tuple: bool = False, **kwargs: Any) -> None:  # fmt: skip
        if not _is_valid_name(name):
            raise ValueError(f'Invalid kernel name: "{name}"')
        unknown = set(kwargs) - {"options", "loop_prep", "after_loop"}
        if unknown:
            raise NotImplementedError(f"ElementwiseKernel({', '.join(sorted(unknown))}=...)")
        self.in_params = _parameters(in_params, True)
        self.out_params = _parameters(out_params, False)
        self.nin, self.nout = len(self.in_params), len(self.out_params)
        self.nargs = self.nin + self.nout
        self.params = self.in_params + self.out_params
        if "i" in [p.name for p in self.params]:
            raise ValueError("Can not use 'i' as a parameter name")
        self.operation = operation
        self.name = self.__name__ = name
        self.preamble = preamble
        self.no_return = no_return
        self.return_tuple = return_tuple
        self.options = tuple(kwargs.get("options", ()))
        self.loop_prep = kwargs.get("loop_prep", "")
        self.after_loop = kwargs.get("after_loop", "")
        self._functions: dict[Any, Any] = {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        size = kwargs.pop("size", -1)
        kwargs.pop("stream", None)
        block_size = kwargs.pop("block_size", 128)
        if kwargs:
            raise TypeError(f"Wrong arguments {kwargs}")
        if block_size <= 0:
            raise ValueError("block_size must be greater than zero")
        if len(args) not in (self.nin, self.nargs):
            raise TypeError(
                f"Wrong number of arguments for {self.name!r}. It must be either {self.nin} or "
                f"{self.nargs} (with outputs), but given {len(args)}."
            )
        device_id = _core.current_id()
        for arg in args:
            if type(arg) is ndarray:
                _core.peer_check(arg, device_id)
            elif not isinstance(arg, (*_core.PY_SCALARS, np.generic)):
                raise TypeError(f"Unsupported type {type(arg)}")
        in_args, out_args = list(args[: self.nin]), list(args[self.nin :])
        for arg in out_args:
            if type(arg) is not ndarray:
                raise TypeError("Output arguments type must be cupy.ndarray")

        nonraw = [a for a, p in zip(args, self.params) if type(a) is ndarray and not p.raw]
        if size != -1:
            if nonraw:
                raise ValueError(
                    "Specified 'size' can be used only if all of the ndarray are 'raw'."
                )
            shape: tuple[int, ...] = (size,)
        else:
            if not nonraw:
                raise ValueError("Loop size is undecided.")
            try:
                shape = np.broadcast_shapes(*(a.shape for a in nonraw))
            except ValueError:
                shapes = ", ".join(str(a.shape) for a in nonraw)
                raise ValueError(
                    f"operands could not be broadcast together with shapes {shapes}"
                ) from None

        in_dtypes = tuple(a.dtype if type(a) is ndarray else None for a in in_args)
        out_dtypes = tuple(a.dtype for a in out_args)
        in_types, out_types, type_map = _decide_types(
            self.in_params, self.out_params, in_dtypes, out_dtypes
        )
        if out_args:
            for a, p in zip(out_args, self.out_params):
                if not p.raw and a.shape != shape:
                    raise ValueError("Out shape is mismatched")
        else:
            if any(p.raw for p in self.out_params) and size == -1:
                raise ValueError("Output array size is Undecided")
            out_args = [_core.make(np.empty(shape, t), device_id) for t in out_types]
        if self.no_return:
            result = None
        elif not self.return_tuple and self.nout == 1:
            result = out_args[0]
        else:
            result = tuple(out_args)
        if 0 in shape:
            return result

        self._launch(in_args, in_types, out_args, shape, type_map)
        return result

    def _launch(self, in_args, in_types, out_args, shape, type_map) -> None:  # noqa: ANN001
        """Broadcast the arrays to ``shape``, build the host kernel, call it."""
        values, layout = [], []
        types = [*in_types, *[None] * len(out_args)]  # outputs are arrays, never scalars
        for arg, p, t in zip([*in_args, *out_args], self.params, types):
            if type(arg) is ndarray:
                host = arg._array if p.raw else np.broadcast_to(arg._array, shape)
                values.append(host)
                layout.append(("raw", arg.ndim) if p.raw else ("array",))
            else:
                values.append(np.array(arg).astype(t))  # CuPy's CScalar.apply_dtype
                layout.append(("scalar",))
        arrays = [v for v, kind in zip(values, layout) if kind[0] == "array"]
        flat = all(a.flags.c_contiguous for a in arrays)  # CuPy's reduce_dims, in its simplest case
        ndim = 1 if flat else len(shape)
        loop_shape = (int(np.prod(shape)),) if flat else shape
        key = (tuple(layout), ndim, type_map)
        function = self._functions.get(key)
        if function is None:
            function = self._functions[key] = self._build(layout, ndim, type_map)
        pointers = (ctypes.c_void_p * len(values))(*(v.ctypes.data for v in values))
        strides = [s for a in arrays for s in (a.strides if not flat else (a.itemsize,))]
        extents = [d for v, kind in zip(values, layout) if kind[0] == "raw" for d in
                   (*v.shape, *v.strides)]  # fmt: skip
        c_long_array = ctypes.c_ssize_t * max(1, len(strides) + len(extents))
        function(
            pointers,
            (ctypes.c_ssize_t * max(1, ndim))(*loop_shape),
            ctypes.c_ssize_t(int(np.prod(shape))),
            c_long_array(*strides, *extents),
        )

    def _build(self, layout, ndim, type_map) -> Any:  # noqa: ANN001
        source = self._source(layout, ndim, type_map)
        try:
            library = compiler.build(source)
        except compiler.CompileError as error:
            from cupy.cuda.compiler import CompileException

            raise CompileException(
                str(error), error.source, self.name, self.options, "g++ (simulated nvrtc)"
            ) from None
        function = library.gradcore_sim_launch
        function.restype = None
        return function

    def _source(self, layout, ndim, type_map) -> str:  # noqa: ANN001
        """One C++ translation unit: typedefs, the preamble, and the loop over ``i``.

        ``_args`` holds a pointer per parameter; ``_strides`` the byte strides of the non-raw
        arrays over the loop's ``ndim`` dimensions, then each raw array's shape and strides.
        """
        flush = not any(t == np.float64 for _, t in type_map) and not any(
            p.dtype == np.float64 for p in self.params
        )  # -ftz=true flushes float32 only: a kernel with float64 runs without
        head = [f"typedef {_typename(t)} {name};" for name, t in type_map]
        head += [
            self.preamble,
            'extern "C" void gradcore_sim_launch(void* const* _args, const ptrdiff_t* _shape,',
            "                                    ptrdiff_t _size, const ptrdiff_t* _strides) {",
            "  GRADCORE_SIM_FTZ_ON();" if flush else "",
            "  struct { ptrdiff_t n; ptrdiff_t size() const { return n; } } _ind = {_size};",
        ]
        offsets, refs = [], []
        extent = ndim * sum(1 for kind in layout if kind[0] == "array")
        for k, (p, kind) in enumerate(zip(self.params, layout)):
            if kind[0] == "scalar":  # by value, as CuPy passes scalars
                c = p.name
                head.append(f"  {p.ctype} {c}; memcpy(&{c}, _args[{k}], sizeof {c});")
            elif kind[0] == "raw":
                n, c = kind[1], p.name
                head.append(f"  CArray<{p.ctype}, {n}> {c}; {c}.data_ = (char*)_args[{k}];")
                head.append(f"  {c}.size_ = 1;")
                for d in range(n):
                    head.append(
                        f"  {c}.shape_[{d}] = _strides[{extent + d}]; {c}.size_ *= {c}.shape_[{d}];"
                        f" {c}.strides_[{d}] = _strides[{extent + n + d}];"
                    )
                extent += 2 * n
            else:
                const = "const " if p.is_const else ""
                offsets.append(f"      _o{k} += _c * _strides[{len(offsets) * ndim} + _d];")
                refs.append(f"    {const}{p.ctype} &{p.name} = "
                            f"*({const}{p.ctype}*)((char*)_args[{k}] + _o{k});")  # fmt: skip
        loop = [
            f"  {self.loop_prep};" if self.loop_prep else "",
            "  for (ptrdiff_t i = 0; i < _size; ++i) {",
            "    "
            + " ".join(
                f"ptrdiff_t _o{k} = 0;" for k, kind in enumerate(layout) if kind[0] == "array"
            ),  # fmt: skip
            "    ptrdiff_t _rest = i;",
            f"    for (int _d = {ndim} - 1; _d >= 0; --_d) {{",
            "      const ptrdiff_t _c = _rest % _shape[_d]; _rest /= _shape[_d];",
            *offsets,
            "    }",
            *refs,
            self.operation,
            ";",
            "  }",
            f"  {self.after_loop};" if self.after_loop else "",
            "  GRADCORE_SIM_FTZ_OFF();" if flush else "",
            "}",
        ]
        return "\n".join(head + loop) + "\n"


def _not_simulated(feature: str) -> type:
    class NotSimulated:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise NotImplementedError(
                f"{feature} is not simulated by gradcore.backends.cudasim (gradcore builds its "
                "kernels with cupy.ElementwiseKernel only)"
            )

    NotSimulated.__name__ = NotSimulated.__qualname__ = feature.rpartition(".")[2]
    return NotSimulated


ReductionKernel = _not_simulated("cupy.ReductionKernel")
RawKernel = _not_simulated("cupy.RawKernel")
RawModule = _not_simulated("cupy.RawModule")


def fuse(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError("cupy.fuse is not simulated by gradcore.backends.cudasim")
