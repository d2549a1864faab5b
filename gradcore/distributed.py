"""Layer 5: data-parallel training, one process per rank, on MPI (CPU) or NCCL (CUDA).

K copies of one script run under ``mpiexec -n K python -m mpi4py script.py``. Each rank trains
on its own shard of every minibatch and the gradients are averaged after every step, so all
ranks hold the same parameters, and K ranks with per-rank batch ``b`` follow one process with
batch ``K b`` up to the rounding of the reduction order.

Gradients travel as one flat buffer per dtype (Horovod's tensor fusion): one in-place
collective per dtype per step, since fifty small reductions cost about twenty times one fused
one. Only mpi4py's buffer methods (``Allreduce``, ``Bcast``) are used; the lowercase ones
pickle and are about fifteen times slower on 10 MB.

``python -m mpi4py`` matters: it turns an exception in one rank into ``MPI_Abort`` of all,
where plain ``python`` leaves the other ranks waiting in a collective for ever.

mpi4py and CuPy are imported by ``init()``, never on import, so that importing this module
costs nothing to those who never train in parallel.
"""

# ruff: noqa: N803 - X is a data matrix, as in gradcore.train

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from gradcore.pytree import tree_leaves

__all__ = [
    "allreduce_mean",
    "barrier",
    "broadcast",
    "earliest",
    "init",
    "is_root",
    "local_rows",
    "mean",
    "rank",
    "shard",
    "sharded",
    "size",
    "start",
]

INSTALL_HINT = (
    "pip install 'gradcore[mpi]' (mpi4py and the MPICH wheel), or on a cluster mpi4py built "
    "against the site's MPI: pip install --no-binary mpi4py mpi4py"
)
NCCL_HINT = "pip install nvidia-nccl-cu12 (or nvidia-nccl-cu13, to match the CuPy wheel)"


class _World:
    """This process's view of the job: the MPI communicator and, on CUDA, the NCCL one."""

    def __init__(self, mpi: Any) -> None:
        self.mpi = mpi
        self.comm = mpi.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.nccl: Any = None  # cupyx.distributed.NCCLBackend once init() saw a CUDA device
        self.gpu: int | None = None
        # (library, dtype) -> flat buffer, kept between steps so that a step allocates nothing
        self.buffers: dict[tuple[str, str], Any] = {}


_world: _World | None = None


def _join() -> _World:
    global _world
    if _world is None:
        try:
            from mpi4py import MPI
        except ImportError as error:
            raise ImportError(
                f"gradcore.distributed needs mpi4py and an MPI library: {INSTALL_HINT}"
            ) from error
        _world = _World(MPI)
    return _world


def init(device: str = "cpu") -> str:
    """Join the MPI job (once; later calls return at once) and return this rank's device.

    ``"cpu"`` comes back as is. ``"cuda"`` binds this rank to GPU ``local_rank`` (its rank
    among the ranks on its node, one GPU each) and comes back as ``"cuda:N"``; an explicit
    ``"cuda:N"`` is kept. A CUDA device also sets up NCCL, one GPU per rank, its id passed
    around by MPI. Create the params on the device this returns.
    """
    world = _join()
    if not device.startswith("cuda"):
        return device
    if world.nccl is not None:
        if device not in ("cuda", f"cuda:{world.gpu}"):
            raise ValueError(
                f"gradcore.distributed: rank {world.rank} is bound to cuda:{world.gpu}, not "
                f"{device!r}: one GPU per rank"
            )
        return f"cuda:{world.gpu}"
    # CuPy (or the simulated device standing in for it), as the CUDA backend imports it; by
    # name, as every backend is loaded: the core and the trainer import no CUDA module
    cupy = importlib.import_module("gradcore.backends.cupy_backend").import_cupy(device)
    if device == "cuda":
        node = world.comm.Split_type(world.mpi.COMM_TYPE_SHARED)
        local, ranks, gpus = node.Get_rank(), node.Get_size(), cupy.cuda.runtime.getDeviceCount()
        node.Free()
        if ranks > gpus:
            raise ValueError(
                f"gradcore.distributed: {ranks} ranks on this node share {gpus} GPUs; NCCL needs "
                f"one GPU per rank: mpiexec -n {gpus} per node, or device='cpu'"
            )
        gpu = local
    else:
        gpu = int(device.partition(":")[2])
    from cupy.cuda import nccl

    if not nccl.available:
        raise ImportError(f"gradcore.distributed on CUDA needs NCCL: {NCCL_HINT}")
    cupy.cuda.Device(gpu).use()
    world.nccl = importlib.import_module("cupyx.distributed").NCCLBackend(
        world.size, world.rank, use_mpi=True
    )
    world.gpu = gpu
    return f"cuda:{gpu}"


