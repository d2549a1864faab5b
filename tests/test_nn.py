"""gc.nn: initialisation, the MLP forward pass, losses (NumPy float64 as the oracle), accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host

import gradcore as gc
from gradcore import nn


def test_init_mlp_shapes_dtype_and_device(device):
    params = nn.init_mlp([5, 4, 3], seed=1, device=device)
    assert [tuple(layer["W"].shape) for layer in params] == [(5, 4), (4, 3)]
    assert [tuple(layer["b"].shape) for layer in params] == [(4,), (3,)]
    for leaf in (params[0]["W"], params[1]["b"]):
        assert gc.device_of(leaf) == device
        assert str(host(leaf).dtype) == "float32"
    assert not host(params[0]["b"]).any()


def test_init_mlp_same_seed_same_network_on_every_device(device):
    on_device = host(nn.init_mlp([6, 5, 2], seed=3, device=device))
    on_cpu = host(nn.init_mlp([6, 5, 2], seed=3))
    for a, b in zip(on_device, on_cpu):
        np.testing.assert_array_equal(a["W"], b["W"])
    other = host(nn.init_mlp([6, 5, 2], seed=4))
    assert not np.array_equal(other[0]["W"], on_cpu[0]["W"])


def test_init_mlp_scales():
    glorot = host(nn.init_mlp([200, 300], seed=0))[0]["W"]
    limit = np.sqrt(6 / 500)
    assert np.abs(glorot).max() <= limit
    assert np.isclose(glorot.std(), limit / np.sqrt(3), rtol=0.02)
    he = host(nn.init_mlp([200, 300], seed=0, init="he", dtype="float64"))[0]["W"]
    assert he.dtype == np.float64
    assert np.isclose(he.std(), np.sqrt(2 / 200), rtol=0.02)
    with pytest.raises(ValueError, match="init"):
        nn.init_mlp([2, 2], init="lecun")
    with pytest.raises(ValueError, match="sizes"):
        nn.init_mlp([3])


def test_mlp_matches_numpy(device):
    params = nn.init_mlp([4, 3, 2], seed=0, device=device, dtype="float64")
    x = np.random.default_rng(0).standard_normal((5, 4))
    out = host(nn.mlp(params, gc.array(x, device=device)))
    p = host(params)
    hidden = 1 / (1 + np.exp(-(x @ p[0]["W"] + p[0]["b"])))
    np.testing.assert_allclose(out, hidden @ p[1]["W"] + p[1]["b"], rtol=1e-12)
    relu_out = host(nn.mlp(params, gc.array(x, device=device), activation=gc.relu))
    np.testing.assert_allclose(
        relu_out, np.maximum(x @ p[0]["W"] + p[0]["b"], 0) @ p[1]["W"] + p[1]["b"], rtol=1e-12
    )


def bce_oracle(p, y):
    return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_binary_cross_entropy(device):
    p = np.array([0.1, 0.8, 0.5, 0.3])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    value = nn.binary_cross_entropy(gc.array(p, device=device), gc.array(y, device=device))
    assert np.isclose(float(host(value)), bce_oracle(p, y), rtol=1e-12)
    # a saturated sigmoid costs a large but finite loss, and a finite gradient
    edge = gc.array([0.0, 1.0], dtype="float32", device=device)
    wrong = gc.array([1.0, 0.0], dtype="float32", device=device)
    assert np.isfinite(float(host(nn.binary_cross_entropy(edge, wrong))))
    g = gc.grad(nn.binary_cross_entropy)(gc.array([0.2, 0.9], device=device), wrong)
    assert np.isfinite(host(g)).all()


def test_bce_with_logits_equals_bce_and_never_overflows(device):
    z = np.linspace(-6, 6, 9)
    y = (np.arange(9) % 2).astype(np.float64)
    value = nn.binary_cross_entropy_with_logits(
        gc.array(z, device=device), gc.array(y, device=device)
    )
    assert np.isclose(float(host(value)), bce_oracle(1 / (1 + np.exp(-z)), y), rtol=1e-12)
    huge = gc.array([-1e4, 1e4, -100.0, 100.0], dtype="float32", device=device)
    labels = gc.array([1.0, 0.0, 0.0, 1.0], dtype="float32", device=device)
    value = float(host(nn.binary_cross_entropy_with_logits(huge, labels)))
    assert np.isclose(value, (1e4 + 1e4) / 4, rtol=1e-6)


def test_bce_with_logits_gradient_is_exactly_sigmoid_minus_y(device):
    # n = 8, a power of two, so that the mean's 1/n introduces no rounding
    z = gc.array(np.linspace(-30, 30, 8), dtype="float32", device=device)
    y = gc.array([0, 1, 1, 0, 1, 0, 0.25, 1], dtype="float32", device=device)
    g = gc.grad(nn.binary_cross_entropy_with_logits)(z, y)
    np.testing.assert_array_equal(host(g), host((gc.sigmoid(z) - y) / 8))
    assert str(host(g).dtype) == "float32"


def test_bce_with_logits_second_order():
    z = gc.array(np.array([-1.0, 0.5, 2.0]))
    y = gc.array(np.array([0.0, 1.0, 1.0]))
    gc.check_grads(lambda z: nn.binary_cross_entropy_with_logits(z, y), z, order=2)


def test_binary_losses_take_one_output_column_and_refuse_other_shapes():
    z = gc.array(np.array([[0.3], [-1.0], [2.0]]))
    y = gc.array(np.array([1.0, 0.0, 1.0]))
    flat = nn.binary_cross_entropy_with_logits(gc.reshape(z, (3,)), y)
    assert float(nn.binary_cross_entropy_with_logits(z, y)) == float(flat)
    assert gc.grad(nn.binary_cross_entropy_with_logits)(z, y).shape == (3, 1)
    with pytest.raises(ValueError, match=r"shape \(3, 1\) and targets of shape \(2,\)"):
        nn.binary_cross_entropy(gc.sigmoid(z), gc.array(np.array([1.0, 0.0])))


def test_binary_losses_refuse_labels_outside_0_1():
    z = gc.array(np.array([0.3, -1.0]))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        nn.binary_cross_entropy_with_logits(z, gc.array(np.array([1.0, 2.0])))
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\]"):
        nn.binary_cross_entropy(gc.sigmoid(z), gc.array(np.array([-1, 1])))
    with pytest.raises(ValueError, match="probabilities"):
        nn.binary_cross_entropy(z, gc.array(np.array([0.0, 1.0])))
    with nn.target_checks(False):  # what fit does inside a step, after checking once
        nn.binary_cross_entropy_with_logits(z, gc.array(np.array([1.0, 2.0])))


def test_softmax_cross_entropy_integer_and_one_hot(device):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4))
    labels = np.array([0, 3, 1, 1, 2, 3])
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected = -log_p[np.arange(6), labels].mean()
    z = gc.array(logits, device=device)
    by_index = nn.softmax_cross_entropy(z, gc.array(labels, device=device))
    one_hot = gc.array(np.eye(4)[labels], device=device)
    by_one_hot = nn.softmax_cross_entropy(z, one_hot)
    assert np.isclose(float(host(by_index)), expected, rtol=1e-12)
    assert np.isclose(float(host(by_one_hot)), expected, rtol=1e-12)
    g = host(gc.grad(nn.softmax_cross_entropy)(z, gc.array(labels, device=device)))
    np.testing.assert_allclose(g, (np.exp(log_p) - np.eye(4)[labels]) / 6, atol=1e-12)
    big = gc.array(np.array([[1e4, -1e4, 0.0]], dtype=np.float32), device=device)
    assert np.isfinite(
        float(host(nn.softmax_cross_entropy(big, gc.array(np.array([1]), device=device))))
    )


def test_softmax_cross_entropy_second_order_with_hard_and_soft_labels(device):
    """The fused op's VJPs, for the logits and for soft targets (rows need not sum to one)."""
    rng = np.random.default_rng(1)
    logits = gc.array(rng.standard_normal((5, 3)), device=device)
    labels = gc.array(np.array([0, 2, 1, 1, 0]), device=device)
    soft = gc.array(rng.uniform(0.05, 0.9, (5, 3)), device=device)
    gc.check_grads(lambda z: nn.softmax_cross_entropy(z, labels), logits, order=2)
    gc.check_grads(nn.softmax_cross_entropy, logits, soft, order=2)


