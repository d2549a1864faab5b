"""Layer 5: the minibatch trainer.

``Trainer`` is Algorithm 8.1 with momentum, built once and fitted many times: shuffle, cut a
minibatch, one ``value_and_grad``, one optimizer update. The step is made once per trainer by
``_make_step`` (recorded by ``gc.jit`` once per batch shape and replayed, on every later
``fit`` too); the epoch loop is short; everything else is a callback (``gradcore.callbacks``):
the divergence guard, checkpoints, the progress bar, early stopping, logging, the history.

Nothing in a step synchronises with the host: each step's loss is written into a device
buffer, read every ``READ_EVERY`` steps and at the end of each epoch; the batch callbacks see
the losses at those reads. Data-parallel training (``distributed=True``) is a property of the
step (gradients averaged over the ranks), of the data (each rank its shard) and of the reads
(losses and evaluations averaged over the ranks), so every callback sees the same numbers on
every rank.

``fit`` is the one-call form: a ``Trainer`` with the callbacks its arguments ask for.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import contextlib
import math
import operator
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from gradcore import distributed as gd
from gradcore import nn
from gradcore.backend import DeviceError, array_backend, backend_for_device
from gradcore.callbacks import (
    DIVERGENCE_FACTOR,
    Callback,
    CallbackList,
    Checkpoint,
    DivergenceGuard,
    History,
    ProgressBar,
)
from gradcore.checkpoints import (
    CHECKPOINT_EVERY,
    FORMAT,
    CheckpointError,
    check_writable,
    history_path,
    load_checkpoint,
    save_checkpoint,
    write_npz,
)
from gradcore.devices import array, device_of, to_device
from gradcore.differential_operators import value_and_grad
from gradcore.jit import jit as record_once
from gradcore.optim import SGD
from gradcore.pytree import tree_leaves
from gradcore.random import Generator

__all__ = [
    "CHECKPOINT_EVERY",
    "DIVERGENCE_FACTOR",
    "FORMAT",
    "READ_EVERY",
    "CheckpointError",
    "History",
    "Trainer",
    "check_writable",
    "fit",
    "history_path",
    "load_checkpoint",
    "save_checkpoint",
    "write_npz",
]

READ_EVERY = 50  # steps between reads of the loss buffer: the batch callbacks run there
_EVAL_CHUNK = 4096  # rows per forward pass when evaluating a whole data set


# ---------------------------------------------------------------------------------------------
# the step


def _make_step(loss_fn: Callable, distributed: bool, jit: bool) -> Callable[..., Any]:
    """One training step, ``(params, optimizer, xb, yb) -> loss`` (a device scalar, never read
    here).

    The single place a step is built. With ``jit``, the step is recorded once per batch shape
    (and optimizer) and replayed, eagerly with one warning where recording fails. gradcore's
    optimizers declare their update to ``gc.jit`` (``update_in_place``), so for them the whole
    step is one program: gradient and update, no pytree of gradients built between them. Any
    other optimizer's ``step`` runs eagerly after the recorded gradient: an update that assigns
    to the arrays it is given would change nothing while recording. Distributed, the
    gradients are averaged over the ranks (one fused collective) before the update, so every
    rank makes the same update.
    """
    loss_and_grads = value_and_grad(loss_fn)

    def split(params: Any, optimizer: Any, xb: Any, yb: Any) -> Any:
        loss, grads = recorded_grads(params, xb, yb)
        if distributed:
            gd.allreduce_mean(grads)
        optimizer.step(params, grads)
        return loss

    if not jit:
        recorded_grads = loss_and_grads
        return split
    recorded_grads = record_once(loss_and_grads, fallback=True)
    if distributed:
        return split

    def whole(params: Any, optimizer: Any, xb: Any, yb: Any) -> Any:
        loss, grads = loss_and_grads(params, xb, yb)
        optimizer.step(params, grads)
        return loss

    recorded_whole = record_once(whole, static_argnums=1, fallback=True)

    def step(params: Any, optimizer: Any, xb: Any, yb: Any) -> Any:
        if type(optimizer).__module__ == "gradcore.optim":
            return recorded_whole(params, optimizer, xb, yb)
        return split(params, optimizer, xb, yb)

    return step


# ---------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    """Minimise the mean of ``loss_fn(params, xb, yb)`` over minibatches, as often as asked.

    ``fit(params, X, y, epochs)`` trains ``params`` in place and may be called many times: the
    step is built once, so later calls with data of the same shapes and dtypes replay what the
    first one recorded. The optimizer (``SGD()`` by default; any object with ``step``,
    ``state_dict`` and ``load_state_dict``) and the shuffling generator ``rng`` (seeded by
    ``seed``) carry on from one call to the next; both are attributes that may be replaced.

    ``generator`` is the ``gradcore.random.Generator`` that ``loss_fn`` draws from (dropout's
    masks), named here because the trainer cannot find it inside the loss: a checkpoint saves
    and restores its state beside the optimizer's, so that a resumed run draws the masks the
    uninterrupted one drew. The evaluations (the pass before training, the validation loss)
    leave its state as they found it: the training masks do not depend on what is evaluated.

    Each epoch shuffles (unless ``shuffle=False``) and keeps the last, smaller batch.
    ``callbacks`` see every epoch (``gradcore.callbacks``); a ``DivergenceGuard`` with
    ``divergence_factor`` is added unless one is given, and a ``ProgressBar`` if ``progress``.
    ``distributed=True`` trains data parallel (see ``fit``). ``check_start=False`` skips the
    pass over all the data before each ``fit`` (its checks, and the guard's starting loss, so
    that a guard then stops only non-finite losses): for callers whose targets are their own
    encoding and who call ``fit`` once per epoch, as the estimators' ``partial_fit`` does.
    """

    def __init__(
        self,
        loss_fn: Callable[[Any, Any, Any], Any],
        optimizer: Any = None,
        batch_size: int = 32,
        device: str = "cpu",
        jit: bool = True,
        callbacks: Sequence[Callback] = (),
        *,
        shuffle: bool = True,
        seed: int = 0,
        divergence_factor: float | None = DIVERGENCE_FACTOR,
        progress: bool = False,
        distributed: bool = False,
        check_start: bool = True,
        generator: Generator | None = None,
    ) -> None:
        if generator is not None and not isinstance(generator, Generator):
            raise TypeError(
                "fit: generator must be a gradcore.random.Generator (the one the loss draws "
                f"from), got {type(generator).__name__}"
            )
        self.batch_size = _integer("batch_size", batch_size, 1)
        self.seed = _integer("seed", seed, 0)
        if distributed:  # this rank's device; rank 0 speaks for all ranks
            device = gd.init(device)
        backend_for_device(device)  # an unknown or unavailable device fails first
        self.loss_fn, self.device, self.shuffle = loss_fn, device, shuffle
        self.distributed, self.check_start = distributed, check_start
        self.is_root = not distributed or gd.is_root()
        self.ranks = gd.size() if distributed else 1
        self.optimizer = SGD() if optimizer is None else optimizer
        self.rng = np.random.default_rng(self.seed)
        self.generator = generator
        self.callbacks = list(callbacks)
        if not any(isinstance(c, DivergenceGuard) for c in self.callbacks):
            self.callbacks.insert(0, DivergenceGuard(divergence_factor))
        if progress and not any(isinstance(c, ProgressBar) for c in self.callbacks):
            self.callbacks.append(ProgressBar())
        self._step = _make_step(loss_fn, distributed, jit)
        # The state of the current fit, which callbacks read.
        self.params: Any = None
        self.history: History | None = None
        # the data on the device, as given and in this epoch's order (arrays of any backend)
        self.X: Any = None
        self.y: Any = None
        self._Xe: Any = None
        self._ye: Any = None
        self.stop_training = False
        self.epoch = self.epochs = self.position = self.steps = self.rows = 0
        self.step_losses: list[float] = []
        self.start_loss = math.nan

    def fit(
        self,
        params: Any,
        X: Any,
        y: Any,
        epochs: int = 1,
        validation_data: tuple[Any, Any] | None = None,
        metrics: Sequence[Callable] | Mapping[str, Callable] = (),
    ) -> History:
        """Train ``params`` in place for ``epochs`` epochs; the run's ``History``.

        Host data and params move to the trainer's device once (the dicts and lists of
        ``params`` end up holding the trained arrays there); floating data is cast to the
        params' dtype and must be finite. ``metrics`` are functions ``(params, X, y) -> float``
        (a list, or a dict by name) evaluated after every epoch on the training and validation
        data. Before training (unless ``check_start=False``), the loss of the initial params
        over all of ``X`` is computed once with the loss's target checks on: a mistake shows
        now, and the divergence guard measures from it.
        """
        epochs = _integer("epochs", epochs, 0)
        leaves = _params_on(params, self.device)
        X, y = _pair("", X, y, self.device, leaves[0].dtype)
        if X.shape[0] == 0:
            raise ValueError("fit: no training data (X has 0 rows)")
        validation = _validation(validation_data, self.device, leaves[0].dtype)
        evaluation = _Evaluation(self.loss_fn, validation, metrics, self.distributed)
        history = self._start(params, X, y, epochs)
        callbacks = CallbackList([history, *self.callbacks], self)
        logs: dict[str, Any] = {"error": None}
        try:
            callbacks.on_train_begin({})
            if self.distributed:  # every rank starts where, and with what, rank 0 starts
                gd.start(params, self.optimizer, self.rng, rows=self.rows, epoch=self.epoch,
                         step=self.position)  # fmt: skip
            if self.check_start:
                with self._draws_undone():
                    self._check_start(evaluation)
            with nn.target_checks(False), _DeferredInterrupt() as interrupt:
                self._epochs(callbacks, evaluation, interrupt)
        except BaseException as error:
            logs["error"] = error
            raise
        finally:
            callbacks.on_train_end(logs)
            self.X = self.y = self._Xe = self._ye = None  # the trainer keeps no data between fits
        if self.distributed:  # no rank reads a file before rank 0 wrote it
            gd.barrier()
        return history

    @contextlib.contextmanager
    def _draws_undone(self) -> Iterator[None]:
        """The generator's state as it was before the block: evaluation draws no training masks."""
        if self.generator is None:
            yield
            return
        state = self.generator.get_state()
        try:
            yield
        finally:
            self.generator.set_state(state)

    def _check_start(self, evaluation: _Evaluation) -> None:
        """The loss of the initial params over all the data, with the loss's target checks on,
        and the metrics tried once: a mistake shows now, not after an epoch."""
        start_loss = evaluation.loss(self.params, self.X, self.y)
        if not math.isfinite(start_loss):
            raise FloatingPointError(
                f"fit: the loss of the initial params is {start_loss}; check loss_fn and the init"
            )
        evaluation.check(self.params, self.X, self.y)
        if math.isnan(self.start_loss):  # a resume keeps the bound of the run's own start
            self.start_loss = start_loss

    def _start(self, params: Any, X: Any, y: Any, epochs: int) -> History:
        """The state of a new fit: its data, its batches, its loss buffer; its history."""
        self.params, self.X, self.y, self.rows, self.epochs = params, X, y, X.shape[0], epochs
        self.history = history = History(params=params)
        self.stop_training = False
        self.epoch = self.position = 0
        self.start_loss = math.nan
        # Distributed, each rank trains on its shard: the same number of equal steps everywhere.
        n = gd.local_rows(self.rows, self.batch_size) if self.distributed else self.rows
        size = self.batch_size
        self._batches = [slice(lo, min(lo + size, n)) for lo in range(0, n, size)]
        self._sizes = [b.stop - b.start for b in self._batches]
        self.steps = len(self._batches)
        self._add(0, [])
        self._backend = array_backend(X)
        dtype = tree_leaves(params)[0].dtype  # the loss's dtype, whatever the data's
        self._losses = self._backend.xp.zeros(
            (self.steps,), dtype=dtype, device=self._backend.array_device(X)
        )
        self._epoch_rng = self.rng.bit_generator.state
        return history

    def _epochs(self, callbacks: CallbackList, evaluation: _Evaluation, interrupt: Any) -> None:
        """The epoch loop: steps between reads of their losses, then the epoch's numbers."""
        alone = None if self.distributed else interrupt  # ranks stop together, at a read
        for epoch in range(self.epoch, self.epochs):
            started = time.perf_counter()
            callbacks.on_epoch_begin(epoch, {})
            self._epoch_rng = self.rng.bit_generator.state  # a fresh dict each time
            self._Xe, self._ye = self._epoch_data()
            while self.position < self.steps and not self.stop_training:
                first = self.position
                callbacks.on_batch_begin(first, {})
                reached = self.run_steps(first, min(first + READ_EVERY, self.steps), alone)
                losses = self._read(first, reached)
                self._add(first, losses)
                self.position = reached
                logs = {"losses": losses, "first": first, "loss": self._mean()}
                callbacks.on_batch_end(reached - 1, logs)
                if self._interrupted(interrupt):
                    raise KeyboardInterrupt(callbacks.on_interrupt())
            with self._draws_undone():
                evaluated = evaluation.after_epoch(self.params, self.X, self.y)
            logs = {"loss": self._mean(), **evaluated}
            logs["time"] = time.perf_counter() - started
            self.epoch, self.position = epoch + 1, 0
            self._add(0, [])
            self._epoch_rng = self.rng.bit_generator.state  # a fresh dict each time
            callbacks.on_epoch_end(epoch, logs)
            if self._interrupted(interrupt):
                raise KeyboardInterrupt(callbacks.on_interrupt())
            if self.stop_training:
                break

    def run_steps(self, first: int, stop: int, interrupt: Any = None) -> int:
        """Steps ``first`` to ``stop - 1`` of this epoch, their losses left on the device;
        where it stopped (early on Ctrl-C)."""
        step, params, optimizer, losses = self._step, self.params, self.optimizer, self._losses
        Xe, ye, batches = self._Xe, self._ye, self._batches
        for k in range(first, stop):
            batch = batches[k]
            losses[k] = step(params, optimizer, Xe[batch, ...], ye[batch, ...])
            if interrupt is not None and interrupt.requested:
                return k + 1
        return stop

    def _epoch_data(self) -> tuple[Any, Any]:
        """The data in this epoch's order (drawn from ``rng``, or as given), permuted on the
        device; distributed, this rank's shard of it."""
        if not self.shuffle and not self.distributed:
            return self.X, self.y
        order = self.rng.permutation(self.rows) if self.shuffle else np.arange(self.rows)
        if self.distributed:
            order = gd.shard(order, self.batch_size)
        order = self._backend.asarray(order)
        xp = self._backend.xp
        return xp.take(self.X, order, axis=0), xp.take(self.y, order, axis=0)

    def _read(self, first: int, stop: int) -> list[float]:
        """The losses of steps ``first`` to ``stop - 1``: the one wait for the device.
        Distributed, every rank gets (and a checkpoint keeps) the mean over the ranks."""
        read = self._backend.to_numpy(self._losses[first:stop])
        if self.distributed:
            read = gd.allreduce_mean(np.array(read, np.float64))
        return read.tolist()

    def _add(self, first: int, losses: list[float]) -> None:
        """Count the losses of steps from ``first`` (0: a new epoch) into the epoch's mean,
        summed in step order as scikit-learn sums its ``loss_curve_``, so that a resumed epoch
        adds up to the same bits."""
        if first == 0:
            self.step_losses, self._total, self._rows = [], 0.0, 0
        self.step_losses += losses
        for loss, rows in zip(losses, self._sizes[first:]):
            self._total += loss * rows
            self._rows += rows

    def _mean(self) -> float:
        """The mean loss per example over the steps so far in the epoch."""
        return self._total / self._rows if self._rows else math.nan

    def _interrupted(self, interrupt: Any) -> bool:
        """Ctrl-C; distributed, on any rank (every rank stops at the same step)."""
        if self.distributed:
            interrupt.requested = gd.mean(float(interrupt.requested)) > 0.0
        return interrupt.requested

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps to go on from here exactly: position, the generator as it
        was before this epoch's permutation, the epoch's losses so far, the optimizer and the
        loss's generator (as it is now: its draws follow the steps, not the epochs)."""
        return {
            "epoch": self.epoch, "step": self.position, "rows": self.rows,
            "rng": self._epoch_rng, "ranks": self.ranks, "step_losses": list(self.step_losses),
            "start_loss": self.start_loss,
            "generator": None if self.generator is None else self.generator.get_state(),
            **{f"optimizer/{k}": v for k, v in self.optimizer.state_dict().items()},
        }  # fmt: skip

    def resume_from(self, meta: Mapping[str, Any]) -> None:
        """Go on from a checkpoint's ``state()`` (params, optimizer, rng: restored by it)."""
        self.epoch, self.position = meta["epoch"], meta["step"]
        self._epoch_rng = self.rng.bit_generator.state  # as restored: what a save must keep
        if self.generator is not None and meta.get("generator") is not None:
            self.generator.set_state(meta["generator"])
        self._add(0, list(meta["step_losses"]))
        self.start_loss = meta["start_loss"]


