"""MLPClassifier and MLPRegressor: scikit-learn's own checks, its meanings, saving, predicting."""

# ruff: noqa: N803, N806 - X is a data matrix

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from conftest import run_gradcore
from sklearn.base import clone
from sklearn.datasets import make_blobs, make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier as SKMLPClassifier
from sklearn.neural_network import MLPRegressor as SKMLPRegressor
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from sklearn.utils.validation import validate_data

import gradcore as gc
from gradcore import datafiles
from gradcore.estimators import MLPClassifier, MLPRegressor, ModelFileError, load
from gradcore.jit import Jitted

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@parametrize_with_checks([MLPClassifier(), MLPRegressor()])
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def blobs(classes: int, n: int = 120):
    X, y = make_blobs(n, centers=classes, n_features=4, random_state=0)
    return X, y


def test_reachable_from_gradcore_without_importing_scikit_learn_first():
    code = (
        "import sys, gradcore as gc\n"
        "assert 'sklearn' not in sys.modules, 'import gradcore imported scikit-learn'\n"
        "from gradcore.estimators import MLPClassifier, MLPRegressor\n"
        "assert gc.MLPClassifier is MLPClassifier and gc.MLPRegressor is MLPRegressor\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_binary_is_one_sigmoid_output_and_multiclass_softmax():
    X, y = blobs(2)
    binary = MLPClassifier((8,), max_iter=20, random_state=0).fit(X, y)
    assert binary.coefs_[-1].shape == (8, 1) and binary.out_activation_ == "logistic"
    X3, y3 = blobs(3)
    multi = MLPClassifier((8,), max_iter=20, random_state=0).fit(X3, y3)
    assert multi.coefs_[-1].shape == (8, 3) and multi.out_activation_ == "softmax"
    for model, data in ((binary, X), (multi, X3)):
        proba = model.predict_proba(data)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0)
        np.testing.assert_array_equal(model.predict(data), model.classes_[proba.argmax(axis=1)])
        assert all(isinstance(c, np.ndarray) for c in model.coefs_ + model.intercepts_)


def test_alpha_is_scikit_learns_l2_term_in_the_loss():
    """loss += alpha / 2 * sum(W**2) / batch_rows, over the weights only, in loss_curve_."""
    X, y = blobs(3)
    kwargs = dict(hidden_layer_sizes=(6,), max_iter=1, batch_size=len(X), shuffle=False)
    kwargs.update(learning_rate_init=1e-12, random_state=0)  # the weights barely move
    plain = MLPClassifier(alpha=0.0, **kwargs).fit(X, y)
    decayed = MLPClassifier(alpha=0.5, **kwargs).fit(X, y)
    squares = sum(float(np.sum(W.astype(np.float64) ** 2)) for W in decayed.coefs_)
    penalty = decayed.loss_curve_[0] - plain.loss_curve_[0]
    np.testing.assert_allclose(penalty, 0.5 * 0.5 * squares / len(X), rtol=1e-4)


def test_sigmoid_is_an_alias_of_logistic():
    X, y = blobs(2)
    a = MLPClassifier((5,), activation="sigmoid", max_iter=5, random_state=1).fit(X, y)
    b = MLPClassifier((5,), activation="logistic", max_iter=5, random_state=1).fit(X, y)
    np.testing.assert_array_equal(a.coefs_[0], b.coefs_[0])


