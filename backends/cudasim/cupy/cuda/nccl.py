"""Simulated ``cupy.cuda.nccl``: NCCL's collectives over MPI (mpi4py), one simulated GPU per
rank. The arrays' bytes travel through host buffers; the checks NCCL makes (one device per
communicator, matching sizes and dtypes, a known op) are made here."""

from __future__ import annotations

available = True

NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
NCCL_AVG = 4


def get_version() -> int:
    return 22000


class NcclError(RuntimeError):
    """cupy_backends.cuda.libs.nccl.NcclError."""