def fit(
    loss_fn: Callable[[Any, Any, Any], Any],
    params: Any,
    X: Any,
    y: Any,
    optimizer: Any = None,
    epochs: int = 1,
    batch_size: int = 32,
    device: str = "cpu",
    shuffle: bool = True,
    seed: int = 0,
    validation_data: tuple[Any, Any] | None = None,
    metrics: Sequence[Callable] | Mapping[str, Callable] = (),
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    allow_changes: bool = False,
    overwrite: bool = False,
    distributed: bool = False,
    jit: bool = True,
    generator: Generator | None = None,
) -> History:
    """Minimise the mean of ``loss_fn(params, xb, yb)`` over minibatches; params change in place.

    A one-call ``Trainer``: see ``Trainer.fit`` for the data, the params and ``metrics``.
    Each epoch shuffles with a generator seeded by ``seed`` and keeps the last, smaller batch.
    ``optimizer`` defaults to ``SGD()``. ``generator`` is the ``gradcore.random.Generator``
    that ``loss_fn`` draws from (dropout): checkpoints carry its state (see ``Trainer``).

    Divergence guard: a step loss that is not finite, or (unless ``divergence_factor`` is None)
    above ``divergence_factor`` times the loss of the initial params, stops training with a
    ``FloatingPointError`` naming epoch and step; params keep their values from before it.

    With ``checkpoint=path`` the state is written at the end of epochs (at most every
    ``CHECKPOINT_EVERY`` seconds, and always at the end) and on Ctrl-C; the history goes to
    ``history_path(path)``. An existing file is resumed with ``resume=True`` (ending with
    exactly the params of an uninterrupted run), replaced with ``overwrite=True``, and
    otherwise refused. A resume whose learning rate, momentum, Nesterov, weight decay, batch
    size or seed differ from the checkpoint's is refused naming them, unless ``allow_changes``.
    ``resume=True`` without a file warns and starts afresh.

    ``distributed=True`` trains data parallel, one process per rank under ``mpiexec -n K
    python -m mpi4py``: rank 0's initial params and optimizer state go to every rank, each
    epoch's permutation is sharded by rank, ``batch_size`` is per rank, the remainder of
    ``n mod (K batch_size)`` rows is dropped each epoch, gradients are averaged every step,
    losses and metrics over the ranks, and only rank 0 shows progress and writes the
    checkpoint (see ``gradcore.distributed``).

    With ``jit`` (the default) the loss and gradient are recorded once per batch shape by
    ``gradcore.jit`` and replayed; if recording fails, one warning says why and training goes
    on eagerly. ``jit=False`` traces every step.
    """
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs a checkpoint path")
    callbacks: list[Callback] = []
    if checkpoint is not None:
        callbacks.append(
            Checkpoint(checkpoint, resume, overwrite, allow_changes, every=CHECKPOINT_EVERY)
        )
    trainer = Trainer(
        loss_fn, optimizer, batch_size, device, jit, callbacks, shuffle=shuffle, seed=seed,
        divergence_factor=divergence_factor, progress=progress, distributed=distributed,
        generator=generator,
    )  # fmt: skip
    return trainer.fit(params, X, y, epochs, validation_data, metrics)


