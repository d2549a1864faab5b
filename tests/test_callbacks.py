"""gc.train.Trainer and its callbacks: the hooks, re-fitting without recording again, stopping,
early stopping, plateaus, the CSV log, the progress bar, checkpoints that hold NaN."""

# ruff: noqa: N803, N806 - X is a data matrix

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import gradcore as gc
from gradcore import callbacks, checkpoints, nn, optim, train
from gradcore.callbacks import (
    Callback,
    Checkpoint,
    CSVLogger,
    DivergenceGuard,
    EarlyStopping,
    ProgressBar,
    ReduceLROnPlateau,
)
from gradcore.jit import Jitted


def problem(n=40, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3)).astype(dtype)
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(dtype)
    return X, y


def loss_fn(params, xb, yb):
    return nn.binary_cross_entropy_with_logits(nn.mlp(params, xb), yb)


def trainer(*given, **kwargs):
    kwargs.setdefault("batch_size", 8)
    optimizer = kwargs.pop("optimizer", optim.SGD(0.1, momentum=0.9))
    return train.Trainer(loss_fn, optimizer, callbacks=given, **kwargs)


def host(params):
    return [a for layer in gc.to_numpy(params) for a in (layer["W"], layer["b"])]


class Scripted(Callback):
    """Puts the given numbers into the epoch logs under ``name``, one per epoch, and keeps a
    copy of the params after each epoch."""

    def __init__(self, name, values):
        self.name, self.values, self.params = name, list(values), []

    def on_epoch_end(self, epoch, logs):
        logs[self.name] = self.values[epoch]
        self.params.append(host(self.trainer.params))


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_begin(self, logs):
        self.calls.append(("train_begin",))

    def on_epoch_begin(self, epoch, logs):
        self.calls.append(("epoch_begin", epoch))

    def on_batch_begin(self, batch, logs):
        self.calls.append(("batch_begin", batch))

    def on_batch_end(self, batch, logs):
        self.calls.append(("batch_end", batch, len(logs["losses"]), logs["first"]))

    def on_epoch_end(self, epoch, logs):
        self.calls.append(("epoch_end", epoch, sorted(logs)))

    def on_train_end(self, logs):
        self.calls.append(("train_end", logs["error"]))


def test_hooks_run_in_keras_order_once_per_read_of_the_losses(monkeypatch):
    monkeypatch.setattr(train, "READ_EVERY", 3)
    recorder = Recorder()
    X, y = problem()  # 5 steps an epoch: reads of 3 and 2 losses
    trainer(recorder).fit(nn.init_mlp([3, 4, 1]), X, y, epochs=2, validation_data=problem(10, 1))
    epoch = [("batch_begin", 0), ("batch_end", 2, 3, 0), ("batch_begin", 3), ("batch_end", 4, 2, 3)]
    keys = ["loss", "time", "val_loss"]
    assert recorder.calls == [
        ("train_begin",),
        ("epoch_begin", 0), *epoch, ("epoch_end", 0, keys),
        ("epoch_begin", 1), *epoch, ("epoch_end", 1, keys),
        ("train_end", None),
    ]  # fmt: skip


def test_refit_replays_the_step_recorded_by_the_first_fit(monkeypatch):
    recordings = []
    real = Jitted._record
    monkeypatch.setattr(Jitted, "_record", lambda self, *a: recordings.append(1) or real(self, *a))
    X, y = problem(36)  # batches of 8, 8, 8, 8 and 4: two shapes
    fitted = trainer()
    params = nn.init_mlp([3, 4, 1], dtype="float64")
    fitted.fit(params, X, y, epochs=2)
    assert len(recordings) == 2
    fitted.fit(params, X, y, epochs=3)
    fitted.fit(nn.init_mlp([3, 4, 1], seed=1, dtype="float64"), *problem(36, seed=2), epochs=1)
    assert len(recordings) == 2  # new values, same shapes and dtypes: nothing recorded
    fitted.fit(nn.init_mlp([3, 4, 1]), *problem(36, dtype=np.float32), epochs=1)
    assert len(recordings) == 4  # float32: both shapes again


