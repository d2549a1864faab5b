"""Layer 5: what happens around the training steps, one concern per callback (Keras's hooks).

A ``Callback`` is told about the run at fixed points: ``on_train_begin``, ``on_epoch_begin``,
``on_batch_begin``/``on_batch_end``, ``on_epoch_end`` and ``on_train_end``. The trainer sets
``callback.trainer`` first; a callback reads and changes the run through it (``params``,
``optimizer``, ``history``, ``stop_training``, ...) and never imports the trainer module.

The batch hooks run once per *read* of the losses, not once per step: the trainer keeps each
step's loss on the device and reads them every ``READ_EVERY`` steps and at the end of each
epoch, so that no step waits for the device. ``on_batch_end``'s ``logs`` hold ``losses`` (the
steps read, in order), ``first`` (the index of the first of them in the epoch) and ``loss``
(the epoch's mean loss so far). ``on_epoch_end``'s ``logs`` are Keras's: ``loss``,
``val_loss``, each metric by name and ``val_`` name, plus ``time`` (seconds).
"""

from __future__ import annotations

import csv
import math
import os
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gradcore.checkpoints import CHECKPOINT_EVERY, RunCheckpoint, check_writable, settings_of
from gradcore.devices import array
from gradcore.pytree import tree_leaves

__all__ = [
    "DIVERGENCE_FACTOR",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "Checkpoint",
    "DivergenceGuard",
    "EarlyStopping",
    "History",
    "ProgressBar",
    "ReduceLROnPlateau",
]

DIVERGENCE_FACTOR = 1e3  # a step loss above this many times the starting loss is divergence


class Callback:
    """Does nothing at every hook; subclasses override the hooks they need.

    What a callback may read on ``self.trainer``: ``params``, ``optimizer``, ``history``,
    ``epoch`` and ``epochs`` (of this ``fit`` call), ``steps`` (per epoch), ``position`` (steps
    done in the epoch), ``start_loss``, ``is_root`` (False on the ranks of a data-parallel run
    that must not write files), ``batch_size``, ``seed``, ``rng``, ``generator``, ``rows``.
    What it may do: set ``stop_training = True`` (training stops after the current read of
    the losses), ``run_steps(first, stop)`` (run steps of this epoch without reading them),
    ``state()`` and ``resume_from(meta)`` (what a checkpoint saves and restores).
    """

    trainer: Any = None

    def set_trainer(self, trainer: Any) -> None:
        self.trainer = trainer

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        """Before the first step of ``fit`` (after the inputs are checked)."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        """Before the epoch's data is permuted."""

    def on_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        """Before the steps from ``batch`` up to the next read of the losses."""

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        """After a read of the losses; ``batch`` is the last step read."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        """After the epoch's steps, with its loss, validation loss, metrics and time."""

    def on_train_end(self, logs: dict[str, Any]) -> None:
        """Always, last; ``logs["error"]`` is the exception that ends training, or None."""

    def on_interrupt(self) -> str | None:
        """Ctrl-C, between steps, before ``KeyboardInterrupt`` is raised; what was kept."""
        return None


