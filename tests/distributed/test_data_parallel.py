"""gradcore.distributed and fit(distributed=True): on the CPU over MPI, on GPUs over NCCL (the
``cuda`` tests; with one GPU a one-rank NCCL communicator still runs every collective).

These tests run twice: as one rank in the plain ``python -m pytest`` run, and as two under
``mpiexec -n 2 python -m mpi4py -m pytest tests/distributed`` (.ci/run). Every rank runs every
test, so each test makes the same collective calls on every rank, and asserts only after its
last one: a failure then cannot leave another rank waiting.
"""

# ruff: noqa: N803, N806 - X is a data matrix

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gradcore as gc
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


ROWS, FEATURES, CLASSES, BATCH = 96, 5, 3, 8  # 96 rows fill whole global batches for K <= 4


def _data(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(ROWS, FEATURES)).astype(dtype)
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def _loss(params: Any, X: Any, y: Any) -> Any:
    return gc.nn.softmax_cross_entropy(gc.nn.mlp(params, X), y)


def _accuracy(params: Any, X: Any, y: Any) -> float:
    return gc.nn.accuracy(gc.nn.mlp(params, X), y)


def _train(dtype: str, batch_size: int, distributed: bool, **options: Any) -> tuple:
    """Four epochs of a small softmax classifier; the params as host arrays and the history."""
    X, y = _data(dtype)
    seed = 1 + gd.rank() if distributed else 1  # fit broadcasts rank 0's params
    params = gc.nn.init_mlp([FEATURES, 8, CLASSES], seed=seed, dtype=dtype)
    history = gc.train.fit(
        _loss,
        params,
        X,
        y,
        optimizer=gc.optim.SGD(0.2, momentum=0.9),
        batch_size=batch_size,
        validation_data=(X[:40], y[:40]),
        metrics={"accuracy": _accuracy},
        progress=False,
        distributed=distributed,
        **{"epochs": 4, **options},
    )
    return gc.to_numpy([a for layer in params for a in layer.values()]), history


def test_allreduce_mean_averages_every_dtype_in_place() -> None:
    r, k = gd.rank(), gd.size()
    kept = np.full((3, 4), r + 1.0, np.float32)
    tree = {
        "a": kept,
        "b": [np.arange(5.0) * (r + 1), np.broadcast_to(np.float64(10 * (r + 1)), (2, 2))],
    }
    assert gd.allreduce_mean(tree) is tree
    mean = (k + 1) / 2
    assert tree["a"] is kept and tree["a"].dtype == np.float32
    np.testing.assert_array_equal(kept, np.full((3, 4), mean, np.float32))
    np.testing.assert_array_equal(tree["b"][0], np.arange(5.0) * mean)
    np.testing.assert_array_equal(tree["b"][1], np.full((2, 2), 10 * mean))  # read-only: replaced


def test_broadcast_makes_differently_seeded_ranks_equal(comm: Any) -> None:
    params = gc.nn.init_mlp([4, 8, 3], seed=10 + gd.rank())
    gd.broadcast(params)
    mine = [a for layer in params for a in layer.values()]
    everyone = comm.allgather(mine)
    root = [a for layer in gc.nn.init_mlp([4, 8, 3], seed=10) for a in layer.values()]
    for theirs in everyone:
        for a, b in zip(theirs, root):
            np.testing.assert_array_equal(a, b)


def test_the_shards_of_a_permutation_are_its_global_batches(comm: Any) -> None:
    k, b = gd.size(), 4
    order = np.random.default_rng(0).permutation(30)
    mine = gd.shard(order, b)
    steps = 30 // (k * b)
    assert mine.shape == (steps * b,) == (gd.local_rows(30, b),)
    shards = comm.allgather(mine)
    for step in range(steps):  # global step s is rank 0's b rows, then rank 1's, ...
        together = np.concatenate([s[step * b : (step + 1) * b] for s in shards])
        np.testing.assert_array_equal(together, order[step * k * b : (step + 1) * k * b])
    with pytest.raises(ValueError, match="do not fill one step"):
        gd.local_rows(k * b - 1, b)


@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 2e-6)])
def test_k_ranks_follow_one_process_with_k_times_the_batch(
    dtype: str, tolerance: float, comm: Any
) -> None:
    parallel, history = _train(dtype, BATCH, distributed=True)
    single, expected = _train(dtype, BATCH * gd.size(), distributed=False)
    everyone = comm.allgather([a.tobytes() for a in parallel])
    assert all(theirs == everyone[0] for theirs in everyone), "the ranks' params differ"
    for got, want in zip(parallel, single):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(history.loss, expected.loss, rtol=tolerance * 10)
    np.testing.assert_allclose(history.val_loss, expected.val_loss, rtol=tolerance * 10)
    for name in ("accuracy", "val_accuracy"):
        np.testing.assert_allclose(history.metrics[name], expected.metrics[name])


