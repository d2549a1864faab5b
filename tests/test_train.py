"""gc.train.fit: minibatching, devices, history, checkpoints and resume, Ctrl-C, NaN, errors."""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import gradcore as gc
from gradcore import checkpoints, nn, optim, train


def problem(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.float64)
    return X, y


def logistic_loss(params, xb, yb):
    return nn.binary_cross_entropy_with_logits(nn.mlp(params, xb), yb)


def accuracy(params, X, y):
    return nn.accuracy(nn.mlp(params, X), y)


def fit(params=None, device="cpu", **kwargs):
    X, y = kwargs.pop("data", problem())
    params = nn.init_mlp([3, 4, 1], seed=0) if params is None else params
    kwargs.setdefault("optimizer", optim.SGD(0.1, momentum=0.9))
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("epochs", 3)
    return params, train.fit(
        kwargs.pop("loss_fn", logistic_loss), params, X, y, device=device, **kwargs
    )


def host(params):
    return [a for layer in gc.to_numpy(params) for a in (layer["W"], layer["b"])]


def assert_same_params(a, b):
    for x, y in zip(host(a), host(b)):
        np.testing.assert_array_equal(x, y)


def test_fit_trains_host_params_in_place_on_the_device(device):
    params = nn.init_mlp([3, 4, 1], seed=0)  # on the host
    first_layer = params[0]
    X, y = problem()
    history = train.fit(
        logistic_loss, params, X, y, optimizer=optim.SGD(0.5, momentum=0.9), epochs=20,
        batch_size=8, device=device, validation_data=problem(20, seed=1),
        metrics=[accuracy], progress=False,
    )  # fmt: skip
    assert params[0] is first_layer and history.params is params
    assert gc.device_of(params[0]["W"]) == device
    assert str(gc.to_numpy(params[0]["W"]).dtype) == "float32"
    assert history.epochs == 20
    assert len(history.val_loss) == len(history.time) == 20
    assert set(history.metrics) == {"accuracy", "val_accuracy"}
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.metrics["accuracy"][-1] >= 0.95
    assert history.metrics["val_accuracy"][-1] >= 0.85
    assert all(t > 0 for t in history.time)


