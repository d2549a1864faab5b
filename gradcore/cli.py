"""The ``gradcore`` command: ``gradcore train``, ``gradcore predict``, ``gradcore info``.

``gradcore train`` with no flags is the network of Geena Kim's lecture notes "Math behind Neural
Network Training": one sigmoid hidden layer, a sigmoid output, binary cross-entropy and SGD with
momentum, on the breast-cancer data that ships with
scikit-learn (no download). ``--data digits`` trains a softmax classifier on handwritten digits.
``--data FILE`` trains on a CSV or .npz and ``gradcore predict`` scores new rows with the saved
model (both in ``model_cli``).
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

import gradcore as gc
from gradcore import distributed as gd
from gradcore import model_cli

# Per bundled data set: the defaults of the flags that differ between them.
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


def _number(kind: type, minimum: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type that refuses out-of-range numbers with a one-line message (a value
    given is used or refused, never replaced by a default)."""

    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum or (strict and value == minimum):
            sign = "positive" if strict else "non-negative"
            what = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"must be a {sign} {what}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Every flag's default in its help: argparse's "(default: ...)", or the help's own words
    where the default depends on the data or is not a plain value. Descriptions as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "default" in text else super()._get_help_string(action) or text


DESCRIPTION = """\
Train small neural networks and score data with them.

gradcore train with no flags is the network of Geena Kim's lecture notes "Math behind Neural
Network Training": one sigmoid hidden layer, a sigmoid output, binary cross-entropy and SGD with
momentum, on the breast-cancer data that ships with scikit-learn (no download). --data digits
trains a softmax classifier on handwritten digits, and --data FILE a classifier or regressor on
a CSV or .npz file, which gradcore predict then uses to score new rows.
"""