def test_partial_fit_continues_weights_and_momentum_as_fit_does():
    X, y = blobs(3)
    whole = MLPClassifier((7,), max_iter=3, n_iter_no_change=99, random_state=0).fit(X, y)
    parts = MLPClassifier((7,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        parts.partial_fit(X, y)
    for _ in range(3):
        parts.partial_fit(X, y, classes=[0, 1, 2])
    assert parts.n_iter_ == 3 and len(parts.loss_curve_) == 3
    for a, b in zip(whole.coefs_ + whole.intercepts_, parts.coefs_ + parts.intercepts_):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="early_stopping"):
        MLPRegressor(early_stopping=True).partial_fit(X, y.astype(float))


def test_stopping_rules_are_scikit_learns():
    X, y = blobs(2, n=300)
    stopped = MLPClassifier((8,), learning_rate_init=0.1, random_state=0).fit(X, y)
    assert stopped.n_iter_ < stopped.max_iter  # the training loss stopped improving by tol
    assert np.isfinite(stopped.best_loss_) and stopped.validation_scores_ is None
    early = MLPClassifier(
        (8,), learning_rate_init=0.1, early_stopping=True, n_iter_no_change=3, random_state=0
    ).fit(X, y)
    assert early.n_iter_ == len(early.validation_scores_) < early.max_iter
    assert early.best_validation_score_ == max(early.validation_scores_)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        MLPClassifier((4,), max_iter=2, random_state=0).fit(X, y)


def test_learning_rate_schedule_and_bad_parameters():
    X, y = blobs(2)
    schedule = gc.optim.linear_decay(0.1, 0.01, 20)
    model = MLPClassifier((4,), learning_rate_schedule=schedule, max_iter=10, random_state=0)
    assert model.fit(X, y).score(X, y) > 0.9
    for params, message in [
        ({"activation": "softsign"}, "activation must be one of"),
        (
            {"solver": "newton"},
            r"The 'solver' parameter of MLPClassifier must be a str among "
            r"\{'adam', 'lbfgs', 'sgd'\}. Got 'newton' instead.",
        ),
        (
            {"learning_rate": "optimal"},
            r"The 'learning_rate' parameter of MLPClassifier must be "
            r"a str among \{'adaptive', 'constant', 'invscaling'\}. Got 'optimal' instead.",
        ),
        ({"beta_2": 1.0}, r"beta_2 must be in \[0, 1\)"),
        ({"epsilon": 0.0}, "epsilon must be > 0"),
        ({"hidden_layer_sizes": (4, 0)}, "hidden_layer_sizes must be positive"),
        ({"batch_size": 0}, "batch_size must be 'auto' or a positive integer"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            MLPClassifier(**params).fit(X, y)


def test_regressor_one_and_several_outputs_with_standardize():
    X, y = make_regression(200, 5, n_targets=2, noise=0.1, random_state=0)
    X = X * 100 + 50  # far from standardised: standardize=True must take care of it
    model = MLPRegressor((16,), learning_rate_init=0.01, max_iter=300, standardize=True)
    model.set_params(random_state=0).fit(X, y / 100)
    assert model.predict(X).shape == (200, 2) and model.score(X, y / 100) > 0.9
    np.testing.assert_allclose(model.mean_, X.mean(axis=0))
    single = MLPRegressor((4,), max_iter=5, random_state=0, early_stopping=True)
    single.fit(X[:, :2] / 100, y[:, 0] / 100)
    assert single.predict(X[:3, :2]).shape == (3,) and len(single.validation_scores_) == 5


# ---------------------------------------------------------------------------------------------
# saving and loading


@pytest.mark.parametrize("labels", ["int", "str", "object"])
def test_save_load_roundtrip_gives_the_same_predictions(tmp_path, labels):
    X, y = blobs(3)
    y = {"int": y, "str": np.array(["a", "b", "c"])[y]}.get(labels)
    y = np.array(["a", "b", "c"], dtype=object)[blobs(3)[1]] if labels == "object" else y
    model = MLPClassifier((6,), max_iter=10, random_state=0, standardize=True).fit(X, y)
    path = model.save(tmp_path / "model.npz", metadata={"note": "kept"})
    loaded = load(path)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.classes_.dtype == model.classes_.dtype
    assert loaded.get_params() == model.get_params()
    assert loaded.metadata_ == {"note": "kept"} and loaded.loss_curve_ == model.loss_curve_
    loaded.partial_fit(X, y)  # a loaded model goes on training
    assert loaded.n_iter_ == model.n_iter_ + 1
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["format_version"] == 1 and meta["gradcore_version"] == gc.__version__
    assert meta["architecture"] == {"layer_sizes": [4, 6, 3], "activation": "relu",
                                    "output": "softmax"}  # fmt: skip


def test_regressor_saves_and_estimators_still_pickle(tmp_path):
    X, y = make_regression(50, 3, n_targets=2, random_state=0)
    model = MLPRegressor((5,), max_iter=5, random_state=0).fit(X, y)
    np.testing.assert_array_equal(load(model.save(tmp_path / "r.npz")).predict(X), model.predict(X))
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(model)).predict(X), model.predict(X))
    assert load(tmp_path / "r.npz", device="cpu").device == "cpu"


def write_model(tmp_path, meta_change=None, drop=None):
    X, y = blobs(2)
    path = MLPClassifier((3,), max_iter=2, random_state=0).fit(X, y).save(tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update(meta_change or {})
    arrays["meta"] = np.array(json.dumps(meta))
    arrays.pop(drop, None)
    np.savez(path, **arrays)
    return path


def test_a_newer_format_is_refused_naming_the_path(tmp_path):
    path = write_model(tmp_path, {"format_version": 2})
    with pytest.raises(ModelFileError, match=f"{path}: model format version 2 is newer"):
        load(path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage", "not a readable gradcore model file"),
        ("truncated", "not a readable gradcore model file"),
        ("no meta", "not a readable gradcore model file"),
        ("not ours", "not a gradcore model file"),
        ("missing layer", "damaged gradcore model file"),
        ("wrong shape", "damaged gradcore model file"),
    ],
)
def test_a_damaged_file_is_refused_naming_the_path(tmp_path, damage, message):
    path = write_model(tmp_path)
    if damage == "garbage":
        path.write_bytes(b"this is not a model")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "no meta":
        write_model(tmp_path, drop="meta")
    elif damage == "not ours":
        write_model(tmp_path, {"format": "something-else"})
    elif damage == "missing layer":
        write_model(tmp_path, drop="coef/1")
    else:
        write_model(tmp_path, {"architecture": {"layer_sizes": [4, 5, 1], "activation": "relu",
                                                "output": "logistic"}})  # fmt: skip
    with pytest.raises(ModelFileError, match=message) as error:
        load(path)
    assert str(error.value).startswith(str(path))
    assert isinstance(error.value, ValueError)


def test_a_missing_model_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load(tmp_path / "nothing.npz")
    assert zipfile  # the model file is a zip archive (an .npz)


# ---------------------------------------------------------------------------------------------
# training on a CSV and scoring it in a fresh process


@pytest.fixture(scope="module")
def species_csv(tmp_path_factory):
    """2,000 rows, 10 features (columns f0..f9), 3 string classes in the last column."""
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(2000, 10))
    y = np.array(["setosa", "versicolor", "virginica"])[(Z @ rng.normal(size=(10, 3))).argmax(1)]
    X = Z * [1, 2, 3, 1, 1, 5, 1, 1, 1, 10] + 3  # scales and offsets: standardize has work
    path = tmp_path_factory.mktemp("data") / "species.csv"
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([f"f{i}" for i in range(10)] + ["species"])
        writer.writerows([*(f"{v:.6f}" for v in row), label] for row, label in zip(X, y))
    return path


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(text.splitlines()))


