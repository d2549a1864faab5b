"""Layer 5: the minibatch trainer, its history and its checkpoints.

``fit`` is Algorithm 8.1 with momentum: shuffle, cut a minibatch, one ``value_and_grad``, one
fused optimizer update. Everything in a step stays on the device; the per-step losses are
written into a device buffer that is read every ``READ_EVERY`` steps, which is when the
progress bar moves and a non-finite loss is noticed.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import gradcore as gc
from gradcore import nn
from gradcore.backend import backend_for_device, backend_of
from gradcore.optim import SGD
from gradcore.pytree import tree_leaves

__all__ = ["READ_EVERY", "History", "fit", "load_checkpoint", "save_checkpoint"]

READ_EVERY = 50  # steps between reads of the loss buffer: progress display and NaN check
_EVAL_CHUNK = 4096  # rows per forward pass when evaluating a whole data set
_FORMAT = 1  # checkpoint layout version


@dataclass
class History:
    """What ``fit`` measured, one entry per epoch, and the trained ``params``."""

    loss: list[float] = field(default_factory=list)  # mean training loss over the epoch
    val_loss: list[float] = field(default_factory=list)  # empty without validation_data
    metrics: dict[str, list[float]] = field(default_factory=dict)  # "name" and "val_name"
    time: list[float] = field(default_factory=list)  # wall seconds per epoch
    params: Any = None

    @property
    def epochs(self) -> int:
        return len(self.loss)

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

    def _to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("loss", "val_loss", "metrics", "time")}


# ---------------------------------------------------------------------------------------------
# checkpoints: .npz without pickles, written to a temporary file and renamed into place


def save_checkpoint(path: str | os.PathLike, params: Any, meta: Mapping[str, Any]) -> None:
    """Atomically write the arrays of ``params`` and JSON-able ``meta`` to an ``.npz`` file.

    Lists of arrays in ``meta`` (optimizer velocities) are stored as arrays too. A reader
    never sees a half-written file: the data goes to a temporary file that replaces ``path``.
    """
    arrays = {f"param/{i}": a for i, a in enumerate(gc.to_numpy(tree_leaves(params)))}
    scalars = {}
    for key, value in meta.items():
        if isinstance(value, list) and value and hasattr(value[0], "shape"):
            for i, a in enumerate(gc.to_numpy(value)):
                arrays[f"{key}/{i}"] = a
            scalars[key] = {"arrays": len(value)}
        else:
            scalars[key] = value
    arrays["meta"] = np.array(json.dumps(scalars))
    path = Path(path)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, delete=False) as file:
        try:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)


def load_checkpoint(path: str | os.PathLike) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The parameter arrays (host copies, in pytree order) and the meta of a checkpoint."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        for key, value in meta.items():
            if isinstance(value, dict) and set(value) == {"arrays"}:
                meta[key] = [data[f"{key}/{i}"] for i in range(value["arrays"])]
        count = sum(1 for name in data.files if name.startswith("param/"))
        return [data[f"param/{i}"] for i in range(count)], meta


# ---------------------------------------------------------------------------------------------
# putting data and params on the device


def _on_device(what: str, x: Any, device: str) -> tuple[Any, bool]:
    """``x`` on ``device``, and whether it had to move.

    Host arrays (NumPy, lists) move: that is fit's job. An array on another accelerator is
    refused, since moving it behind the user's back is how data ends up on the wrong GPU.
    """
    if not hasattr(x, "shape"):
        x = gc.array(x)
    where = gc.device_of(x)
    if where == device:
        return x, False
    if where != "cpu":
        raise gc.DeviceError(
            f"fit: {what} on device {where!r} but device={device!r}; move them with "
            f"gradcore.to_device(..., {device!r}) or pass device={where!r}"
        )
    return gc.to_device(x, device), True


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


def _as_dtype(x: Any, dtype: Any) -> Any:
    """Floating data in the parameters' dtype, so a float64 data set trains in float32."""
    xp = backend_of(x).xp
    if xp.isdtype(x.dtype, "real floating") and x.dtype != dtype:
        return xp.astype(x, dtype)
    return x


# ---------------------------------------------------------------------------------------------
# evaluation and interruption


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


def _metric_items(metrics: Sequence[Callable] | Mapping[str, Callable]) -> list[tuple]:
    if isinstance(metrics, Mapping):
        return list(metrics.items())
    return [(getattr(m, "__name__", f"metric_{i}"), m) for i, m in enumerate(metrics)]


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