def test_every_rank_resumes_from_rank_0s_checkpoint(shared_path: Path) -> None:
    path = shared_path / "state.npz"
    _train("float64", BATCH, distributed=True, epochs=2, checkpoint=path)
    resumed, history = _train(
        "float64", BATCH, distributed=True, epochs=4, checkpoint=path, resume=True
    )
    straight, expected = _train("float64", BATCH, distributed=True, epochs=4)
    for got, want in zip(resumed, straight):
        np.testing.assert_array_equal(got, want)
    assert history.loss == expected.loss


def test_ranks_that_disagree_fail_together() -> None:
    if gd.size() == 1:
        pytest.skip("needs two ranks: mpiexec -n 2 python -m mpi4py -m pytest tests/distributed")
    X, y = _data("float64")
    rows = ROWS - 8 * gd.rank()  # each rank has other data: they would run other step counts
    params = gc.nn.init_mlp([FEATURES, 8, CLASSES], dtype="float64")
    with pytest.raises(ValueError, match=r"ranks disagree on rows \(8[0-9] to 96\)"):
        gc.train.fit(_loss, params, X[:rows], y[:rows], batch_size=4, distributed=True)


def test_importing_is_free_and_a_missing_mpi4py_says_what_to_install() -> None:
    code = (
        "import sys; import gradcore.distributed as gd; "
        "assert not {'mpi4py', 'cupy'} & set(sys.modules), 'imported on import'; "
        "sys.modules['mpi4py'] = None; gd.init()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ImportError: gradcore.distributed needs mpi4py" in done.stderr
    assert "pip install 'gradcore[mpi]'" in done.stderr


def test_a_failing_rank_ends_the_job(tmp_path: Path) -> None:
    if gd.size() > 1:
        pytest.skip("launches mpiexec itself: runs in the one-rank python -m pytest run")
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec on PATH: pip install 'gradcore[mpi]'")
    script = tmp_path / "fails.py"
    script.write_text(
        textwrap.dedent(
            """
            import gradcore.distributed as gd

            gd.init()
            if gd.rank() == 1:
                raise RuntimeError("rank 1 fails on purpose")
            gd.barrier()  # without python -m mpi4py, rank 0 would wait here for ever
            """
        )
    )
    command = [mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", str(script)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "rank 1 fails on purpose" in done.stderr


def _gpu(device: str = "cuda") -> str:
    """This rank's GPU, or a skip that says why there is none to use."""
    try:
        device = gd.init(device)
        gc.backend.backend_for_device(device)
    except (ImportError, ValueError, gc.DeviceError) as error:
        pytest.skip(f"no GPU for this rank: {error}")
    return device


@pytest.mark.cuda
def test_nccl_allreduce_mean_and_broadcast() -> None:
    cupy = pytest.importorskip("cupy")
    _gpu()
    r, k = gd.rank(), gd.size()
    kept = cupy.full((3, 4), r + 1.0, cupy.float32)
    tree = {"a": kept, "b": [cupy.arange(5.0) * (r + 1)]}
    gd.allreduce_mean(tree)
    params = {"W": cupy.full((2, 3), float(r)), "b": cupy.full((3,), r, cupy.float32)}
    gd.broadcast(params)
    mean = (k + 1) / 2
    assert tree["a"] is kept
    np.testing.assert_array_equal(kept.get(), np.full((3, 4), mean, np.float32))
    np.testing.assert_array_equal(tree["b"][0].get(), np.arange(5.0) * mean)
    assert not params["W"].any() and not params["b"].any()


@pytest.mark.cuda
@pytest.mark.parametrize(("dtype", "tolerance"), [("float64", 1e-12), ("float32", 2e-6)])
def test_k_gpus_follow_one_process_with_k_times_the_batch(dtype: str, tolerance: float) -> None:
    device = _gpu()
    parallel, history = _train(dtype, BATCH, distributed=True, device=device)
    single, expected = _train(dtype, BATCH * gd.size(), distributed=False, device=device)
    for got, want in zip(parallel, single):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(history.loss, expected.loss, rtol=tolerance * 10)


@pytest.mark.cuda
def test_params_on_the_device_init_returns_train_as_the_cli_does() -> None:
    """``gradcore train --distributed --device cuda``: "cuda" is probed first (the current GPU),
    init then binds each rank to its GPU and the params go on the device it returns, which for
    one GPU is also called "cuda"; fit takes either name of it."""
    device = _gpu()
    X, y = _data("float32")
    params = gc.nn.init_mlp([FEATURES, 8, CLASSES], seed=1, device=device)
    history = gc.train.fit(
        _loss, params, X, y, batch_size=BATCH, epochs=1, progress=False, distributed=True,
        device=device,
    )  # fmt: skip
    assert gc.backend.backend_of(params[0]["W"]) is gc.backend.backend_for_device(device)
    assert len(history.loss) == 1 and np.isfinite(history.loss).all()