class CallbackList:
    """The callbacks of a run, called in order at each hook."""

    def __init__(self, callbacks: list[Callback], trainer: Any) -> None:
        self.callbacks = callbacks
        for callback in callbacks:
            callback.set_trainer(trainer)

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_batch_end(batch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(epoch, logs)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_train_end(logs)

    def on_interrupt(self) -> str:
        return "; ".join(kept for c in self.callbacks if (kept := c.on_interrupt()))


# ---------------------------------------------------------------------------------------------
# the history of a run


def _entry(logs: Mapping[str, Any]) -> dict[str, Any]:
    """An epoch's logs as a history entry: ``loss``, ``val_loss``, ``metrics``, ``time``."""
    entry = {"loss": logs["loss"], "time": logs["time"]}
    if "val_loss" in logs:
        entry["val_loss"] = logs["val_loss"]
    entry["metrics"] = {k: v for k, v in logs.items() if k not in ("loss", "val_loss", "time")}
    return entry


@dataclass
class History(Callback):
    """What ``fit`` measured, one entry per epoch, and the trained ``params``.

    After a resume the lists hold every epoch of the run; ``resumed_epochs`` says how many of
    them the checkpoint already held (0 for a fresh run), so that what this call did is known.
    """

    loss: list[float] = field(default_factory=list)  # mean training loss over the epoch
    val_loss: list[float] = field(default_factory=list)  # empty without validation_data
    metrics: dict[str, list[float]] = field(default_factory=dict)  # "name" and "val_name"
    time: list[float] = field(default_factory=list)  # wall seconds per epoch
    params: Any = None
    resumed_epochs: int = 0

    @property
    def epochs(self) -> int:
        return len(self.loss)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._append(_entry(logs))

    def plot(self, path: str | os.PathLike) -> Path:
        """Write the loss curves (and metric curves, if any) to a PNG file at ``path``."""
        try:
            from matplotlib.figure import Figure
        except ImportError as error:
            raise ImportError(
                "History.plot needs matplotlib: pip install matplotlib "
                "(or pip install 'gradcore[examples]')"
            ) from error
        panels = 2 if self.metrics else 1
        figure = Figure(figsize=(5 * panels, 3.6), layout="constrained")
        axes = figure.subplots(1, panels, squeeze=False)[0]
        epochs = range(1, self.epochs + 1)
        axes[0].plot(epochs, self.loss, label="train")
        if self.val_loss:
            axes[0].plot(epochs, self.val_loss, label="validation")
        axes[0].set(xlabel="epoch", ylabel="loss", title="loss")
        axes[0].legend()
        if self.metrics:
            for name, values in self.metrics.items():
                axes[1].plot(epochs, values, label=name)
            axes[1].set(xlabel="epoch", title="metrics")
            axes[1].legend()
        figure.savefig(path, dpi=120)
        return Path(path)

    def _append(self, entry: Mapping[str, Any]) -> None:
        """One epoch. Every list that has values keeps one per epoch, NaN where an epoch did
        not measure it (a resume that added validation data or a metric, say)."""
        done = len(self.loss)
        self.loss.append(entry["loss"])
        if "val_loss" in entry or self.val_loss:
            self.val_loss += [math.nan] * (done - len(self.val_loss))
            self.val_loss.append(entry.get("val_loss", math.nan))
        for name in dict.fromkeys([*self.metrics, *entry["metrics"]]):  # in a stable order
            values = self.metrics.setdefault(name, [])
            values += [math.nan] * (done - len(values))
            values.append(entry["metrics"].get(name, math.nan))
        self.time.append(entry["time"])


# ---------------------------------------------------------------------------------------------
# divergence


class DivergenceGuard(Callback):
    """Stops training at a step whose loss is not finite, or (unless ``factor`` is None) above
    ``factor`` times the starting loss, with a ``FloatingPointError`` naming epoch and step.

    With ``restore`` (the default) the params and the optimizer are put back as they were
    before that step: the state before each read is kept (device copies, no wait), restored,
    and the good steps run again. Without it they are left as the bad step made them, and no
    copies are made: for callers that train a copy of their weights anyway (the estimators).
    """

    def __init__(self, factor: float | None = DIVERGENCE_FACTOR, restore: bool = True) -> None:
        self.factor = factor
        self.restore = restore
        self._before: Any = None

    def bound(self) -> float:
        start = self.trainer.start_loss
        return self.factor * start if self.factor is not None and start > 0 else math.inf

    def on_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        if self.restore:
            trainer = self.trainer
            params = [array(p) for p in tree_leaves(trainer.params)]
            self._before = params, trainer.optimizer.state_dict()

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        bound = self.bound()
        losses = logs["losses"]
        bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > bound), None)
        if bad is None:
            return
        trainer = self.trainer
        first = logs["first"]
        if self.restore:
            params, optimizer_state = self._before
            for param, before in zip(tree_leaves(trainer.params), params):
                param[...] = before
            trainer.optimizer.load_state_dict(optimizer_state)
            trainer.run_steps(first, first + bad)
        where = (
            f"epoch {trainer.epoch + 1}/{trainer.epochs}, step {first + bad + 1}/{trainer.steps}"
        )
        raise self.error(losses[bad], where)

    def error(self, loss: float, where: str) -> FloatingPointError:
        if math.isfinite(loss):
            why = (
                f"the loss is {loss:.4g}, more than divergence_factor={self.factor:g} times "
                f"the starting loss {self.trainer.start_loss:.4g}"
            )
        else:
            why = f"the loss is {loss}"
        kept = (
            "hold their values from before that step"
            if self.restore
            else "are left as it made them"
        )
        return FloatingPointError(
            f"fit: diverged at {where}: {why}; params {kept} (a smaller learning rate may help)"
        )


