"""Layer 5: scikit-learn estimators built on gradcore's trainer: MLPClassifier, MLPRegressor.

They take scikit-learn's parameter names and defaults, so that code moves over by changing the
import, and add ``device="cuda"``. They follow its arithmetic: its init, its loss (with the L2
term per minibatch), its solvers (``"adam"`` with its epsilon placement, ``"sgd"`` with
momentum, Nesterov and the ``"constant"``, ``"invscaling"`` and ``"adaptive"`` learning rates,
``"lbfgs"`` through ``scipy.optimize``), its ``loss_curve_``, its stopping rules,
``warm_start`` and ``partial_fit``, and the dtype of the data (float64 in, float64
``coefs_``). With the same initial weights and ``shuffle=False`` a fit follows scikit-learn's to
rounding.

Training runs on a ``gradcore.train.Trainer`` kept per configuration (``_borrowed_trainer``):
its step is recorded once and replayed at every epoch, ``partial_fit``, refit and fresh
estimator with the same settings and data shapes. scikit-learn's bookkeeping and stopping rule
are a callback (``_Stopping``) that runs after each epoch.

``est.save(path)`` and ``load(path)`` keep a fitted model in one ``.npz`` that holds only arrays
and JSON (read with ``allow_pickle=False``, so loading cannot run code); the estimators also
pickle, as scikit-learn requires.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from gradcore import nn, ops, optim, train
from gradcore.backend import KernelTable, array_backend, backend_for_device
from gradcore.callbacks import Callback, DivergenceGuard
from gradcore.devices import array, available_devices, to_numpy
from gradcore.differential_operators import value_and_grad as gc_value_and_grad
from gradcore.pytree import tree_leaves
from gradcore.tracer import stop_gradient
from gradcore.version import __version__

__all__ = [
    "ACTIVATIONS",
    "MLPClassifier",
    "MLPRegressor",
    "ModelFileError",
    "load",
    "resolve_device",
]

FORMAT = "gradcore-model"
FORMAT_VERSION = 1  # raise when a reader of the old version could misread a new file
_PREDICT_CHUNK = 65536  # rows per forward pass, so that scoring a large file fits the device
SOLVERS = ("adam", "lbfgs", "sgd")  # scikit-learn's
LEARNING_RATES = ("adaptive", "constant", "invscaling")  # scikit-learn's modes, for "sgd"
_KEPT_CONFIGURATIONS = 8  # trainers (recorded steps) kept for this many recent configurations
_TRAINERS: dict[tuple, list[Any]] = {}  # configuration -> trainers not lent out now


def _identity(x: Any) -> Any:
    return x


ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "identity": _identity,
    "logistic": ops.sigmoid,
    "sigmoid": ops.sigmoid,  # the lecture notes' name for scikit-learn's "logistic"
    "tanh": ops.tanh,
    "relu": ops.relu,
}
# For predictions on NumPy arrays: the same activations, written over their argument.
_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))  # data that predict checks in one sum
_IN_PLACE: dict[str, Callable[[Any], Any]] = {
    "relu": lambda h: np.maximum(h, 0.0, out=h),
    "tanh": lambda h: np.tanh(h, out=h),
}


class ModelFileError(ValueError):
    """A model file that cannot be loaded: corrupt, not a gradcore model, or from a newer
    gradcore. The message names the path."""


def resolve_device(device: str) -> str:
    """``"auto"`` is the GPU when one answers, else the CPU; other names are kept as given."""
    if device == "auto":
        return "cuda" if "cuda" in available_devices() else "cpu"
    return device


class _MLP(BaseEstimator):
    """What the classifier and the regressor share: parameters, training, forward pass, saving.

    Subclasses say what the output layer is: ``_targets`` encodes ``y`` for the loss,
    ``_data_loss`` is the loss on the last layer's logits, ``_validation_score`` is what
    early stopping watches.
    """

    # What fit and partial_fit set (scikit-learn's fitted attributes, and the counters that
    # partial_fit carries), declared for type checkers: __init__ only stores parameters.
    coefs_: list[np.ndarray]
    intercepts_: list[np.ndarray]
    n_outputs_: int
    out_activation_: str
    n_iter_: int
    t_: int
    loss_curve_: list[float]
    mean_: np.ndarray | None
    scale_: np.ndarray | None
    validation_scores_: list[float] | None  # with early_stopping
    best_validation_score_: float | None  # with early_stopping
    best_loss_: float | None  # without
    _no_improvement_count: int
    _optimizer_state: Any
    _learning_rate: Any  # the optimizer's, as adapted: partial_fit goes on with it

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] | int = (100,),
        activation: str = "relu",
        *,
        solver: str = "adam",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate: str = "constant",
        learning_rate_init: float = 0.001,
        power_t: float = 0.5,
        learning_rate_schedule: Callable[[int], float] | None = None,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        warm_start: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        n_iter_no_change: int = 10,
        max_fun: int = 15000,
        standardize: bool = False,
        device: str = "cpu",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.learning_rate_schedule = learning_rate_schedule
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.max_fun = max_fun
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.device = device

    # -----------------------------------------------------------------------------------------
    # checks

    def _hidden_sizes(self) -> list[int]:
        given = self.hidden_layer_sizes
        sizes = [given] if isinstance(given, (int, np.integer)) else list(given)
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in sizes):
            raise ValueError(
                f"hidden_layer_sizes must be positive integers, got {self.hidden_layer_sizes!r}"
            )
        return [int(s) for s in sizes]

    def _check_params(self) -> None:
        """scikit-learn checks parameters in ``fit``, not in ``__init__`` or ``set_params``."""
        name = type(self).__name__
        self._hidden_sizes()
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"{name}: activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        for param, options in (("solver", SOLVERS), ("learning_rate", LEARNING_RATES)):
            value = getattr(self, param)
            if not isinstance(value, str) or value not in options:
                among = ", ".join(repr(option) for option in sorted(options))
                raise ValueError(
                    f"The {param!r} parameter of {name} must be a str among {{{among}}}. "
                    f"Got {value!r} instead."
                )
        bad = [
            ("alpha", self.alpha, self.alpha >= 0, ">= 0"),
            ("learning_rate_init", self.learning_rate_init, self.learning_rate_init > 0, "> 0"),
            ("max_iter", self.max_iter, _positive_int(self.max_iter), "a positive integer"),
            ("tol", self.tol, self.tol >= 0, ">= 0"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
            ("power_t", self.power_t, self.power_t >= 0, ">= 0"),
            ("beta_1", self.beta_1, 0 <= self.beta_1 < 1, "in [0, 1)"),
            ("beta_2", self.beta_2, 0 <= self.beta_2 < 1, "in [0, 1)"),
            ("epsilon", self.epsilon, self.epsilon > 0, "> 0"),
            ("max_fun", self.max_fun, _positive_int(self.max_fun), "a positive integer"),
            ("validation_fraction", self.validation_fraction, 0 < self.validation_fraction < 1,
             "in (0, 1)"),
            ("n_iter_no_change", self.n_iter_no_change, _positive_int(self.n_iter_no_change),
             "a positive integer"),
            ("batch_size", self.batch_size,
             self.batch_size == "auto" or _positive_int(self.batch_size),
             "'auto' or a positive integer"),
        ]  # fmt: skip
        for param, value, ok, wanted in bad:
            if not ok:
                raise ValueError(f"{name}: {param} must be {wanted}, got {value!r}")
        if self.learning_rate_schedule is not None and not callable(self.learning_rate_schedule):
            raise ValueError(
                f"{name}: learning_rate_schedule must be a function step -> rate (e.g. "
                f"gradcore.optim.linear_decay(...)), got {self.learning_rate_schedule!r}"
            )

    # -----------------------------------------------------------------------------------------
    # training

    def fit(self, X: Any, y: Any) -> _MLP:
        """Train for up to ``max_iter`` epochs, stopping as scikit-learn does; from fresh
        weights, or from the fitted ones with ``warm_start`` (the optimizer starts afresh)."""
        return self._fit(X, y, incremental=False)

    def _check_solver(self) -> bool:
        """Whether ``partial_fit`` exists: for the stochastic solvers only, as in scikit-learn
        (``available_if``: ``hasattr(model, "partial_fit")`` is False with lbfgs, and calling
        it raises AttributeError with scikit-learn's message as its cause)."""
        if self.solver not in ("adam", "sgd"):
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. "
                f"{self.solver} is not stochastic."
            )
        return True

    def _fit(self, X: Any, y: Any, incremental: bool, classes: Any = None) -> _MLP:
        self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "coefs_") or not (self.warm_start or incremental)
        X, y = validate_data(
            self, X, y, reset=first, dtype=(np.float64, np.float32), **self._y_checks()
        )
        targets = self._targets(y, first, classes, X.dtype)
        self._rng = check_random_state(self.random_state)  # as scikit-learn: at every call
        if first:
            self._start(X, self._n_outputs(targets))
        X = self._standardized(X)
        device = resolve_device(self.device)
        validation = None
        if self.early_stopping and self.solver != "lbfgs":  # lbfgs trains on every row
            # scikit-learn stratifies the split only for one output column (binary)
            stratify = targets if is_classifier(self) and self.n_outputs_ == 1 else None
            X, X_val, targets, y_val = train_test_split(
                X, targets, test_size=self.validation_fraction, random_state=self._rng,
                stratify=stratify,
            )  # fmt: skip
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the "
                    "size of your dataset."
                )
            validation = array(X_val, device=device), array(y_val, device=device)

        if self.solver == "lbfgs":
            self._fit_lbfgs(X, targets, device)
            return self
        with self._borrowed_trainer(device, self._batch_size(X.shape[0]), X) as trainer:
            self._train(trainer, X, targets, incremental, validation)
        return self

    def _fit_lbfgs(self, X: np.ndarray, targets: Any, device: str) -> None:
        """scikit-learn's ``solver="lbfgs"``: ``scipy.optimize.minimize(method="L-BFGS-B")`` on
        the full-batch loss (its L2 term over all rows), the weights packed into one float64
        vector, the loss and its gradient computed by gradcore on ``device``."""
        params = self._device_params(device, X.dtype)
        leaves = tree_leaves(params)
        sizes = [int(np.prod(leaf.shape)) for leaf in leaves]
        value_and_grad = gc_value_and_grad(self._loss())
        X_device, y_device = array(X, device=device), array(targets, device=device)

        def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
            pieces = np.split(theta, np.cumsum(sizes)[:-1])
            for leaf, piece in zip(leaves, pieces):
                leaf[...] = array_backend(leaf).asarray(piece.reshape(leaf.shape), leaf.dtype)
            value, grads = value_and_grad(params, X_device, y_device)
            flat = [np.ravel(g) for g in to_numpy(tree_leaves(grads))]
            return float(to_numpy(value)), np.concatenate(flat).astype(np.float64)

        start = np.concatenate([np.ravel(to_numpy(leaf)) for leaf in leaves]).astype(np.float64)
        result = scipy.optimize.minimize(
            loss_and_gradient, start, method="L-BFGS-B", jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )  # fmt: skip
        if result.status != 0:
            warnings.warn(
                f"lbfgs failed to converge after {result.nit} iteration(s) (status="
                f"{result.status}): {result.message}. Increase the number of iterations "
                "(max_iter) or scale the data.",
                ConvergenceWarning,
                stacklevel=4,
            )
        loss_and_gradient(result.x)  # the weights of the optimum, into params
        self.n_iter_ = int(result.nit)
        self.loss_ = float(result.fun)
        self.coefs_ = [to_numpy(layer["W"]) for layer in params]
        self.intercepts_ = [to_numpy(layer["b"]) for layer in params]

    def _train(
        self, trainer: train.Trainer, X: Any, targets: Any, incremental: bool, validation: Any
    ) -> None:
        """One ``fit`` (``max_iter`` epochs) or ``partial_fit`` (one epoch) on ``trainer``."""
        device = trainer.device
        if incremental and self._optimizer_state is not None:
            trainer.optimizer.load_state_dict(self._optimizer_state)  # partial_fit goes on
            trainer.optimizer.learning_rate = self._learning_rate
        else:  # a fresh optimizer, as scikit-learn makes one at every fit
            trainer.optimizer.reset()
            trainer.optimizer.learning_rate = self.learning_rate_schedule or self.learning_rate_init
        trainer.rng = np.random.default_rng(self._rng.randint(np.iinfo(np.int32).max))
        stopping = next(c for c in trainer.callbacks if isinstance(c, _Stopping))
        stopping.start(self, incremental, validation)
        params = self._device_params(device, X.dtype)
        trainer.fit(params, X, targets, epochs=1 if incremental else self.max_iter)
        if not incremental and not trainer.stop_training:
            warnings.warn(
                f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                "the optimization hasn't converged yet.",
                ConvergenceWarning,
                stacklevel=4,
            )
        final = stopping.best if stopping.best is not None else params
        self.coefs_ = [to_numpy(layer["W"]) for layer in final]
        self.intercepts_ = [to_numpy(layer["b"]) for layer in final]
        self._optimizer_state = to_numpy(trainer.optimizer.state_dict())
        self._learning_rate = trainer.optimizer.learning_rate  # as adapted, for partial_fit

    def _batch_size(self, n: int) -> int:
        """scikit-learn's: "auto" is ``min(200, n)``; a larger size is clipped, with a warning."""
        if isinstance(self.batch_size, str):  # "auto", the one word _check_params accepts
            return min(200, n)
        if self.batch_size > n:
            warnings.warn(
                f"batch_size {self.batch_size} is larger than the {n} training rows; it is "
                f"clipped to {n}",
                stacklevel=4,
            )
        return min(self.batch_size, n)

    @contextlib.contextmanager
    def _borrowed_trainer(self, device: str, batch_size: int, X: Any) -> Iterator[train.Trainer]:
        """A trainer for this configuration, lent for one ``fit`` or ``partial_fit``.

        Trainers are kept by everything their step depends on (estimator class, activation,
        alpha, outputs, optimizer settings, batch size, device, the data's columns and dtype),
        so that every epoch, every ``partial_fit``, every refit and every fresh estimator of
        that configuration replays the step that the first one recorded (a module-level step,
        as in flax's examples). A trainer is lent to one call at a time. As in scikit-learn, a
        large loss does not stop training; a NaN or infinite one does (scikit-learn would
        finish with NaN weights), and ``coefs_`` keep their values: the trainer trains a copy.
        No pass over all the data precedes training: the targets are the estimator's own
        encoding, checked by scikit-learn's validation, and scikit-learn makes no such pass.
        """
        key = (type(self), self.activation, float(self.alpha), self.n_outputs_, self.solver,
               self.momentum, self.nesterovs_momentum, self.beta_1, self.beta_2, self.epsilon,
               self.shuffle, batch_size, device, X.shape[1:], X.dtype)  # fmt: skip
        pool = _TRAINERS.pop(key, [])
        _TRAINERS[key] = pool  # the most recently used configuration goes last
        while len(_TRAINERS) > _KEPT_CONFIGURATIONS:
            del _TRAINERS[next(iter(_TRAINERS))]
        try:
            trainer = pool.pop()
        except IndexError:
            rate = self.learning_rate_schedule or self.learning_rate_init
            optimizer: optim.Optimizer
            if self.solver == "adam":
                optimizer = _ScikitLearnAdam(rate, self.beta_1, self.beta_2, self.epsilon)
            else:
                optimizer = optim.SGD(rate, self.momentum, nesterov=self.nesterovs_momentum)
            callbacks = [_Stopping(), DivergenceGuard(None, restore=False)]
            trainer = train.Trainer(
                self._loss(), optimizer, batch_size=batch_size, device=device,
                callbacks=callbacks, shuffle=self.shuffle, check_start=False,
            )  # fmt: skip
        try:
            yield trainer
        finally:
            trainer.params = trainer.history = None  # nothing of this estimator kept
            next(c for c in trainer.callbacks if isinstance(c, _Stopping)).estimator = None
            pool.append(trainer)

    def _start(self, X: np.ndarray, outputs: int) -> None:
        """Fresh weights (scikit-learn's init), statistics and counters for a first fit."""
        self._reset_counters()
        sizes = [X.shape[1], *self._hidden_sizes(), outputs]
        # Glorot's uniform bound, with scikit-learn's factor 2 for logistic units; biases are
        # drawn from the same range, in scikit-learn's order, so a random_state gives its init.
        factor = 2.0 if self.activation in ("logistic", "sigmoid") else 6.0
        self.coefs_, self.intercepts_ = [], []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            self.coefs_.append(self._rng.uniform(-bound, bound, (fan_in, fan_out)).astype(X.dtype))
            self.intercepts_.append(self._rng.uniform(-bound, bound, fan_out).astype(X.dtype))
        self.n_outputs_ = outputs
        self.out_activation_ = self._out_activation(outputs)
        self.n_iter_ = self.t_ = 0
        self.loss_curve_ = []
        if self.standardize:
            scale = X.std(axis=0)
            scale[scale == 0] = 1.0  # a constant feature is centred, not divided by zero
            self.mean_, self.scale_ = X.mean(axis=0), scale
        else:
            self.mean_ = self.scale_ = None

    def _reset_counters(self) -> None:
        """What stopping and partial_fit's optimizer carry between calls; a loaded model starts
        them afresh."""
        self._no_improvement_count = 0
        self._optimizer_state = None
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _loss(self) -> Callable[[Any, Any, Any], Any]:
        """The data loss plus scikit-learn's L2 term, ``alpha / 2 * sum(W**2) / batch_rows``.

        That is scikit-learn's ``alpha``: in the loss, over the weights but not the biases,
        divided by the rows of each minibatch, so ``loss_curve_`` includes it as there. The
        function reads the estimator's parameters when it is made: ``_borrowed_trainer`` keeps
        one trainer per configuration.
        """
        # Nothing of the estimator itself: the trainer that runs this loss is shared.
        activation, alpha = self._act(), float(self.alpha)
        data_loss = functools.partial(self._data_loss, self.n_outputs_)

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            value = data_loss(nn.mlp(params, xb, activation), yb)
            if alpha:  # summed from the first layer's: one op fewer than sum() from 0
                squares = ops.sum(ops.square(params[0]["W"]))
                for layer in params[1:]:
                    squares = squares + ops.sum(ops.square(layer["W"]))
                value = value + squares * (0.5 * alpha / xb.shape[0])
            return value

        return loss

    # -----------------------------------------------------------------------------------------
    # the fitted network

    def _act(self) -> Callable[[Any], Any]:
        return ACTIVATIONS[self.activation]

    def _device_params(self, device: str, dtype: Any) -> list[dict[str, Any]]:
        return [
            {"W": array(W, dtype, device), "b": array(b, dtype, device)}
            for W, b in zip(self.coefs_, self.intercepts_)
        ]

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        if self.mean_ is None:
            return X
        return ((X - self.mean_) / self.scale_).astype(X.dtype, copy=False)

    def _rows(self, X: Any) -> np.ndarray:
        """``X`` checked as ``validate_data(self, X, reset=False)`` checks it, in float64.

        Those checks cost about as much as the forward pass on a few hundred rows, mostly in
        looking for data-frame types. A float NumPy matrix of the fitted width, for a model
        fitted without feature names, needs only the finiteness test, done as scikit-learn
        first does it (one sum). Anything else, or a sum that is not finite, goes through
        ``validate_data``, whose errors and warnings are then those of scikit-learn.
        """
        if (
            type(X) is np.ndarray
            and X.ndim == 2
            and X.dtype in _FLOATS
            and X.shape[0] > 0
            and X.shape[1] == self.n_features_in_
            and not hasattr(self, "feature_names_in_")
        ):
            with np.errstate(over="ignore"):
                if np.isfinite(X.sum()):
                    return X.astype(np.float64, copy=False)
        return np.asarray(validate_data(self, X, reset=False), dtype=np.float64)

    def _forward(self, X: Any) -> np.ndarray:
        """The last layer's outputs for ``X``, computed on the device, as a host array.

        In float64: float32 matrix products round differently for different numbers of rows,
        so a row's prediction would depend on which other rows were scored with it.
        """
        check_is_fitted(self, ("coefs_", "intercepts_"))  # named: no scan of every attribute
        X = self._standardized(self._rows(X))
        backend = backend_for_device(resolve_device(self.device))
        # The backend's asarray copies nothing on the CPU: float64 weights and rows are used as
        # they are (the forward pass writes only into arrays it makes).
        params = [
            {"W": backend.asarray(W, np.float64), "b": backend.asarray(b, np.float64)}
            for W, b in zip(self.coefs_, self.intercepts_)
        ]
        # On NumPy arrays, relu and tanh are written over the layer's output, which is ours
        # (the same numbers as the ops, one allocation fewer per layer, as scikit-learn does).
        on_host = isinstance(params[0]["W"], np.ndarray)
        activation = _IN_PLACE.get(self.activation) if on_host else None
        chunks = [
            nn.mlp(params, backend.asarray(X[lo : lo + _PREDICT_CHUNK]), activation or self._act())
            for lo in range(0, X.shape[0], _PREDICT_CHUNK)
        ]
        # A NumPy result is already the host array the caller gets: no copy.
        host = [c if isinstance(c, np.ndarray) else backend.to_numpy(c) for c in chunks]
        return host[0] if len(host) == 1 else np.concatenate(host)

    # -----------------------------------------------------------------------------------------
    # saving

    def save(self, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> Path:
        """Write the fitted model to one ``.npz`` at ``path`` (atomically); ``load`` reads it.

        ``metadata`` is any JSON-able mapping kept alongside (the command line keeps the
        column names there); a loaded model has it as ``metadata_``.
        """
        check_is_fitted(self)
        arrays = {f"coef/{i}": W for i, W in enumerate(self.coefs_)}
        arrays.update({f"intercept/{i}": b for i, b in enumerate(self.intercepts_)})
        if self.mean_ is not None and self.scale_ is not None:  # set together
            arrays["mean"], arrays["scale"] = self.mean_, self.scale_
        params = self.get_params()
        params["learning_rate_schedule"] = None  # a function: not data; refit sets it again
        if not isinstance(params["random_state"], (int, type(None))):
            params["random_state"] = None
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "gradcore_version": __version__,
            "estimator": type(self).__name__,
            "params": params,
            "architecture": {
                "layer_sizes": [self.n_features_in_, *(b.shape[0] for b in self.intercepts_)],
                "activation": self.activation,
                "output": self.out_activation_,
            },
            "n_iter": self.n_iter_,
            "loss_curve": self.loss_curve_,
            "metadata": dict(metadata or {}),
        }
        if isinstance(self, ClassifierMixin):
            arrays["classes"] = (
                self.classes_.astype(str) if self.classes_.dtype == object else self.classes_
            )
            meta["classes_dtype"] = "object" if self.classes_.dtype == object else None
        arrays["meta"] = np.array(json.dumps(meta, default=_json_scalar))
        return train.write_npz(path, arrays)