FILE_HELP = """\
A CSV file has a header row, unless its first row is all numbers: it is then read as data and
its columns are named 1, 2, ... (a note says so). Its delimiter (comma, semicolon or tab) is
detected from the first row, or given with --delimiter.
"""


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gradcore",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gradcore {gc.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    train = commands.add_parser(
        "train",
        help="train a small network on a bundled data set or a file",
        description="Train a small network on a bundled data set or on a CSV or .npz file.\n\n"
        + FILE_HELP,
        formatter_class=lambda prog: _Help(prog, width=100),
    )
    train.add_argument(
        "--data", default="breast-cancer", help="breast-cancer, digits, or a CSV or .npz file"
    )
    train.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    positive_int, count = _number(int, 0, strict=True), _number(int, 0, strict=False)
    train.add_argument(
        "--hidden", type=model_cli.hidden_sizes, default="16", help="units per layer: 64,32"
    )
    train.add_argument(
        "--activation",
        default="sigmoid",
        choices=("sigmoid", "logistic", "tanh", "relu"),
        help="the hidden units' activation",
    )
    train.add_argument(
        "--epochs", type=count, help="default: 50, or 30 for digits (--patience may stop sooner)"
    )
    train.add_argument("--batch-size", type=positive_int, default=32, help="rows per step")
    train.add_argument(
        "--lr", type=_number(float, 0.0, strict=True), help="learning rate (default: 0.1)"
    )
    train.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZERS),
        help="sgd (default), adam, adamw, rmsprop or adagrad: gradcore.optim's, Keras's "
        "defaults (learning rate 0.001 but for sgd); --data FILE takes sgd or adam",
    )
    train.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    train.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    nonnegative = _number(float, 0.0, strict=False)
    train.add_argument("--beta1", type=float, help="adam, adamw: beta_1 (default: 0.9)")
    train.add_argument("--beta2", type=float, help="adam, adamw: beta_2 (default: 0.999)")
    train.add_argument("--rho", type=float, help="rmsprop: rho (default: 0.9)")
    train.add_argument(
        "--epsilon", type=nonnegative, help="adam, adamw, rmsprop, adagrad (default: 1e-7)"
    )
    train.add_argument(
        "--weight-decay",
        type=nonnegative,
        help="L2 weight decay, decoupled for adamw (default: 0, adamw 0.004)",
    )
    train.add_argument("--seed", type=count, default=0, help="seeds the init and the shuffling")
    train.add_argument(
        "--plot", metavar="PNG", help="write the loss curves to this PNG file (default: none)"
    )
    train.add_argument(
        "--history", metavar="CSV", help="write the losses per epoch to this file (default: none)"
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing --plot, --history and --save files (they are kept otherwise)",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    bundled = train.add_argument_group("bundled data sets only (breast-cancer, digits)")
    bundled.add_argument(
        "--checkpoint", metavar="PATH", help="save the state as it trains (default: none)"
    )
    bundled.add_argument(  # None when not given, as every flag that only one trainer reads
        "--resume",
        action="store_true",
        default=None,
        help="continue from --checkpoint (default: no)",
    )
    bundled.add_argument(
        "--allow-changes",
        action="store_true",
        help="resume although the optimizer's settings, batch size or seed changed",
    )
    bundled.add_argument(
        "--dropout",
        type=_fraction,
        metavar="RATE",
        help="drop this fraction of the hidden units at each training step (default: 0)",
    )
    bundled.add_argument(
        "--distributed",
        action="store_true",
        help="data parallel: mpiexec -n K python -m mpi4py -m gradcore train --distributed",
    )
    files = train.add_argument_group("data files only (--data FILE)")
    files.add_argument(
        "--target", help="the target column or .npz array (default: the last column, or y)"
    )
    files.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="default: classification for integer or text targets, regression for decimals",
    )
    files.add_argument(
        "--test-split",
        type=_fraction,
        metavar="FRACTION",
        help="the fraction of rows held out for the test score (default: 0.2)",
    )
    files.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        help="scale the features to mean 0 and variance 1 (default: yes)",
    )
    files.add_argument(
        "--patience",
        type=count,
        metavar="EPOCHS",
        help="stop when the loss on a validation split (10%% of the training rows) has not "
        "improved for this many epochs, and keep the best epoch (default: no early stopping)",
    )
    files.add_argument(
        "--delimiter",
        type=model_cli.delimiter,
        help="the CSV's field separator: a character, comma, semicolon or tab (default: detected)",
    )
    files.add_argument(
        "--save", metavar="MODEL", help="write the trained model to this .npz (default: none)"
    )
    info = "devices, backend versions and the BLAS in use"
    commands.add_parser("info", help=info, description=info.capitalize() + ".")
    predict = commands.add_parser(
        "predict",
        help="score the rows of a file with a saved model",
        description="Score the rows of a CSV or .npz file with a model saved by gradcore train\n"
        "--save. The CSV's columns are picked by the names the model was trained on.\n\n"
        + FILE_HELP,
        formatter_class=lambda prog: _Help(prog, width=100),
    )
    predict.add_argument("model", metavar="MODEL", help="a model file from --save")
    predict.add_argument("file", metavar="FILE", help="a CSV with the training columns, or .npz")
    predict.add_argument("--proba", action="store_true", help="class probabilities")
    predict.add_argument(
        "--output", metavar="CSV", help="write the predictions here (default: standard output)"
    )
    predict.add_argument(
        "--overwrite", action="store_true", help="replace an existing --output file"
    )
    predict.add_argument(
        "--delimiter",
        type=model_cli.delimiter,
        help="the CSV's field separator: a character, comma, semicolon or tab (default: detected)",
    )
    predict.add_argument(
        "--device", help="cpu, cuda or auto (default: the device the model was trained on)"
    )
    return parser


