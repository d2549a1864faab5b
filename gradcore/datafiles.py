"""Reading a user's data for ``gradcore train --data FILE`` and ``gradcore predict``.

A CSV (comma, semicolon or tab separated: the delimiter is detected from the first row, or
given) or an ``.npz`` holding ``X`` and ``y``. A CSV whose first row is all numbers has no
header: it is read as data, its columns named 1, 2, ..., and a ``HeaderlessWarning`` says so.

The rows are parsed by NumPy's C reader (``np.loadtxt``); when it refuses a file, the csv module
reads it again to find the place. Every problem is one ``DataFileError`` line that names the
file and, where there is one, the row and the column, because the user's next step is to open
the file at that place. Rows are counted from 1 after the header; the line in the file is given
too.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import csv
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "DELIMITERS",
    "MISSING",
    "DataFileError",
    "Dataset",
    "existing_file",
    "HeaderlessWarning",
    "read_dataset",
    "read_features",
]

MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})  # compared lower-cased
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}  # detected, in this order of preference
_SHOW_COLUMNS = 8  # how many column names an error lists before "..."
_SNIFF_BYTES = 8192  # how much of a file is looked at for NUL bytes (a binary file)


class DataFileError(ValueError):
    """A data file that cannot be used; the message is one line naming the file and place."""


class HeaderlessWarning(UserWarning):
    """A CSV whose first row is all numbers: it was read as data, without a header."""


@dataclass
class Dataset:
    """What ``read_dataset`` found: float features, the target and which task it implies."""

    X: np.ndarray  # float64, (rows, features)
    y: np.ndarray  # class labels (integers or strings) or float64 targets
    features: list[str]
    target: str
    task: str  # "classification" or "regression"


def read_dataset(
    path: str | os.PathLike,
    target: str | None = None,
    task: str | None = None,
    delimiter: str | None = None,
) -> Dataset:
    """Features and target of a CSV (``target``: a column, default the last) or an ``.npz``
    (``target``: the array holding y, default ``"y"``).

    Integer or string targets are classes and float targets regression values, unless ``task``
    ("classification" or "regression") says otherwise. ``delimiter``: the CSV's field
    separator (default: comma, semicolon or tab, detected).
    """
    if task not in (None, "classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    path = existing_file(path)
    if _suffix(path) == ".npz":
        X, read, features, target = _read_npz(path, target or "y")
        assert read is not None  # a target was asked for
        y, column = read, f"array {target!r}"
        task = task or ("regression" if y.dtype.kind == "f" else "classification")
        if task == "regression" and y.dtype.kind not in "iuf":
            raise DataFileError(f"{path}, {column}: regression needs numbers, not {y.dtype}")
    else:
        layout = _layout(path, delimiter)
        header = layout.header
        if len(header) < 2:
            raise layout.one_column(path)
        target = header[-1] if target is None else target
        if target not in header:
            raise DataFileError(f"{path}: no column {target!r} (the header has: {_names(header)})")
        features = [name for name in header if name != target]
        column = f"column {target!r}"
        if task == "regression":  # the target is read as numbers, its bad values named
            table, _ = _read_csv(path, layout, [*features, target])
            X, y = np.ascontiguousarray(table[:, :-1]), table[:, -1].copy()
        else:
            X, texts = _read_csv(path, layout, features, [target])
            found = _target(texts[target], task)
            if found is None:  # floats, not all finite: read again as numbers to name the first
                _read_csv_slow(path, layout, [target])
            assert found is not None, "the read as numbers raises, naming the value"
            y, task = found
    if task == "classification":
        classes = np.unique(y)
        if len(classes) < 2:
            raise DataFileError(
                f"{path}, {column}: only one class ({classes[:1].tolist()[0]!r}); a classifier "
                "needs at least two (for a numeric target, try --task regression)"
            )
    return Dataset(X, y, features, target, task)


def read_features(
    path: str | os.PathLike,
    features: Sequence[str] | None,
    n_features: int,
    delimiter: str | None = None,
) -> np.ndarray:
    """The feature matrix of new rows to score, float64.

    A CSV's columns are picked by the ``features`` names the model was trained on (other
    columns, such as the target, are ignored); without names, all its columns are taken in
    order. An ``.npz`` gives its ``X``. Either way there must be ``n_features`` columns.
    """
    path = existing_file(path)
    if _suffix(path) == ".npz":
        X = _read_npz(path, None)[0]
    else:
        layout = _layout(path, delimiter)
        header = layout.header
        if len(header) == 1 and n_features > 1:
            raise layout.one_column(path)
        if features is None:
            features = header
        missing = [name for name in features if name not in header]
        if missing:
            raise DataFileError(
                f"{path}: no column {missing[0]!r}, which the model was trained on (the header "
                f"has: {_names(header)})"
            )
        X, _ = _read_csv(path, layout, list(features))
    if X.shape[1] != n_features:
        raise DataFileError(f"{path}: {X.shape[1]} feature columns; the model takes {n_features}")
    return X


# ---------------------------------------------------------------------------------------------
# CSV


def existing_file(path: str | os.PathLike) -> str:
    """``path`` as the user typed it (errors name it so) if it is a file with something in
    it; else the error that says why."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataFileError(f"{path}: a directory, not a data file")
    if not os.path.isfile(path):
        raise DataFileError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise DataFileError(f"{path}: the file is empty")
    return path


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


