"""Layer 5: scikit-learn estimators built on gradcore's trainer: MLPClassifier, MLPRegressor.

They take scikit-learn's parameter names and defaults (those of its ``solver="sgd"``), so that
code moves over by changing the import, and add ``device="cuda"``. Training is
``gradcore.train.fit``, one epoch per call, so that scikit-learn's stopping rules (training loss
or, with ``early_stopping``, a validation score) are applied between epochs as it applies them.

``est.save(path)`` and ``load(path)`` keep a fitted model in one ``.npz`` that holds only arrays
and JSON (read with ``allow_pickle=False``, so loading cannot run code); the estimators also
pickle, as scikit-learn requires.
"""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and scikit-learn's

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from gradcore import nn, ops, optim, train
from gradcore.devices import array, available_devices, to_numpy
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


def _identity(x: Any) -> Any:
    return x


ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "identity": _identity,
    "logistic": ops.sigmoid,
    "sigmoid": ops.sigmoid,  # the lecture notes' name for scikit-learn's "logistic"
    "tanh": ops.tanh,
    "relu": ops.relu,
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

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] | int = (100,),
        activation: str = "relu",
        *,
        solver: str = "sgd",
        alpha: float = 0.0001,
        batch_size: int | str = "auto",
        learning_rate_init: float = 0.001,
        learning_rate_schedule: Callable[[int], float] | None = None,
        max_iter: int = 200,
        shuffle: bool = True,
        random_state: int | np.random.RandomState | None = None,
        tol: float = 1e-4,
        verbose: bool = False,
        momentum: float = 0.9,
        nesterovs_momentum: bool = True,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        standardize: bool = False,
        device: str = "cpu",
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.learning_rate_schedule = learning_rate_schedule
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.device = device

    # -----------------------------------------------------------------------------------------
    # checks

    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if isinstance(sizes, (int, np.integer)) else list(sizes)
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
        if self.solver != "sgd":
            raise ValueError(
                f"{name}: gradcore trains with solver='sgd' (momentum SGD), got {self.solver!r}"
            )
        bad = [
            ("alpha", self.alpha, self.alpha >= 0, ">= 0"),
            ("learning_rate_init", self.learning_rate_init, self.learning_rate_init > 0, "> 0"),
            ("max_iter", self.max_iter, _positive_int(self.max_iter), "a positive integer"),
            ("tol", self.tol, self.tol >= 0, ">= 0"),
            ("momentum", self.momentum, 0 <= self.momentum < 1, "in [0, 1)"),
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
        """Train from scratch for up to ``max_iter`` epochs, stopping as scikit-learn does."""
        return self._fit(X, y, incremental=False)

    def _fit(self, X: Any, y: Any, incremental: bool, classes: Any = None) -> _MLP:
        self._check_params()
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not (incremental and hasattr(self, "coefs_"))
        X, y = validate_data(
            self, X, y, reset=first, dtype=(np.float64, np.float32), **self._y_checks()
        )
        targets = self._targets(y, first, classes)
        device = resolve_device(self.device)
        if first:
            self._start(X, self._n_outputs(targets))
        X = self._standardized(X)

        X_val = y_val = None
        if self.early_stopping:
            stratify = targets if is_classifier(self) else None
            X, X_val, targets, y_val = train_test_split(
                X,
                targets,
                test_size=self.validation_fraction,
                random_state=self._rng,
                stratify=stratify,
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' or the "
                    "size of your dataset."
                )
            X_val = array(X_val, dtype="float32", device=device)
            y_val = array(y_val, device=device)
        X = array(X, dtype="float32", device=device)
        y_device = array(targets, device=device)

        n = X.shape[0]
        batch_size = min(200, n) if self.batch_size == "auto" else self.batch_size
        if batch_size > n:
            warnings.warn(
                f"batch_size {batch_size} is larger than the {n} training rows; it is clipped "
                f"to {n}",
                stacklevel=3,
            )
            batch_size = n

        optimizer = optim.SGD(
            self.learning_rate_schedule or self.learning_rate_init,
            momentum=self.momentum,
            nesterov=self.nesterovs_momentum,
        )
        if incremental and getattr(self, "_optimizer_state", None) is not None:
            optimizer.load_state_dict(self._optimizer_state)
        params = self._device_params(device)
        loss = self._loss()

        best = None
        for _ in range(1 if incremental else self.max_iter):
            history = train.fit(
                loss,
                params,
                X,
                y_device,
                optimizer=optimizer,
                epochs=1,
                batch_size=batch_size,
                device=device,
                shuffle=self.shuffle,
                seed=int(self._rng.randint(np.iinfo(np.int32).max)),
                progress=False,
            )
            self.n_iter_ += 1
            self.loss_curve_.append(history.loss[0])
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_curve_[-1]:.8f}")
            if X_val is not None:
                score = self._validation_score(nn.mlp(params, X_val, self._act()), y_val)
                self.validation_scores_.append(score)
                if self.verbose:
                    print(f"Validation score: {score:f}")
                improved = score >= self.best_validation_score_ + self.tol
                if score > self.best_validation_score_:
                    self.best_validation_score_ = score
                    best = [{key: array(a) for key, a in layer.items()} for layer in params]
            else:
                improved = self.loss_curve_[-1] <= self.best_loss_ - self.tol
                self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
            self._no_improvement_count = 0 if improved else self._no_improvement_count + 1
            if self._no_improvement_count > self.n_iter_no_change:
                if self.verbose:
                    watched = "Validation score" if X_val is not None else "Training loss"
                    print(
                        f"{watched} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs. Stopping."
                    )
                break
        else:
            if not incremental:
                warnings.warn(
                    f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and "
                    "the optimization hasn't converged yet.",
                    ConvergenceWarning,
                    stacklevel=3,
                )
        final = best if best is not None else params
        self.coefs_ = [to_numpy(layer["W"]) for layer in final]
        self.intercepts_ = [to_numpy(layer["b"]) for layer in final]
        self._optimizer_state = to_numpy(optimizer.state_dict())
        return self

    def _start(self, X: np.ndarray, outputs: int) -> None:
        """Fresh weights, statistics and counters for a first ``fit``/``partial_fit``."""
        self._reset_counters()
        sizes = [X.shape[1], *self._hidden_sizes(), outputs]
        layers = nn.init_mlp(
            sizes,
            seed=int(self._rng.randint(np.iinfo(np.int32).max)),
            init="he" if self.activation == "relu" else "glorot",
        )
        self.coefs_ = [to_numpy(layer["W"]) for layer in layers]
        self.intercepts_ = [to_numpy(layer["b"]) for layer in layers]
        self.n_outputs_ = outputs
        self.out_activation_ = self._out_activation(outputs)
        self.n_iter_ = 0
        self.loss_curve_: list[float] = []
        if self.standardize:
            scale = X.std(axis=0)
            scale[scale == 0] = 1.0  # a constant feature is centred, not divided by zero
            self.mean_, self.scale_ = X.mean(axis=0), scale
        else:
            self.mean_ = self.scale_ = None

    def _reset_counters(self) -> None:
        """What stopping and shuffling track; a loaded model starts them afresh."""
        self._rng = check_random_state(self.random_state)
        self._no_improvement_count = 0
        self._optimizer_state = None
        if self.early_stopping:
            self.validation_scores_: list[float] | None = []
            self.best_validation_score_: float | None = -np.inf
            self.best_loss_: float | None = None
        else:
            self.validation_scores_ = self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _loss(self) -> Callable[[Any, Any, Any], Any]:
        """The data loss plus scikit-learn's L2 term, ``alpha / 2 * sum(W**2) / batch_rows``.

        That is scikit-learn's ``alpha``: in the loss, over the weights but not the biases,
        divided by the rows of each minibatch, so ``loss_curve_`` includes it as there.
        """
        activation, alpha, data_loss = self._act(), float(self.alpha), self._data_loss

        def loss(params: Any, xb: Any, yb: Any) -> Any:
            value = data_loss(nn.mlp(params, xb, activation), yb)
            if alpha:
                squares = sum(ops.sum(ops.square(layer["W"])) for layer in params)
                value = value + squares * (0.5 * alpha / xb.shape[0])
            return value

        return loss

    # -----------------------------------------------------------------------------------------
    # the fitted network

    def _act(self) -> Callable[[Any], Any]:
        return ACTIVATIONS[self.activation]

    def _device_params(self, device: str, dtype: str = "float32") -> list[dict[str, Any]]:
        return [
            {"W": array(W, dtype, device), "b": array(b, dtype, device)}
            for W, b in zip(self.coefs_, self.intercepts_)
        ]

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        return X if self.mean_ is None else (X - self.mean_) / self.scale_

    def _forward(self, X: Any) -> np.ndarray:
        """The last layer's outputs for ``X``, computed on the device, as a host array.

        In float64: float32 matrix products round differently for different numbers of rows,
        so a row's prediction would depend on which other rows were scored with it.
        """
        check_is_fitted(self)
        X = self._standardized(validate_data(self, X, reset=False, dtype=np.float64))
        device = resolve_device(self.device)
        params, activation = self._device_params(device, "float64"), self._act()
        chunks = [
            to_numpy(nn.mlp(params, array(X[lo : lo + _PREDICT_CHUNK], device=device), activation))
            for lo in range(0, X.shape[0], _PREDICT_CHUNK)
        ]
        return np.concatenate(chunks)

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
        if self.mean_ is not None:
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