# --optimizer NAME -> (gradcore.optim class, the flags it takes beside --lr and --weight-decay,
# as optimizer argument names)
OPTIMIZERS: dict[str, tuple[str, dict[str, str]]] = {
    "sgd": ("SGD", {"momentum": "momentum", "nesterov": "nesterov"}),
    "adam": ("Adam", {"beta1": "beta_1", "beta2": "beta_2", "epsilon": "epsilon"}),
    "adamw": ("AdamW", {"beta1": "beta_1", "beta2": "beta_2", "epsilon": "epsilon"}),
    "rmsprop": ("RMSprop", {"rho": "rho", "epsilon": "epsilon"}),
    "adagrad": ("Adagrad", {"epsilon": "epsilon"}),
}
# flags of one optimizer or another, unset: None (--momentum and --nesterov have defaults)
OPTIMIZER_FLAGS = ("beta1", "beta2", "rho", "epsilon")


def make_optimizer(args: argparse.Namespace, sgd_rate: float) -> Any:
    """The ``--optimizer`` with the hyperparameters given; a flag of another optimizer is an
    error, not ignored. Without ``--lr``: ``sgd_rate`` for SGD, Keras's 0.001 for the others."""
    name = args.optimizer or "sgd"
    kind, takes = OPTIMIZERS[name]
    foreign = [flag for flag in OPTIMIZER_FLAGS if getattr(args, flag) is not None
               and flag not in takes]  # fmt: skip
    if foreign:
        users = [n for n, (_, flags) in OPTIMIZERS.items() if foreign[0] in flags]
        raise ValueError(
            f"--{foreign[0]} works with --optimizer {' or '.join(users)}, not with {name}"
        )
    kwargs = {argument: getattr(args, flag) for flag, argument in takes.items()
              if getattr(args, flag) is not None}  # fmt: skip
    if args.weight_decay is not None:
        kwargs["weight_decay"] = args.weight_decay
    rate = args.lr if args.lr is not None else (sgd_rate if name == "sgd" else 0.001)
    return getattr(gc.optim, kind)(rate, **kwargs)


def _fraction(text: str) -> float:
    """``--test-split``: a fraction of the rows in [0, 1)."""
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


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


def _check_paths(args: argparse.Namespace) -> bool:
    """Refuse unusable output paths before any work; whether to resume from ``--checkpoint``."""
    checkpoint = args.checkpoint
    model_cli.check_outputs(
        {
            "--checkpoint": checkpoint,
            "the checkpoint's history": checkpoint and str(gc.train.history_path(checkpoint)),
            "--plot": args.plot,
            "--history": args.history,
        },
        {},
        args.overwrite,
        kept=("--checkpoint", "the checkpoint's history"),  # --resume decides, below
    )
    if checkpoint is None:
        if args.resume:
            raise ValueError("--resume needs --checkpoint PATH")
        return False
    path = Path(checkpoint)
    if path.is_file() and not args.resume:
        raise FileExistsError(
            f"--checkpoint {checkpoint} exists: add --resume to continue from it, or give "
            "another --checkpoint path"
        )
    if args.resume and not path.exists():
        print(f"no checkpoint at {checkpoint} yet: starting afresh")
        return False
    return bool(args.resume)


