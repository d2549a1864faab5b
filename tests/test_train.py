"""gc.train.fit: minibatching, devices, history, checkpoints and resume, Ctrl-C, NaN, errors."""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import signal
import sys

import numpy as np
import pytest

import gradcore as gc
from gradcore import nn, optim, train


def problem(n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    y = (X @ np.array([1.0, -2.0, 0.5]) > 0).astype(np.float64)
    return X, y


def logistic_loss(params, xb, yb):
    return nn.binary_cross_entropy_with_logits(nn.mlp(params, xb), yb)


def accuracy(params, X, y):
    return nn.accuracy(nn.mlp(params, X), y)


def fit(params=None, device="cpu", **kwargs):
    X, y = kwargs.pop("data", problem())
    params = nn.init_mlp([3, 4, 1], seed=0) if params is None else params
    kwargs.setdefault("optimizer", optim.SGD(0.1, momentum=0.9))
    kwargs.setdefault("batch_size", 8)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("epochs", 3)
    return params, train.fit(
        kwargs.pop("loss_fn", logistic_loss), params, X, y, device=device, **kwargs
    )


def host(params):
    return [a for layer in gc.to_numpy(params) for a in (layer["W"], layer["b"])]


def assert_same_params(a, b):
    for x, y in zip(host(a), host(b)):
        np.testing.assert_array_equal(x, y)


def test_fit_trains_host_params_in_place_on_the_device(device):
    params = nn.init_mlp([3, 4, 1], seed=0)  # on the host
    first_layer = params[0]
    X, y = problem()
    history = train.fit(
        logistic_loss, params, X, y, optimizer=optim.SGD(0.5, momentum=0.9), epochs=20,
        batch_size=8, device=device, validation_data=problem(20, seed=1),
        metrics=[accuracy], progress=False,
    )  # fmt: skip
    assert params[0] is first_layer and history.params is params
    assert gc.device_of(params[0]["W"]) == device
    assert str(gc.to_numpy(params[0]["W"]).dtype) == "float32"
    assert history.epochs == 20
    assert len(history.val_loss) == len(history.time) == 20
    assert set(history.metrics) == {"accuracy", "val_accuracy"}
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert history.metrics["accuracy"][-1] >= 0.95
    assert history.metrics["val_accuracy"][-1] >= 0.85
    assert all(t > 0 for t in history.time)


def test_every_row_once_per_epoch_in_a_fresh_seeded_order_last_batch_kept():
    X = np.arange(10, dtype=np.float64)[:, None] * np.ones((1, 3))
    seen = []

    def loss(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:  # the training steps, not fit's first check
            seen.append(gc.to_numpy(xb)[:, 0].astype(int).tolist())
        return logistic_loss(params, xb, yb)

    optimizer = optim.SGD(0.01)
    fit(data=(X, np.zeros(10)), loss_fn=loss, optimizer=optimizer, batch_size=4, epochs=3)
    assert [len(b) for b in seen] == [4, 4, 2] * 3
    assert optimizer.iterations == 9
    epochs = [sum(seen[3 * e : 3 * e + 3], []) for e in range(3)]
    assert all(sorted(order) == list(range(10)) for order in epochs)
    assert len({tuple(order) for order in epochs}) == 3
    expected = np.random.default_rng(0)
    assert epochs == [expected.permutation(10).tolist() for _ in range(3)]

    seen.clear()
    fit(data=(X, np.zeros(10)), loss_fn=loss, batch_size=4, epochs=1, shuffle=False)
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_same_seed_same_params_other_seed_other_params():
    a, _ = fit(seed=3)
    b, _ = fit(seed=3)
    c, _ = fit(seed=4)
    assert_same_params(a, b)
    assert not np.array_equal(host(a)[0], host(c)[0])


def test_loss_is_read_every_read_every_steps(monkeypatch):
    backend = gc.backend.backend_for_device("cpu")
    reads = []
    real = backend.to_numpy
    monkeypatch.setattr(backend, "to_numpy", lambda x: reads.append(x.shape) or real(x))
    monkeypatch.setattr(train, "READ_EVERY", 3)
    fit(batch_size=4, epochs=2)  # 10 steps an epoch: reads of 3, 3, 3 and 1 losses
    assert reads == [(3,), (3,), (3,), (1,)] * 2


def test_resume_after_epoch_k_gives_exactly_the_uninterrupted_params(device, tmp_path):
    path = tmp_path / "run.npz"
    uninterrupted, full = fit(device=device, epochs=5, metrics=[accuracy])
    _, first = fit(device=device, epochs=2, checkpoint=path, metrics=[accuracy])
    assert first.epochs == 2
    resumed, history = fit(
        device=device, epochs=5, checkpoint=path, resume=True, metrics=[accuracy]
    )
    assert_same_params(resumed, uninterrupted)
    assert history.epochs == 5
    assert history.loss == full.loss
    assert history.metrics == full.metrics


def test_ctrl_c_writes_a_checkpoint_that_resumes_exactly(tmp_path):
    path = tmp_path / "run.npz"
    uninterrupted, full = fit(epochs=3)
    steps = []

    def interrupted_loss(params, xb, yb):
        if type(params[0]["W"]) is gc.Box:
            steps.append(1)
            if len(steps) == 7:  # epoch 2, step 2 of 5
                signal.raise_signal(signal.SIGINT)
        return logistic_loss(params, xb, yb)

    with pytest.raises(KeyboardInterrupt):  # jit=False: a replayed step runs no Python
        fit(epochs=3, loss_fn=interrupted_loss, checkpoint=path, jit=False)
    assert len(steps) == 7
    _, meta = train.load_checkpoint(path)
    assert (meta["epoch"], meta["step"]) == (1, 2)
    resumed, history = fit(epochs=3, checkpoint=path, resume=True)
    assert_same_params(resumed, uninterrupted)
    np.testing.assert_allclose(history.loss, full.loss, rtol=1e-12)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_checkpoint_is_npz_without_pickles_and_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "run.npz"
    params, _ = fit(epochs=1, checkpoint=path)
    with np.load(path, allow_pickle=False) as data:
        assert "meta" in data.files
    saved, meta = train.load_checkpoint(path)
    for a, b in zip(saved, host(params)):
        np.testing.assert_array_equal(a, b)
    assert meta["epoch"] == 1 and meta["optimizer/iterations"] == 5
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        fit(epochs=1, checkpoint=path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.npz"]


def test_resume_without_a_checkpoint_starts_afresh(tmp_path):
    a, _ = fit(epochs=2)
    b, _ = fit(epochs=2, checkpoint=tmp_path / "new.npz", resume=True)
    assert_same_params(a, b)
    with pytest.raises(ValueError, match="batches of 8; this run has 40 rows in batches of 4"):
        fit(epochs=3, batch_size=4, checkpoint=tmp_path / "new.npz", resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint"):
        fit(resume=True)


@pytest.mark.parametrize("read_every", [50, 4])
def test_nan_loss_stops_naming_epoch_and_step_params_left_finite(monkeypatch, read_every):
    monkeypatch.setattr(train, "READ_EVERY", read_every)
    X, y = problem(10)
    X[6] = np.nan  # the 7th step of the first epoch, with batches of one in order

    def mse_loss(params, xb, yb):
        return nn.mse(gc.reshape(nn.mlp(params, xb), (-1,)), yb)

    kwargs = dict(loss_fn=mse_loss, batch_size=1, shuffle=False, epochs=2)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1/2, step 7/10"):
        stopped, _ = fit(data=(X, y), **kwargs)
    stopped = nn.init_mlp([3, 4, 1], seed=0)
    with pytest.raises(FloatingPointError):
        fit(stopped, data=(X, y), **kwargs)
    before_the_nan, _ = fit(data=(X[:6], y[:6]), **kwargs | {"epochs": 1})
    assert_same_params(stopped, before_the_nan)
    assert all(np.isfinite(a).all() for a in host(stopped))


def test_bad_input_gets_a_clear_error():
    X, y = problem()
    with pytest.raises(ValueError, match="X has 40 rows but y has 39"):
        fit(data=(X, y[:-1]))
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        fit(batch_size=0)
    with pytest.raises(ValueError, match="epochs must be a non-negative integer, got -1"):
        fit(epochs=-1)
    with pytest.raises(TypeError, match=r"loss_fn must return a scalar.*\(40, 1\)"):
        fit(loss_fn=lambda p, xb, yb: nn.mlp(p, xb))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        fit(data=(X, 2 * y))
    labels = np.arange(40) % 4  # four classes for a three-class network
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fit(
            nn.init_mlp([3, 3]),
            data=(X, labels),
            loss_fn=lambda p, xb, yb: nn.softmax_cross_entropy(nn.mlp(p, xb), yb),
        )
    with pytest.raises(ValueError, match="no training data"):
        fit(data=(X[:0], y[:0]))


def test_zero_epochs_trains_nothing():
    params, history = fit(epochs=0)
    assert history.epochs == 0
    assert_same_params(params, nn.init_mlp([3, 4, 1], seed=0))


def test_arrays_on_another_device_are_refused():
    on_other = nn.init_mlp([3, 4, 1], device="strict1")
    with pytest.raises(gc.DeviceError, match="params are on device 'strict1' but device='strict'"):
        fit(on_other, device="strict")
    X, y = problem()
    with pytest.raises(gc.DeviceError, match="X is on device 'strict1'"):
        fit(data=(gc.array(X, device="strict1"), y), device="strict")
    with pytest.raises(gc.DeviceError, match="unknown device 'tpu'"):
        fit(device="tpu")


def test_no_output_without_progress_or_terminal(capsys):
    fit(progress=False)
    fit(progress=True)  # pytest's captured stderr is not a terminal
    assert capsys.readouterr() == ("", "")


def test_history_plot_writes_a_png(tmp_path):
    _, history = fit(validation_data=problem(10, seed=1), metrics=[accuracy])
    path = history.plot(tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_plot_without_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    _, history = fit(epochs=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match="History.plot needs matplotlib: pip install"):
        history.plot(tmp_path / "curves.png")