class _Stopping(Callback):
    """scikit-learn's bookkeeping and stopping rule after each epoch: ``n_iter_``, ``t_``,
    ``loss_curve_`` (the mean of the epoch's minibatch losses, which the steps returned: no
    extra pass over the data), and ``n_iter_no_change`` epochs without an improvement of the
    training loss by ``tol`` (or, with ``early_stopping``, of the validation score) stop it."""

    def __init__(self) -> None:
        self.estimator: _MLP | None = None  # the estimator being fitted
        self.validation: tuple[Any, Any] | None = None
        self.best: list[dict[str, Any]] | None = None  # early stopping: the best params

    def start(self, estimator: _MLP, incremental: bool, validation: tuple | None) -> None:
        """Before a ``fit`` or ``partial_fit``: scikit-learn counts ``n_iter_`` per ``fit``."""
        if not incremental:
            estimator.n_iter_ = 0
        self.estimator, self.validation, self.best = estimator, validation, None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        est = self.estimator
        assert est is not None, "start() names the estimator before fit"
        est.n_iter_ += 1
        est.t_ += self.trainer.rows
        est.loss_curve_.append(logs["loss"])
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {est.loss_curve_[-1]:.8f}")
        if self.validation is not None:
            params = self.trainer.params
            X_val, y_val = self.validation
            score = est._validation_score(nn.mlp(params, X_val, est._act()), y_val)
            scores, best = est.validation_scores_, est.best_validation_score_
            assert scores is not None and best is not None  # kept with early_stopping
            scores.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            improved = score >= best + est.tol
            if score > best:
                est.best_validation_score_ = score
                self.best = [{key: array(a) for key, a in layer.items()} for layer in params]
        else:
            best_loss = est.best_loss_
            assert best_loss is not None  # kept without early_stopping
            improved = est.loss_curve_[-1] <= best_loss - est.tol
            est.best_loss_ = min(best_loss, est.loss_curve_[-1])
        est._no_improvement_count = 0 if improved else est._no_improvement_count + 1
        optimizer = self.trainer.optimizer
        schedule = est.solver == "sgd" and est.learning_rate_schedule is None
        if schedule and est.learning_rate == "invscaling":  # scikit-learn's, once per epoch
            optimizer.learning_rate = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est._no_improvement_count > est.n_iter_no_change:
            if schedule and est.learning_rate == "adaptive" and optimizer.learning_rate > 1e-6:
                optimizer.learning_rate /= 5.0  # scikit-learn divides, then goes on
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"Setting learning rate to {optimizer.learning_rate:f}")
                return
            if est.verbose:
                watched = "Validation score" if self.validation is not None else "Training loss"
                print(
                    f"{watched} did not improve more than tol={est.tol:f} for "
                    f"{est.n_iter_no_change} consecutive epochs. Stopping."
                )
            self.trainer.stop_training = True