# ---------------------------------------------------------------------------------------------
# checkpoints


class Checkpoint(Callback):
    """Writes the run's state to ``path`` (an ``.npz`` without pickles, written atomically) so
    that a resume ends with exactly the params of an uninterrupted run.

    Written at the end of epochs (at most every ``every`` seconds), at the end of training and
    on Ctrl-C; the history goes to ``gradcore.checkpoints.history_path(path)``. An existing file
    is resumed with ``resume=True``, replaced with ``overwrite=True``, and otherwise refused. A
    resume whose learning rate, momentum, Nesterov, weight decay, batch size or seed differ
    from the checkpoint's is refused naming them, unless ``allow_changes``. ``resume=True``
    without a file warns and starts afresh. Checkpoints whose arrays hold NaN are refused.
    The state of the trainer's ``generator`` (dropout's masks) is saved and restored with the
    optimizer's; a resume with a generator of another seed, or with one where the run had
    none (or the other way round), is refused as a changed setting.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resume: bool = False,
        overwrite: bool = False,
        allow_changes: bool = False,
        every: float = CHECKPOINT_EVERY,
    ) -> None:
        self.path = Path(path)
        self.resume, self.overwrite, self.allow_changes = resume, overwrite, allow_changes
        self.every = every
        self.file: RunCheckpoint | None = None
        self._saved_epoch: int | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        trainer = self.trainer
        settings = settings_of(
            trainer.optimizer, trainer.batch_size, trainer.seed, trainer.generator
        )
        leaves = tree_leaves(trainer.params)
        self.file = RunCheckpoint(
            self.path, settings, leaves, trainer.rows, trainer.is_root, trainer.ranks, self.every
        )
        self._saved_epoch = None
        if self.file.prepare(self.resume, self.overwrite):
            meta = self.file.restore(
                leaves, trainer.optimizer, trainer.rng, trainer.history, self.allow_changes
            )
            trainer.resume_from(meta)
        else:
            self.file.start_fresh()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        file = self._file()
        file.append(_entry(logs))
        if file.due(force=False):
            self._save()

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if (
            self.file is not None
            and logs["error"] is None
            and self._saved_epoch != self.trainer.epoch
        ):
            self._save()

    def on_interrupt(self) -> str | None:
        return f"state saved to {self.path}" if self._save() else None

    def _file(self) -> RunCheckpoint:
        if self.file is None:
            raise RuntimeError("Checkpoint: the file is opened by on_train_begin, not yet called")
        return self.file

    def _save(self) -> bool:
        """Write the trainer's state now; whether this rank wrote it."""
        file = self._file()
        if not file.writes:
            return False
        file.save(self.trainer.params, self.trainer.state())
        self._saved_epoch = self.trainer.epoch
        return True


# ---------------------------------------------------------------------------------------------
# watching a number: early stopping, plateaus


