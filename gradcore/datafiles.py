"""Reading a user's data for ``gradcore train --data FILE`` and ``gradcore predict``.

A CSV with a header row (``.tsv``: tab-separated) or an ``.npz`` holding ``X`` and ``y``. Every
problem is one ``DataFileError`` line that names the file and, where there is one, the row and
the column, because the user's next step is to open the file at that place. Rows are counted
from 1 after the header; the line in the file is given too.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import csv
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MISSING", "DataFileError", "Dataset", "read_dataset", "read_features"]

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # compared lower-cased
_SHOW_COLUMNS = 8  # how many column names an error lists before "..."


class DataFileError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and place."""


@dataclass
class Dataset:
    """What ``read_dataset`` found: float features, the target and which task it implies."""

    X: np.ndarray  # float64, (rows, features)
    y: np.ndarray  # class labels (integers or strings) or float64 targets
    features: list[str]
    target: str
    task: str  # "classification" or "regression"


def read_dataset(
    path: str | os.PathLike, target: str | None = None, task: str | None = None
) -> Dataset:
    """Features and target of a CSV (``target``: a column, default the last) or an ``.npz``
    (``target``: the array holding y, default ``"y"``).

    Integer or string targets are classes and float targets regression values, unless ``task``
    ("classification" or "regression") says otherwise.
    """
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    path = _existing(path)
    if path.suffix.lower() == ".npz":
        X, read, features, target = _read_npz(path, target or "y")
        assert read is not None  # a target was asked for
        y, column = read, f"array {target!r}"
        task = task or ("regression" if y.dtype.kind == "f" else "classification")
        if task == "regression" and y.dtype.kind not in "iuf":
            raise DataFileError(f"{path}, {column}: regression needs numbers, not {y.dtype}")
    else:
        header, rows = _read_csv(path)
        target = header[-1] if target is None else target
        if target not in header:
            raise DataFileError(f"{path}: no column {target!r} (the header has: {_names(header)})")
        features = [name for name in header if name != target]
        X = _numbers(path, header, rows, features)
        y, task = _target(path, header, rows, target, task)
        column = f"column {target!r}"
    if task == "classification":
        classes = np.unique(y)
        if len(classes) < 2:
            raise DataFileError(
                f"{path}, {column}: only one class ({classes[:1].tolist()[0]!r}); a classifier "
                "needs at least two (for a numeric target, try --task regression)"
            )
    return Dataset(X, y, features, target, task)


def read_features(
    path: str | os.PathLike, features: Sequence[str] | None, n_features: int
) -> np.ndarray:
    """The feature matrix of new rows to score, float64.

    A CSV's columns are picked by the ``features`` names the model was trained on (other
    columns, such as the target, are ignored); without names, all its columns are taken in
    order. An ``.npz`` gives its ``X``. Either way there must be ``n_features`` columns.
    """
    path = _existing(path)
    if path.suffix.lower() == ".npz":
        X = _read_npz(path, None)[0]
    else:
        header, rows = _read_csv(path)
        if features is None:
            features = header
        missing = [name for name in features if name not in header]
        if missing:
            raise DataFileError(
                f"{path}: no column {missing[0]!r}, which the model was trained on (the header "
                f"has: {_names(header)})"
            )
        X = _numbers(path, header, rows, list(features))
    if X.shape[1] != n_features:
        raise DataFileError(f"{path}: {X.shape[1]} feature columns; the model takes {n_features}")
    return X