class _ScikitLearnAdam(optim.Adam):
    """scikit-learn's Adam (``AdamOptimizer`` in ``neural_network/_stochastic_optimizers.py``):
    its epsilon is added to sqrt(v) before the bias correction, as in Keras, where
    ``gradcore.optim.Adam`` adds it after, as PyTorch does::

        theta <- theta - lr sqrt(1 - rho_2^t) / (1 - rho_1^t) * s / (sqrt(r) + delta)

    The generic update on every device (the fused kernels do PyTorch's).
    """

    _kernels = KernelTable("scikit_learn_adam")

    def _apply(self, i, param, grad, lr, f, work, writable) -> None:  # noqa: D102
        t = self.iterations
        s, r = self._arrays["first_moment"][i], self._arrays["second_moment"][i]
        s *= self.beta_1
        s += f.multiply(grad, 1.0 - self.beta_1, out=work)
        r *= self.beta_2
        f.multiply(grad, grad, out=work)
        work *= 1.0 - self.beta_2
        r += work
        f.sqrt(r, out=work)
        work += self.epsilon
        f.divide(s, work, out=work)
        work *= -lr * math.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        param += work


class MLPClassifier(ClassifierMixin, _MLP):
    """scikit-learn's ``MLPClassifier`` trained by gradcore, on the CPU or a GPU (``device``).

    Two classes: one sigmoid output and binary cross-entropy (the network of Geena Kim's
    lecture notes); more: softmax outputs and cross-entropy. The parameters are scikit-learn's
    (its defaults, ``solver="adam"``), plus ``device`` ("cpu", "cuda", "auto"),
    ``learning_rate_schedule`` (a gradcore schedule, which replaces ``learning_rate_init``;
    ``save`` leaves it out, and the estimator pickles only if the schedule does) and
    ``standardize`` (centre and scale the features with the training statistics, kept in the
    model and in its saved file).
    """

    classes_: np.ndarray  # set by fit and partial_fit

    @available_if(_MLP._check_solver)
    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over ``X, y``, continuing the weights and the optimizer's momentum (which
        ``fit`` with ``warm_start`` does not: it starts a fresh optimizer, as scikit-learn).

        The first call needs ``classes``, every label there will ever be, as in scikit-learn.
        """
        if not hasattr(self, "coefs_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_``."""
        logits = self._forward(X)  # a host array of our own: the softmax is written into it
        if self.n_outputs_ == 1:
            p = expit(logits[:, 0], out=logits[:, 0])  # scikit-learn's logistic, in place
            return np.vstack([1.0 - p, p]).T  # as scikit-learn's: a view, no second copy
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits, out=logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        return probabilities

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each row."""
        logits = self._forward(X)
        if self.n_outputs_ == 1:
            return self.classes_[(logits[:, 0] > 0.0).astype(np.intp)]
        return self.classes_[np.argmax(logits, axis=1)]

    def _y_checks(self) -> dict[str, Any]:
        return {}

    def _n_outputs(self, targets: np.ndarray) -> int:
        return 1 if len(self.classes_) == 2 else len(self.classes_)

    def _out_activation(self, outputs: int) -> str:
        return "logistic" if outputs == 1 else "softmax"

    def _targets(self, y: np.ndarray, first: bool, classes: Any, dtype: Any) -> np.ndarray:
        """Targets in the data's dtype: a column of 0/1 for the sigmoid output, one-hot rows
        for softmax."""
        check_classification_targets(y)
        if (
            not first
            and classes is not None
            and not np.array_equal(np.unique(classes), self.classes_)
        ):
            raise ValueError(f"classes={classes!r} is not the same as on the first call")
        if first:
            self.classes_ = np.unique(y if classes is None else classes)
            if len(self.classes_) < 2:
                raise ValueError(
                    f"{type(self).__name__} needs at least two classes; y holds one class: "
                    f"{self.classes_[:1].tolist()[0]!r}"
                )
        unseen = np.setdiff1d(y, self.classes_)
        if unseen.size:
            raise ValueError(f"y holds classes {unseen.tolist()} not in classes_ {self.classes_}")
        index = np.searchsorted(self.classes_, y)
        if len(self.classes_) == 2:  # one column, as the output: no reshape in each step
            return index.astype(dtype).reshape(-1, 1)
        # one-hot rows, as scikit-learn's LabelBinarizer: no encoding in each step
        return (index[:, None] == np.arange(len(self.classes_))).astype(dtype)

    @staticmethod
    def _data_loss(outputs: int, logits: Any, targets: Any) -> Any:
        if outputs == 1:
            return nn.binary_cross_entropy_with_logits(logits, targets)
        return nn.softmax_cross_entropy(logits, targets)

    def _validation_score(self, logits: Any, targets: Any) -> float:
        return nn.accuracy(logits, targets)


class MLPRegressor(RegressorMixin, _MLP):
    """scikit-learn's ``MLPRegressor`` trained by gradcore: linear outputs, mean squared error.

    The parameters are those of ``MLPClassifier``. ``y`` may have several columns (one output
    each). The loss is scikit-learn's: half the mean squared error.
    """

    @available_if(_MLP._check_solver)
    def partial_fit(self, X: Any, y: Any) -> MLPRegressor:
        """One epoch over ``X, y``, continuing the weights and the optimizer's momentum."""
        return self._fit(X, y, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions: shape ``(n,)`` for one output, ``(n, outputs)`` for several."""
        out = self._forward(X)
        return out[:, 0] if self.n_outputs_ == 1 else out

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _y_checks(self) -> dict[str, Any]:
        return {"multi_output": True, "y_numeric": True}

    def _n_outputs(self, targets: np.ndarray) -> int:
        return targets.shape[1]

    def _out_activation(self, outputs: int) -> str:
        return "identity"

    def _targets(self, y: np.ndarray, first: bool, classes: Any, dtype: Any) -> np.ndarray:
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if not first and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} columns; the model has {self.n_outputs_} outputs")
        return y.astype(dtype)

    @staticmethod
    def _data_loss(outputs: int, predictions: Any, targets: Any) -> Any:
        """scikit-learn's ``squared_loss``: half the mean over every entry. Its gradient is not
        that loss's but ``(outputs - targets) / rows``, the gradient of the sum over outputs;
        so the loss is scaled by the number of outputs and the excess taken off as a constant:
        the value is scikit-learn's, and so is the gradient."""
        half = nn.mse(predictions, targets) * 0.5
        if outputs == 1:
            return half
        return half * float(outputs) - stop_gradient(half) * float(outputs - 1)

    def _validation_score(self, outputs: Any, targets: np.ndarray) -> float:
        return float(r2_score(to_numpy(targets), to_numpy(outputs)))


# ---------------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike, device: str | None = None) -> MLPClassifier | MLPRegressor:
    """The model ``save`` wrote to ``path``, fitted and ready to predict.

    ``device`` replaces the saved one (a model trained on a GPU can score on a CPU machine).

    Raises ``ModelFileError`` (a ``ValueError``) naming the path for a file that is not a
    gradcore model, is damaged, was written by a newer gradcore in a newer format, or holds
    NaN or infinite weights (naming the array).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
        meta = json.loads(str(arrays.pop("meta")))
    except FileNotFoundError:  # the caller's mistake, not a damaged model: say it as Python does
        raise
    except (OSError, ValueError, EOFError, KeyError, AttributeError, zipfile.BadZipFile) as error:
        raise ModelFileError(f"{path}: not a readable gradcore model file ({error})") from error
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a gradcore model file (no {FORMAT!r} metadata)")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: damaged gradcore model file (format_version {version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model format version {version} is newer than this gradcore "
            f"({__version__}) reads (up to {FORMAT_VERSION}); upgrade gradcore to load it"
        )
    for name, values in arrays.items():
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise ModelFileError(
                f"{path}: {name} holds {bad} NaN or infinite value(s) of {values.size}; a model "
                "whose training diverged cannot predict: train it again"
            )
    try:
        model = _restore(meta, arrays)
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: damaged gradcore model file ({error!r})") from error
    if device is not None:
        model.set_params(device=device)
    return model


def _restore(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> MLPClassifier | MLPRegressor:
    cls = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor}[meta["estimator"]]
    params = dict(meta["params"])
    if isinstance(params["hidden_layer_sizes"], list):
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    model = cls(**params)
    sizes = meta["architecture"]["layer_sizes"]
    model.coefs_ = [arrays[f"coef/{i}"] for i in range(len(sizes) - 1)]
    model.intercepts_ = [arrays[f"intercept/{i}"] for i in range(len(sizes) - 1)]
    for i, (W, b) in enumerate(zip(model.coefs_, model.intercepts_)):
        if W.shape != (sizes[i], sizes[i + 1]) or b.shape != (sizes[i + 1],):
            raise ValueError(f"layer {i} has shapes {W.shape} and {b.shape}; sizes say {sizes}")
    model.n_features_in_, model.n_outputs_ = sizes[0], sizes[-1]
    model.out_activation_ = meta["architecture"]["output"]
    model.n_iter_, model.loss_curve_ = meta["n_iter"], list(meta["loss_curve"])
    model.mean_, model.scale_ = arrays.get("mean"), arrays.get("scale")
    model.metadata_ = meta["metadata"]
    model.t_ = 0
    model._reset_counters()
    if cls is MLPClassifier:
        classes = arrays["classes"]
        model.classes_ = classes.astype(object) if meta["classes_dtype"] == "object" else classes
    return model


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)


def _json_scalar(value: Any) -> Any:
    """NumPy scalars in the parameters (``hidden_layer_sizes=(np.int64(8),)``) as numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} {value!r} in a model file")
