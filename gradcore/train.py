"""Layer 5: the minibatch trainer, its history and its checkpoints.

``fit`` is Algorithm 8.1 with momentum: shuffle, cut a minibatch, one ``value_and_grad``, one
fused optimizer update. Everything in a step stays on the device; the per-step losses are
written into a device buffer that is read every ``READ_EVERY`` steps, which is when the
progress bar moves and the divergence guard looks at the loss.

The loop in ``fit`` is short on purpose; what happens around it lives in small pieces of its
own: ``_Guard`` (divergence), ``_Evaluation`` (validation loss and metrics), ``_Progress``
(the bar), ``_Checkpoints`` (files) and ``_make_step`` (the one place a training step is built).
Data-parallel training (``distributed=True``, ``gradcore.distributed``) changes each piece by
a line: the step averages gradients, the data is sharded, numbers are averaged over the ranks
and only rank 0 writes.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import contextlib
import copy
import json
import math
import operator
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gradcore import distributed as gd
from gradcore import nn
from gradcore.backend import DeviceError, backend_for_device, backend_of
from gradcore.devices import array, device_of, to_device, to_numpy
from gradcore.differential_operators import value_and_grad
from gradcore.jit import jit as record_once
from gradcore.optim import SGD
from gradcore.pytree import tree_leaves

__all__ = [
    "CHECKPOINT_EVERY",
    "DIVERGENCE_FACTOR",
    "FORMAT",
    "READ_EVERY",
    "CheckpointError",
    "History",
    "check_writable",
    "fit",
    "history_path",
    "load_checkpoint",
    "save_checkpoint",
    "write_npz",
]

READ_EVERY = 50  # steps between reads of the loss buffer: progress display and the guard
# Seconds between checkpoint writes at the end of epochs; the last epoch, Ctrl-C and a resume
# point inside an epoch are always written. A kill -9 loses at most this much training.
CHECKPOINT_EVERY = 1.0
DIVERGENCE_FACTOR = 1e3  # a step loss above this many times the starting loss is divergence
FORMAT = 2  # checkpoint layout version; 2 added the run's settings and the history sidecar
_EVAL_CHUNK = 4096  # rows per forward pass when evaluating a whole data set
# What must match for a resume to continue the same run (allow_changes=True accepts changes).
_SETTINGS = ("learning_rate", "momentum", "nesterov", "weight_decay", "batch_size", "seed")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run; names path and why."""


@dataclass
class History:
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
        for name in {*self.metrics, *entry["metrics"]}:
            values = self.metrics.setdefault(name, [])
            values += [math.nan] * (done - len(values))
            values.append(entry["metrics"].get(name, math.nan))
        self.time.append(entry["time"])


# ---------------------------------------------------------------------------------------------
# checkpoint files: .npz without pickles, written next to the target and renamed into place


def _temporary(path: Path) -> Path:
    """A name next to ``path`` that says what it is and which process wrote it."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def history_path(path: str | os.PathLike) -> Path:
    """The append-only JSON-lines file beside checkpoint ``path`` that holds its history.

    One line per epoch keeps a checkpoint's cost independent of the number of epochs.
    """
    path = Path(path)
    return path.with_name(path.name + ".history.jsonl")


def check_writable(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path, after creating and removing a file beside it: a path that cannot be
    written fails now, before any training, naming ``what`` (e.g. "--plot") and the path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; give a file path such as {path}/run.npz")
    probe = _temporary(path)
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"{what} {path} cannot be written ({error.strerror or error}); choose another path"
        ) from None
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of processes that no longer run (killed while saving) go away."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except OSError:
            continue  # alive, under another user


def save_checkpoint(path: str | os.PathLike, params: Any, meta: Mapping[str, Any]) -> None:
    """Atomically write the arrays of ``params`` and JSON-able ``meta`` to an ``.npz`` file.

    Lists of arrays in ``meta`` (optimizer velocities) are stored as arrays too. A reader
    never sees a half-written file (``write_npz``).
    """
    arrays = {f"param/{i}": a for i, a in enumerate(to_numpy(tree_leaves(params)))}
    scalars = {}
    for key, value in meta.items():
        if isinstance(value, list) and value and hasattr(value[0], "shape"):
            for i, a in enumerate(to_numpy(value)):
                arrays[f"{key}/{i}"] = a
            scalars[key] = {"arrays": len(value)}
        else:
            scalars[key] = value
    arrays["meta"] = np.array(json.dumps(scalars))
    write_npz(path, arrays)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Write host ``arrays`` to an ``.npz`` at ``path`` so that no reader sees half a file.

    The data goes to ``.<name>.tmp-<pid>`` beside ``path``, reaches the disk, then replaces
    ``path``; the temporary file is removed if anything fails. The mode follows the umask.
    """
    path = Path(path)
    temporary = _temporary(path)
    try:
        with temporary.open("wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _unreadable(path: Any, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} cannot be read: {why}; delete it or use another checkpoint path"
    )