@dataclass
class _Layout:
    """Where a CSV's data starts and how its fields are separated."""

    header: list[str]
    skip: int  # lines before the first data row
    delimiter: str
    detected: bool  # the delimiter was detected, not given

    def one_column(self, path: str) -> DataFileError:
        """The error for a file that parses into one column, saying which delimiter was tried."""
        if self.detected:
            tried = "tried comma, semicolon and tab"
            fix = "give the delimiter with --delimiter"
        else:
            tried = f"with --delimiter {self.delimiter!r}"
            fix = "check the delimiter"
        return DataFileError(f"{path}: every row parses into one column ({tried}); {fix}")


def _layout(path: str, delimiter: str | None) -> _Layout:
    """The header (the first non-blank row) and the delimiter: ``delimiter``, or of comma,
    semicolon and tab the one that splits the header into the most fields."""
    with open(path, "rb") as file:
        if b"\0" in file.read(_SNIFF_BYTES):
            raise DataFileError(f"{path}: a binary file, not a CSV text file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            lines = enumerate(file)
            skip, first = next(((i, line) for i, line in lines if line.strip()), (0, ""))
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not a UTF-8 text file (byte {error.start})") from error
    if not first:
        raise DataFileError(f"{path}: the file is empty (only blank lines)")
    candidates = [delimiter] if delimiter else list(DELIMITERS)
    split = {d: _fields(first, d) for d in candidates}
    chosen = max(candidates, key=lambda d: len(split[d]))  # max keeps the first of equals
    if delimiter is None and len(split[chosen]) == 1 and _suffix(path) == ".tsv":
        chosen = "\t"
    fields = split[chosen]
    if all(_is_number(field) for field in fields):
        names = [str(i + 1) for i in range(len(fields))]
        warnings.warn(
            HeaderlessWarning(
                f"{path}: the first row is all numbers, so it is read as data (no header); the "
                f"columns are named 1 to {len(names)}"
            ),
            stacklevel=3,
        )
        return _Layout(names, skip, chosen, delimiter is None)
    for i, name in enumerate(fields):
        if not name:
            raise DataFileError(f"{path}: column {i + 1} of the header has no name")
        if name in fields[:i]:
            raise DataFileError(f"{path}: the header names column {name!r} twice")
    return _Layout(fields, skip + 1, chosen, delimiter is None)


def _fields(line: str, delimiter: str) -> list[str]:
    return [field.strip() for field in next(csv.reader([line], delimiter=delimiter))]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(
    path: str, layout: _Layout, numeric: list[str], text: Sequence[str] = ()
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """The ``numeric`` columns as float64 (rows, len(numeric)) and the ``text`` columns as
    stripped strings; other columns are not looked at. A missing value, a non-number in a
    numeric column or a row of another length is an error naming its row and column."""
    fast = _read_csv_fast(path, layout, numeric, text)
    if fast is not None:
        return fast
    return _read_csv_slow(path, layout, numeric, text)


def _read_csv_fast(
    path: str, layout: _Layout, numeric: list[str], text: Sequence[str]
) -> tuple[np.ndarray, dict[str, list[str]]] | None:
    """NumPy's C reader, in one pass: numbers as float64 fields, other columns as Python
    strings. None where it refuses the file or a value is missing: the slow reader says where."""
    wanted = set(numeric)
    fields = [(f"f{i}", "f8" if name in wanted else "O") for i, name in enumerate(layout.header)]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            table = np.loadtxt(
                path,
                dtype=np.dtype(fields),
                delimiter=layout.delimiter,
                skiprows=layout.skip,
                quotechar='"',
                comments=None,
                encoding="utf-8-sig",
                ndmin=1,
            )
    except ValueError:  # a bad value, a ragged row, a byte that is not UTF-8
        return None
    if table.shape[0] == 0:
        raise DataFileError(f"{path}: a header but no data rows")
    X = np.empty((table.shape[0], len(numeric)))
    for j, name in enumerate(numeric):
        X[:, j] = table[f"f{layout.header.index(name)}"]
    texts = {}
    for name in text:
        texts[name] = [cell.strip() for cell in table[f"f{layout.header.index(name)}"].tolist()]
        if any(cell.lower() in MISSING for cell in texts[name]):
            return None
    del table
    if not np.isfinite(X).all():
        return None
    return X, texts


def _read_csv_slow(
    path: str, layout: _Layout, numeric: list[str], text: Sequence[str] = ()
) -> tuple[np.ndarray, dict[str, list[str]]]:
    """The csv module, cell by cell: slow, but it knows the line of every row."""
    header, rows = layout.header, []
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            for _ in range(layout.skip):
                file.readline()
            reader = csv.reader(file, delimiter=layout.delimiter)
            for fields in reader:
                if any(field.strip() for field in fields):
                    rows.append((layout.skip + reader.line_num, [f.strip() for f in fields]))
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path}: not a UTF-8 text file (byte {error.start})") from error
    except csv.Error as error:
        raise DataFileError(f"{path}, line {layout.skip + reader.line_num}: {error}") from error
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
    index = [header.index(name) for name in numeric]
    X = np.array(
        [
            [_number(path, row, line, name, fields[j]) for j, name in zip(index, numeric)]
            for row, (line, fields) in enumerate(rows, start=1)
        ]
    ).reshape(len(rows), len(numeric))
    texts = {}
    for name in text:
        j = header.index(name)
        for row, (line, fields) in enumerate(rows, start=1):
            if fields[j].lower() in MISSING:
                where = f"{path}, row {row} (line {line}), column {name!r}"
                raise DataFileError(f"{where}: missing value")
        texts[name] = [fields[j] for _, fields in rows]
    return X, texts


def _number(path: str, row: int, line: int, column: str, text: str) -> float:
    where = f"{path}, row {row} (line {line}), column {column!r}"
    if text.lower() in MISSING:
        raise DataFileError(f"{where}: missing value")
    try:
        value = float(text)
    except ValueError:
        comma = "," in text and _is_number(text.replace(",", "."))
        hint = " (a decimal comma? numbers are read with a decimal point)" if comma else ""
        raise DataFileError(f"{where}: {text!r} is not a number{hint}") from None
    if not np.isfinite(value):
        raise DataFileError(f"{where}: {text!r} is not a finite number")
    return value


def _target(texts: list[str], task: str | None) -> tuple[np.ndarray, str] | None:
    """The target column and the task it implies: integers or strings are classes, floats
    regression. None for floats that are not all finite (the caller names the first)."""
    labels = np.array(texts)
    try:
        return labels.astype(np.int64), "classification"
    except (ValueError, OverflowError):
        pass
    if task == "classification":
        return labels, task
    try:
        values = labels.astype(np.float64)
    except ValueError:
        return labels, "classification"
    return (values, "regression") if np.isfinite(values).all() else None


# ---------------------------------------------------------------------------------------------
# .npz


def _read_npz(
    path: str, target: str | None
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
