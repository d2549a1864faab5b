"""Tests of data-parallel training. They run twice: as one rank in the plain ``python -m pytest``
run, and as two under ``mpiexec -n 2 python -m mpi4py -m pytest tests/distributed`` (.ci/run).

Every rank runs every test, so each test makes the same collective calls on every rank, and
asserts only after its last one: a failure then cannot leave another rank waiting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import gradcore.distributed as gd


@pytest.fixture(autouse=True)
def _mpi() -> None:
    """Skip, with init()'s install hint as the reason, where mpi4py or MPI is missing."""
    try:
        gd.init()
    except ImportError as error:
        pytest.skip(str(error))


@pytest.fixture
def comm() -> Any:
    """MPI.COMM_WORLD, for the tests' own gathers (pickling is fine for a few results)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


@pytest.fixture
def shared_path(tmp_path: Path, comm: Any) -> Path:
    """Rank 0's tmp_path on every rank: the checkpoint folder all ranks read."""
    return Path(comm.bcast(str(tmp_path), root=0))