class MLPClassifier(ClassifierMixin, _MLP):
    """scikit-learn's ``MLPClassifier`` trained by gradcore, on the CPU or a GPU (``device``).

    Two classes: one sigmoid output and binary cross-entropy (the network of Geena Kim's
    lecture notes); more: softmax outputs and cross-entropy. The parameters are scikit-learn's
    (its ``solver="sgd"`` defaults), plus ``device`` ("cpu", "cuda", "auto"),
    ``learning_rate_schedule`` (a gradcore schedule, which replaces ``learning_rate_init``;
    ``save`` leaves it out, and the estimator pickles only if the schedule does) and
    ``standardize`` (centre and scale the features with the training statistics, kept in the
    model and in its saved file).
    """

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> MLPClassifier:
        """One epoch over ``X, y``, continuing the weights and the optimizer's momentum.

        The first call needs ``classes``, every label there will ever be, as in scikit-learn.
        """
        if not hasattr(self, "coefs_") and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, one column per entry of ``classes_``."""
        logits = self._forward(X)
        if self.n_outputs_ == 1:
            p = ops.sigmoid(logits)
            return np.hstack([1.0 - p, p])
        return ops.softmax(logits, axis=1)

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

    def _targets(self, y: np.ndarray, first: bool, classes: Any) -> np.ndarray:
        """Class indices: float 0/1 for the sigmoid output, integers for softmax."""
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
        return index.astype(np.float32) if len(self.classes_) == 2 else index.astype(np.int64)

    def _data_loss(self, logits: Any, targets: Any) -> Any:
        if self.n_outputs_ == 1:
            return nn.binary_cross_entropy_with_logits(logits, targets)
        return nn.softmax_cross_entropy(logits, targets)

    def _validation_score(self, logits: Any, targets: Any) -> float:
        return nn.accuracy(logits, targets)


class MLPRegressor(RegressorMixin, _MLP):
    """scikit-learn's ``MLPRegressor`` trained by gradcore: linear outputs, mean squared error.

    The parameters are those of ``MLPClassifier``. ``y`` may have several columns (one output
    each). The loss is the mean squared error itself, where scikit-learn uses half of it, so
    ``loss_curve_`` reads twice scikit-learn's for the same fit.
    """

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

    def _targets(self, y: np.ndarray, first: bool, classes: Any) -> np.ndarray:
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if not first and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} columns; the model has {self.n_outputs_} outputs")
        return y.astype(np.float32)

    def _data_loss(self, outputs: Any, targets: Any) -> Any:
        return nn.mse(outputs, targets)

    def _validation_score(self, outputs: Any, targets: np.ndarray) -> float:
        return float(r2_score(to_numpy(targets), to_numpy(outputs)))


# ---------------------------------------------------------------------------------------------
# loading


def load(path: str | os.PathLike, device: str | None = None) -> MLPClassifier | MLPRegressor:
    """The model ``save`` wrote to ``path``, fitted and ready to predict.

    ``device`` replaces the saved one (a model trained on a GPU can score on a CPU machine).

    Raises ``ModelFileError`` (a ``ValueError``) naming the path for a file that is not a
    gradcore model, is damaged, or was written by a newer gradcore in a newer format.
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
    model._reset_counters()
    if cls is MLPClassifier:
        classes = arrays["classes"]
        model.classes_ = classes.astype(object) if meta["classes_dtype"] == "object" else classes
    return model


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _json_scalar(value: Any) -> Any:
    """NumPy scalars in the parameters (``hidden_layer_sizes=(np.int64(8),)``) as numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot save {type(value).__name__} {value!r} in a model file")