# ---------------------------------------------------------------------------------------------
# CSV


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"{path}: no such file")
    if not path.is_file():
        raise DataFileError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataFileError(f"{path}: the file is empty")
    return path


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows, each with its line number, every field stripped."""
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    rows = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file, delimiter=delimiter)
            for fields in reader:
                if any(field.strip() for field in fields):
                    rows.append((reader.line_num, [field.strip() for field in fields]))
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not a UTF-8 text file (byte {error.start})") from error
    except csv.Error as error:
        raise DataFileError(f"{path}, line {reader.line_num}: {error}") from error
    if not rows:
        raise DataFileError(f"{path}: the file is empty (only blank lines)")
    (_, header), rows = rows[0], rows[1:]
    for i, name in enumerate(header):
        if not name:
            raise DataFileError(f"{path}: column {i + 1} of the header has no name")
        if name in header[:i]:
            raise DataFileError(f"{path}: the header names column {name!r} twice")
    if not rows:
        raise DataFileError(f"{path}: a header but no data rows")
    for row, (line, fields) in enumerate(rows, start=1):
        if len(fields) != len(header):
            where = (
                f"no value for column {header[len(fields)]!r}"
                if len(fields) < len(header)
                else f"a value after the last column {header[-1]!r}"
            )
            raise DataFileError(
                f"{path}, row {row} (line {line}): {len(fields)} values but the header has "
                f"{len(header)} columns ({where})"
            )
    return header, rows


def _numbers(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], columns: list[str]
) -> np.ndarray:
    """The named columns as float64; the first missing or non-numeric value is an error."""
    index = [header.index(name) for name in columns]
    cells = [[fields[j] for j in index] for _, fields in rows]
    try:  # the fast path, for files without a bad cell
        X = np.array(cells, dtype=np.float64).reshape(len(rows), len(columns))
        if np.isfinite(X).all():
            return X
    except ValueError:
        pass
    return np.array(
        [
            [_number(path, row, line, name, fields[j]) for j, name in zip(index, columns)]
            for row, (line, fields) in enumerate(rows, start=1)
        ]
    ).reshape(len(rows), len(columns))


def _number(path: Path, row: int, line: int, column: str, text: str) -> float:
    where = f"{path}, row {row} (line {line}), column {column!r}"
    if text.lower() in MISSING:
        raise DataFileError(f"{where}: missing value")
    try:
        value = float(text)
    except ValueError:
        raise DataFileError(f"{where}: {text!r} is not a number") from None
    if not np.isfinite(value):
        raise DataFileError(f"{where}: {text!r} is not a finite number")
    return value


def _target(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], name: str, task: str | None
) -> tuple[np.ndarray, str]:
    """The target column and the task: integers or strings are classes, floats regression."""
    j = header.index(name)
    for row, (line, fields) in enumerate(rows, start=1):
        if fields[j].lower() in MISSING:
            raise DataFileError(f"{path}, row {row} (line {line}), column {name!r}: missing value")
    texts = [fields[j] for _, fields in rows]
    if task != "regression":
        try:
            return np.array([int(text) for text in texts], dtype=np.int64), "classification"
        except ValueError:
            pass
    if task is None:
        try:
            return np.array([float(text) for text in texts]), "regression"
        except ValueError:
            return np.array(texts), "classification"
    if task == "classification":
        return np.array(texts), task
    values = [
        _number(path, row, line, name, fields[j]) for row, (line, fields) in enumerate(rows, 1)
    ]
    return np.array(values), task


# ---------------------------------------------------------------------------------------------
# .npz


def _read_npz(
    path: Path, target: str | None
) -> tuple[np.ndarray, np.ndarray | None, list[str], str]:
    """``X`` as float64, the ``target`` array (None: not wanted), feature names, target name."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise DataFileError(f"{path}: not a readable .npz file ({error})") from error
    except AttributeError:  # np.load gave a plain array: an .npy file named .npz
        raise DataFileError(f"{path}: an .npy array, not an .npz holding X and y") from None
    for key in ("X",) if target is None else ("X", target):
        if key not in arrays:
            raise DataFileError(f"{path}: no array {key!r} (the file has: {_names(list(arrays))})")
    X = arrays["X"]
    if X.ndim != 2:
        raise DataFileError(f"{path}, array 'X': must be 2-D (rows, features), got shape {X.shape}")
    if X.shape[0] == 0:
        raise DataFileError(f"{path}, array 'X': no rows")
    if X.dtype.kind not in "biuf":
        for (i, j), text in np.ndenumerate(X):
            _number(path, i + 1, i + 1, f"X[:, {j}]", str(text))
    X = X.astype(np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        i, j = bad[0]
        raise DataFileError(f"{path}, row {i + 1}, column X[:, {j}]: missing value ({X[i, j]})")
    features = [f"x{j}" for j in range(X.shape[1])]
    if target is None:
        return X, None, features, ""
    y = arrays[target]
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise DataFileError(
            f"{path}, array {target!r}: shape {y.shape}; expected ({X.shape[0]},), one value "
            "per row of X"
        )
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        i = int(np.argmin(np.isfinite(y)))
        raise DataFileError(f"{path}, row {i + 1}, array {target!r}: missing value ({y[i]})")
    return X, y, features, target


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW_COLUMNS])
    return shown + (", ..." if len(names) > _SHOW_COLUMNS else "")