def rank() -> int:
    """This process's rank, 0 to ``size() - 1``."""
    return _join().rank


def size() -> int:
    """The number of ranks (1 without mpiexec)."""
    return _join().size


def is_root() -> bool:
    """Rank 0 speaks for all: progress, checkpoints, plots."""
    return _join().rank == 0


def barrier() -> None:
    """Wait until every rank is here."""
    _join().comm.Barrier()


def allreduce_mean(tree: Any) -> Any:
    """Average every array of ``tree`` over all ranks, in place; returns ``tree``.

    One flat buffer per dtype, one in-place ``Allreduce`` (NCCL's on CUDA) each. A read-only
    array (the gradient of a sum is a NumPy broadcast view) is replaced in its dict or list
    instead. Every rank must pass arrays of the same shapes and dtypes, in the same order.
    """
    world = _join()

    def reduce(buffer: Any) -> None:
        if isinstance(buffer, np.ndarray):
            world.comm.Allreduce(world.mpi.IN_PLACE, buffer, op=world.mpi.SUM)
        else:
            _nccl(world).all_reduce(buffer, buffer, "sum")
        buffer /= world.size

    return _fused(world, tree, reduce, write_back=True)


def broadcast(tree: Any, root: int = 0) -> Any:
    """Give every array of ``tree`` rank ``root``'s values, in place; returns ``tree``."""
    world = _join()

    def send(buffer: Any) -> None:
        if isinstance(buffer, np.ndarray):
            world.comm.Bcast(buffer, root=root)
        else:
            _nccl(world).broadcast(buffer, root)

    return _fused(world, tree, send, write_back=world.rank != root)


def mean(value: float, weight: float = 1.0) -> float:
    """The ``weight``-weighted mean of a number over the ranks (one 16-byte Allreduce)."""
    world = _join()
    pair = np.array([value * weight, weight], np.float64)
    world.comm.Allreduce(world.mpi.IN_PLACE, pair, op=world.mpi.SUM)
    return float(pair[0] / pair[1])


def earliest(index: int | None) -> int | None:
    """The smallest ``index`` over the ranks, None where every rank has None.

    fit's divergence guard uses it so that all ranks roll back to the same step: a rank that
    stopped alone would leave the others waiting in the next step's collective.
    """
    world = _join()
    found = np.array([np.iinfo(np.int64).max if index is None else index], np.int64)
    world.comm.Allreduce(world.mpi.IN_PLACE, found, op=world.mpi.MIN)
    return None if found[0] == np.iinfo(np.int64).max else int(found[0])


# ---------------------------------------------------------------------------------------------
# what fit needs: rows per rank, the shard of a permutation, a common start, sharded evaluation


def local_rows(n: int, batch_size: int) -> int:
    """Rows each rank trains on per epoch: ``n // (K b)`` steps of ``b`` rows.

    The remainder, ``n mod (K b)`` rows, is dropped (as PyTorch's ``drop_last``), a different
    set each epoch since each epoch draws a new permutation: every rank runs the same number
    of equal steps, so the mean of the ranks' gradients is the mean over the global batch.
    """
    k = size()
    steps = n // (k * batch_size)
    if steps == 0:
        raise ValueError(
            f"fit: {n} rows do not fill one step of {k} ranks x batch_size {batch_size} "
            "(batch_size is per rank); use a smaller batch_size or fewer ranks"
        )
    return steps * batch_size


def shard(order: np.ndarray, batch_size: int) -> np.ndarray:
    """This rank's rows of an epoch's ``order``, in step order.

    Global step ``s`` takes ``order[s K b : (s + 1) K b]``; rank ``r`` gets the ``r``-th ``b``
    of them, which makes the K ranks together one process with batch ``K b``.
    """
    k, r = size(), rank()
    rows = local_rows(len(order), batch_size)
    return order[: rows * k].reshape(-1, k, batch_size)[:, r].reshape(-1)