def test_every_row_once_per_epoch_in_a_fresh_seeded_order_last_batch_kept():
    X = np.arange(10, dtype=np.float64)[:, None] * np.ones((1, 3))
    seen = []

    def loss(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:  # the training steps, not fit's first check
            seen.append(gc.to_numpy(xb)[:, 0].astype(int).tolist())
        return logistic_loss(params, xb, yb)

    optimizer = optim.SGD(0.01)
    # jit=False: the loss looks at every batch in Python, so each step must run it
    fit(data=(X, np.zeros(10)), loss_fn=loss, optimizer=optimizer, batch_size=4, epochs=3,
        jit=False)  # fmt: skip
    assert [len(b) for b in seen] == [4, 4, 2] * 3
    assert optimizer.iterations == 9
    epochs = [sum(seen[3 * e : 3 * e + 3], []) for e in range(3)]
    assert all(sorted(order) == list(range(10)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3
    expected = np.random.default_rng(0)
    assert epochs == [expected.permutation(10).tolist() for _ in range(3)]

    seen.clear()
    fit(data=(X, np.zeros(10)), loss_fn=loss, batch_size=4, epochs=1, shuffle=False, jit=False)
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_same_seed_same_params_other_seed_other_params():
    a, _ = fit(seed=3)
    b, _ = fit(seed=3)
    c, _ = fit(seed=4)
    assert_same_params(a, b)
    assert not np.array_equal(host(a)[0], host(c)[0])


def test_loss_is_read_every_read_every_steps(monkeypatch):
    backend = gc.backend.backend_for_device("cpu")
    reads = []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: reads.append(x.shape) or real(x))
    monkeypatch.setattr(train, "READ_EVERY", 3)
    fit(batch_size=4, epochs=2)  # 10 steps an epoch: reads of 3, 3, 3 and 1 losses
    # before training, one read for each of X and y: are they finite?
    assert reads == [(40,), (40,)] + [(3,), (3,), (3,), (1,)] * 2


def test_resume_after_epoch_k_gives_exactly_the_uninterrupted_params(device, tmp_path):
    path = tmp_path / "run.npz"
    uninterrupted, full = fit(device=device, epochs=5, metrics=[accuracy])
    _, first = fit(device=device, epochs=2, checkpoint=path, metrics=[accuracy])
    assert first.epochs == 2
    resumed, history = fit(
        device=device, epochs=5, checkpoint=path, resume=True, metrics=[accuracy]
    )
    assert_same_params(resumed, uninterrupted)
    assert history.epochs == 5
    assert history.loss == full.loss
    assert history.metrics == full.metrics


def test_a_resume_with_nothing_to_train_keeps_the_checkpoint_resumable_exactly(tmp_path):
    # the checkpoint is written again at the end of that call: with the restored shuffling
    # generator, not the one the trainer held before the resume
    path = tmp_path / "run.npz"
    uninterrupted, _ = fit(epochs=3)
    fit(epochs=2, checkpoint=path)
    _, nothing = fit(epochs=2, checkpoint=path, resume=True)
    assert nothing.epochs == nothing.resumed_epochs == 2
    resumed, _ = fit(epochs=3, checkpoint=path, resume=True)
    assert_same_params(resumed, uninterrupted)


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tmp_path):
    path = tmp_path / "run.npz"
    uninterrupted, full = fit(epochs=3)
    steps = []

    def interrupted_loss(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:
            steps.append(1)
            if len(steps) == 7:  # epoch 2, step 2 of 5
                signal.raise_signal(signal.SIGINT)
        return logistic_loss(params, xb, yb)

    # jit=False: a replayed step runs no Python
    with pytest.raises(KeyboardInterrupt, match=f"state saved to {re.escape(str(path))}"):
        fit(epochs=3, loss_fn=interrupted_loss, checkpoint=path, jit=False)
    assert len(steps) == 7
    _, meta = train.load_checkpoint(path)
    assert (meta["epoch"], meta["step"]) == (1, 2)
    resumed, history = fit(epochs=3, checkpoint=path, resume=True)
    assert_same_params(resumed, uninterrupted)
    np.testing.assert_allclose(history.loss, full.loss, rtol=1e-12)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def dropout_fit(seed=0, interrupt_at=None, **kwargs):
    """``fit`` of a loss with dropout that draws from a generator named to ``fit``; with
    ``interrupt_at``, Ctrl-C during that (eager) step."""
    masks = gc.random.Generator(seed)
    steps = []

    def loss(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:
            steps.append(1)
            if len(steps) == interrupt_at:
                signal.raise_signal(signal.SIGINT)
        return nn.binary_cross_entropy_with_logits(
            nn.mlp(params, xb, dropout_rate=0.5, rng=masks), yb
        )

    return fit(loss_fn=loss, generator=masks, validation_data=problem(10, 1), **kwargs)


@pytest.mark.parametrize("jit", [True, False])
def test_a_resumed_run_with_dropout_draws_the_masks_of_the_uninterrupted_one(tmp_path, jit):
    path = tmp_path / "run.npz"
    uninterrupted, full = dropout_fit(epochs=4, jit=jit)
    dropout_fit(epochs=2, checkpoint=path, jit=jit)
    _, meta = train.load_checkpoint(path)
    assert meta["generator"]["started"] and meta["settings"]["generator"] == 0
    resumed, history = dropout_fit(epochs=4, checkpoint=path, resume=True, jit=jit)
    assert_same_params(resumed, uninterrupted)
    assert history.loss == full.loss and history.val_loss == full.val_loss
    # Without its state the generator starts again from its seed: other masks, other params.
    meta["generator"] = None
    checkpoints.save_checkpoint(path, gc.to_numpy(resumed), meta)
    restarted, _ = dropout_fit(epochs=5, checkpoint=path, resume=True, jit=jit)
    again, _ = dropout_fit(epochs=5, jit=jit)
    assert any((a != b).any() for a, b in zip(host(restarted), host(again)))


def test_ctrl_c_inside_an_epoch_with_dropout_resumes_the_same_masks(tmp_path):
    path = tmp_path / "run.npz"
    uninterrupted, full = dropout_fit(epochs=3, jit=False)
    with pytest.raises(KeyboardInterrupt, match="state saved to"):
        dropout_fit(epochs=3, checkpoint=path, jit=False, interrupt_at=7)  # epoch 2, step 2
    _, meta = train.load_checkpoint(path)
    assert (meta["epoch"], meta["step"]) == (1, 2)
    resumed, history = dropout_fit(epochs=3, checkpoint=path, resume=True, jit=False)
    assert_same_params(resumed, uninterrupted)
    assert history.loss == full.loss


def test_a_resume_with_another_generator_or_none_is_refused(tmp_path):
    path = tmp_path / "run.npz"
    dropout_fit(epochs=1, checkpoint=path)
    with pytest.raises(ValueError, match=r"written with generator=0 but this run has generator=1"):
        dropout_fit(seed=1, epochs=2, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match=r"written with generator=0 but this run has generator=No"):
        fit(epochs=2, checkpoint=path, resume=True)
    with pytest.raises(TypeError, match=r"generator must be a gradcore.random.Generator .*got Gen"):
        fit(epochs=1, generator=np.random.default_rng(0))


def test_checkpoint_is_npz_without_pickles_and_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    params, _ = fit(epochs=1, checkpoint=path)
    with np.load(path, allow_pickle=False) as data:
        assert "meta" in data.files
    saved, meta = train.load_checkpoint(path)
    for a, b in zip(saved, host(params)):
        np.testing.assert_array_equal(a, b)
    assert meta["epoch"] == 1 and meta["optimizer/iterations"] == 5
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fit(epochs=2, checkpoint=path, resume=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "run.npz.history.jsonl"]


def test_resume_without_a_checkpoint_says_it_starts_afresh(tmp_path):
    a, _ = fit(epochs=2)
    with pytest.warns(UserWarning, match=r"no checkpoint at .*new.npz yet; starting afresh"):
        b, _ = fit(epochs=2, checkpoint=tmp_path / "new.npz", resume=True)
    assert_same_params(a, b)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        fit(resume=True)


def mse_loss(params, xb, yb):
    return nn.mse(gc.reshape(nn.mlp(params, xb), (-1,)), yb)


@pytest.mark.parametrize("read_every", [50, 4])
def test_nan_loss_stops_naming_epoch_and_step_params_from_before_it(monkeypatch, read_every):
    monkeypatch.setattr(train, "READ_EVERY", read_every)
    X, y = problem(10)
    steps = []

    def nan_at_step_7(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:
            steps.append(1)
            if len(steps) == 7:
                return mse_loss(params, xb, yb) * float("nan")
        return mse_loss(params, xb, yb)

    kwargs = dict(batch_size=1, shuffle=False, epochs=2, jit=False)  # counts steps in Python
    stopped = nn.init_mlp([3, 4, 1], seed=0)
    with pytest.raises(
        FloatingPointError, match=r"diverged at epoch 1/2, step 7/10: the loss is nan"
    ):
        fit(stopped, data=(X, y), loss_fn=nan_at_step_7, **kwargs)
    before_the_nan, _ = fit(data=(X[:6], y[:6]), loss_fn=mse_loss, **kwargs | {"epochs": 1})
    assert_same_params(stopped, before_the_nan)
    assert all(np.isfinite(a).all() for a in host(stopped))


def test_divergence_guard_stops_a_loss_far_above_the_start_restoring_params(monkeypatch):
    stopped = []
    for read_every in (50, 2):  # found at a read of the buffer or in the middle of one
        monkeypatch.setattr(train, "READ_EVERY", read_every)
        params = nn.init_mlp([3, 4, 1], seed=0)
        with pytest.raises(
            FloatingPointError,
            match=r"diverged at epoch 1/3, step 4/5: the loss is 651\.\d, more than "
            r"divergence_factor=1000 times the starting loss 0\.65; params hold their values "
            r"from before that step",
        ):
            fit(params, optimizer=optim.SGD(1e3, momentum=0.9))
        stopped.append(params)
    assert_same_params(*stopped)
    X, y = problem()
    rows = np.random.default_rng(0).permutation(40)[:24]  # the first three batches
    three_steps, _ = fit(
        data=(X[rows], y[rows]), optimizer=optim.SGD(1e3, momentum=0.9), epochs=1,
        shuffle=False, divergence_factor=None,
    )  # fmt: skip
    assert_same_params(stopped[0], three_steps)
    # Without the bound the loss (with logits: finite, never clipped) runs to the end.
    _, history = fit(optimizer=optim.SGD(1e3, momentum=0.9), divergence_factor=None)
    assert history.epochs == 3 and history.loss[0] > 300


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid:RuntimeWarning")
def test_a_non_finite_loss_is_stopped_even_without_the_bound():
    with pytest.raises(FloatingPointError, match=r"diverged at epoch \d/3, step \d/5: the loss is"):
        fit(loss_fn=mse_loss, optimizer=optim.SGD(1e6, momentum=0.9), divergence_factor=None)


def test_bad_input_gets_a_clear_error():
    X, y = problem()
    with pytest.raises(ValueError, match="X has 40 rows but y has 39"):
        fit(data=(X, y[:-1]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        fit(batch_size=0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer, got -1"):
        fit(epochs=-1)
    with pytest.raises(TypeError, match=r"loss_fn must return a scalar.*\(40, 1\)"):
        fit(loss_fn=lambda p, xb, yb: nn.mlp(p, xb))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        fit(data=(X, 2 * y))
    labels = np.arange(40) % 4  # four classes for a three-class network
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fit(
            nn.init_mlp([3, 3]),
            data=(X, labels),
            loss_fn=lambda p, xb, yb: nn.softmax_cross_entropy(nn.mlp(p, xb), yb),
        )
    with pytest.raises(ValueError, match="no training data"):
        fit(data=(X[:0], y[:0]))


def test_zero_epochs_trains_nothing():
    params, history = fit(epochs=0)
    assert history.epochs == 0
    assert_same_params(params, nn.init_mlp([3, 4, 1], seed=0))


def test_arrays_on_another_device_are_refused():
    on_other = nn.init_mlp([3, 4, 1], device="strict1")
    with pytest.raises(gc.DeviceError, match="params are on device 'strict1' but device='strict'"):
        fit(on_other, device="strict")
    X, y = problem()
    with pytest.raises(gc.DeviceError, match="X is on device 'strict1'"):
        fit(data=(gc.array(X, device="strict1"), y), device="strict")
    with pytest.raises(gc.DeviceError, match="unknown device 'tpu'"):
        fit(device="tpu")


def test_no_output_without_progress_or_terminal(capsys):
    fit(progress=False)
    fit(progress=True)  # pytest's captured stderr is not a terminal
    assert capsys.readouterr() == ("", "")


def test_history_plot_writes_a_png(tmp_path):
    _, history = fit(validation_data=problem(10, seed=1), metrics=[accuracy])
    path = history.plot(tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    _, history = fit(epochs=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="History.plot needs matplotlib: pip install"):
        history.plot(tmp_path / "curves.png")


# ---------------------------------------------------------------------------------------------
# the loop's pieces


def test_every_training_step_is_the_one_built_by_make_step(monkeypatch):
    built, calls = [], []
    real = train._make_step

    def counting(*args, **kwargs):
        step = real(*args, **kwargs)
        built.append(step)
        return lambda *args: calls.append(1) or step(*args)

    monkeypatch.setattr(train, "_make_step", counting)
    fit(epochs=2)
    assert len(built) == 1 and len(calls) == 10


# ---------------------------------------------------------------------------------------------
# checkpoints: what they record, what a resume checks


def test_checkpoint_records_format_settings_and_architecture(tmp_path):
    path = tmp_path / "run.npz"
    fit(epochs=1, checkpoint=path, seed=5, optimizer=optim.SGD(0.1, momentum=0.9, nesterov=True))
    _, meta = train.load_checkpoint(path)
    assert meta["format"] == train.FORMAT == 2
    assert (meta["ranks"], meta["rows"]) == (1, 40)  # what an epoch's steps depend on
    assert meta["settings"] == {
        "optimizer": "SGD", "learning_rate": 0.1, "momentum": 0.9, "nesterov": True,
        "weight_decay": 0.0, "batch_size": 8, "seed": 5,
    }  # fmt: skip
    assert meta["architecture"] == [[[3, 4], "float32"], [[4], "float32"], [[4, 1], "float32"],
                                    [[1], "float32"]]  # fmt: skip
    schedule = optim.SGD(optim.linear_decay(0.1, 0.01, 100))
    fit(epochs=1, checkpoint=path, optimizer=schedule, overwrite=True)
    _, meta = train.load_checkpoint(path)
    assert (
        meta["settings"]["learning_rate"] == "linear_decay.rate(final=0.01, initial=0.1, steps=100)"
    )


def test_resume_names_the_settings_that_changed_unless_allowed(tmp_path):
    path = tmp_path / "run.npz"
    fit(epochs=1, checkpoint=path)
    with pytest.raises(
        ValueError,
        match=r"written with learning_rate=0.1, batch_size=8 but this run has learning_rate=0.2, "
        r"batch_size=4; pass allow_changes=True \(--allow-changes\)",
    ):
        fit(epochs=2, checkpoint=path, resume=True, batch_size=4, optimizer=optim.SGD(0.2, 0.9))
    with pytest.raises(ValueError, match=r"written with seed=0 but this run has seed=1"):
        fit(epochs=2, checkpoint=path, resume=True, seed=1)
    _, history = fit(
        epochs=2, checkpoint=path, resume=True, batch_size=4, optimizer=optim.SGD(0.2, 0.9),
        allow_changes=True,
    )  # fmt: skip
    assert history.epochs == 2 and history.resumed_epochs == 1
    with pytest.raises(gc.CheckpointError, match=r"holds params of shapes and dtypes .*\[3, 4\]"):
        fit(nn.init_mlp([3, 5, 1]), epochs=3, checkpoint=path, resume=True, allow_changes=True)


def test_an_existing_checkpoint_is_not_overwritten_without_being_asked(tmp_path):
    path = tmp_path / "run.npz"
    fit(epochs=1, checkpoint=path)
    before = path.read_bytes()
    with pytest.raises(
        FileExistsError,
        match=r"run.npz exists; pass resume=True to continue from it, overwrite=True to start "
        r"again from scratch, or another checkpoint path",
    ):
        fit(epochs=2, checkpoint=path)
    assert path.read_bytes() == before
    _, history = fit(epochs=2, checkpoint=path, overwrite=True)
    assert history.resumed_epochs == 0
    assert len(train.history_path(path).read_text().splitlines()) == 2


def test_history_lives_beside_the_checkpoint_so_its_size_does_not_grow(tmp_path):
    short, long = tmp_path / "short.npz", tmp_path / "long.npz"
    fit(epochs=1, checkpoint=short)
    _, history = fit(epochs=40, checkpoint=long, validation_data=problem(10, 1), metrics=[accuracy])
    assert abs(long.stat().st_size - short.stat().st_size) < 40
    lines = train.history_path(long).read_text().splitlines()
    assert [json.loads(line)["loss"] for line in lines] == history.loss
    # An epoch appended by a run killed before its checkpoint is dropped at the next resume.
    with train.history_path(short).open("a") as log:
        log.write('{"loss": 1.0, "metrics": {}, "time": 0.1}\n{"loss": 2')
    resumed, history = fit(epochs=3, checkpoint=short, resume=True)
    uninterrupted, full = fit(epochs=3)
    assert_same_params(resumed, uninterrupted)
    assert history.loss == full.loss
    assert len(train.history_path(short).read_text().splitlines()) == 3


def write_npz(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.mark.parametrize(
    "spoil, why",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:-300]), "truncated or corrupt"),
        (lambda p: p.write_bytes(p.read_bytes()[:200] + b"X" * 40 + p.read_bytes()[240:]),
         "truncated or corrupt"),
        (lambda p: p.write_bytes(b"hello, not a checkpoint"), "not an .npz file"),
        (lambda p: p.write_bytes(b""), "it is empty"),
        (lambda p: p.write_bytes(pickle.dumps({"param/0": 1})), "it is a pickle, which gradcore"),
        (lambda p: np.save(open(p, "wb"), np.zeros(3)), "single .npy array"),
        (lambda p: write_npz(p, weights=np.zeros(3)), "without gradcore's metadata"),
        (lambda p: write_npz(p, meta=np.array('{"format": 1}')), "format 1, this gradcore reads 2"),
        (lambda p: write_npz(p, meta=np.array('{"format": 2}'), **{"param/0": np.array([{}])}),
         "pickled objects, which gradcore never loads"),
    ],
    ids=["truncated", "crc", "garbage", "empty", "pickle", "npy", "foreign-npz", "old", "objects"],
)  # fmt: skip
def test_an_unreadable_checkpoint_is_a_checkpoint_error_naming_path_and_cause(tmp_path, spoil, why):
    path = tmp_path / "run.npz"
    fit(epochs=1, checkpoint=path)
    spoil(path)
    with pytest.raises(gc.CheckpointError, match=rf"checkpoint .*run.npz cannot be read: .*{why}"):
        fit(epochs=2, checkpoint=path, resume=True)
    assert issubclass(gc.CheckpointError, ValueError)


def test_paths_are_checked_before_any_training(tmp_path):
    steps = []

    def counting_loss(params, xb, yb):
        steps.append(1)
        return logistic_loss(params, xb, yb)

    with pytest.raises(ValueError, match=r"checkpoint .*missing/run.npz cannot be written"):
        fit(loss_fn=counting_loss, checkpoint=tmp_path / "missing" / "run.npz")
    with pytest.raises(ValueError, match=r"checkpoint .* is a directory; give a file path"):
        fit(loss_fn=counting_loss, checkpoint=tmp_path)
    assert steps == [] and list(tmp_path.iterdir()) == []


def test_temporary_files_are_named_beside_the_target_and_always_removed(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    stale = tmp_path / ".run.npz.tmp-999999999"  # a process that no longer runs
    stale.write_bytes(b"killed while saving")
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(a) or real_replace(a, b))
    fit(epochs=1, checkpoint=path)
    assert [os.path.basename(a) for a in seen] == [f".run.npz.tmp-{os.getpid()}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "run.npz.history.jsonl"]
    monkeypatch.setattr(os, "replace", real_replace)
    (tmp_path / "dir.npz").mkdir()
    with pytest.raises(IsADirectoryError):
        train.save_checkpoint(tmp_path / "dir.npz", nn.init_mlp([2, 1]), {})
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


@pytest.mark.parametrize("every, writes", [(0.0, [1, 2, 3, 4]), (3600.0, [4])])
def test_short_epochs_write_a_checkpoint_at_most_every_checkpoint_every_seconds(
    tmp_path, monkeypatch, every, writes
):
    monkeypatch.setattr(train, "CHECKPOINT_EVERY", every)
    written = []
    real = checkpoints.save_checkpoint
    monkeypatch.setattr(
        checkpoints,
        "save_checkpoint",
        lambda path, p, meta: written.append(meta["epoch"]) or real(path, p, meta),
    )
    fit(epochs=4, checkpoint=tmp_path / "run.npz")
    assert written == writes  # the last epoch always


def test_checkpoint_mode_follows_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        fit(epochs=1, checkpoint=tmp_path / "run.npz")
    finally:
        os.umask(old)
    assert (tmp_path / "run.npz").stat().st_mode & 0o777 == 0o644


KILLED_RUN = textwrap.dedent(
    """
    import sys, warnings
    import numpy as np
    from gradcore import checkpoints, nn, optim, train
    warnings.simplefilter("ignore")
    train.CHECKPOINT_EVERY = 0.0  # a checkpoint after every epoch, to be killed in the middle
    X = np.random.default_rng(0).standard_normal((16, 3))
    y = (X[:, 0] > 0).astype(float)
    loss = lambda p, xb, yb: nn.binary_cross_entropy_with_logits(nn.mlp(p, xb), yb)
    print("training", flush=True)
    train.fit(loss, nn.init_mlp([3, 4, 1]), X, y, optimizer=optim.SGD(0.1, momentum=0.9),
              epochs=int(sys.argv[2]), batch_size=4, progress=False, checkpoint=sys.argv[1],
              resume=True)
    """
)


@pytest.mark.slow
def test_kill_9_in_a_loop_leaves_a_loadable_checkpoint_and_no_stray_file(tmp_path):
    path = tmp_path / "run.npz"
    rng = np.random.default_rng(1)
    for _ in range(20):
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, str(path), "100000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert child.stdout.readline() == "training\n"
        time.sleep(rng.uniform(0.01, 0.1))
        child.kill()
        child.wait()
        child.stdout.close()
        if path.exists():
            train.load_checkpoint(path)
    _, meta = train.load_checkpoint(path)
    assert meta["epoch"] > 0
    epochs = meta["epoch"] + 1
    subprocess.run([sys.executable, "-c", KILLED_RUN, str(path), str(epochs)], check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.npz", "run.npz.history.jsonl"]
    saved, meta = train.load_checkpoint(path)
    assert meta["epoch"] == epochs
    X = np.random.default_rng(0).standard_normal((16, 3))
    uninterrupted, history = fit(
        data=(X, (X[:, 0] > 0).astype(float)), epochs=epochs, batch_size=4,
        params=nn.init_mlp([3, 4, 1]),
    )  # fmt: skip
    for a, b in zip(saved, host(uninterrupted)):
        np.testing.assert_array_equal(a, b)
    logged = [
        json.loads(line)["loss"] for line in train.history_path(path).read_text().splitlines()
    ]
    assert logged == history.loss


# ---------------------------------------------------------------------------------------------
# inputs checked at the door


def test_everyday_mistakes_get_messages_naming_the_argument():
    X, y = problem()
    with pytest.raises(TypeError, match=r"fit: X is None; pass an array"):
        fit(data=(None, y))
    with pytest.raises(TypeError, match=r"fit: y is None; pass an array"):
        fit(data=(X, None))
    with pytest.raises(TypeError, match=r"fit: batch_size must be an integer, got float 8.0"):
        fit(batch_size=8.0)
    with pytest.raises(
        TypeError,
        match=r"validation_data must be a pair \(X_val, y_val\), got a ndarray of shape \(40, 3\)",
    ):
        fit(validation_data=X)
    with pytest.raises(ValueError, match=r"validation_data has no rows; pass None"):
        fit(validation_data=(X[:0], y[:0]))
    with pytest.raises(ValueError, match=r"validation X has 40 rows but validation y has 39"):
        fit(validation_data=(X, y[:-1]))
    with pytest.raises(TypeError, match=r"metric 'logits' must return a number, got ndarray of "
                       r"shape \(40, 1\); reduce it"):  # fmt: skip
        fit(metrics={"logits": lambda p, X, y: nn.mlp(p, X)})
    with pytest.raises(ValueError, match=r"seed must be a non-negative integer, got -1"):
        fit(seed=-1)


def test_lists_and_numpy_integers_are_accepted():
    X, y = problem()
    a, _ = fit(data=(X.tolist(), y.tolist()), batch_size=np.int64(8), epochs=np.int32(2))
    b, _ = fit(epochs=2)
    assert_same_params(a, b)


@pytest.mark.parametrize("which", ["X", "y", "validation X"])
def test_nan_or_inf_in_the_data_is_named_as_bad_data_with_the_row(which):
    X, y = problem()
    X_val, y_val = problem(10, seed=1)
    bad = {"X": X, "y": y, "validation X": X_val}[which]
    bad[7, ...] = np.inf if which == "y" else np.nan
    bad[9, ...] = np.nan
    with pytest.raises(
        ValueError,
        match=rf"fit: bad data: {which} has a NaN or infinite value in row 7 and 1 more rows; "
        "remove or impute",
    ):
        fit(data=(X, y), validation_data=(X_val, y_val))


# ---------------------------------------------------------------------------------------------
# found in review


def test_integer_data_still_records_the_losses():
    """The loss buffer has the params' dtype: integer data once truncated every loss to 0."""
    X, y = problem()
    _, history = fit(data=(np.round(X * 10).astype(np.int64), y))
    assert all(loss > 0.1 for loss in history.loss)


def test_a_resume_that_adds_validation_keeps_every_history_list_one_per_epoch(tmp_path):
    path = tmp_path / "run.npz"
    fit(epochs=2, checkpoint=path)
    _, history = fit(
        epochs=4, checkpoint=path, resume=True, validation_data=problem(20, seed=1),
        metrics=[accuracy],
    )  # fmt: skip
    assert len(history.loss) == len(history.val_loss) == len(history.metrics["accuracy"]) == 4
    assert np.isnan(history.val_loss[:2]).all() and np.isfinite(history.val_loss[2:]).all()
    history.plot(tmp_path / "curves.png")