def test_two_fits_continue_as_one_longer_fit():
    X, y = problem()
    twice = nn.init_mlp([3, 4, 1])
    again = trainer(seed=3)
    again.fit(twice, X, y, epochs=2)
    history = again.fit(twice, X, y, epochs=3)
    once = nn.init_mlp([3, 4, 1])
    trainer(seed=3).fit(once, X, y, epochs=5)
    for a, b in zip(host(twice), host(once)):
        np.testing.assert_array_equal(a, b)
    assert history.epochs == 3 and history.params is twice and again.history is history


def test_a_fresh_optimizer_can_be_given_between_fits():
    X, y = problem()
    fitted = trainer()
    params = nn.init_mlp([3, 4, 1])
    fitted.fit(params, X, y, epochs=1)
    fitted.optimizer = optim.SGD(0.1, momentum=0.9)
    fitted.fit(params, X, y, epochs=1)
    assert fitted.optimizer.iterations == 5


class StopAt(Callback):
    def __init__(self, hook, at):
        self.hook, self.at = hook, at

    def on_batch_end(self, batch, logs):
        if self.hook == "batch" and batch >= self.at:
            self.trainer.stop_training = True

    def on_epoch_end(self, epoch, logs):
        if self.hook == "epoch" and epoch == self.at:
            self.trainer.stop_training = True


def test_a_callback_stops_training_after_an_epoch_or_a_read(monkeypatch):
    X, y = problem()
    history = trainer(StopAt("epoch", 2)).fit(nn.init_mlp([3, 4, 1]), X, y, epochs=10)
    assert history.epochs == 3
    monkeypatch.setattr(train, "READ_EVERY", 2)
    optimizer = optim.SGD(0.1)
    fitted = trainer(StopAt("batch", 1), optimizer=optimizer)
    history = fitted.fit(nn.init_mlp([3, 4, 1]), X, y, epochs=10)
    assert history.epochs == 1 and optimizer.iterations == 2  # stopped at the first read
    history = fitted.fit(nn.init_mlp([3, 4, 1]), X, y, epochs=1)  # a new fit starts afresh
    assert history.epochs == 1 and optimizer.iterations == 4


def test_the_divergence_guard_is_on_unless_one_is_given():
    assert [type(c) for c in trainer().callbacks] == [DivergenceGuard]
    mine = DivergenceGuard(None)
    assert trainer(mine).callbacks == [mine]
    assert [type(c) for c in trainer(progress=True).callbacks] == [DivergenceGuard, ProgressBar]
    X, y = problem()
    with pytest.raises(FloatingPointError, match="diverged at epoch 1/3, step 4/5"):
        trainer(optimizer=optim.SGD(1e3, momentum=0.9)).fit(nn.init_mlp([3, 4, 1]), X, y, 3)


# ---------------------------------------------------------------------------------------------
# early stopping and plateaus


