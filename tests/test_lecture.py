"""The worked examples of the backpropagation lecture (Geena Kim, "Math behind Neural Network
Training"), as tests: the numbers on the slides and the closed-form gradients derived by hand
with the chain rule.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host, on

import gradcore as gc


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


# ---------------------------------------------------------------------------------------------
# q = x + y, f = q * z


def lecture_graph(x, y, z):
    q = x + y
    return q * z


def test_the_lecture_graph_on_python_floats():
    """At (x, y, z) = (-2, 5, -4): q = 3, f = -12, and df/dx = df/dy = z = -4, df/dz = q = 3."""
    value, grads = gc.value_and_grad(lecture_graph, argnum=(0, 1, 2))(-2.0, 5.0, -4.0)
    assert value == -12.0
    assert grads == (-4.0, -4.0, 3.0)


def test_the_lecture_graph_on_each_device(device):
    x, y, z = on(device, -2.0), on(device, 5.0), on(device, -4.0)
    grads = gc.grad(lecture_graph, argnum=(0, 1, 2))(x, y, z)
    assert [float(host(g)) for g in grads] == [-4.0, -4.0, 3.0]
    assert all(gc.device_of(g) == device for g in grads)


def test_the_lecture_graph_elementwise(device):
    """The same graph on vectors: each element its own copy of the slide."""
    x, y, z = on(device, [-2.0, 1.0]), on(device, [5.0, 1.0]), on(device, [-4.0, 0.5])
    gx, gy, gz = gc.elementwise_grad(lecture_graph, argnum=(0, 1, 2))(x, y, z)
    np.testing.assert_array_equal(host(gx), [-4.0, 0.5])
    np.testing.assert_array_equal(host(gy), [-4.0, 0.5])
    np.testing.assert_array_equal(host(gz), [3.0, 2.0])


def test_the_sigmoid_neuron_of_the_lecture():
    """f(w, x) = sigmoid(w0 x0 + w1 x1 + w2) at w = (2, -3, -3), x = (-1, -2): the slide's
    numbers dw = (-0.20, -0.39, 0.20), dx = (0.39, -0.59), through the local gradient
    sigmoid(1)(1 - sigmoid(1)) = 0.197 of the output gate."""

    def neuron(w, x):
        return gc.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2])

    w, x = gc.array([2.0, -3.0, -3.0], dtype="float64"), gc.array([-1.0, -2.0], dtype="float64")
    dw, dx = gc.grad(neuron, argnum=(0, 1))(w, x)
    local = sigmoid(1.0) * (1 - sigmoid(1.0))
    np.testing.assert_allclose(dw, [-1 * local, -2 * local, local], rtol=1e-14)
    np.testing.assert_allclose(dx, [2 * local, -3 * local], rtol=1e-14)
    np.testing.assert_allclose(dw, [-0.20, -0.39, 0.20], atol=0.005)
    np.testing.assert_allclose(dx, [0.39, -0.59], atol=0.005)


# ---------------------------------------------------------------------------------------------
# binary cross-entropy after a sigmoid: the gradient is (a - y) x


def binary_cross_entropy(a, y):
    return -(y * gc.log(a) + (1.0 - y) * gc.log(1.0 - a))


@pytest.mark.parametrize("label", [0.0, 1.0])
def test_bce_after_sigmoid_has_gradient_a_minus_y_times_x(device, label):
    """L = BCE(sigmoid(w . x + b), y): dL/dw = (a - y) x, dL/db = a - y; the sigmoid's derivative
    a (1 - a) cancels against the derivative of the log."""
    x_host, w_host, b_host = np.array([0.5, -1.5, 2.0]), np.array([0.3, 0.1, -0.4]), 0.2
    x = on(device, x_host)

    def loss(w, b):
        return binary_cross_entropy(gc.sigmoid(gc.sum(w * x) + b), label)

    dw, db = gc.grad(loss, argnum=(0, 1))(on(device, w_host), on(device, b_host))
    a = sigmoid(w_host @ x_host + b_host)
    np.testing.assert_allclose(host(dw), (a - label) * x_host, rtol=1e-13)
    assert float(host(db)) == pytest.approx(a - label, rel=1e-13)


def test_bce_after_sigmoid_over_a_batch(device):
    """Averaged over a batch: dL/dW = X^T (a - y) / n."""
    rng = np.random.default_rng(0)
    x_host, y_host = rng.normal(size=(8, 3)), rng.integers(0, 2, 8).astype(float)
    w_host = rng.normal(size=3)
    x, y = on(device, x_host), on(device, y_host)

    def loss(w):
        return gc.mean(binary_cross_entropy(gc.sigmoid(x @ w), y))

    dw = gc.grad(loss)(on(device, w_host))
    a = sigmoid(x_host @ w_host)
    np.testing.assert_allclose(host(dw), x_host.T @ (a - y_host) / 8, rtol=1e-13)


def test_bce_gradient_in_float32(device):
    x_host, w_host = np.array([0.5, -1.5, 2.0]), np.array([0.3, 0.1, -0.4])
    x = on(device, x_host, "float32")

    def loss(w):
        return binary_cross_entropy(gc.sigmoid(gc.sum(w * x)), 1.0)

    dw = host(gc.grad(loss)(on(device, w_host, "float32")))
    assert dw.dtype == np.float32
    np.testing.assert_allclose(dw, (sigmoid(w_host @ x_host) - 1.0) * x_host, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# a two-layer sigmoid network against the chain rule written out by hand


def test_two_layer_sigmoid_network_matches_the_chain_rule(device):
    """h = s(W1 x + b1), o = s(W2 h + b2), E = 1/2 |o - t|^2, and by the chain rule
    d2 = (o - t) o (1 - o),   dE/dW2 = d2 h^T,   dE/db2 = d2,
    d1 = (W2^T d2) h (1 - h), dE/dW1 = d1 x^T,   dE/db1 = d1."""
    rng = np.random.default_rng(1)
    params_host = {
        "W1": rng.normal(size=(4, 3)),
        "b1": rng.normal(size=4),
        "W2": rng.normal(size=(2, 4)),
        "b2": rng.normal(size=2),
    }
    x_host, t_host = rng.normal(size=3), np.array([0.0, 1.0])
    params = {name: on(device, value) for name, value in params_host.items()}
    x, t = on(device, x_host), on(device, t_host)

    def error(p):
        h = gc.sigmoid(p["W1"] @ x + p["b1"])
        o = gc.sigmoid(p["W2"] @ h + p["b2"])
        return 0.5 * gc.sum((o - t) ** 2)

    g = gc.grad(error)(params)

    h = sigmoid(params_host["W1"] @ x_host + params_host["b1"])
    o = sigmoid(params_host["W2"] @ h + params_host["b2"])
    d2 = (o - t_host) * o * (1 - o)
    d1 = (params_host["W2"].T @ d2) * h * (1 - h)
    expected = {"W1": np.outer(d1, x_host), "b1": d1, "W2": np.outer(d2, h), "b2": d2}
    assert set(g) == set(expected)
    for name in expected:
        np.testing.assert_allclose(host(g[name]), expected[name], rtol=1e-12, err_msg=name)
    gc.check_grads(error, params, order=2)
