"""gc.rules: the perceptron rule and the delta rule, as Geena Kim's lecture notes "Math behind
Neural Network Training" state them."""

# ruff: noqa: N803, N806 - X is a data matrix, the field's convention and the public API's

from __future__ import annotations

import numpy as np
import pytest

import gradcore as gc
from gradcore import rules


def separable(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, (n, 2))
    score = X @ np.array([2.0, -1.0]) + 0.3
    keep = np.abs(score) > 0.2  # a margin, so that the rule converges quickly
    return X[keep], np.where(score[keep] > 0, 1, -1)


def test_perceptron_by_hand_on_and():
    # AND with labels -1/+1, cycled in order; each update is W += x or W -= x (bias input 1).
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    y = np.array([-1, -1, -1, 1])
    weights, mistakes = rules.perceptron(X, y, epochs=20)
    w = np.zeros(3)
    expected = []
    for _ in range(20):
        count = 0
        for x, label in zip(np.c_[X, np.ones(4)], y):
            if label * (w @ x) <= 0:
                w += label * x
                count += 1
        expected.append(count)
        if count == 0:
            break
    assert mistakes == expected and mistakes[-1] == 0
    np.testing.assert_array_equal(gc.to_numpy(weights), w)


def test_perceptron_separates_and_stops_after_a_clean_epoch(device):
    X, y = separable()
    weights, mistakes = rules.perceptron(gc.array(X, device=device), gc.array(y, device=device))
    assert gc.device_of(weights) == device
    assert mistakes[-1] == 0 and all(m > 0 for m in mistakes[:-1])
    w = gc.to_numpy(weights)
    assert w.shape == (3,)
    assert np.all(y * (X @ w[:2] + w[2]) > 0)


def test_perceptron_labels_0_1_are_the_same_as_minus_1_plus_1():
    X, y = separable()
    w_pm, m_pm = rules.perceptron(X, y)
    w_01, m_01 = rules.perceptron(X, (y > 0).astype(int))
    np.testing.assert_array_equal(gc.to_numpy(w_pm), gc.to_numpy(w_01))
    assert m_pm == m_01


def test_perceptron_gives_up_after_epochs_on_inseparable_data():
    X = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    _, mistakes = rules.perceptron(X, np.array([0, 1, 1, 0]), epochs=7)  # XOR
    assert len(mistakes) == 7 and min(mistakes) > 0


def test_perceptron_refuses_other_labels():
    with pytest.raises(ValueError, match="-1/\\+1 or all 0/1"):
        rules.perceptron(np.zeros((3, 2)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        rules.perceptron(np.zeros((3, 2)), np.array([0, 1]))


def test_delta_rule_is_gradient_descent_on_half_squared_error_step_for_step(device):
    rng = np.random.default_rng(1)
    X = gc.array(rng.standard_normal((8, 3)), device=device)  # float64
    y = gc.array(rng.standard_normal(8), device=device)
    lr = 0.05

    def half_squared_error(w, x, target):
        x1 = gc.concatenate([x, gc.array([1.0], dtype="float64", device=device)])
        return 0.5 * gc.square(gc.sum(w * x1) - target)

    w = gc.array(np.zeros(4), device=device)
    for epoch in range(2):
        for i in range(8):
            w = w - lr * gc.grad(half_squared_error)(w, X[i, ...], y[i])
            if epoch == 0:  # after every one of the first epoch's steps
                after = rules.delta_rule(X[: i + 1, ...], y[: i + 1], learning_rate=lr, epochs=1)
                np.testing.assert_allclose(gc.to_numpy(after), gc.to_numpy(w), rtol=1e-13)
    final = rules.delta_rule(X, y, learning_rate=lr, epochs=2)
    np.testing.assert_allclose(gc.to_numpy(final), gc.to_numpy(w), rtol=1e-13)


def test_delta_rule_fits_a_linear_target():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((50, 2))
    y = X @ np.array([1.5, -0.5]) + 0.25
    w = gc.to_numpy(rules.delta_rule(X, y, learning_rate=0.05, epochs=100))
    np.testing.assert_allclose(w, [1.5, -0.5, 0.25], atol=1e-3)