@pytest.mark.parametrize(
    "options, scripted, stopped_after, best",
    [
        ({"patience": 2}, [5, 4, 4.5, 4.2, 1], 3, 1),
        ({"patience": 1, "min_delta": 0.5}, [5, 4.4, 3.8, 3.5, 1], 3, 2),
        ({"patience": 0}, [5, 4, 4.5, 1, 1], 2, 1),
        ({"patience": 1, "monitor": "val_accuracy"}, [0.5, 0.7, 0.6, 0.9, 0.8], 2, 1),
    ],
    ids=["patience", "min_delta", "no-patience", "maximised"],
)
def test_early_stopping_waits_patience_epochs_then_restores_the_best(
    options, scripted, stopped_after, best
):
    name = options.get("monitor", "val_loss")
    script = Scripted(name, scripted)
    stopping = EarlyStopping(restore_best_weights=True, **options)
    params = nn.init_mlp([3, 4, 1])
    X, y = problem()
    history = trainer(script, stopping).fit(params, X, y, 10, validation_data=problem(10, 1))
    assert history.epochs == stopped_after + 1 == stopping.stopped_epoch + 1
    assert stopping.best_epoch == best
    for a, b in zip(host(params), script.params[best]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_watches_val_loss_with_validation_data_else_loss():
    X, y = problem()
    watched = []

    class Spy(EarlyStopping):
        def _watched(self, logs):
            value = super()._watched(logs)
            watched.append(value)
            return value

    history = trainer(Spy()).fit(nn.init_mlp([3, 4, 1]), X, y, 2)
    assert watched == history.loss
    watched.clear()
    history = trainer(Spy()).fit(nn.init_mlp([3, 4, 1]), X, y, 2, validation_data=problem(10, 1))
    assert watched == history.val_loss
    with pytest.warns(UserWarning, match="'val_nothing' is not in the epoch's logs"):
        trainer(EarlyStopping("val_nothing")).fit(nn.init_mlp([3, 4, 1]), X, y, 1)


def test_reduce_lr_on_plateau_cuts_the_rate_after_patience_then_cools_down():
    rates = []

    class Rates(Callback):
        def on_epoch_end(self, epoch, logs):
            rates.append(self.trainer.optimizer.learning_rate)

    plateau = ReduceLROnPlateau(factor=0.5, patience=2, cooldown=1, min_lr=0.02)
    script = Scripted("val_loss", [1.0, 0.5] + [0.5] * 8)
    X, y = problem()
    trainer(script, plateau, Rates()).fit(
        nn.init_mlp([3, 4, 1]), X, y, 10, validation_data=problem(10, 1)
    )
    assert rates == [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.02, 0.02, 0.02]
    schedule = optim.SGD(optim.linear_decay(0.1, 0.01, 10))
    with pytest.raises(TypeError, match="learning_rate must be a number"):
        trainer(ReduceLROnPlateau(), optimizer=schedule).fit(nn.init_mlp([3, 4, 1]), X, y, 1)


# ---------------------------------------------------------------------------------------------
# showing and logging


def test_csv_logger_writes_one_row_per_epoch_with_sorted_keys(tmp_path):
    path = tmp_path / "log.csv"
    X, y = problem()
    history = trainer(CSVLogger(path)).fit(
        nn.init_mlp([3, 4, 1]), X, y, 3, validation_data=problem(10, 1),
        metrics={"accuracy": lambda p, X, y: nn.accuracy(nn.mlp(p, X), y)},
    )  # fmt: skip
    rows = list(csv.reader(path.read_text().splitlines()))
    assert rows[0] == ["epoch", "accuracy", "loss", "time", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    assert [float(r[2]) for r in rows[1:]] == history.loss
    trainer(CSVLogger(path, append=True)).fit(nn.init_mlp([3, 4, 1]), X, y, 1)
    rows = list(csv.reader(path.read_text().splitlines()))
    assert len(rows) == 5 and rows[-1][0] == "0"
    with pytest.raises(ValueError, match="CSVLogger: .*missing/log.csv cannot be written"):
        trainer(CSVLogger(tmp_path / "missing" / "log.csv")).fit(nn.init_mlp([3, 4, 1]), X, y, 1)


def test_progress_bar_shows_epochs_and_the_loss_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr(callbacks.sys.stderr, "isatty", lambda: True, raising=False)
    X, y = problem()
    trainer(progress=True).fit(nn.init_mlp([3, 4, 1]), X, y, 2)
    shown = capsys.readouterr().err
    assert "epoch 2/2" in shown and "loss=" in shown and "10/10" in shown


# ---------------------------------------------------------------------------------------------
# checkpoints


def test_a_checkpoint_is_written_where_early_stopping_stopped(tmp_path):
    path = tmp_path / "run.npz"
    X, y = problem()
    script = Scripted("val_loss", [3, 2, 2, 2, 2, 2])
    every_hour = Checkpoint(path, every=3600.0)
    trainer(script, EarlyStopping(patience=1), every_hour).fit(
        nn.init_mlp([3, 4, 1]), X, y, 6, validation_data=problem(10, 1)
    )
    _, meta = checkpoints.load_checkpoint(path)
    assert meta["epoch"] == 3


@pytest.mark.parametrize("where", ["param/1", "optimizer/velocity/2"])
def test_a_checkpoint_holding_nan_is_refused_naming_file_and_array(tmp_path, where):
    path = tmp_path / "run.npz"
    X, y = problem()
    trainer(Checkpoint(path)).fit(nn.init_mlp([3, 4, 1]), X, y, 1)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[where][0] = math.nan
    checkpoints.write_npz(path, arrays)
    message = rf"checkpoint .*run.npz holds non-finite weights: {where} has 1 NaN"
    with pytest.raises(gc.CheckpointError, match=message):
        checkpoints.load_checkpoint(path)
    with pytest.raises(gc.CheckpointError, match=message + ".*cannot be resumed"):
        train.fit(loss_fn, nn.init_mlp([3, 4, 1]), X, y, epochs=2, checkpoint=path, resume=True)


def test_a_guard_without_restore_keeps_no_copies_and_leaves_the_params():
    X, y = problem()
    guard = DivergenceGuard(restore=False)
    params = nn.init_mlp([3, 4, 1])
    with pytest.raises(FloatingPointError, match="step 4/5: .*params are left as it made them"):
        trainer(guard, optimizer=optim.SGD(1e3, momentum=0.9)).fit(params, X, y, 3)
    assert guard._before is None
    restored = nn.init_mlp([3, 4, 1])
    with pytest.raises(FloatingPointError, match="params hold their values from before"):
        trainer(optimizer=optim.SGD(1e3, momentum=0.9)).fit(restored, X, y, 3)
    assert not all(np.array_equal(a, b) for a, b in zip(host(params), host(restored)))


def test_check_start_false_skips_the_pass_over_the_data(monkeypatch):
    passes = []
    real = train._evaluate
    monkeypatch.setattr(train, "_evaluate", lambda *a: passes.append(1) or real(*a))
    X, y = problem()
    trainer(check_start=False).fit(nn.init_mlp([3, 4, 1]), X, y, 2)
    assert passes == []
    trainer().fit(nn.init_mlp([3, 4, 1]), X, y, 2)
    assert passes == [1]
    unchecked = trainer(check_start=False, optimizer=optim.SGD(1e3, momentum=0.9))
    history = unchecked.fit(nn.init_mlp([3, 4, 1]), X, y, 3)  # no starting loss: no bound
    assert history.epochs == 3 and math.isnan(unchecked.start_loss)


@pytest.mark.slow
def test_history_keeps_the_metrics_in_the_order_they_were_measured_in_every_process():
    """History's (and so ``gradcore train --history``'s) columns follow the metrics' order: they
    once came out of a set, whose order changes with each process's string hash seed."""
    import os
    import subprocess
    import sys

    script = (
        "import numpy as np, gradcore as gc\n"
        "X = np.random.default_rng(0).standard_normal((16, 3)); y = (X[:, 0] > 0) * 1.0\n"
        "params = gc.nn.init_mlp([3, 1], dtype='float64')\n"
        "loss = lambda p, x, t: gc.nn.binary_cross_entropy_with_logits(gc.nn.mlp(p, x), t)\n"
        "acc = lambda p, x, t: gc.nn.accuracy(gc.nn.mlp(p, x), t)\n"
        "h = gc.train.fit(loss, params, X, y, epochs=1, batch_size=8, progress=False,\n"
        "                 validation_data=(X, y), metrics={'accuracy': acc, 'b': acc})\n"
        "print(list(h.metrics))\n"
    )
    orders = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
        ).stdout.strip()
        for seed in range(6)
    }  # fmt: skip
    assert orders == {"['accuracy', 'b', 'val_accuracy', 'val_b']"}