# ---------------------------------------------------------------------------------------------
# inputs, checked at the door


def _integer(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int: Python and NumPy integers pass, bools, floats and strings do not."""
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TypeError(
            f"fit: {name} must be an integer, got {type(value).__name__} {value!r}"
        ) from None
    if number < minimum:
        kind = "a non-negative" if minimum == 0 else "a positive"
        raise ValueError(f"fit: {name} must be {kind} integer, got {value!r}")
    return number


def _on_device(what: str, x: Any, device: str) -> tuple[Any, bool]:
    """``x`` on ``device``, and whether it had to move.

    Host arrays (NumPy, lists) move: that is fit's job. An array on another accelerator is
    refused, since moving it behind the user's back is how data ends up on the wrong GPU.
    """
    if x is None:
        raise TypeError(f"fit: {what} None; pass an array (NumPy, CuPy) or a nested list")
    if not hasattr(x, "shape"):
        try:
            x = array(x)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"fit: {what} a {type(x).__name__} that is not an array ({error}); pass a "
                "NumPy array or a list of equal-length rows of numbers"
            ) from None
    where = device_of(x)
    if where == device or array_backend(x) is backend_for_device(device):  # "cuda" is "cuda:N" too
        return x, False
    if where != "cpu":
        raise DeviceError(
            f"fit: {what} on device {where!r} but device={device!r}; move them with "
            f"gradcore.to_device(..., {device!r}) or pass device={where!r}"
        )
    return to_device(x, device), True


def _data(name: str, x: Any, device: str, dtype: Any) -> Any:
    """Data on the device, numeric, at least 1-D, floating data in the params' dtype, finite."""
    x = _on_device(f"{name} is", x, device)[0]
    xp = array_backend(x).xp
    if not xp.isdtype(x.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"fit: {name} has dtype {x.dtype}; pass numbers")
    if x.ndim == 0:
        raise ValueError(f"fit: {name} is a scalar; pass one row per example")
    if xp.isdtype(x.dtype, "real floating") and x.shape[0]:
        if x.dtype != dtype:
            x = xp.astype(x, dtype)
        finite = xp.all(xp.isfinite(xp.reshape(x, (x.shape[0], -1))), axis=1)
        bad = np.flatnonzero(~array_backend(x).to_numpy(finite))  # one read, before training
        if bad.size:
            raise ValueError(
                f"fit: bad data: {name} has a NaN or infinite value in row {bad[0]}"
                + (f" and {bad.size - 1} more rows" if bad.size > 1 else "")
                + "; remove or impute such rows before training"
            )
    return x


def _pair(name: str, X: Any, y: Any, device: str, dtype: Any) -> tuple[Any, Any]:
    X, y = _data(f"{name}X", X, device, dtype), _data(f"{name}y", y, device, dtype)
    if X.shape[0] != y.shape[0]:
        raise ValueError(
            f"fit: {name}X has {X.shape[0]} rows but {name}y has {y.shape[0]}; they must match"
        )
    return X, y


def _validation(validation_data: Any, device: str, dtype: Any) -> tuple[Any, Any] | None:
    if validation_data is None:
        return None
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        got = type(validation_data).__name__
        shape = getattr(validation_data, "shape", None)
        raise TypeError(
            f"fit: validation_data must be a pair (X_val, y_val), got a {got}"
            + (f" of shape {shape}" if shape is not None else "")
        )
    X_val, y_val = _pair("validation ", validation_data[0], validation_data[1], device, dtype)
    if X_val.shape[0] == 0:
        raise ValueError("fit: validation_data has no rows; pass None to train without it")
    return X_val, y_val


def _replace_leaves(tree: Any, leaves: list[Any]) -> None:
    """Put ``leaves`` into the dicts and lists of ``tree`` in place, in pytree order."""
    remaining = iter(leaves)

    def fill(node: Any) -> None:
        if isinstance(node, tuple) or not isinstance(node, (dict, list)):
            raise TypeError(
                "fit: params must be held in dicts and lists to be moved to the device in "
                "place; move them first with params = gradcore.to_device(params, device)"
            )
        for key, child in list(node.items() if isinstance(node, dict) else enumerate(node)):
            if isinstance(child, (dict, list, tuple)):
                fill(child)
            else:
                node[key] = next(remaining)

    fill(tree)


def _params_on(params: Any, device: str) -> list[Any]:
    if not tree_leaves(params):
        raise ValueError("fit: params hold no arrays (expected e.g. the list from nn.init_mlp)")
    leaves, moved = zip(*(_on_device("params are", p, device) for p in tree_leaves(params)))
    if any(moved):
        _replace_leaves(params, list(leaves))
    return list(leaves)


# ---------------------------------------------------------------------------------------------
# the pieces around the loop


def _evaluate(loss_fn: Callable, params: Any, X: Any, y: Any) -> float:
    """The mean of ``loss_fn`` over a whole data set, in chunks, checking it is a scalar."""
    n = X.shape[0]
    total = 0.0
    for lo in range(0, n, _EVAL_CHUNK):
        rows = slice(lo, min(lo + _EVAL_CHUNK, n))
        value = loss_fn(params, X[rows, ...], y[rows, ...])
        if not isinstance(value, (int, float)) and getattr(value, "shape", None) != ():
            raise TypeError(
                f"fit: loss_fn must return a scalar, got {type(value).__name__} of shape "
                f"{getattr(value, 'shape', None)}; reduce it, e.g. with gradcore.mean"
            )
        total += float(value) * min(_EVAL_CHUNK, n - lo)
    return total / n


def _checked_metric(name: str, metric: Callable) -> Callable[[Any, Any, Any], float]:
    """``metric`` returning a Python float, or a TypeError naming it if it returns an array."""

    def value(params: Any, X: Any, y: Any) -> float:
        found = metric(params, X, y)
        if not isinstance(found, (int, float)) and getattr(found, "shape", None) != ():
            raise TypeError(
                f"fit: metric {name!r} must return a number, got {type(found).__name__} of "
                f"shape {getattr(found, 'shape', None)}; reduce it, e.g. with "
                "float(gradcore.mean(...))"
            )
        return float(found)

    return value


class _Evaluation:
    """The loss over a whole data set, and the validation loss and metrics after each epoch;
    the metrics are tried once up front. Distributed, each rank takes a share of the rows."""

    def __init__(
        self, loss_fn: Callable, validation: tuple | None, metrics: Any, distributed: bool
    ) -> None:
        self.validation = validation
        if isinstance(metrics, Mapping):
            named = list(metrics.items())
        else:
            named = [(getattr(m, "__name__", f"metric_{i}"), m) for i, m in enumerate(metrics)]
        share = gd.sharded if distributed else (lambda fn: fn)
        self.loss = share(lambda params, X, y: _evaluate(loss_fn, params, X, y))
        self.metrics = [(name, share(_checked_metric(name, m))) for name, m in named]

    def check(self, params: Any, X: Any, y: Any) -> None:
        """Run everything once before training: a mistake shows now, not after an epoch."""
        if self.validation is not None:
            self.loss(params, *self.validation)
        self._metrics(params, X, y)

    def _metrics(self, params: Any, X: Any, y: Any) -> dict[str, float]:
        values = {}
        for prefix, data in (("", (X, y)), ("val_", self.validation)):
            if data is None:
                continue
            for name, metric in self.metrics:
                values[prefix + name] = metric(params, *data)
        return values

    def after_epoch(self, params: Any, X: Any, y: Any) -> dict[str, float]:
        """The epoch's logs, less its training loss and time: validation loss, metrics."""
        logs = {}
        if self.validation is not None:
            logs["val_loss"] = self.loss(params, *self.validation)
        return logs | self._metrics(params, X, y)


class _DeferredInterrupt:
    """Ctrl-C sets a flag that the loop reads between steps, so that the checkpoint written
    before re-raising is a consistent state. A second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous or signal.SIG_DFL)
