"""``gradcore train --data FILE`` and ``gradcore predict``: models on a user's own data, and the
checks and writes of every command's output files.

Kept apart from ``cli.py`` (which parses the flags and trains the lecture notes' network on the
bundled data sets) so that the command line's own logic stays small. Training is
``MLPClassifier`` or ``MLPRegressor`` with the command's defaults: the lecture notes' network (one
sigmoid hidden layer of 16 units, SGD with momentum 0.9 at rate 0.1, 50 epochs) on
standardised features. The saved model holds the standardisation and the column names, so that
``gradcore predict`` scores a file whose columns come in any order.

Every output path is checked before any data is read (its directory exists and can be written,
it is no input and no other output, an existing file is kept unless --overwrite), and written
through a temporary file renamed into place, so that a command never loses a file it did not
create and never leaves half a file.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from gradcore import datafiles
from gradcore.train import History

EPOCHS = 50
LEARNING_RATE = 0.1
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.1  # of the training rows, held out for --patience (scikit-learn's)
SPLIT_SEED = 0  # the train/test split is fixed, so --seed changes only the init and shuffling
FILE_ONLY = ("target", "task", "test_split", "standardize", "patience", "save", "delimiter")
BUNDLED_ONLY = ("checkpoint", "resume", "dropout")
DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t"}


def hidden_sizes(text: str) -> tuple[int, ...]:
    """``--hidden``: ``16`` or a comma list ``64,32``, one positive size per hidden layer."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected positive layer sizes such as 16 or 64,32, got {text!r}"
        )
    return sizes


def delimiter(text: str) -> str:
    """``--delimiter``: one character, or comma, semicolon or tab by name."""
    value = DELIMITER_NAMES.get(text, text)
    if len(value) != 1 or value in '"\r\n':
        raise argparse.ArgumentTypeError(
            f"expected one character, or comma, semicolon or tab, got {text!r}"
        )
    return value


def _solver(args: argparse.Namespace) -> str:
    """The estimators' solver for ``--optimizer``: scikit-learn's ``"sgd"`` or ``"adam"``."""
    name = args.optimizer or "sgd"
    if name not in ("sgd", "adam"):
        raise ValueError(
            f"--optimizer {name} works with the bundled data sets; --data FILE trains with "
            "scikit-learn's solvers, sgd or adam"
        )
    for flag in ("rho", "weight_decay"):
        if getattr(args, flag) is not None:
            raise ValueError(
                f"--{flag.replace('_', '-')} works with the bundled data sets, not with "
                f"--data {args.data}"
            )
    return name


def _adam_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--beta1``, ``--beta2``, ``--epsilon`` as the estimators' Adam takes them."""
    given = {"beta_1": args.beta1, "beta_2": args.beta2, "epsilon": args.epsilon}
    settings = {name: value for name, value in given.items() if value is not None}
    if settings and args.optimizer != "adam":
        flag = "--" + next(iter(settings)).replace("_", "")
        raise ValueError(f"{flag} works with --optimizer adam, not with sgd")
    return settings


def refuse_flags(args: argparse.Namespace, bundled: bool) -> None:
    """Flags that only one of the two trainers reads are an error with the other, not ignored."""
    names = FILE_ONLY if bundled else BUNDLED_ONLY
    given = [name for name in names if getattr(args, name) is not None]  # unset flags: None
    if given:
        flag = "--" + given[0].replace("_", "-")
        needs = "a data file (--data FILE)" if bundled else "the bundled data sets"
        raise ValueError(f"{flag} works with {needs}, not with --data {args.data}")


# ---------------------------------------------------------------------------------------------
# output paths: checked before any work, written through a temporary file