def test_softmax_cross_entropy_refuses_bad_labels():
    z = gc.array(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"integer labels must lie in \[0, 4\)"):
        nn.softmax_cross_entropy(z, gc.array(np.array([0, 4, 1])))
    with pytest.raises(ValueError, match=r"integer labels must lie in \[0, 4\)"):
        nn.softmax_cross_entropy(z, gc.array(np.array([0, -1, 1])))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        nn.softmax_cross_entropy(z, gc.array(np.array([0, 1])))
    with pytest.raises(ValueError, match="one-hot labels must have the logits' shape"):
        nn.softmax_cross_entropy(z, gc.array(np.zeros((3, 3))))
    with pytest.raises(ValueError, match=r"shape \(n, classes\)"):
        nn.softmax_cross_entropy(gc.array(np.zeros(3)), gc.array(np.array([0, 1, 1])))


def test_mse(device):
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    assert float(host(nn.mse(gc.array(a, device=device), gc.array(b, device=device)))) == 10 / 3
    with pytest.raises(ValueError, match="mse"):
        nn.mse(gc.array(a), gc.array(b[:2]))


def test_accuracy(device):
    logits = gc.array(np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0]]), device=device)
    assert nn.accuracy(logits, gc.array(np.array([0, 1, 1]), device=device)) == 2 / 3
    assert nn.accuracy(logits, gc.array(np.eye(3), device=device)) == 1.0
    binary = gc.array(np.array([[-1.0], [0.5], [2.0], [-3.0]]), device=device)
    assert nn.accuracy(binary, gc.array(np.array([0, 1, 0, 0]), device=device)) == 0.75
    assert isinstance(nn.accuracy(binary, gc.array(np.array([0, 1, 1, 0]), device=device)), float)


