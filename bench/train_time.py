"""The ``train`` suite: wall time of ``gradcore train`` to its target test accuracy.

The command line runs in a subprocess exactly as the ``gradcore`` console script runs it, so the
time is what a user waits for: interpreter start, imports, loading the scikit-learn dataset,
training with the command's defaults and the final evaluation (the training alone, as the
command reports it, is recorded beside it). The accuracy the command prints
is read back and held against its target (at least 95% test accuracy).

Beside it, in this process: scikit-learn's ``MLPClassifier`` and gradcore's drop-in of the same
name, each fitting the command's network (30-16-1, logistic units, SGD with momentum 0.9 at rate
0.1, batches of 32, 50 epochs, no L2 term) on the command's standardised split, timed round-robin;
the ratio is gradcore's fit time to scikit-learn's.
"""

# ruff: noqa: N806 - X is a data matrix, the field's convention

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench.harness import mark_target

TARGET_ACCURACY = 0.95
# What the ``gradcore`` console script does, with this interpreter.
COMMAND = [sys.executable, "-c", "import sys; from gradcore.cli import main; sys.exit(main())"]
DATASETS = {"breast-cancer": ["train"], "digits": ["train", "--data", "digits"]}


def printed_accuracy(output: str) -> float | None:
    """The last accuracy the command printed, as a fraction (it may print a percentage)."""
    found = re.findall(r"accuracy\D{0,20}?(\d+(?:\.\d+)?)\s*(%?)", output, re.IGNORECASE)
    if not found:
        return None
    value, percent = found[-1]
    return float(value) / 100.0 if percent or float(value) > 1.0 else float(value)


def printed_training_seconds(output: str) -> float | None:
    """The training time the command reports (``trained N epochs in S s``), without start-up."""
    found = re.findall(r"trained \d+ epochs? in (\d+(?:\.\d+)?) s", output)
    return float(found[-1]) if found else None


def train_once(args: list[str]) -> tuple[float, str]:
    """Seconds for one run of the command line, and what it printed."""
    start = time.perf_counter()
    done = subprocess.run(COMMAND + args, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        last_line = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"gradcore {' '.join(args)} exited with {done.returncode}: {last_line}")
    return seconds, done.stdout + done.stderr


SKLEARN = "scikit-learn MLPClassifier"
GRADCORE = "gradcore MLPClassifier"


def estimator_rows(device: str, repeat: int, epochs: int) -> list[dict[str, Any]]:
    """Fit time and test accuracy of both ``MLPClassifier``s on the same split and network."""
    import warnings

    from sklearn import neural_network
    from sklearn.datasets import load_breast_cancer
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    from gradcore import estimators

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(  # the split gradcore train uses
        X, y, test_size=0.2, random_state=0, stratify=y
    )
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    shared = dict(
        hidden_layer_sizes=(16,),
        activation="logistic",
        solver="sgd",
        alpha=0.0,
        batch_size=32,
        learning_rate_init=0.1,
        momentum=0.9,
        nesterovs_momentum=False,
        max_iter=epochs,
        n_iter_no_change=epochs,  # no early stop: both run every epoch
        random_state=0,
    )
    makers = {
        SKLEARN: lambda: neural_network.MLPClassifier(**shared),
        GRADCORE: lambda: estimators.MLPClassifier(device=device, **shared),
    }
    times: dict[str, list[float]] = {name: [] for name in makers}
    accuracy = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(repeat + 1):  # the first round warms up imports and caches
            for name, make in makers.items():
                model = make()
                start = time.perf_counter()
                model.fit(X_train, y_train)
                times[name].append(time.perf_counter() - start)
                accuracy[name] = float(np.mean(model.predict(X_test) == y_test))
    reference = statistics.median(times[SKLEARN][1:])
    return [
        {
            "case": f"breast-cancer fit, {epochs} epochs",
            "impl": name,
            "median_s": statistics.median(spent[1:]),
            "min_s": min(spent[1:]),
            "ratio": statistics.median(spent[1:]) / reference,
            "accuracy": accuracy[name],
        }
        for name, spent in times.items()
    ]


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Each dataset three times (once, for one epoch, under ``quick``); median and minimum."""
    repeat = 1 if quick else 3
    extra = ["--device", device, "--no-progress"] + (["--epochs", "1"] if quick else [])
    notes = [
        f"`gradcore train ... --device {device}` run {repeat}x in a subprocess, as the console "
        "script runs it: the time includes interpreter start, imports and loading the data",
        f"target: at least {TARGET_ACCURACY:.0%} test accuracy, with the command's defaults",
    ]
    if quick:
        notes.append("--quick: one epoch, so the target is not expected to be met")
    notes.append(
        f"{SKLEARN} and {GRADCORE} ({device}): the same split and network in this process, "
        f"fit only, {repeat}x after a warm-up round; ratio: fit time to scikit-learn's"
    )
    rows = []
    for dataset, args in DATASETS.items():
        runs = [train_once(args + extra) for _ in range(repeat)]
        times = [seconds for seconds, _ in runs]
        accuracy = printed_accuracy(runs[-1][1])
        met = None if accuracy is None or quick else accuracy >= TARGET_ACCURACY
        row = {
            "case": dataset,
            "impl": "gradcore train",
            "median_s": statistics.median(times),
            "min_s": min(times),
            "ratio": None,  # one implementation: nothing to compare it with
            "accuracy": accuracy,
            "training_s": printed_training_seconds(runs[-1][1]),
        }
        measured = (
            "accuracy not printed"
            if accuracy is None
            else f"{accuracy:.1%} test accuracy in {statistics.median(times):.2f} s"
        )
        mark_target(row, f">= {TARGET_ACCURACY:.0%} test accuracy", met, measured)
        rows.append(row)
    rows += estimator_rows(device, repeat, epochs=1 if quick else 50)
    return {"suite": "train", "reference": SKLEARN, "rows": rows, "notes": notes}