class _Monitor(Callback):
    """A number from the epoch logs that should improve: ``monitor`` (default ``val_loss`` when
    there is validation data, else ``loss``), lower is better unless ``mode="max"`` (or "auto"
    and a name that holds "acc" or "score"), better means by more than ``min_delta``."""

    def __init__(self, monitor: str | None, mode: str, min_delta: float) -> None:
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{type(self).__name__}: mode must be auto, min or max, got {mode!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, abs(min_delta)
        self.best = math.inf

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self.best = math.inf

    def _watched(self, logs: dict[str, Any]) -> float | None:
        """The monitored value, negated for "max" so that lower is always better."""
        name = self.monitor or ("val_loss" if "val_loss" in logs else "loss")
        if name not in logs:
            warnings.warn(
                f"{type(self).__name__}: {name!r} is not in the epoch's logs "
                f"(available: {', '.join(sorted(logs))}); nothing is watched",
                stacklevel=4,
            )
            return None
        maximise = self.mode == "max" or (
            self.mode == "auto" and ("acc" in name or "score" in name)
        )
        return -logs[name] if maximise else logs[name]

    def _improved(self, value: float) -> bool:
        return value < self.best - self.min_delta


class EarlyStopping(_Monitor):
    """Stops training when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs (Keras's rule and defaults); with ``restore_best_weights`` the params
    go back to those of the best epoch when it stops."""

    def __init__(
        self,
        monitor: str | None = None,
        min_delta: float = 0.0,
        patience: int = 0,
        mode: str = "auto",
        restore_best_weights: bool = False,
    ) -> None:
        super().__init__(monitor, mode, min_delta)
        self.patience = patience
        self.restore_best_weights = restore_best_weights
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        super().on_train_begin(logs)
        self.wait, self.stopped_epoch, self.best_epoch, self.best_weights = 0, None, None, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self._watched(logs)
        if value is None:
            return
        self.wait += 1
        if self._improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best_weights:
                self.best_weights = [array(p) for p in tree_leaves(self.trainer.params)]
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.trainer.stop_training = True
            if self.best_weights is not None:
                for param, best in zip(tree_leaves(self.trainer.params), self.best_weights):
                    param[...] = best


class ReduceLROnPlateau(_Monitor):
    """Multiplies the optimizer's ``learning_rate`` by ``factor`` when ``monitor`` has not
    improved for ``patience`` epochs, then waits ``cooldown`` epochs; never below ``min_lr``.
    The learning rate must be a number (a schedule already says what the rate is)."""

    def __init__(
        self,
        monitor: str | None = None,
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor}")
        super().__init__(monitor, mode, min_delta)
        self.factor, self.patience, self.cooldown, self.min_lr = factor, patience, cooldown, min_lr
        self.wait = self.cooling = 0

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        super().on_train_begin(logs)
        rate = getattr(self.trainer.optimizer, "learning_rate", None)
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            raise TypeError(
                f"ReduceLROnPlateau: the optimizer's learning_rate must be a number, got "
                f"{rate!r}; a schedule and ReduceLROnPlateau would both set the rate"
            )
        self.wait = self.cooling = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        value = self._watched(logs)
        if value is None:
            return
        if self.cooling:
            self.cooling -= 1
            self.wait = 0
        if self._improved(value):
            self.best, self.wait = value, 0
        elif not self.cooling:
            self.wait += 1
            optimizer = self.trainer.optimizer
            if self.wait >= self.patience and optimizer.learning_rate > self.min_lr:
                optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                self.cooling, self.wait = self.cooldown, 0


# ---------------------------------------------------------------------------------------------
# showing and logging


class ProgressBar(Callback):
    """A tqdm bar over the run's steps, moved at each read of the losses, showing the epoch's
    mean loss; shown only on a terminal and, data parallel, only by rank 0."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.shown: dict[str, str] = {}

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        trainer = self.trainer
        total = trainer.epochs * trainer.steps
        self.shown = {}
        self.bar = tqdm(
            total=total,
            initial=min(trainer.epoch * trainer.steps + trainer.position, total),
            unit="step",
            disable=not trainer.is_root or not sys.stderr.isatty(),
        )

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{self.trainer.epochs}", refresh=False)

    def on_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self._show(len(logs["losses"]), loss=logs["loss"])

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._show(0, **{k: v for k, v in logs.items() if k.endswith("loss")})

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _show(self, steps: int, **values: float) -> None:
        self.shown.update({k: f"{v:.4f}" for k, v in values.items()})
        self.bar.update(steps)
        self.bar.set_postfix(self.shown, refresh=False)


class CSVLogger(Callback):
    """One CSV row per epoch: ``epoch`` and the epoch's logs in sorted order (Keras's layout).

    The path is checked before training; ``append=True`` adds to an existing file. Each row
    is flushed as it is written, so that a killed run keeps the epochs it finished.
    """

    def __init__(self, path: str | os.PathLike, separator: str = ",", append: bool = False):
        self.path, self.separator, self.append = Path(path), separator, append
        self.file: Any = None
        self.writer: Any = None
        self.header = True
        self.columns: list[str] | None = None

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        if not self.trainer.is_root:
            return
        check_writable(self.path, "CSVLogger:")
        self.header = not (self.append and self.path.exists() and self.path.stat().st_size)
        self.file = self.path.open("a" if self.append else "w", newline="")
        self.writer = csv.writer(self.file, delimiter=self.separator)
        self.columns = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        if self.writer is None:
            return
        if self.columns is None:
            self.columns = sorted(logs)
            if self.header:
                self.writer.writerow(["epoch", *self.columns])
        self.writer.writerow([epoch, *(logs.get(k, math.nan) for k in self.columns)])
        self.file.flush()

    def on_train_end(self, logs: dict[str, Any]) -> None:
        if self.file is not None:
            self.file.close()
            self.file = self.writer = None