def start(params: Any, optimizer: Any, rng: np.random.Generator, **counts: int) -> None:
    """Start every rank where rank 0 starts: same place, same params, same optimizer state.

    First checks that ``counts`` (rows, epoch, step...), the next draw of the shuffling
    generator and the number of optimizer arrays agree over the ranks: a rank that found no
    checkpoint to resume, or has other data or another seed, would run another number of steps
    and leave the others waiting. Any difference raises the same ValueError on every rank.
    Then rank 0's params and optimizer state are broadcast.
    """
    world = _join()
    state = optimizer.state_dict()
    arrays = [leaf for leaf in tree_leaves(list(state.values())) if hasattr(leaf, "shape")]
    counts = {
        **counts,
        "shuffling seed": int(copy.deepcopy(rng).integers(2**62)),
        "optimizer arrays": len(arrays),
    }
    values = np.array(list(counts.values()), np.int64)
    bounds = np.concatenate([values, -values])
    world.comm.Allreduce(world.mpi.IN_PLACE, bounds, op=world.mpi.MAX)
    high, low = bounds[: len(values)], -bounds[len(values) :]
    differ = [f"{name} ({lo} to {hi})" for name, lo, hi in zip(counts, low, high) if lo != hi]
    if differ:
        raise ValueError(
            f"fit: the {world.size} ranks disagree on {', '.join(differ)}; every rank must run "
            "the same script, data, seed and checkpoint (a checkpoint on a shared file system)"
        )
    broadcast(params)
    broadcast(arrays)
    numbers = [k for k, v in state.items() if isinstance(v, (int, float)) and type(v) is not bool]
    packed = np.array([state[k] for k in numbers], np.float64)
    world.comm.Bcast(packed, root=0)
    state.update({k: type(state[k])(v) for k, v in zip(numbers, packed.tolist())})
    optimizer.load_state_dict(state)


def sharded(fn: Callable[[Any, Any, Any], Any]) -> Callable[[Any, Any, Any], float]:
    """``fn(params, X, y)`` with each rank taking a contiguous ``1/K`` of the rows and the
    ranks' values combined as the mean weighted by rows.

    K times less work than every rank evaluating everything, and the single-process number
    for any per-row mean (a mean loss, accuracy).
    """

    @functools.wraps(fn)
    def on_shards(params: Any, X: Any, y: Any) -> float:
        world = _join()
        n = X.shape[0]
        lo, hi = n * world.rank // world.size, n * (world.rank + 1) // world.size
        value = float(fn(params, X[lo:hi, ...], y[lo:hi, ...])) if hi > lo else 0.0
        return mean(value, hi - lo)

    return on_shards


# ---------------------------------------------------------------------------------------------
# fused buffers


def _nccl(world: _World) -> Any:
    if world.nccl is None:
        raise RuntimeError(
            "gradcore.distributed: CuPy arrays travel over NCCL; call "
            "gradcore.distributed.init('cuda') first"
        )
    return world.nccl


def _library(x: Any) -> Any:
    """NumPy or CuPy itself (not the Array API wrapper: ``concatenate(..., out=)`` is needed)."""
    if isinstance(x, np.ndarray):
        return np
    if type(x).__module__.partition(".")[0] == "cupy":
        return importlib.import_module("cupy")
    raise TypeError(f"gradcore.distributed: expected NumPy or CuPy arrays, got {type(x).__name__}")


def _fused(world: _World, tree: Any, collective: Callable[[Any], None], write_back: bool) -> Any:
    """Pack the arrays of ``tree`` into one flat buffer per (library, dtype), run
    ``collective`` on each buffer in place, and write the results back into ``tree``."""
    leaves = tree_leaves(tree)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, leaf in enumerate(leaves):
        groups.setdefault((_library(leaf).__name__, leaf.dtype.str), []).append(i)
    results = list(leaves)
    for key, members in groups.items():
        xp = _library(leaves[members[0]])
        total = sum(leaves[i].size for i in members)
        buffer = world.buffers.get(key)
        if buffer is None or buffer.size < total:
            buffer = world.buffers[key] = xp.empty(total, leaves[members[0]].dtype)
        buffer = buffer[:total]
        xp.concatenate([leaves[i].reshape(-1) for i in members], out=buffer)
        collective(buffer)
        offset = 0
        for i in members:
            results[i] = buffer[offset : offset + leaves[i].size].reshape(leaves[i].shape)
            offset += leaves[i].size
    if write_back:
        _assign(tree, results)
    return tree


def _assign(tree: Any, values: list[Any]) -> None:
    """Copy ``values`` into the arrays of ``tree``, in pytree order: in place, or for a
    read-only array by putting a copy in its dict or list."""
    remaining = iter(values)

    def walk(node: dict | list | tuple) -> None:
        for key, child in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list, tuple)):
                walk(child)
                continue
            value = next(remaining)
            if getattr(child.flags, "writeable", True):  # CuPy arrays are always writeable
                child[...] = value
            elif isinstance(node, tuple):
                raise ValueError(
                    "gradcore.distributed: a read-only array inside a tuple cannot be "
                    "updated; hold the arrays in dicts and lists, or pass writeable copies"
                )
            else:
                node[key] = value.copy()

    walk(tree if isinstance(tree, (dict, list, tuple)) else (tree,))