def _kind_of_file(path: Path, error: Exception) -> str:
    """What a file that np.load refused looks like, for the error message."""
    with path.open("rb") as file:
        head = file.read(8)
    if head[:2] == b"PK":
        return f"it is truncated or corrupt ({error})"
    if head[:1] == b"\x80":
        return "it is a pickle, which gradcore never loads (loading one can run code)"
    if not head:
        return "it is empty"
    return "it is not an .npz file (wrong leading bytes)"


def load_checkpoint(path: str | os.PathLike) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The parameter arrays (host copies, in pytree order) and the meta of a checkpoint.

    Never executes code from the file (``allow_pickle=False``). Raises ``CheckpointError``
    naming the path when the file is truncated, corrupt, foreign, pickled or of another format.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, _kind_of_file(path, error)) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _unreadable(path, "it is a single .npy array, not a gradcore .npz checkpoint")
    with data:
        if "meta" not in data.files:
            raise _unreadable(path, "it is an .npz file without gradcore's metadata")
        try:
            meta = json.loads(str(data["meta"]))
            found = meta.get("format") if isinstance(meta, dict) else None
            if found != FORMAT:
                raise _unreadable(path, f"it has format {found}, this gradcore reads {FORMAT}")
            for key, value in meta.items():
                if isinstance(value, dict) and set(value) == {"arrays"}:
                    meta[key] = [data[f"{key}/{i}"] for i in range(value["arrays"])]
            count = sum(1 for name in data.files if name.startswith("param/"))
            return [data[f"param/{i}"] for i in range(count)], meta
        except CheckpointError:
            raise
        except ValueError as error:
            if "allow_pickle" in str(error):
                why = "it holds pickled objects, which gradcore never loads"
                raise _unreadable(path, why) from None
            raise _unreadable(path, f"it is truncated or corrupt ({error})") from None
        except (KeyError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
            raise _unreadable(path, f"it is truncated or corrupt ({error})") from None


def _dtype_name(x: Any) -> str:
    """The dtype's name on every backend (array-api-strict says "array_api_strict.float32")."""
    return str(x.dtype).rsplit(".", 1)[-1]


def _describe(value: Any) -> Any:
    """A JSON value that identifies a setting: numbers as they are, a schedule by its name and
    the numbers it closes over (``linear_decay(final=0.01, initial=0.1, steps=100)``)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    name = getattr(value, "__qualname__", type(value).__qualname__).replace(".<locals>.", ".")
    code = getattr(value, "__code__", None)
    if code is None or not code.co_freevars:
        return name
    cells = sorted(zip(code.co_freevars, value.__closure__))
    return f"{name}({', '.join(f'{k}={c.cell_contents!r}' for k, c in cells)})"


class _Checkpoints:
    """The checkpoint of one run: its checks before training, its restore and its writes.

    The ``.npz`` holds what the next step needs (params, optimizer state, position, settings);
    the epochs' history is appended to ``history_path(path)``, whose length at the time of
    each save is recorded, so a resume cuts off whatever a kill left after it.
    """

    def __init__(
        self, path: str | os.PathLike, settings: dict, leaves: list, rows: int, writes: bool,
        ranks: int,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.settings = settings
        self.architecture = [[list(p.shape), _dtype_name(p)] for p in leaves]
        self.rows = rows
        self.ranks = ranks  # distributed: an epoch's steps depend on how many ranks share it
        self.writes = writes  # False on the ranks other than 0: they only read, to resume
        self.log: Any = None  # the open history file
        self.saved_at = time.monotonic()

    def prepare(self, resume: bool, overwrite: bool) -> bool:
        """Check the paths before any work; True when there is a checkpoint to resume."""
        if self.writes:
            check_writable(self.path, "fit: checkpoint")
            _remove_stale_temporaries(self.path)
        exists = self.path.exists()
        if exists and not resume and not overwrite:
            raise FileExistsError(
                f"fit: checkpoint {self.path} exists; pass resume=True to continue from it, "
                "overwrite=True to start again from scratch, or another checkpoint path"
            )
        if resume and not exists:
            warnings.warn(f"fit: no checkpoint at {self.path} yet; starting afresh", stacklevel=3)
        return resume and exists

    def restore(
        self, leaves: list, optimizer: Any, rng: Any, history: History, allow_changes: bool
    ) -> dict[str, Any]:
        """Load params (in place), optimizer, rng and history, after checking that the file
        belongs to this run; the meta, which says where to go on."""
        saved, meta = load_checkpoint(self.path)
        found = [[list(a.shape), _dtype_name(a)] for a in saved]
        if found != self.architecture:
            raise CheckpointError(
                f"fit: checkpoint {self.path} holds params of shapes and dtypes {found}, but "
                f"these params are {self.architecture}; use the network it was written for, or "
                "another checkpoint path"
            )
        then = meta["settings"]
        changed = [k for k in _SETTINGS if then.get(k) != self.settings.get(k)]
        if changed and not allow_changes:
            old = ", ".join(f"{k}={then.get(k)!r}" for k in changed)
            new = ", ".join(f"{k}={self.settings.get(k)!r}" for k in changed)
            raise ValueError(
                f"fit: checkpoint {self.path} was written with {old} but this run has {new}; "
                "pass allow_changes=True (--allow-changes) to continue with the new values"
            )
        batch_size = self.settings["batch_size"]
        was = (meta["rows"], then["batch_size"], meta.get("ranks", 1))
        if meta["step"] and was != (self.rows, batch_size, self.ranks):
            raise ValueError(
                f"fit: checkpoint {self.path} stopped inside an epoch of {was[0]} rows in "
                f"batches of {was[1]} on {was[2]} rank(s); this run has {self.rows} rows in "
                f"batches of {batch_size} on {self.ranks}, so it cannot continue that epoch"
            )
        for entry in self._read_history(meta["history_bytes"]):
            history._append(entry)
        for param, values in zip(leaves, saved):
            param[...] = backend_of(param).asarray(values, dtype=param.dtype)
        prefix = "optimizer/"
        optimizer.load_state_dict(
            {k[len(prefix) :]: v for k, v in meta.items() if k.startswith(prefix)}
        )
        rng.bit_generator.state = meta["rng"]
        history.resumed_epochs = meta["epoch"]
        return meta

    def _read_history(self, length: int) -> list[dict]:
        """The first ``length`` bytes of the history file, the file cut to them (a kill may
        have appended an epoch that the checkpoint does not hold)."""
        log = history_path(self.path)
        try:
            with log.open("r+b" if self.writes else "rb") as file:
                text = file.read(length)
                if self.writes:
                    file.truncate(length)
            if len(text) != length:
                raise ValueError(f"it has {len(text)} bytes, the checkpoint recorded {length}")
            return [json.loads(line) for line in text.decode().splitlines()]
        except (OSError, ValueError) as error:
            if length == 0 and isinstance(error, FileNotFoundError):
                return []
            raise CheckpointError(
                f"fit: the history {log} of checkpoint {self.path} cannot be read ({error}); "
                "delete both files or use another checkpoint path"
            ) from None

    def __enter__(self) -> _Checkpoints:
        if self.writes:
            self.log = history_path(self.path).open("ab")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writes:
            self.log.close()

    def start_fresh(self) -> None:
        """A run that does not resume replaces both files: a checkpoint left behind would no
        longer match the history."""
        if self.writes:
            self.path.unlink(missing_ok=True)
            self.log.truncate(0)

    def append(self, entry: Mapping[str, Any]) -> None:
        if self.writes:
            self.log.write(json.dumps(entry).encode() + b"\n")
            self.log.flush()

    def due(self, force: bool) -> bool:
        """Whether to write now: when ``force``d, or ``CHECKPOINT_EVERY`` seconds after the
        last write (short epochs should train, not write)."""
        return self.writes and (force or time.monotonic() - self.saved_at >= CHECKPOINT_EVERY)

    def save(self, params: Any, state: dict) -> None:
        """Write ``state`` (what ``fit`` needs to go on) with the run's settings."""
        meta = {
            "format": FORMAT,
            "settings": self.settings,
            "architecture": self.architecture,
            "history_bytes": self.log.tell(),
            **state,
        }
        save_checkpoint(self.path, params, meta)
        self.saved_at = time.monotonic()


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
    if where == device or backend_of(x) is backend_for_device(device):  # "cuda" is "cuda:N" too
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
    xp = backend_of(x).xp
    if not xp.isdtype(x.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"fit: {name} has dtype {x.dtype}; pass numbers")
    if x.ndim == 0:
        raise ValueError(f"fit: {name} is a scalar; pass one row per example")
    if xp.isdtype(x.dtype, "real floating") and x.shape[0]:
        if x.dtype != dtype:
            x = xp.astype(x, dtype)
        finite = xp.all(xp.isfinite(xp.reshape(x, (x.shape[0], -1))), axis=1)
        bad = np.flatnonzero(~backend_of(x).to_numpy(finite))  # one read, before training
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
    X_val, y_val = _pair("validation ", *validation_data, device, dtype)
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


def _settings(optimizer: Any, batch_size: int, seed: int) -> dict[str, Any]:
    """The hyperparameters a checkpoint records, read from any optimizer that has them."""
    found = {
        name: _describe(getattr(optimizer, name))
        for name in ("learning_rate", "momentum", "nesterov", "weight_decay")
        if hasattr(optimizer, name)
    }
    return {"optimizer": type(optimizer).__name__, **found, "batch_size": batch_size, "seed": seed}


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
            for name, metric in self.metrics if data is not None else ():
                values[prefix + name] = metric(params, *data)
        return values

    def after_epoch(self, params: Any, X: Any, y: Any) -> dict[str, Any]:
        """The epoch's history entry, less its training loss and time."""
        entry: dict[str, Any] = {"metrics": self._metrics(params, X, y)}
        if self.validation is not None:
            entry["val_loss"] = self.loss(params, *self.validation)
        return entry


class _Guard:
    """Divergence: a step loss that is not finite, or above ``factor`` times the starting loss
    (the loss of the initial params over the training data), stops training."""

    def __init__(self, factor: float | None, start_loss: float, distributed: bool) -> None:
        self.start_loss = start_loss
        positive = factor is not None and start_loss > 0
        self.bound = factor * start_loss if positive else math.inf
        self.factor = factor
        self.distributed = distributed

    def first_bad(self, losses: list[float]) -> int | None:
        """The first bad step; distributed, the first over all ranks, so that every rank rolls
        back to the same step (one that stopped alone would leave the others waiting)."""
        bad = next(
            (i for i, v in enumerate(losses) if not math.isfinite(v) or v > self.bound), None
        )
        return gd.earliest(bad) if self.distributed else bad

    def error(self, loss: float, where: str) -> FloatingPointError:
        if math.isfinite(loss) and loss <= self.bound:  # distributed: this rank's was fine
            why = "the loss diverged on another rank"
        elif math.isfinite(loss):
            why = (
                f"the loss is {loss:.4g}, more than divergence_factor={self.factor:g} times "
                f"the starting loss {self.start_loss:.4g}"
            )
        else:
            why = f"the loss is {loss}"
        return FloatingPointError(
            f"fit: diverged at {where}: {why}; params hold their values from before that "
            "step (a smaller learning rate may help)"
        )


class _Progress:
    """The progress bar: moves at each read of the losses, shows the epoch's mean loss."""

    def __init__(self, enabled: bool, epochs: int, steps: int, done: int) -> None:
        self.epochs = epochs
        self.shown: dict[str, str] = {}
        self.bar = tqdm(
            total=epochs * steps,
            initial=min(done, epochs * steps),
            unit="step",
            disable=not enabled or not sys.stderr.isatty(),
        )

    def epoch(self, epoch: int) -> None:
        self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)

    def update(self, steps: int, **values: float) -> None:
        self.shown.update({k: f"{v:.4f}" for k, v in values.items()})
        self.bar.update(steps)
        self.bar.set_postfix(self.shown, refresh=False)

    def close(self) -> None:
        self.bar.close()


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


