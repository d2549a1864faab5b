"""Layer 5: checkpoint files. The format (``.npz`` without pickles), atomic writes, the checks
a resume makes, and the history that lives beside each checkpoint.

Nothing here knows about training loops: ``gradcore.callbacks.Checkpoint`` decides when to
write and what a run's state is; this module only writes and reads it safely.
"""

from __future__ import annotations

import json
import os
import time
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from gradcore.backend import array_backend
from gradcore.devices import to_numpy
from gradcore.pytree import tree_leaves

__all__ = [
    "CHECKPOINT_EVERY",
    "FORMAT",
    "CheckpointError",
    "RunCheckpoint",
    "check_writable",
    "history_path",
    "load_checkpoint",
    "save_checkpoint",
    "settings_of",
    "write_npz",
]

# Seconds between checkpoint writes at the end of epochs; the last epoch, Ctrl-C and a resume
# point inside an epoch are always written. A kill -9 loses at most this much training.
CHECKPOINT_EVERY = 1.0
FORMAT = 2  # checkpoint layout version; 2 added the run's settings and the history sidecar
# What must match for a resume to continue the same run (allow_changes=True accepts changes).
# The optimizer's hyperparameters a checkpoint records (those it has, unless None: Keras's names
# across gradcore.optim) and a resume checks, with the optimizer's class.
_OPTIMIZER_SETTINGS = (
    "learning_rate", "momentum", "nesterov", "weight_decay", "beta_1", "beta_2", "epsilon",
    "amsgrad", "rho", "centered", "initial_accumulator_value", "clipnorm", "clipvalue",
    "global_clipnorm",
)  # fmt: skip
_SETTINGS = ("optimizer", *_OPTIMIZER_SETTINGS, "batch_size", "seed", "generator")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not belong to this run; names path and why."""


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
    naming the path when the file is truncated, corrupt, foreign, pickled or of another format,
    and naming the array when a parameter or optimizer array holds a NaN or an infinity.
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
            params = [data[f"param/{i}"] for i in range(count)]
        except CheckpointError:
            raise
        except ValueError as error:
            if "allow_pickle" in str(error):
                why = "it holds pickled objects, which gradcore never loads"
                raise _unreadable(path, why) from None
            raise _unreadable(path, f"it is truncated or corrupt ({error})") from None
        except (KeyError, EOFError, OSError, zipfile.BadZipFile, zlib.error) as error:
            raise _unreadable(path, f"it is truncated or corrupt ({error})") from None
    arrays = {f"param/{i}": a for i, a in enumerate(params)}
    arrays.update({f"{k}/{i}": a for k, v in meta.items() if isinstance(v, list)
                   for i, a in enumerate(v) if isinstance(a, np.ndarray)})  # fmt: skip
    _refuse_non_finite(path, arrays)
    return params, meta


def _refuse_non_finite(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A checkpoint written after its run diverged would train on (or predict from) NaN: it is
    refused naming the first array that holds a NaN or an infinity, and how many."""
    for name, values in arrays.items():
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise CheckpointError(
                f"checkpoint {path} holds non-finite weights: {name} has {bad} NaN or infinite "
                f"value(s) of {values.size}; the run that wrote it had diverged, so it cannot "
                "be resumed; delete it, or resume from an earlier copy"
            )


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


def settings_of(
    optimizer: Any, batch_size: int, seed: int, generator: Any = None
) -> dict[str, Any]:
    """The hyperparameters a checkpoint records, read from any optimizer that has them, and
    the seed of the loss's random generator if it has one (a run with dropout and one without
    are not the same run)."""
    found = {
        name: _describe(getattr(optimizer, name))
        for name in _OPTIMIZER_SETTINGS
        if getattr(optimizer, name, None) is not None
    }
    if generator is not None:
        found["generator"] = generator.seed
    return {"optimizer": type(optimizer).__name__, **found, "batch_size": batch_size, "seed": seed}


class RunCheckpoint:
    """The checkpoint of one run: its checks before training, its restore and its writes.

    The ``.npz`` holds what the next step needs (params, optimizer state, position, settings);
    the epochs' history is appended to ``history_path(path)``, whose length at the time of
    each save is recorded, so a resume cuts off whatever a kill left after it.
    """

    def __init__(
        self, path: str | os.PathLike, settings: dict, leaves: list, rows: int, writes: bool,
        ranks: int, every: float = CHECKPOINT_EVERY,
    ) -> None:  # fmt: skip
        self.path = Path(path)
        self.settings = settings
        self.architecture = [[list(p.shape), _dtype_name(p)] for p in leaves]
        self.rows = rows
        self.ranks = ranks  # distributed: an epoch's steps depend on how many ranks share it
        self.writes = writes  # False on the ranks other than 0: they only read, to resume
        self.every = every  # seconds between writes at the ends of epochs
        self.history_bytes = 0  # the length of the history file that the run has written
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
        self, leaves: list, optimizer: Any, rng: Any, history: Any, allow_changes: bool
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
        self.history_bytes = meta["history_bytes"]
        for param, values in zip(leaves, saved):
            param[...] = array_backend(param).asarray(values, dtype=param.dtype)
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

    def start_fresh(self) -> None:
        """A run that does not resume replaces both files: a checkpoint left behind would no
        longer match the history."""
        if self.writes:
            self.path.unlink(missing_ok=True)
            history_path(self.path).write_bytes(b"")
            self.history_bytes = 0

    def append(self, entry: Mapping[str, Any]) -> None:
        """One epoch's line in the history file, on disk before the next checkpoint."""
        if self.writes:
            with history_path(self.path).open("ab") as log:
                log.write(json.dumps(entry).encode() + b"\n")
                self.history_bytes = log.tell()

    def due(self, force: bool) -> bool:
        """Whether to write now: when ``force``d, or ``every`` seconds after the last write
        (short epochs should train, not write)."""
        return self.writes and (force or time.monotonic() - self.saved_at >= self.every)

    def save(self, params: Any, state: dict) -> None:
        """Write ``state`` (what ``fit`` needs to go on) with the run's settings."""
        meta = {
            "format": FORMAT,
            "settings": self.settings,
            "architecture": self.architecture,
            "history_bytes": self.history_bytes,
            **state,
        }
        save_checkpoint(self.path, params, meta)
        self.saved_at = time.monotonic()
