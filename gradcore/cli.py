"""The ``gradcore`` command: ``gradcore train`` on a bundled data set, ``gradcore info``.

``gradcore train`` with no flags is the lecture's network: one sigmoid hidden layer, a sigmoid
output, binary cross-entropy and SGD with momentum, on the breast-cancer data that ships with
scikit-learn (no download). ``--data digits`` trains a softmax classifier on handwritten digits.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from typing import Any, NoReturn

import numpy as np

import gradcore as gc
from gradcore import distributed as gd

# Per data set: the defaults of the flags that differ, and how the test split is drawn.
DATASETS = {
    "breast-cancer": {"epochs": 50, "lr": 0.1},
    "digits": {"epochs": 30, "lr": 0.1},
}
SPLIT_SEED = 0  # the train/test split is fixed, so --seed changes only the init and shuffling
TEST_FRACTION = 0.2


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr, like every other gradcore error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradcore", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser("train", help="train a small network on a bundled data set")
    train.add_argument("--data", default="breast-cancer", choices=sorted(DATASETS))
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    train.add_argument("--hidden", type=int, default=16, help="hidden units (default: 16)")
    train.add_argument("--epochs", type=int, help="default: 50 (breast-cancer), 30 (digits)")
    train.add_argument("--batch-size", type=int, default=32)
    train.add_argument("--lr", type=float, help="learning rate (default: 0.1)")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--nesterov", action="store_true")
    train.add_argument("--seed", type=int, default=0, help="seeds the init and the shuffling")
    train.add_argument("--plot", metavar="PNG", help="write the training curves to this file")
    train.add_argument("--checkpoint", metavar="PATH", help="save the state after every epoch")
    train.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--distributed",
        action="store_true",
        help="data parallel: mpiexec -n K python -m mpi4py -m gradcore train --distributed",
    )
    commands.add_parser("info", help="devices, backend versions and the BLAS in use")
    return parser


def _load(name: str) -> tuple[np.ndarray, ...]:
    """Standardised train/test arrays; the statistics come from the training split only."""
    try:
        from sklearn.datasets import load_breast_cancer, load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as error:
        raise ImportError(
            "gradcore train needs scikit-learn for its data sets: pip install 'gradcore[examples]'"
        ) from error
    loader = {"breast-cancer": load_breast_cancer, "digits": load_digits}[name]
    X, y = loader(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y
    )
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0  # digits has pixels that are always blank
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def _device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if "cuda" in gc.available_devices() else "cpu"
    gc.backend.backend_for_device(requested)  # raises DeviceError naming the cause
    return requested


def train(args: argparse.Namespace) -> None:
    defaults = DATASETS[args.data]
    device = _device(args.device)
    if args.distributed:  # this rank's GPU, before the params are made
        device = gd.init(device)
    X_train, X_test, y_train, y_test = _load(args.data)
    classes = int(y_train.max()) + 1
    binary = classes == 2
    params = gc.nn.init_mlp(
        [X_train.shape[1], args.hidden, 1 if binary else classes], seed=args.seed, device=device
    )

    if binary:  # the lecture's network: sigmoid output, binary cross-entropy on probabilities

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            return gc.nn.binary_cross_entropy(gc.sigmoid(gc.nn.mlp(params, xb)), yb)

    else:

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            return gc.nn.softmax_cross_entropy(gc.nn.mlp(params, xb), yb)

    def accuracy(params: Any, X: Any, y: Any) -> float:
        return gc.nn.accuracy(gc.nn.mlp(params, X), y)

    print(
        f"{args.data}: {len(y_train)} training and {len(y_test)} test examples, "
        f"{X_train.shape[1]} features, {classes} classes; device {device}"
    )
    optimizer = gc.optim.SGD(
        args.lr or defaults["lr"], momentum=args.momentum, nesterov=args.nesterov
    )
    started = time.perf_counter()
    history = gc.train.fit(
        loss,
        params,
        X_train,
        y_train,
        optimizer=optimizer,
        epochs=defaults["epochs"] if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        validation_data=(X_test, y_test),
        metrics={"accuracy": accuracy},
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        resume=args.resume,
        distributed=args.distributed,
    )
    seconds = time.perf_counter() - started
    X_test = gc.array(X_test, dtype="float32", device=device)
    test_accuracy = accuracy(params, X_test, gc.array(y_test, device=device))
    final_loss = f"{history.loss[-1]:.4f}" if history.loss else "n/a"
    print(f"trained {history.epochs} epochs in {seconds:.2f} s; final training loss {final_loss}")
    print(f"test accuracy: {test_accuracy:.4f}")
    if args.plot and (not args.distributed or gd.is_root()):
        print(f"curves written to {history.plot(args.plot)}")


def info() -> None:
    print(f"gradcore {gc.__version__} on Python {platform.python_version()}")
    for device in gc.backend.registered_devices():
        try:
            gc.backend.backend_for_device(device)
            print(f"device {device}: available")
        except gc.DeviceError as error:
            print(f"device {device}: unavailable ({error})")
    for package in ("numpy", "array-api-compat", "cupy-cuda12x", "cupy-cuda13x"):
        try:
            print(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        print("BLAS: unknown (pip install threadpoolctl to see it)")
        return
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            print(
                f"BLAS: {pool['internal_api']} {pool.get('version')}, "
                f"{pool['num_threads']} threads ({pool['filepath']})"
            )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gradcore`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            info()
        elif args.distributed and not gd.is_root():  # rank 0 speaks for all ranks
            with contextlib.redirect_stdout(io.StringIO()):
                train(args)
        else:
            train(args)
    except KeyboardInterrupt:
        saved = f"; state saved to {args.checkpoint}" if getattr(args, "checkpoint", None) else ""
        print(f"gradcore: interrupted{saved}", file=sys.stderr)
        return 130
    except (gc.DeviceError, ImportError, OSError, ValueError, FloatingPointError) as error:
        print(f"gradcore: error: {error}", file=sys.stderr)
        return 1
    return 0