# ---------------------------------------------------------------------------------------------
# dropout and its random state


def _ones(device, shape=(50, 40), dtype="float32"):
    return gc.array(np.ones(shape), dtype=dtype, device=device)


def test_dropout_zeroes_a_fraction_rate_and_scales_the_rest(device):
    x = gc.array(np.random.default_rng(0).uniform(1, 2, (200, 100)), device=device)
    y = host(nn.dropout(x, 0.3, gc.random.Generator(0)))
    dropped = y == 0
    assert abs(dropped.mean() - 0.3) < 0.02
    np.testing.assert_allclose(y[~dropped], host(x)[~dropped] / 0.7, rtol=1e-15)
    assert gc.device_of(nn.dropout(x, 0.3, gc.random.Generator(0))) == device


def test_dropout_is_off_at_evaluation_and_at_rate_zero(device):
    x = _ones(device)
    rng = gc.random.Generator(0)
    assert nn.dropout(x, 0.5, rng, training=False) is x
    assert nn.dropout(x, 0.0, rng) is x
    assert rng.get_state() == {"seed": 0, "started": False}  # nothing was drawn


def test_dropout_draws_a_fresh_mask_at_every_call_reproducibly_from_a_seed(device):
    x = _ones(device)
    first, again, other = gc.random.Generator(5), gc.random.Generator(5), gc.random.Generator(6)
    masks = [host(nn.dropout(x, 0.5, first)) for _ in range(3)]
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    for mask in masks:
        np.testing.assert_array_equal(host(nn.dropout(x, 0.5, again)), mask)
    assert not np.array_equal(host(nn.dropout(x, 0.5, other)), masks[0])


def test_the_gradient_flows_through_the_mask(device):
    x = gc.array(np.random.default_rng(1).uniform(1, 2, (30, 20)), device=device)
    y, pullback = gc.vjp(lambda x: nn.dropout(x, 0.4, gc.random.Generator(2)), x)
    w = gc.array(np.random.default_rng(2).standard_normal((30, 20)), device=device)
    (grad,) = pullback(w)
    mask = host(y) / host(x)  # 0 or 1 / (1 - rate), the forward's own mask
    assert set(np.round(np.unique(mask), 12)) == {0.0, round(1 / 0.6, 12)}
    np.testing.assert_allclose(host(grad), mask * host(w), rtol=1e-14)