def _make_step(
    loss_fn: Callable, optimizer: Any, distributed: bool, jit: bool
) -> Callable[[Any, Any, Any], Any]:
    """One training step, ``(params, xb, yb) -> loss`` (a device scalar, never read here).

    The single place a step is built. With ``jit`` the loss and gradient are recorded once per
    batch shape and replayed (eager, with one warning, where recording fails). Distributed,
    the gradients are averaged over the ranks (one fused collective) before the update, so
    every rank makes the same update.
    """
    loss_and_grads = value_and_grad(loss_fn)
    if jit:
        loss_and_grads = record_once(loss_and_grads, fallback=True)

    def step(params: Any, xb: Any, yb: Any) -> Any:
        loss, grads = loss_and_grads(params, xb, yb)
        if distributed:
            gd.allreduce_mean(grads)
        optimizer.step(params, grads)
        return loss

    return step


class _Steps:
    """The minibatches of one data set and the training steps over them. Losses stay in a
    device buffer, read back once per call of ``run_and_read``, where the guard sees them."""

    def __init__(
        self, step: Callable, params: Any, optimizer: Any, X: Any, y: Any, batch_size: int,
        distributed: bool,
    ) -> None:  # fmt: skip
        self.step, self.params, self.optimizer, self.X, self.y = step, params, optimizer, X, y
        self.batch_size, self.distributed = batch_size, distributed
        # Distributed, each rank trains on its shard: the same number of equal steps everywhere.
        n = gd.local_rows(X.shape[0], batch_size) if distributed else X.shape[0]
        self.batches = [slice(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
        self.sizes = np.array([b.stop - b.start for b in self.batches], np.float64)
        self.backend = backend_of(X)
        xp = self.backend.xp
        dtype = tree_leaves(params)[0].dtype  # the loss's dtype, whatever the data's
        self.losses = xp.zeros((len(self),), dtype=dtype, device=self.backend.array_device(X))

    def __len__(self) -> int:
        return len(self.batches)

    def epoch_data(self, rng: np.random.Generator, shuffle: bool) -> tuple[Any, Any]:
        """The data in this epoch's order (drawn from ``rng``, or as given), permuted on the
        device; distributed, this rank's shard of it."""
        if not shuffle and not self.distributed:
            return self.X, self.y
        n = self.X.shape[0]
        order = rng.permutation(n) if shuffle else np.arange(n)
        if self.distributed:
            order = gd.shard(order, self.batch_size)
        order = self.backend.asarray(order)
        xp = self.backend.xp
        return xp.take(self.X, order, axis=0), xp.take(self.y, order, axis=0)

    def mean(self, step_losses: list[float]) -> float:
        """The mean loss per example over the steps so far in the epoch."""
        done = self.sizes[: len(step_losses)]
        return float(np.dot(step_losses, done) / done.sum())

    def run(self, Xe: Any, ye: Any, first: int, stop: int, interrupt: Any = None) -> int:
        """Steps ``first`` to ``stop - 1``; returns where it stopped (early on Ctrl-C)."""
        for k in range(first, stop):
            batch = self.batches[k]
            self.losses[k] = self.step(self.params, Xe[batch, ...], ye[batch, ...])
            if interrupt is not None and interrupt.requested:
                return k + 1
        return stop

    def run_and_read(
        self, Xe: Any, ye: Any, first: int, stop: int, interrupt: Any, guard: _Guard,
        epoch: int, epochs: int,
    ) -> list[float]:  # fmt: skip
        """Run steps, then read their losses (the only wait for the device). On a bad loss,
        go back to the state before ``first`` and replay the steps before the bad one."""
        leaves = tree_leaves(self.params)
        params_before = [array(p) for p in leaves]
        optimizer_before = self.optimizer.state_dict()
        reached = self.run(Xe, ye, first, stop, interrupt)
        read = self.backend.to_numpy(self.losses[first:reached]).tolist()
        bad = guard.first_bad(read)
        if bad is None:
            return read
        for param, before in zip(leaves, params_before):
            param[...] = before
        self.optimizer.load_state_dict(optimizer_before)
        self.run(Xe, ye, first, first + bad)
        where = f"epoch {epoch + 1}/{epochs}, step {first + bad + 1}/{len(self)}"
        raise guard.error(read[bad], where)


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
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    allow_changes: bool = False,
    overwrite: bool = False,
    distributed: bool = False,
    jit: bool = True,
) -> History:
    """Minimise the mean of ``loss_fn(params, xb, yb)`` over minibatches; params change in place.

    Host data and params move to ``device`` once (the dicts and lists of ``params`` end up
    holding the trained arrays there); floating data is cast to the params' dtype and must be
    finite. Each epoch shuffles with a generator seeded by ``seed`` and keeps the last, smaller
    batch. ``optimizer`` defaults to ``SGD()``; any object with ``step``, ``state_dict`` and
    ``load_state_dict`` works. ``metrics`` are functions ``(params, X, y) -> float`` (a list,
    or a dict by name) evaluated after every epoch on the training and validation data.

    Divergence guard: a step loss that is not finite, or (unless ``divergence_factor`` is None)
    above ``divergence_factor`` times the loss of the initial params, stops training with a
    ``FloatingPointError`` naming epoch and step; params keep their values from before it.

    With ``checkpoint=path`` the state is written at the end of epochs (at most every
    ``CHECKPOINT_EVERY`` seconds, and always after the last) and on Ctrl-C; the history goes
    to ``history_path(path)``. An existing file is resumed with ``resume=True`` (ending with
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
    epochs = _integer("epochs", epochs, 0)
    batch_size = _integer("batch_size", batch_size, 1)
    seed = _integer("seed", seed, 0)
    if resume and checkpoint is None:
        raise ValueError("fit: resume=True needs a checkpoint path")
    if distributed:  # this rank's device; rank 0 speaks for all ranks
        device = gd.init(device)
        progress = progress and gd.is_root()
    backend_for_device(device)  # an unknown or unavailable device fails first
    optimizer = SGD() if optimizer is None else optimizer
    leaves = _params_on(params, device)
    X, y = _pair("", X, y, device, leaves[0].dtype)
    if X.shape[0] == 0:
        raise ValueError("fit: no training data (X has 0 rows)")
    validation = _validation(validation_data, device, leaves[0].dtype)
    evaluation = _Evaluation(loss_fn, validation, metrics, distributed)
    saver, resuming = None, False
    if checkpoint is not None:
        settings = _settings(optimizer, batch_size, seed)
        writes = not distributed or gd.is_root()
        ranks = gd.size() if distributed else 1
        saver = _Checkpoints(checkpoint, settings, leaves, X.shape[0], writes, ranks)
        resuming = saver.prepare(resume, overwrite)

    history = History(params=params)
    rng = np.random.default_rng(seed)
    first_epoch, position, step_losses = 0, 0, []
    if resuming:
        meta = saver.restore(leaves, optimizer, rng, history, allow_changes)
        first_epoch, position, step_losses = meta["epoch"], meta["step"], meta["step_losses"]
    if distributed:  # every rank starts where, and with what, rank 0 starts
        gd.start(params, optimizer, rng, rows=X.shape[0], epoch=first_epoch, step=position)

    # Run the loss once over all the data with the target checks on (a clear error now, not a
    # wrong number later); inside the training steps they are off, so no step waits.
    start_loss = evaluation.loss(params, X, y)
    if not math.isfinite(start_loss):
        raise FloatingPointError(
            f"fit: the loss of the initial params is {start_loss}; check loss_fn and the init"
        )
    evaluation.check(params, X, y)
    if resuming:  # the guard's bound stays that of the run's own start
        start_loss = meta["start_loss"]
    guard = _Guard(divergence_factor, start_loss, distributed)
    step = _make_step(loss_fn, optimizer, distributed, jit)
    steps = _Steps(step, params, optimizer, X, y, batch_size, distributed)
    bar = _Progress(progress, epochs, len(steps), first_epoch * len(steps) + position)

    def interrupted() -> bool:
        """Ctrl-C; distributed, on any rank (every rank stops at the same step)."""
        if distributed:
            interrupt.requested = gd.mean(float(interrupt.requested)) > 0.0
        return interrupt.requested

    def save(epoch: int, position: int, rng_state: dict, step_losses: list, force: bool) -> bool:
        """Write the checkpoint if one is due; whether it was written."""
        if saver is not None and saver.due(force):
            state = {
                "epoch": epoch, "step": position, "rows": X.shape[0], "rng": rng_state,
                "ranks": saver.ranks,
                "step_losses": step_losses, "start_loss": start_loss,
                **{f"optimizer/{k}": v for k, v in optimizer.state_dict().items()},
            }  # fmt: skip
            saver.save(params, state)
            return True
        return False

    def stop_on_interrupt(*where: Any) -> None:
        saved = save(*where, force=True)
        raise KeyboardInterrupt(f"state saved to {checkpoint}" if saved else "")

    with (
        saver or contextlib.nullcontext(),
        contextlib.closing(bar),
        nn.target_checks(False),
        _DeferredInterrupt() as interrupt,
    ):
        if saver is not None and not resuming:
            saver.start_fresh()
        for epoch in range(first_epoch, epochs):
            started = time.perf_counter()
            bar.epoch(epoch)
            epoch_rng = copy.deepcopy(rng.bit_generator.state)
            Xe, ye = steps.epoch_data(rng, shuffle)
            while position < len(steps):
                stop = min(position + READ_EVERY, len(steps))
                # Distributed, a rank never stops alone between reads: the others would wait.
                alone = None if distributed else interrupt
                read = steps.run_and_read(Xe, ye, position, stop, alone, guard, epoch, epochs)
                if distributed:  # every rank holds (and a checkpoint keeps) the ranks' mean
                    read = gd.allreduce_mean(np.array(read, np.float64)).tolist()
                step_losses += read
                position += len(read)
                bar.update(len(read), loss=steps.mean(step_losses))
                if interrupted():
                    stop_on_interrupt(epoch, position, epoch_rng, step_losses)

            entry = {"loss": steps.mean(step_losses), **evaluation.after_epoch(params, X, y)}
            entry["time"] = time.perf_counter() - started
            history._append(entry)
            bar.update(0, **{k: v for k, v in entry.items() if k.endswith("loss")})
            position, step_losses = 0, []
            if saver is not None:
                saver.append(entry)
            if interrupted():
                stop_on_interrupt(epoch + 1, 0, rng.bit_generator.state, [])
            save(epoch + 1, 0, rng.bit_generator.state, [], force=epoch == epochs - 1)
    if distributed and checkpoint is not None:  # no rank reads the file before rank 0 wrote it
        gd.barrier()
    return history
