"""Simulated ``cupyx.distributed``: ``NCCLBackend`` over MPI (``use_mpi=True``), one simulated
GPU per rank. Each collective checks what NCCL would (contiguous arrays on the communicator's
device, a known op and dtype) and moves the bytes through mpi4py on the host."""

from __future__ import annotations

from typing import Any

import numpy as np
from cupy import _core
from cupy.cuda import nccl

__all__ = ["NCCLBackend"]

DTYPES = set("bBiIlLqQefd")
OPS = {"sum": np.add, "prod": np.multiply, "max": np.maximum, "min": np.minimum}


class NCCLBackend:
    """A NCCL communicator of ``n_devices`` ranks on the GPU current at creation."""

    def __init__(self, n_devices: int, rank: int, host: Any = None, port: int = 13333,
                 use_mpi: bool = False) -> None:  # fmt: skip
        if not use_mpi:
            raise NotImplementedError(
                "NCCLBackend over a TCP store is not simulated: pass use_mpi=True"
            )
        from mpi4py import MPI

        self._mpi = MPI.COMM_WORLD
        if self._mpi.Get_size() != n_devices or self._mpi.Get_rank() != rank:
            raise ValueError(
                f"NCCLBackend({n_devices}, {rank}): the MPI job has {self._mpi.Get_size()} "
                f"ranks and this is rank {self._mpi.Get_rank()}"
            )
        self._n_devices, self.rank = n_devices, rank
        self._device = _core.current_id()
        self._mpi.Barrier()

    def _host(self, array: Any) -> np.ndarray:
        if type(array) is not _core.ndarray:
            raise TypeError(f"NCCL takes cupy.ndarray, not {type(array).__name__}")
        if array._device != self._device:
            raise nccl.NcclError(
                f"NCCL_ERROR_INVALID_ARGUMENT: array on GPU {array._device}, but this "
                f"communicator was created on GPU {self._device}"
            )
        if not (array.flags.c_contiguous or array.flags.f_contiguous):
            raise RuntimeError("NCCL requires arrays to be either c- or f-contiguous")
        if array.dtype.char not in DTYPES:
            raise TypeError(f"Unknown dtype {array.dtype} for NCCL")
        return array._array.reshape(-1, order="A")

    def _op(self, op: str) -> Any:
        if op not in OPS:
            raise RuntimeError(f"Unknown op {op} for NCCL")
        return OPS[op]

    def all_reduce(self, in_array: Any, out_array: Any, op: str = "sum",
                   stream: Any = None) -> None:  # fmt: skip
        source, target = self._host(in_array), self._host(out_array)
        reduce = self._op(op)
        if target.size < source.size or target.dtype != source.dtype:
            raise nccl.NcclError("NCCL_ERROR_INVALID_ARGUMENT: output smaller or of another dtype")
        gathered = np.empty((self._n_devices, source.size), source.dtype)
        self._mpi.Allgather(np.ascontiguousarray(source).view(np.uint8),
                            gathered.view(np.uint8))  # fmt: skip
        with np.errstate(all="ignore"):
            target[: source.size] = reduce.reduce(gathered, axis=0)

    def broadcast(self, in_out_array: Any, root: int = 0, stream: Any = None) -> None:
        data = self._host(in_out_array)
        if not 0 <= root < self._n_devices:
            raise nccl.NcclError(f"NCCL_ERROR_INVALID_ARGUMENT: root {root}")
        buffer = np.ascontiguousarray(data)
        self._mpi.Bcast(buffer.view(np.uint8), root=root)
        data[...] = buffer

    def barrier(self) -> None:
        self._mpi.Barrier()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        raise NotImplementedError(f"NCCLBackend.{name} is not simulated")