def test_jit_replays_draw_new_masks_the_eager_ones(device):
    """A jitted step with dropout draws a new mask at every replay (the draw is a step of the
    program, not a constant recorded once), and the same masks as an eager run from the seed."""
    x = _ones(device, (8, 16))
    loss = lambda x, rng: gc.sum(nn.dropout(x, 0.5, rng) * x)  # noqa: E731
    eager_rng, jit_rng = gc.random.Generator(11), gc.random.Generator(11)
    eager = gc.value_and_grad(loss)
    jitted = gc.jit(gc.value_and_grad(loss), static_argnums=1)
    grads = []
    for _ in range(4):
        value, grad = eager(x, eager_rng)
        jit_value, jit_grad = jitted(x, jit_rng)
        assert host(value) == host(jit_value)
        np.testing.assert_array_equal(host(grad), host(jit_grad))
        grads.append(host(jit_grad))
    assert len(jitted.programs) == 1
    assert all(not np.array_equal(a, b) for a, b in zip(grads, grads[1:]))


def test_training_with_dropout_and_adam_is_eager_bit_for_bit_under_jit(device):
    rng = np.random.default_rng(0)
    x = gc.array(rng.standard_normal((16, 5)), dtype="float32", device=device)
    y = gc.array(rng.integers(0, 3, 16), device=device)
    runs = []
    for _ in range(2):
        optimizer, masks = gc.optim.Adam(0.01), gc.random.Generator(3)

        def step(params, x, y, optimizer=optimizer, masks=masks):
            objective = lambda p: nn.softmax_cross_entropy(  # noqa: E731
                nn.mlp(p, x, activation=gc.relu, dropout_rate=0.25, rng=masks), y
            )
            value, grads = gc.value_and_grad(objective)(params)
            optimizer.step(params, grads)
            return value

        runs.append((step, nn.init_mlp([5, 8, 8, 3], seed=1, device=device, init="he")))
    (eager, eager_params), (step, jit_params) = runs
    jitted = gc.jit(step)
    for _ in range(6):
        assert host(eager(eager_params, x, y)) == host(jitted(jit_params, x, y))
    for a, b in zip(
        gc.pytree.tree_leaves(host(eager_params)), gc.pytree.tree_leaves(host(jit_params))
    ):
        np.testing.assert_array_equal(a, b)


def test_generator_state_resumes_the_stream():
    x = _ones("cpu")
    rng = gc.random.Generator(4)
    nn.dropout(x, 0.5, rng)
    state = rng.get_state()
    expected = [host(nn.dropout(x, 0.5, rng)) for _ in range(2)]
    resumed = gc.random.Generator(0)
    resumed.set_state(state)
    assert resumed.get_state() == state  # loaded, not yet drawn from: the state it was given
    for mask in expected:
        np.testing.assert_array_equal(host(nn.dropout(x, 0.5, resumed)), mask)


@pytest.mark.parametrize(
    "rate, error, message",
    [
        (1.0, ValueError, r"dropout: rate must be in \[0, 1\) \(the fraction of units dropped\), "
         r"got 1.0"),
        (-0.1, ValueError, r"dropout: rate must be in \[0, 1\) .*got -0.1"),
        (float("nan"), ValueError, r"dropout: rate must be in \[0, 1\) .*got nan"),
        ("0.5", TypeError, r"dropout: rate must be a number in \[0, 1\), got str"),
        (True, TypeError, r"dropout: rate must be a number in \[0, 1\), got bool"),
    ],
)  # fmt: skip
def test_dropout_refuses_a_rate_outside_0_1(rate, error, message):
    with pytest.raises(error, match=message):
        nn.dropout(_ones("cpu"), rate, gc.random.Generator(0))


def test_dropout_needs_a_generator_on_the_arrays_device():
    with pytest.raises(
        TypeError, match=r"dropout: rng must be a gradcore.random.Generator .*got int"
    ):
        nn.dropout(_ones("cpu"), 0.5, 0)
    rng = gc.random.Generator(0, device="cpu")
    with pytest.raises(
        gc.DeviceError, match=r"Generator: it draws on 'cpu', but the array is on 'strict'"
    ):
        nn.dropout(_ones("strict"), 0.5, rng)
    with pytest.raises(TypeError, match=r"Generator: seed must be a non-negative integer, got -1"):
        gc.random.Generator(-1)