def train(args: argparse.Namespace) -> None:
    if args.data not in DATASETS:
        if not os.path.lexists(args.data):
            raise ValueError(
                f"--data {args.data}: no such file (nor a bundled data set: {', '.join(DATASETS)})"
            )
        if args.distributed:
            raise ValueError("--distributed trains the bundled data sets; --data FILE does not")
        return model_cli.train_file(args)
    model_cli.refuse_flags(args, bundled=True)
    defaults = DATASETS[args.data]
    optimizer = make_optimizer(args, defaults["lr"])  # its errors before any data is read
    device = _device(args.device)
    if args.distributed:  # this rank's GPU, before the params are made
        device = gd.init(device)
    resume = _check_paths(args)
    X_train, X_test, y_train, y_test = _load(args.data)
    from gradcore.estimators import ACTIVATIONS  # after _load: it says how to get scikit-learn

    activation = ACTIVATIONS[args.activation]
    classes = int(y_train.max()) + 1
    binary = classes == 2
    params = gc.nn.init_mlp(
        [X_train.shape[1], *args.hidden, 1 if binary else classes], seed=args.seed, device=device
    )

    masks = gc.random.Generator(args.seed)  # dropout's, drawn at every step

    def training(params: Any, xb: Any) -> Any:
        """The logits while training: with --dropout, hidden units dropped (not evaluating)."""
        return gc.nn.mlp(params, xb, activation, dropout_rate=args.dropout or 0.0, rng=masks)

    if binary:  # the lecture notes' network: sigmoid output and binary cross-entropy, computed
        # from the logit so that a diverging run shows a diverging loss (clipped
        # probabilities would cap it near 16 and hide it from the divergence guard)

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            return gc.nn.binary_cross_entropy_with_logits(training(params, xb), yb)

    else:

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            return gc.nn.softmax_cross_entropy(training(params, xb), yb)

    def accuracy(params: Any, X: Any, y: Any) -> float:
        return gc.nn.accuracy(gc.nn.mlp(params, X, activation), y)

    print(
        f"{args.data}: {len(y_train)} training and {len(y_test)} test examples, "
        f"{X_train.shape[1]} features, {classes} classes; device {device}"
    )
    started = time.perf_counter()
    history = gc.train.fit(
        loss,
        params,
        X_train,
        y_train,
        optimizer=optimizer,
        epochs=int(defaults["epochs"] if args.epochs is None else args.epochs),
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        validation_data=(X_test, y_test),
        metrics={"accuracy": accuracy},
        progress=not args.no_progress,
        checkpoint=args.checkpoint,
        resume=resume,
        distributed=args.distributed,
        allow_changes=args.allow_changes,
        generator=masks if args.dropout else None,  # its state goes into the checkpoint
    )
    seconds = time.perf_counter() - started
    X_test = gc.array(X_test, dtype="float32", device=device)
    test_accuracy = accuracy(params, X_test, gc.array(y_test, device=device))
    final_loss = f"{history.loss[-1]:.4f}" if history.loss else "n/a"
    ran = history.epochs - history.resumed_epochs
    if history.resumed_epochs == 0:
        what = f"trained {ran} epoch{'s' * (ran != 1)}"
    elif ran == 0:
        what = f"nothing to train: the checkpoint holds all {history.epochs} epochs"
    else:
        first, last = history.resumed_epochs + 1, history.epochs
        what = f"trained {ran} more epoch{'s' * (ran != 1)} (epochs {first}-{last})"
    print(f"{what} in {seconds:.2f} s; final training loss {final_loss}")
    print(f"test accuracy: {test_accuracy:.4f}")
    if not args.distributed or gd.is_root():
        if args.history:
            model_cli.write_history(args.history, history, np.dtype(np.float32))
            print(f"history written to {args.history}")
        if args.plot:
            model_cli.write_plot(args.plot, history)
            print(f"curves written to {args.plot}")


def info() -> None:
    print(f"gradcore {gc.__version__} on Python {platform.python_version()}")
    for device in gc.backend.registered_devices():
        try:
            about = getattr(gc.backend.backend_for_device(device), "description", None)
            print(f"device {device}: available" + (f" ({about})" if about else ""))
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
    prog = f"gradcore {args.command}"  # as the usage errors of argparse begin
    try:
        if args.command == "info":
            info()
        elif args.command == "predict":
            model_cli.predict(args)
        elif args.distributed and not gd.is_root():  # rank 0 speaks for all ranks
            with contextlib.redirect_stdout(io.StringIO()):
                train(args)
        else:
            train(args)
        sys.stdout.flush()  # here, so that a closed pipe is seen below, not at exit
    except BrokenPipeError:
        # The reader (e.g. head) has gone: end quietly, as Python's documentation advises,
        # with stdout pointed at devnull so that the interpreter's final flush succeeds.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt as interrupt:  # fit says where it saved the state, if it did
        saved = f"; {interrupt}" if str(interrupt) else ""
        print(f"{prog}: interrupted{saved}", file=sys.stderr)
        return 130
    except (gc.DeviceError, ImportError, OSError, ValueError, FloatingPointError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    return 0