def check_outputs(
    outputs: Mapping[str, str | None],
    inputs: Mapping[str, str | None],
    overwrite: bool,
    kept: Collection[str] = (),
) -> None:
    """Refuse, before any data is read, an output path that cannot be written or would lose a
    file: its directory is missing or not writable, it is a directory, it is the same file as
    an input or another output (symlinks and hard links included), or it exists and neither
    ``overwrite`` nor ``kept`` (flags that handle an existing file themselves) allows it.

    ``outputs`` and ``inputs`` map a flag (``--save``) or a name (``the model``) to the path
    as the user typed it (None: not given); errors name both.
    """
    given = [(flag, path) for flag, path in outputs.items() if path is not None]
    for i, (flag, path) in enumerate(given):
        where = f"{flag} {path}"
        if os.path.isdir(path):
            raise ValueError(f"{where} is a directory; give a file path")
        parent = os.path.dirname(path) or "."
        if not os.path.isdir(parent):
            what = "is not a directory" if os.path.exists(parent) else "does not exist"
            raise ValueError(f"{where}: the directory {parent} {what}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ValueError(f"{where}: the directory {parent} is not writable")
        for name, other in [*inputs.items(), *given[:i]]:
            if other is not None and _same_file(path, other):
                raise ValueError(
                    f"{where} is the same file as {name} {other}; give another path for {flag}"
                )
        if os.path.lexists(path) and flag not in kept:
            if not os.path.isfile(path):
                raise ValueError(f"{where} exists and is not a regular file; give another path")
            if not overwrite:
                raise ValueError(
                    f"{where} exists: add --overwrite to replace it, or give another path"
                )


def _same_file(a: str, b: str) -> bool:
    """One file under two names: the same path once links are resolved, or one inode."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


@contextmanager
def replacing(path: str, flag: str, suffix: str = "") -> Iterator[str]:
    """A temporary path beside ``path`` (ending in ``suffix``) to write, which replaces ``path``
    only once it is complete: a failure leaves the old file, and an error names ``flag`` and
    the path as typed, not the temporary file."""
    name = f".{os.path.basename(path)}.tmp-{os.getpid()}{suffix}"
    temporary = os.path.join(os.path.dirname(path), name)
    try:
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise ValueError(f"{flag} {path} cannot be written ({error.strerror or error})") from None
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def numbers(values: Any, dtype: np.dtype) -> list[str]:
    """Floats as text at the model's precision (float32: 0.1, not 0.10000000149011612):
    the shortest text that reads back as the same ``dtype`` number."""
    return np.asarray(values, dtype=dtype).astype(str).tolist()


def write_history(path: str, history: History, dtype: np.dtype) -> None:
    """``--history``: one row per epoch, the training loss, then the validation loss and the
    metrics where they were measured."""
    columns = {"loss": history.loss}
    if history.val_loss:
        columns["val_loss"] = history.val_loss
    columns.update(history.metrics)
    texts = [numbers(values, dtype) for values in columns.values()]
    with replacing(path, "--history") as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file, lineterminator="\n")
        writer.writerow(["epoch", *columns])
        writer.writerows([epoch, *row] for epoch, row in enumerate(zip(*texts), start=1))


def write_plot(path: str, history: History) -> None:
    """``--plot``: the curves of ``history`` as a PNG at exactly ``path``."""
    # matplotlib picks the format from the name's suffix: the temporary file keeps it
    with replacing(path, "--plot", os.path.splitext(path)[1] or ".png") as temporary:
        history.plot(temporary)


# ---------------------------------------------------------------------------------------------
# gradcore train --data FILE


def train_file(args: argparse.Namespace) -> None:
    """Train on ``args.data``, report the test score, write --history, --plot and --save."""
    refuse_flags(args, bundled=False)
    check_outputs(
        {"--history": args.history, "--plot": args.plot, "--save": args.save},
        {"--data": args.data},
        args.overwrite,
    )
    from sklearn.exceptions import ConvergenceWarning

    from gradcore.estimators import MLPClassifier, MLPRegressor, resolve_device

    with notes("train"):
        data = datafiles.read_dataset(
            args.data, target=args.target, task=args.task, delimiter=args.delimiter
        )
    classify = data.task == "classification"
    split = TEST_FRACTION if args.test_split is None else args.test_split
    X_train, y_train, X_test, y_test = data.X, data.y, None, None
    if split:
        fix = "give --test-split 0 to train on all rows"
        X_train, X_test, y_train, y_test = _split(args.data, data, split, "test", fix)
    validation = None
    if args.patience is not None:
        rows = datafiles.Dataset(X_train, y_train, data.features, data.target, data.task)
        X_fit, X_val, y_fit, y_val = _split(
            args.data, rows, VALIDATION_FRACTION, "validation", "drop --patience"
        )
        validation = (X_val, y_val)
    epochs = EPOCHS if args.epochs is None else args.epochs
    estimator = (MLPClassifier if classify else MLPRegressor)(
        hidden_layer_sizes=args.hidden,
        solver=_solver(args),
        **_adam_settings(args),
        activation=args.activation,
        batch_size=args.batch_size,
        learning_rate_init=args.lr or LEARNING_RATE,
        momentum=args.momentum,
        nesterovs_momentum=args.nesterov,
        max_iter=epochs,
        random_state=args.seed,
        n_iter_no_change=max(epochs, 1),  # every epoch runs; --patience is handled below
        standardize=args.standardize is not False,
        device=resolve_device(args.device),
    )
    kind = f"{len(np.unique(data.y))} classes" if classify else f"regression on {data.target!r}"
    tested = f" and {len(y_test)} test" if y_test is not None else ""
    print(
        f"{args.data}: {len(y_train)} training{tested} examples, {data.X.shape[1]} features, "
        f"{kind}; device {estimator.device}"
    )
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # running all epochs is the plan
        if validation is None:
            history = fit(estimator, X_train, y_train, epochs)
        else:
            history = fit(estimator, X_fit, y_fit, epochs, args.patience, validation)
    seconds = time.perf_counter() - started
    final = f"{history.loss[-1]:.4f}" if history.loss else "n/a"
    print(f"trained {len(history.loss)} epochs in {seconds:.2f} s; final training loss {final}")
    if args.patience is not None and history.val_loss:
        best = int(np.argmin(history.val_loss))
        print(
            f"early stopping on the validation loss: kept epoch {best + 1} (validation loss "
            f"{history.val_loss[best]:.4f})"
        )
    if split:
        score = estimator.score(X_test, y_test)
        print(f"test accuracy: {score:.4f}" if classify else f"test R^2: {score:.4f}")
    dtype = estimator.coefs_[0].dtype
    if args.history:
        write_history(args.history, history, dtype)
        print(f"history written to {args.history}")
    if args.plot:
        write_plot(args.plot, history)
        print(f"curves written to {args.plot}")
    if args.save:
        metadata = {"data": str(args.data), "features": data.features, "target": data.target}
        try:  # written atomically, as checkpoints are
            estimator.save(args.save, metadata=metadata)
        except OSError as error:
            raise ValueError(f"--save {args.save} cannot be written ({error.strerror})") from None
        print(f"model saved to {args.save}")


def fit(
    estimator: Any,
    X: np.ndarray,
    y: np.ndarray,
    epochs: int,
    patience: int | None = None,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
) -> History:
    """Train ``estimator`` for ``epochs``; with ``patience``, stop once the loss on
    ``validation_data`` has not improved for ``patience`` epochs and keep the best epoch's
    weights (Keras's EarlyStopping on ``val_loss``). A validation score that reaches its best
    early (accuracy 1.0 on a small split) therefore never stops an underfit model."""
    if patience is None or validation_data is None:
        estimator.fit(X, y)
        return History(loss=list(estimator.loss_curve_))
    X_val, y_val = validation_data
    classify = hasattr(estimator, "predict_proba")
    history = History(metrics={"val_accuracy" if classify else "val_r2": []})
    score = history.metrics[next(iter(history.metrics))]
    extra = {"classes": np.unique(y)} if classify else {}
    best, waited = None, 0
    for _ in range(epochs):
        estimator.partial_fit(X, y, **extra)
        history.val_loss.append(_validation_loss(estimator, X_val, y_val))
        score.append(estimator.score(X_val, y_val))
        if history.val_loss[-1] < min(history.val_loss[:-1], default=math.inf):
            best, waited = ([W.copy() for W in estimator.coefs_],
                            [b.copy() for b in estimator.intercepts_]), 0  # fmt: skip
        else:
            waited += 1
            if waited >= patience:
                break
    if best is not None:
        estimator.coefs_, estimator.intercepts_ = best
    history.loss = list(estimator.loss_curve_)
    return history


def _split(
    path: str, data: datafiles.Dataset, fraction: float, what: str, fix: str
) -> list[np.ndarray]:
    """``train_test_split`` of ``data`` (stratified for classes), or an error naming the file
    when it has too few rows for that."""
    from sklearn.model_selection import train_test_split

    classify = data.task == "classification"
    try:
        return train_test_split(
            data.X,
            data.y,
            test_size=fraction,
            random_state=SPLIT_SEED,
            stratify=data.y if classify else None,
        )
    except ValueError:
        each = " with every class on both sides" if classify else ""
        raise datafiles.DataFileError(
            f"{path}: {len(data.y)} rows are too few to hold out {fraction:g} of them for "
            f"{what}{each}; add rows, or {fix}"
        ) from None


def _validation_loss(estimator: Any, X: np.ndarray, y: np.ndarray) -> float:
    """The training loss (scikit-learn's) on held-out rows: cross-entropy for classes, half
    the mean squared error for regression."""
    if hasattr(estimator, "predict_proba"):
        from sklearn.metrics import log_loss

        return float(log_loss(y, estimator.predict_proba(X), labels=estimator.classes_))
    return 0.5 * float(np.mean((estimator.predict(X).reshape(np.shape(y)) - y) ** 2))


@contextmanager
def notes(command: str) -> Iterator[None]:
    """What a data file's reader noticed (a CSV without a header), one line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", datafiles.HeaderlessWarning)
        yield
    for warning in caught:
        if issubclass(warning.category, datafiles.HeaderlessWarning):
            print(f"gradcore {command}: note: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno
            )


# ---------------------------------------------------------------------------------------------
# gradcore predict


def predict(args: argparse.Namespace) -> None:
    """Score the rows of ``args.file`` with the model in ``args.model``; CSV out."""
    from gradcore.estimators import load

    datafiles.existing_file(args.model)
    datafiles.existing_file(args.file)
    check_outputs(
        {"--output": args.output}, {"the model": args.model, "the data file": args.file},
        args.overwrite,
    )  # fmt: skip
    model = load(args.model, device=args.device)
    metadata = model.metadata_
    with notes("predict"):
        X = datafiles.read_features(
            args.file, metadata.get("features"), model.n_features_in_, delimiter=args.delimiter
        )
    target = metadata.get("target") or "prediction"
    dtype = model.coefs_[0].dtype
    if args.proba:
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"--proba: {args.model} is a regression model, without classes")
        header = [str(label) for label in model.classes_]
        cells = np.array(numbers(model.predict_proba(X), dtype))
    else:
        predicted = model.predict(X)
        header = (
            [target]
            if predicted.ndim == 1
            else [f"{target}_{i}" for i in range(predicted.shape[1])]
        )
        kind = predicted.dtype.kind
        cells = np.array(numbers(predicted, dtype) if kind == "f" else predicted.astype(str))
    rows = cells.reshape(len(X), -1).tolist()
    if args.output is None:
        _write_csv(sys.stdout, header, rows)
        return
    with replacing(args.output, "--output") as temporary, open(temporary, "w", newline="") as file:
        _write_csv(file, header, rows)
    print(f"{len(rows)} predictions written to {args.output}")


def _write_csv(file: Any, header: list[str], rows: list[list[Any]]) -> None:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