def test_csv_train_save_and_predict_in_a_fresh_process(tmp_path, species_csv):
    data = datafiles.read_dataset(species_csv)
    assert data.task == "classification" and data.features == [f"f{i}" for i in range(10)]
    model = MLPClassifier((16,), activation="logistic", learning_rate_init=0.1, max_iter=15)
    model.set_params(batch_size=32, random_state=0, standardize=True).fit(data.X, data.y)
    assert model.score(data.X, data.y) > 0.9
    path = model.save(tmp_path / "species.npz", metadata={"features": data.features})

    result = run_gradcore("predict", str(path), str(species_csv))
    assert result.returncode == 0, result.stderr
    rows = read_csv(result.stdout)
    assert rows[0] == ["prediction"] and len(rows) == 2001
    np.testing.assert_array_equal([r[0] for r in rows[1:]], model.predict(data.X))

    out = tmp_path / "proba.csv"
    result = run_gradcore("predict", str(path), str(species_csv), "--proba", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "2000 predictions written" in result.stdout
    rows = read_csv(out.read_text())
    assert rows[0] == ["setosa", "versicolor", "virginica"]
    dtype = model.coefs_[0].dtype  # numbers are written at the model's precision
    proba = np.array(rows[1:], dtype=dtype)
    np.testing.assert_array_equal(proba, model.predict_proba(data.X).astype(dtype))


def test_cli_trains_on_a_csv_and_predicts_reordered_columns(tmp_path, species_csv):
    result = run_gradcore(
        "train", "--data", str(species_csv), "--hidden", "16,8", "--epochs", "8", "--patience",
        "3", "--history", "history.csv", "--save", "model.npz", "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "1600 training and 400 test examples, 10 features, 3 classes" in result.stdout
    accuracy = float(result.stdout.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.85
    history = read_csv((tmp_path / "history.csv").read_text())
    assert history[0] == ["epoch", "loss", "val_loss", "val_accuracy"] and len(history) >= 2

    model = load(tmp_path / "model.npz")
    assert model.hidden_layer_sizes == (16, 8) and model.mean_ is not None
    assert model.metadata_["target"] == "species"
    data = datafiles.read_dataset(species_csv)
    # the same rows with the columns reversed and the target dropped: picked by name
    reordered = tmp_path / "new.csv"
    with open(reordered, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(data.features[::-1])
        writer.writerows(row[::-1].tolist() for row in data.X[:50])
    result = run_gradcore("predict", "model.npz", "new.csv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = read_csv(result.stdout)
    assert rows[0] == ["species"]
    np.testing.assert_array_equal([r[0] for r in rows[1:]], model.predict(data.X[:50]))


def test_cli_regression_on_an_npz(tmp_path):
    X, y = make_regression(300, 4, noise=1.0, random_state=0)
    np.savez(tmp_path / "r.npz", X=X, y=y)
    result = run_gradcore(
        "train", "--data", "r.npz", "--hidden", "8", "--epochs", "30", "--lr", "0.01",
        "--activation", "tanh", "--save", "m.npz", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "regression on 'y'" in result.stdout and "test R^2" in result.stdout
    result = run_gradcore("predict", "m.npz", "r.npz", "--proba", cwd=tmp_path)
    assert result.returncode == 1 and "is a regression model" in result.stderr
    result = run_gradcore("predict", "m.npz", "r.npz", cwd=tmp_path)
    model = load(tmp_path / "m.npz")
    dtype = model.coefs_[0].dtype  # numbers are written at the model's precision
    predicted = np.array(read_csv(result.stdout)[1:], dtype=dtype)[:, 0]
    np.testing.assert_array_equal(predicted, model.predict(X).astype(dtype))


def test_cli_flags_of_the_other_trainer_are_refused(tmp_path, species_csv):
    result = run_gradcore("train", "--save", "m.npz", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1
    assert "--save works with a data file (--data FILE)" in result.stderr
    result = run_gradcore("train", "--data", str(species_csv), "--checkpoint", "c.npz")
    assert result.returncode == 1 and "--checkpoint works with the bundled" in result.stderr
    result = run_gradcore("train", "--hidden", "16,x")
    assert result.returncode == 2 and "expected positive layer sizes" in result.stderr


@pytest.mark.cuda
def test_cuda_training_matches_the_cpu(tmp_path):
    X, y = blobs(3)
    kwargs = dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0, shuffle=False)
    cpu = MLPClassifier(**kwargs).fit(X, y)
    cuda = MLPClassifier(device="cuda", **kwargs).fit(X, y)
    for a, b in zip(cpu.coefs_, cuda.coefs_):
        assert isinstance(b, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(
        load(cuda.save(tmp_path / "m.npz"), "cpu").predict(X), cuda.predict(X)
    )


# ---------------------------------------------------------------------------------------------
# scikit-learn's arithmetic


def scaled_blobs(classes: int, n: int = 150, dtype=np.float64):
    X, y = make_blobs(n, centers=classes, n_features=4, cluster_std=3.0, random_state=1)
    return StandardScaler().fit_transform(X).astype(dtype), y


def from_weights(model, X, y, coefs, intercepts, max_iter):
    """``model`` trained for ``max_iter`` epochs from the given weights: one epoch sets up every
    fitted attribute, then the weights are replaced and ``warm_start`` goes on from them."""
    model.set_params(max_iter=1, warm_start=False).fit(X, y)
    model.coefs_ = [c.copy() for c in coefs]
    model.intercepts_ = [b.copy() for b in intercepts]
    model.loss_curve_, model.best_loss_, model._no_improvement_count = [], np.inf, 0
    return model.set_params(max_iter=max_iter, warm_start=True).fit(X, y)


def assert_same_fit(ours, theirs, rtol=1e-8):
    for a, b in zip(ours.coefs_ + ours.intercepts_, theirs.coefs_ + theirs.intercepts_):
        assert a.dtype == b.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=rtol, atol=0)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=rtol, atol=0)


@pytest.mark.parametrize("classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize(
    "momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)],
    ids=["plain", "momentum", "nesterov"],
)  # fmt: skip
@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic"])
def test_sgd_follows_scikit_learn_from_the_same_initial_weights(
    classes, momentum, nesterov, activation
):
    X, y = scaled_blobs(classes)
    rng = np.random.default_rng(classes)
    sizes = [4, 7, 1 if classes == 2 else classes]
    coefs = [rng.uniform(-0.7, 0.7, shape) for shape in zip(sizes[:-1], sizes[1:])]
    intercepts = [rng.uniform(-0.7, 0.7, n) for n in sizes[1:]]
    settings = dict(
        hidden_layer_sizes=(7,), activation=activation, solver="sgd", alpha=1e-3,
        batch_size=32, learning_rate_init=0.05, momentum=momentum, nesterovs_momentum=nesterov,
        shuffle=False, tol=0.0, random_state=0,
    )  # fmt: skip
    theirs = from_weights(SKMLPClassifier(**settings), X, y, coefs, intercepts, 30)
    ours = from_weights(MLPClassifier(**settings), X, y, coefs, intercepts, 30)
    assert len(ours.loss_curve_) == ours.n_iter_ == 30
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("classes", [2, 3], ids=["binary", "multiclass"])
@pytest.mark.parametrize(
    "solver_settings",
    [dict(solver="adam"), dict(solver="adam", beta_1=0.5, beta_2=0.9, epsilon=1e-4),
     dict(solver="sgd", learning_rate="invscaling", power_t=0.25),
     dict(solver="sgd", learning_rate="adaptive", tol=0.5, n_iter_no_change=1)],
    ids=["adam", "adam_hyperparameters", "invscaling", "adaptive"],
)  # fmt: skip
def test_each_stochastic_solver_follows_scikit_learn(classes, solver_settings):
    """Adam with scikit-learn's epsilon, and SGD's learning-rate modes (invscaling after each
    epoch; adaptive dividing the rate by 5 when the loss stalls, stopping below 1e-6)."""
    X, y = scaled_blobs(classes)
    rng = np.random.default_rng(classes)
    sizes = [4, 7, 1 if classes == 2 else classes]
    coefs = [rng.uniform(-0.7, 0.7, shape) for shape in zip(sizes[:-1], sizes[1:])]
    intercepts = [rng.uniform(-0.7, 0.7, n) for n in sizes[1:]]
    settings = dict(hidden_layer_sizes=(7,), alpha=1e-3, batch_size=32, learning_rate_init=0.05,
                    shuffle=False, tol=0.0, random_state=0)  # fmt: skip
    settings.update(solver_settings)
    theirs = from_weights(SKMLPClassifier(**settings), X, y, coefs, intercepts, 40)
    ours = from_weights(MLPClassifier(**settings), X, y, coefs, intercepts, 40)
    assert ours.n_iter_ == theirs.n_iter_
    assert_same_fit(ours, theirs)


def test_lbfgs_follows_scikit_learn():
    X, y = scaled_blobs(3)
    settings = dict(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=30, random_state=0)
    ours, theirs = MLPClassifier(**settings).fit(X, y), SKMLPClassifier(**settings).fit(X, y)
    assert ours.n_iter_ == theirs.n_iter_
    # partial_fit is hidden, as scikit-learn's available_if hides it, with the same messages
    assert not hasattr(ours, "partial_fit") and not hasattr(theirs, "partial_fit")
    with pytest.raises(AttributeError) as sk_error:
        theirs.partial_fit(X, y)
    with pytest.raises(AttributeError, match="has no attribute 'partial_fit'") as error:
        ours.partial_fit(X, y)
    assert str(error.value) == str(sk_error.value)
    assert (
        str(error.value.__cause__)
        == str(sk_error.value.__cause__)
        == ("partial_fit is only available for stochastic optimizers. lbfgs is not stochastic.")
    )
    # The regressor too (scikit-learn's means to: its available_if is given the bound method,
    # which is always true, so its lbfgs regressor has a partial_fit that runs lbfgs for up to
    # max_iter iterations).
    assert not hasattr(MLPRegressor(solver="lbfgs"), "partial_fit")
    assert hasattr(MLPRegressor(solver="sgd"), "partial_fit")
    np.testing.assert_allclose(ours.loss_, theirs.loss_, rtol=1e-6)
    for a, b in zip(ours.coefs_, theirs.coefs_):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    X_r, y_r = make_regression(80, 4, noise=1.0, random_state=0)
    regressor = MLPRegressor(**settings).fit(StandardScaler().fit_transform(X_r), y_r / 100)
    assert regressor.score(StandardScaler().fit_transform(X_r), y_r / 100) > 0.9


def test_the_defaults_are_scikit_learns():
    for ours, theirs in ((MLPClassifier(), SKMLPClassifier()), (MLPRegressor(), SKMLPRegressor())):
        mine, theirs_params = ours.get_params(), theirs.get_params()
        shared = set(mine) & set(theirs_params)
        assert {"solver", "learning_rate", "power_t", "beta_1", "beta_2", "epsilon",
                "max_fun", "learning_rate_init", "momentum"} <= shared  # fmt: skip
        assert {k: mine[k] for k in shared} == {k: theirs_params[k] for k in shared}


def test_a_random_state_gives_scikit_learns_init_and_fit():
    X, y = scaled_blobs(3)
    settings = dict(hidden_layer_sizes=(6, 5), solver="sgd", shuffle=False, max_iter=10,
                    learning_rate_init=0.05, random_state=3, tol=0.0)  # fmt: skip
    assert_same_fit(MLPClassifier(**settings).fit(X, y), SKMLPClassifier(**settings).fit(X, y))
    ours, theirs = MLPClassifier(**settings), SKMLPClassifier(**settings)
    for _ in range(3):  # partial_fit keeps the optimizer's momentum
        ours.partial_fit(X, y, classes=[0, 1, 2])
        theirs.partial_fit(X, y, classes=[0, 1, 2])
    assert_same_fit(ours, theirs)
    X_r, y_r = make_regression(120, 4, n_targets=2, noise=1.0, random_state=0)
    X_r, y_r = StandardScaler().fit_transform(X_r), y_r / 100
    regressor = MLPRegressor(**settings).fit(X_r, y_r)
    assert_same_fit(regressor, SKMLPRegressor(**settings).fit(X_r, y_r))


def test_warm_start_keeps_the_weights_and_starts_a_fresh_optimizer():
    X, y = scaled_blobs(2)
    settings = dict(hidden_layer_sizes=(5,), shuffle=False, max_iter=4, random_state=0, tol=0.0)
    warm = MLPClassifier(warm_start=True, **settings).fit(X, y).fit(X, y)
    theirs = SKMLPClassifier(warm_start=True, **settings).fit(X, y).fit(X, y)  # both Adam
    assert_same_fit(warm, theirs)
    assert len(warm.loss_curve_) == 8 and warm.n_iter_ == 4
    cold = MLPClassifier(**settings).fit(X, y)
    refit = clone(cold).fit(X, y).fit(X, y)  # without warm_start a fit starts again
    np.testing.assert_array_equal(refit.coefs_[0], cold.coefs_[0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_data_dtype_is_kept(dtype):
    X, y = scaled_blobs(3, dtype=dtype)
    model = MLPClassifier((5,), max_iter=3, random_state=0).fit(X, y)
    assert all(a.dtype == dtype for a in model.coefs_ + model.intercepts_)
    assert model.predict_proba(X).dtype == np.float64


def test_the_step_is_recorded_once_per_configuration(monkeypatch):
    recordings, passes = [], []
    real_record, real_evaluate = Jitted._record, gc.train._evaluate
    monkeypatch.setattr(
        Jitted, "_record", lambda self, *a: recordings.append(1) or real_record(self, *a)
    )
    monkeypatch.setattr(gc.train, "_evaluate", lambda *a: passes.append(1) or real_evaluate(*a))
    X, y = scaled_blobs(3, n=150)  # batches of 32: 4 full and one of 22
    settings = dict(hidden_layer_sizes=(5,), batch_size=32, random_state=0, alpha=0.0123)
    model = MLPClassifier(max_iter=6, **settings).fit(X, y)
    assert len(recordings) == 2 and model.n_iter_ == 6
    assert passes == []  # no pass over the data: loss_curve_ is the steps' own losses
    for _ in range(3):
        model.partial_fit(X, y)
    model.set_params(warm_start=True, max_iter=2).fit(X, y)
    fresh = MLPClassifier(max_iter=3, **settings).fit(X, y)  # another estimator, same settings
    assert len(recordings) == 2
    np.testing.assert_array_equal(
        fresh.coefs_[0], MLPClassifier(max_iter=3, **settings).fit(X, y).coefs_[0]
    )
    model.set_params(alpha=0.1).fit(X, y)  # the loss changed: another trainer, recorded again
    assert len(recordings) == 4
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    restored.partial_fit(X, y)
    assert restored.n_iter_ == model.n_iter_ + 1


@pytest.mark.parametrize("name", ["coef/1", "intercept/0"])
def test_a_model_file_with_nan_weights_is_refused_naming_the_array(tmp_path, name):
    path = write_model(tmp_path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    arrays[name] = arrays[name].copy()
    arrays[name].flat[0] = np.nan
    np.savez(path, **arrays)
    with pytest.raises(ModelFileError, match=rf"m.npz: {name} holds 1 NaN or infinite value"):
        load(path)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity"])
def test_predictions_are_the_forward_pass_of_the_ops(activation):
    X, y = scaled_blobs(3)
    model = MLPClassifier((6, 5), activation=activation, max_iter=3, random_state=0).fit(X, y)
    layers = [{"W": W, "b": b} for W, b in zip(model.coefs_, model.intercepts_)]
    logits = gc.nn.mlp(layers, X, gc.estimators.ACTIVATIONS[activation])
    np.testing.assert_array_equal(model._forward(X), logits)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(model.predict_proba(X), shifted / shifted.sum(axis=1, keepdims=True))


def test_predict_checks_a_float_matrix_in_one_sum_and_anything_else_as_scikit_learn(monkeypatch):
    X, y = scaled_blobs(3)
    model = MLPClassifier((6,), max_iter=3, random_state=0).fit(X, y)
    general = []
    monkeypatch.setattr(
        gc.estimators, "validate_data", lambda *a, **k: general.append(1) or validate_data(*a, **k)
    )
    fast = model.predict_proba(X)
    assert general == []  # a float64 or float32 matrix of the fitted width: one sum
    X32 = X.astype(np.float32)
    np.testing.assert_array_equal(model.predict_proba(X32), model.predict_proba(X32.tolist()))
    np.testing.assert_array_equal(model.predict_proba(X.tolist()), fast)  # the general path
    assert general == [1, 1]
    with np.errstate(over="ignore"):
        model.predict(np.full_like(X, 1e308))  # finite, though its sum is not: checked in full
    assert general == [1, 1, 1]
    model.feature_names_in_ = np.array(["a", "b", "c", "d"], dtype=object)  # fitted on a frame
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        model.predict(X)
    del model.feature_names_in_
    for bad, message in (
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), "Input X contains NaN"),
        (np.where(np.arange(X.size).reshape(X.shape) == 5, np.inf, X), "X contains infinity"),
        (X[:, :3], "X has 3 features, but MLPClassifier is expecting 4 features as input"),
        (X[:0], "Found array with 0 sample"),
        (X[0], "Expected 2D array, got 1D array instead"),
    ):
        with pytest.raises(ValueError, match=message):
            model.predict(bad)