# ---------------------------------------------------------------------------------------------
# the trainer


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
    jit: bool = True,
) -> History:
    """Minimise the mean of ``loss_fn(params, xb, yb)`` over minibatches; params change in place.

    Host data and params move to ``device`` once (the dicts and lists of ``params`` end up
    holding the trained arrays there); floating data is cast to the params' dtype. Each epoch
    shuffles with a generator seeded by ``seed`` and keeps the last, smaller batch.
    ``optimizer`` defaults to ``SGD()``; any object with ``step``, ``state_dict`` and
    ``load_state_dict`` works. ``metrics`` are functions ``(params, X, y) -> float`` (a list,
    or a dict by name) evaluated after every epoch on the training and validation data.

    With ``checkpoint=path`` the complete state is written after every epoch and on Ctrl-C;
    ``resume=True`` continues from it (or starts afresh if there is none) and ends with
    exactly the parameters of an uninterrupted run. A non-finite loss stops training with a
    ``FloatingPointError`` and leaves the params as they were before that step.

    With ``jit`` (the default) the loss and gradient are recorded once per batch shape by
    ``gc.jit`` and replayed; if recording fails, one warning says why and training goes on
    eagerly. ``jit=False`` traces every step.
    """
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be a non-negative integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be a positive integer, got {batch_size!r}")
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs a checkpoint path")
    backend = backend_for_device(device)
    xp = backend.xp
    optimizer = SGD() if optimizer is None else optimizer

    if not tree_leaves(params):
        raise ValueError("fit: params hold no arrays (expected e.g. the list from nn.init_mlp)")
    leaves, moved = zip(*(_on_device("params are", p, device) for p in tree_leaves(params)))
    if any(moved):
        _replace_leaves(params, list(leaves))
    dtype = leaves[0].dtype
    X, y = _on_device("X is", X, device)[0], _on_device("y is", y, device)[0]
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"fit: X has {X.shape[0]} rows but y has {y.shape[0]}; they must match")
    n = X.shape[0]
    if n == 0:
        raise ValueError("fit: no training data (X has 0 rows)")
    X, y = _as_dtype(X, dtype), _as_dtype(y, dtype)
    if validation_data is not None:
        X_val, y_val = (_on_device("validation data is", v, device)[0] for v in validation_data)
        X_val, y_val = _as_dtype(X_val, dtype), _as_dtype(y_val, dtype)
        if X_val.shape[0] != y_val.shape[0]:
            raise ValueError(
                f"fit: validation X has {X_val.shape[0]} rows but y has {y_val.shape[0]}"
            )

    # Run the loss once over all the data with the target checks on (a clear error now, not a
    # wrong number later); inside the training steps they are off, so no step waits.
    _evaluate(loss_fn, params, X, y)
    if validation_data is not None:
        _evaluate(loss_fn, params, X_val, y_val)

    batches = [slice(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    steps = len(batches)
    sizes = np.array([b.stop - b.start for b in batches], np.float64)
    history = History(params=params)
    rng = np.random.default_rng(seed)
    start_epoch, start_step, done_losses = 0, 0, []
    if resume and Path(checkpoint).exists():
        start_epoch, start_step, done_losses = _restore(
            checkpoint, params, optimizer, rng, history, n, batch_size
        )

    value_and_grad = gc.value_and_grad(loss_fn)
    if jit:
        value_and_grad = gc.jit(value_and_grad, fallback=True)
    losses = xp.zeros((steps,), dtype=dtype, device=backend.array_device(X))

    def run(Xe: Any, ye: Any, first: int, stop: int, interrupt: _DeferredInterrupt | None) -> int:
        """Steps ``first`` to ``stop - 1``; returns where it stopped (early on Ctrl-C)."""
        for step in range(first, stop):
            rows = batches[step]
            loss, grads = value_and_grad(params, Xe[rows, ...], ye[rows, ...])
            optimizer.step(params, grads)
            losses[step] = loss
            if interrupt is not None and interrupt.requested:
                return step + 1
        return stop

    def state(epoch: int, step: int, epoch_rng: dict, step_losses: list[float]) -> dict:
        return {
            "format": _FORMAT,
            "epoch": epoch,
            "step": step,
            "rows": n,
            "batch_size": batch_size,
            "rng": epoch_rng,
            "step_losses": step_losses,
            "history": history._to_json(),
            **{f"optimizer/{k}": v for k, v in optimizer.state_dict().items()},
        }

    bar = tqdm(
        total=epochs * steps,
        initial=min(start_epoch * steps + start_step, epochs * steps),
        unit="step",
        disable=not progress or not sys.stderr.isatty(),
    )
    shown = {}  # the progress bar's loss and val_loss
    with bar, nn.target_checks(False), _DeferredInterrupt() as interrupt:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            bar.set_description(f"epoch {epoch + 1}/{epochs}", refresh=False)
            epoch_rng = copy.deepcopy(rng.bit_generator.state)
            if shuffle:
                order = backend.asarray(rng.permutation(n))
                Xe, ye = xp.take(X, order, axis=0), xp.take(y, order, axis=0)
            else:
                Xe, ye = X, y
            step_losses, done_losses = done_losses, []
            position = start_step if epoch == start_epoch else 0
            while position < steps:
                stop = min(position + READ_EVERY, steps)
                params_before = [gc.array(p) for p in tree_leaves(params)]
                optimizer_before = optimizer.state_dict()
                reached = run(Xe, ye, position, stop, interrupt)
                read = backend.to_numpy(losses[position:reached]).tolist()
                bad = next((i for i, v in enumerate(read) if not math.isfinite(v)), None)
                if bad is not None:
                    # Back to the last read, then replay the finite steps: no step waited.
                    for p, before in zip(tree_leaves(params), params_before):
                        p[...] = before
                    optimizer.load_state_dict(optimizer_before)
                    run(Xe, ye, position, position + bad, None)
                    raise FloatingPointError(
                        f"fit: the loss is {read[bad]} at epoch {epoch + 1}/{epochs}, step "
                        f"{position + bad + 1}/{steps}; params hold their values from before "
                        "that step (a smaller learning rate may help)"
                    )
                step_losses += read
                position = reached
                bar.update(len(read))
                done = sizes[: len(step_losses)]
                shown["loss"] = f"{np.dot(step_losses, done) / done.sum():.4f}"  # epoch so far
                bar.set_postfix(shown, refresh=False)
                if interrupt.requested:
                    if checkpoint is not None:
                        save_checkpoint(
                            checkpoint, params, state(epoch, position, epoch_rng, step_losses)
                        )
                    raise KeyboardInterrupt

            history.loss.append(float(np.dot(step_losses, sizes)) / n)
            shown["loss"] = f"{history.loss[-1]:.4f}"
            if validation_data is not None:
                history.val_loss.append(_evaluate(loss_fn, params, X_val, y_val))
                shown["val_loss"] = f"{history.val_loss[-1]:.4f}"
            for name, metric in _metric_items(metrics):
                history.metrics.setdefault(name, []).append(float(metric(params, X, y)))
                if validation_data is not None:
                    value = float(metric(params, X_val, y_val))
                    history.metrics.setdefault(f"val_{name}", []).append(value)
            history.time.append(time.perf_counter() - started)
            bar.set_postfix(shown, refresh=False)
            if checkpoint is not None:
                next_rng = copy.deepcopy(rng.bit_generator.state)
                save_checkpoint(checkpoint, params, state(epoch + 1, 0, next_rng, []))
            if interrupt.requested:
                raise KeyboardInterrupt
    return history


def _restore(
    path: Any, params: Any, optimizer: Any, rng: Any, history: History, n: int, batch_size: int
) -> tuple[int, int, list[float]]:
    """Load a checkpoint into params (in place), optimizer, rng and history; where to go on."""
    saved, meta = load_checkpoint(path)
    if meta.get("format") != _FORMAT:
        raise ValueError(f"fit: {path} is not a gradcore checkpoint of format {_FORMAT}")
    if (meta["rows"], meta["batch_size"]) != (n, batch_size):
        raise ValueError(
            f"fit: {path} was written for {meta['rows']} rows in batches of "
            f"{meta['batch_size']}; this run has {n} rows in batches of {batch_size}"
        )
    leaves = tree_leaves(params)
    if [tuple(p.shape) for p in leaves] != [a.shape for a in saved]:
        raise ValueError(f"fit: the params in {path} do not have the shapes of these params")
    for param, array in zip(leaves, saved):
        param[...] = backend_of(param).asarray(array, dtype=param.dtype)
    prefix = "optimizer/"
    optimizer.load_state_dict(
        {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
    )
    rng.bit_generator.state = meta["rng"]
    for key, value in meta["history"].items():
        setattr(history, key, value)
    return meta["epoch"], meta["step"], meta["step_losses"]
