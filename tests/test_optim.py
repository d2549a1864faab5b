"""gc.optim: SGD with momentum, Nesterov and weight decay, step by step against the formulas,
and the learning-rate schedules against theirs."""

from __future__ import annotations

import numpy as np
import pytest

import gradcore as gc
from gradcore import optim

GRADS = [np.array([0.5, -1.0, 2.0]), np.array([-0.25, 0.75, 1.5]), np.array([1.0, 0.0, -3.0])]


def check_equal(device, actual, expected):
    """Equal up to float64 rounding: a fused kernel may order its multiply-adds differently
    (``lr * (g + wd p)`` vs ``lr g + lr wd p``), but a wrong formula is off by far more."""
    np.testing.assert_allclose(actual, expected, rtol=1e-13, atol=1e-15)


def run_sgd(device, optimizer, steps):
    """Apply ``steps`` updates with the fixed GRADS cycle; the params after each."""
    params = {"w": gc.array(np.array([1.0, -2.0, 0.5]), device=device)}
    after = []
    for k in range(steps):
        optimizer.step(params, {"w": gc.array(GRADS[k % 3], device=device)})
        after.append(gc.to_numpy(params["w"]))
    assert gc.device_of(params["w"]) == device
    return after


@pytest.mark.parametrize(
    "momentum, nesterov, weight_decay",
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, False, 0.1), (0.8, True, 0.01)],
)
def test_sgd_follows_the_update_rule(device, momentum, nesterov, weight_decay):
    lr = 0.1
    after = run_sgd(device, optim.SGD(lr, momentum, nesterov, weight_decay), steps=5)
    theta, v = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for k in range(5):
        g = GRADS[k % 3] + weight_decay * theta
        v = momentum * v - lr * g  # Deep Learning book, ch. 8
        theta = theta + (momentum * v - lr * g if nesterov else v)  # Keras's Nesterov form
        check_equal(device, after[k], theta)


def test_sgd_uses_the_schedule_from_step_zero(device):
    schedule = optim.linear_decay(0.5, 0.1, steps=3)
    after = run_sgd(device, optim.SGD(schedule, momentum=0.9), steps=5)
    theta, v = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for k in range(5):
        v = 0.9 * v - schedule(k) * GRADS[k % 3]
        theta = theta + v
        check_equal(device, after[k], theta)


def test_velocity_lives_on_the_parameter_device_in_its_dtype(device):
    params = [gc.array(np.ones(3), dtype="float32", device=device)]
    optimizer = optim.SGD(0.1, momentum=0.9)
    optimizer.step(params, [gc.array(np.ones(3), dtype="float32", device=device)])
    (velocity,) = optimizer.state_dict()["velocity"]
    assert gc.device_of(velocity) == device
    assert str(gc.to_numpy(velocity).dtype) == "float32"
    assert str(gc.to_numpy(params[0]).dtype) == "float32"


def test_state_dict_round_trip_continues_identically(device):
    first = optim.SGD(0.1, momentum=0.9, nesterov=True)
    run_sgd(device, first, steps=2)
    state = gc.to_numpy(first.state_dict())  # as a checkpoint stores it: on the host
    assert state["iterations"] == 2
    second = optim.SGD(0.1, momentum=0.9, nesterov=True)
    second.load_state_dict(state)
    params_a = {"w": gc.array(np.array([1.0, 2.0, 3.0]), device=device)}
    params_b = {"w": gc.array(np.array([1.0, 2.0, 3.0]), device=device)}
    for k in range(3):
        g = {"w": gc.array(GRADS[k], device=device)}
        first.step(params_a, g)
        second.step(params_b, g)
    np.testing.assert_array_equal(gc.to_numpy(params_a["w"]), gc.to_numpy(params_b["w"]))
    assert first.iterations == second.iterations == 5


def test_state_dict_is_a_copy():
    optimizer = optim.SGD(0.1, momentum=0.9)
    run_sgd("cpu", optimizer, steps=1)
    state = optimizer.state_dict()
    before = gc.to_numpy(state["velocity"][0])
    run_sgd("cpu", optimizer, steps=1)
    np.testing.assert_array_equal(gc.to_numpy(state["velocity"][0]), before)


def test_loaded_state_must_fit_the_params():
    optimizer = optim.SGD(0.1, momentum=0.9)
    optimizer.load_state_dict({"iterations": 1, "velocity": [np.zeros(2)]})
    with pytest.raises(ValueError, match=r"shape \(2,\).*shape \(3,\)"):
        run_sgd("cpu", optimizer, steps=1)


def test_linear_decay_is_algorithm_8_1():
    schedule = optim.linear_decay(1.0, 0.01, steps=4)
    for k in range(4):
        a = k / 4
        assert schedule(k) == (1 - a) * 1.0 + a * 0.01
    assert schedule(0) == 1.0
    assert schedule(4) == schedule(5) == schedule(100) == 0.01


def test_exponential_and_step_decay():
    smooth = optim.exponential_decay(0.1, 0.5, decay_steps=10)
    stairs = optim.exponential_decay(0.1, 0.5, decay_steps=10, staircase=True)
    steps = optim.step_decay(0.2, drop=0.1, every=3)
    for k in (0, 1, 5, 10, 15, 30):
        assert smooth(k) == 0.1 * 0.5 ** (k / 10)
        assert stairs(k) == 0.1 * 0.5 ** (k // 10)
        assert steps(k) == 0.2 * 0.1 ** (k // 3)
    assert steps(2) == 0.2 and steps(3) == 0.2 * 0.1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_sgd_refuses_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.SGD(**kwargs)


def test_schedules_refuse_empty_spans():
    with pytest.raises(ValueError, match="steps"):
        optim.linear_decay(1.0, 0.1, 0)
    with pytest.raises(ValueError, match="decay_steps"):
        optim.exponential_decay(1.0, 0.5, 0)
    with pytest.raises(ValueError, match="every"):
        optim.step_decay(1.0, 0.5, 0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"learning_rate": "0.1"}, TypeError, r"learning_rate must be a number or a schedule "
         r"\(a function step -> rate\), got str '0.1'; write 0.1 without quotes"),
        ({"momentum": "0.9"}, TypeError, r"momentum must be a number, got str '0.9'"),
        ({"weight_decay": None}, TypeError, r"weight_decay must be a number, got NoneType"),
        ({"learning_rate": True}, TypeError, r"learning_rate must be a number .* got bool"),
        ({"nesterov": "False"}, TypeError, r"nesterov must be True or False, got 'False'"),
        ({"learning_rate": 0.0}, ValueError, r"learning_rate must be positive, got 0.0"),
        ({"learning_rate": float("nan")}, ValueError, r"learning_rate must be positive, got nan"),
        ({"momentum": 1.0}, ValueError, r"momentum must be in \[0, 1\), got 1.0"),
        ({"weight_decay": float("inf")}, ValueError, r"weight_decay must be non-negative"),
    ],
)  # fmt: skip
def test_sgd_refuses_bad_arguments_by_name(kwargs, error, message):
    with pytest.raises(error, match=rf"SGD: {message}"):
        optim.SGD(**kwargs)


def test_sgd_accepts_numpy_numbers_and_schedules():
    optimizer = optim.SGD(np.float32(0.5), momentum=np.float64(0.9), nesterov=np.bool_(True))
    assert optimizer.current_learning_rate() == 0.5
    assert optim.SGD(optim.step_decay(0.1, 0.5, 10)).current_learning_rate() == 0.1
