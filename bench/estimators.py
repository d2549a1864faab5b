"""The ``estimators`` suite: gradcore's ``MLPClassifier`` beside scikit-learn's, in this process.

Both fit the same StandardScaler'd data set (breast cancer, digits) with the same settings:
``hidden_layer_sizes=(64,)``, ``solver="sgd"``, ``learning_rate_init=0.01``, 100 epochs,
``tol=0`` (and ``n_iter_no_change`` at the number of epochs, so that both run every epoch),
``random_state=0``. Each round fits a fresh estimator of each library in turn (round-robin, so
that a change in machine load hits both alike), after a warm-up round; the best of the rounds
is reported, and the ratio is gradcore's best to scikit-learn's. ``predict_proba`` on the
training rows is timed the same way, as the best mean over a batch of calls.

BLAS runs one thread in both (threadpoolctl), so that neither library's thread pool slows the
other, and so that a small machine shared with other work gives steady numbers.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.harness import mark_target

SKLEARN = "scikit-learn MLPClassifier"
GRADCORE = "gradcore MLPClassifier"
FIT_TARGET = 0.8  # gradcore's fit time, at most this fraction of scikit-learn's
PREDICT_CALLS = 50  # predict_proba calls per timed sample


def datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_breast_cancer, load_digits
    from sklearn.preprocessing import StandardScaler

    found = {}
    for name, load in (("breast cancer", load_breast_cancer), ("digits", load_digits)):
        X, y = load(return_X_y=True)
        found[name] = StandardScaler().fit_transform(X), y
    return found


def best_of(rounds: int, jobs: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, float]]:
    """Each job once per round, in turn, after one warm-up round; each one's fastest wall time
    and fastest CPU time of this process (which other processes' load does not inflate)."""
    best = {name: (np.inf, np.inf) for name in jobs}
    for round_ in range(rounds + 1):
        for name, job in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            job()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if round_:
                best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def rows_for(case: str, X: np.ndarray, y: np.ndarray, device: str, epochs: int, rounds: int):
    from sklearn import neural_network

    from gradcore import estimators

    settings = dict(
        hidden_layer_sizes=(64,), solver="sgd", learning_rate_init=0.01, max_iter=epochs,
        tol=0.0, n_iter_no_change=epochs, random_state=0,
    )  # fmt: skip
    makers = {
        SKLEARN: lambda: neural_network.MLPClassifier(**settings),
        GRADCORE: lambda: estimators.MLPClassifier(device=device, **settings),
    }
    fitted: dict[str, Any] = {}

    def fit(name: str) -> Callable[[], Any]:
        def job() -> None:
            fitted[name] = makers[name]().fit(X, y)

        return job

    def predict(name: str) -> Callable[[], Any]:
        def job() -> None:
            for _ in range(PREDICT_CALLS):
                fitted[name].predict_proba(X)

        return job

    fit_times = best_of(rounds, {name: fit(name) for name in makers})
    predict_times = best_of(rounds, {name: predict(name) for name in makers})
    rows = []
    for what, times, divisor, target in (
        ("fit", fit_times, 1, FIT_TARGET),
        ("predict_proba", predict_times, PREDICT_CALLS, 1.0),
    ):
        for name, (seconds, cpu) in times.items():
            model = fitted[name]
            row = {
                "case": f"{case} {what}",
                "impl": name,
                "median_s": seconds / divisor,  # the best of the rounds, as the notes say
                "min_s": seconds / divisor,
                "ratio": seconds / times[SKLEARN][0],
                "cpu_ratio": cpu / times[SKLEARN][1],
                "epochs": model.n_iter_,
                "train_accuracy": float(np.mean(model.predict(X) == y)),
            }
            if name == GRADCORE:
                met = row["ratio"] <= target
                mark_target(row, f"<= {target:g}x scikit-learn's time", met)
            rows.append(row)
    return rows


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Both data sets; three rounds of 100 epochs (one round of 5 epochs under ``quick``)."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    epochs, rounds = (5, 1) if quick else (100, 3)
    rows = []
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for case, (X, y) in datasets().items():
            rows += rows_for(case, X, y, device, epochs, rounds)
    notes = [
        f"{GRADCORE} ({device}) and {SKLEARN}: StandardScaler'd data, hidden_layer_sizes=(64,), "
        f"solver='sgd', learning_rate_init=0.01, {epochs} epochs, tol=0; a fresh estimator per "
        f"fit; best of {rounds} round-robin rounds after a warm-up; BLAS on one thread in both",
        f"predict_proba: the training rows, best of {rounds} rounds of {PREDICT_CALLS} calls",
        "ratio: gradcore's best wall time to scikit-learn's; cpu_ratio: the same with the CPU "
        "time of this process, which the load of other processes on a shared machine does not "
        "inflate; measured side by side in one process; the target is held against ratio",
    ]
    return {"suite": "estimators", "reference": SKLEARN, "rows": rows, "notes": notes}
