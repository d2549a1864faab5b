"""``gradcore train --data FILE`` and ``gradcore predict``: models on a user's own data.

Kept apart from ``cli.py`` (which parses the flags and trains the lecture notes' network on the
bundled data sets) so that the command line's own logic stays small. Training is
``MLPClassifier`` or ``MLPRegressor`` with the command's defaults: the lecture notes' network (one
sigmoid hidden layer of 16 units, SGD with momentum 0.9 at rate 0.1, 50 epochs) on
standardised features. The saved model holds the standardisation and the column names, so that
``gradcore predict`` scores a file whose columns come in any order.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from gradcore import datafiles

EPOCHS = 50
LEARNING_RATE = 0.1
TEST_FRACTION = 0.2
SPLIT_SEED = 0  # the train/test split is fixed, so --seed changes only the init and shuffling
FILE_ONLY = ("target", "task", "test_split", "standardize", "patience", "history", "save")
BUNDLED_ONLY = ("checkpoint", "resume", "plot")


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


def refuse_flags(args: argparse.Namespace, bundled: bool) -> None:
    """Flags that only one of the two trainers reads are an error with the other, not ignored."""
    names = FILE_ONLY if bundled else BUNDLED_ONLY
    given = [name for name in names if getattr(args, name) is not None]  # unset flags: None
    if given:
        flag = "--" + given[0].replace("_", "-")
        needs = "a data file (--data FILE)" if bundled else "the bundled data sets"
        raise ValueError(f"{flag} works with {needs}, not with --data {args.data}")


def train_file(args: argparse.Namespace) -> None:
    """Train on ``args.data``, report the test score, write ``--history`` and ``--save``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    from gradcore.estimators import MLPClassifier, MLPRegressor, resolve_device

    refuse_flags(args, bundled=False)
    data = datafiles.read_dataset(args.data, target=args.target, task=args.task)
    classify = data.task == "classification"
    split = TEST_FRACTION if args.test_split is None else args.test_split
    if not 0 <= split < 1:
        raise ValueError(f"--test-split must be in [0, 1), got {split}")
    X_train, y_train, X_test, y_test = data.X, data.y, None, None
    if split:
        X_train, X_test, y_train, y_test = train_test_split(
            data.X,
            data.y,
            test_size=split,
            random_state=SPLIT_SEED,
            stratify=data.y if classify else None,
        )
    epochs = EPOCHS if args.epochs is None else args.epochs
    estimator = (MLPClassifier if classify else MLPRegressor)(
        hidden_layer_sizes=args.hidden,
        activation=args.activation,
        batch_size=args.batch_size,
        learning_rate_init=args.lr or LEARNING_RATE,
        momentum=args.momentum,
        nesterovs_momentum=args.nesterov,
        max_iter=epochs,
        random_state=args.seed,
        early_stopping=args.patience is not None,
        n_iter_no_change=epochs if args.patience is None else args.patience,  # else: all epochs
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
        estimator.fit(X_train, y_train)
    seconds = time.perf_counter() - started
    print(
        f"trained {estimator.n_iter_} epochs in {seconds:.2f} s; final training loss "
        f"{estimator.loss_curve_[-1]:.4f}"
    )
    if estimator.early_stopping:
        scores = estimator.validation_scores_
        assert scores is not None  # kept with early_stopping
        best = int(np.argmax(scores)) + 1
        print(
            f"early stopping: kept epoch {best}, validation score "
            f"{estimator.best_validation_score_:.4f}"
        )
    if split:
        score = estimator.score(X_test, y_test)
        print(f"test accuracy: {score:.4f}" if classify else f"test R^2: {score:.4f}")
    if args.history:
        _write_history(args.history, estimator)
        print(f"history written to {args.history}")
    if args.save:
        metadata = {"data": str(args.data), "features": data.features, "target": data.target}
        print(f"model saved to {estimator.save(args.save, metadata=metadata)}")


def _write_history(path: str, estimator: Any) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        scores = estimator.validation_scores_
        writer.writerow(["epoch", "loss"] + (["validation_score"] if scores else []))
        for epoch, loss in enumerate(estimator.loss_curve_):
            writer.writerow([epoch + 1, loss] + ([scores[epoch]] if scores else []))


def predict(args: argparse.Namespace) -> None:
    """Score the rows of ``args.file`` with the model in ``args.model``; CSV out."""
    from gradcore.estimators import load

    model = load(args.model, device=args.device)
    metadata = model.metadata_
    X = datafiles.read_features(args.file, metadata.get("features"), model.n_features_in_)
    target = metadata.get("target") or "prediction"
    if args.proba:
        if not hasattr(model, "predict_proba"):
            raise ValueError(f"--proba: {args.model} is a regression model, without classes")
        header = [str(label) for label in model.classes_]
        rows = model.predict_proba(X).tolist()
    else:
        predicted = model.predict(X)
        header = (
            [target]
            if predicted.ndim == 1
            else [f"{target}_{i}" for i in range(predicted.shape[1])]
        )
        rows = predicted.reshape(len(X), -1).tolist()
    if args.output is None:
        _write_csv(sys.stdout, header, rows)
        return
    with open(args.output, "w", newline="") as file:
        _write_csv(file, header, rows)
    print(f"{len(rows)} predictions written to {Path(args.output)}")


def _write_csv(file: Any, header: list[str], rows: list[list[Any]]) -> None:
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
