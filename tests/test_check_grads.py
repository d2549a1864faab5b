"""check_grads: the JVP and the VJP along random directions against central differences in
float64, at first and second order; a wrong rule of either mode is caught and reported with the
mode, the argument and both numbers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import on

import gradcore as gc

X = np.array([0.3, -1.2, 0.8])

# A number as check_grads prints it (repr of a float: 1.5, -0.25, 3.1e-05, nan).
NUMBER = r"-?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def cube_with(vjp, jvp=lambda t, ans, x: t * (3.0 * x * x)):
    """A fresh primitive x**3 whose VJP rule is ``vjp`` and JVP rule ``jvp``."""

    @gc.primitive
    def cube(x):
        return x * x * x

    gc.defvjp(cube, vjp)
    gc.defjvp(cube, jvp)
    return cube


def test_correct_rules_pass_at_first_and_second_order(device):
    cube = cube_with(lambda g, ans, x: g * (3.0 * x * x))
    gc.check_grads(cube, on(device, X), order=1)
    gc.check_grads(cube, on(device, X), order=2)
    gc.check_grads(lambda x, y: gc.sum(gc.tanh(x) * y), on(device, X), on(device, X[::-1]))


def test_a_wrong_rule_is_reported_with_the_argument_and_both_numbers(device):
    wrong = cube_with(lambda g, ans, x: g * (2.0 * x * x))  # should be 3 x^2
    with pytest.raises(AssertionError) as caught:
        gc.check_grads(lambda y, x: gc.sum(wrong(x)) + gc.sum(y), on(device, X), on(device, X))
    message = str(caught.value)
    assert "order 1" in message
    assert "argument 1" in message  # x, not y
    match = f"gives ({NUMBER}) but central differences give ({NUMBER})"
    numbers = re.search(match, message)
    assert numbers, message
    analytic, numeric = float(numbers.group(1)), float(numbers.group(2))
    assert analytic == pytest.approx(numeric * 2 / 3, rel=1e-6)


def test_a_rule_that_is_right_only_at_first_order_fails_at_second_order(device):
    """A VJP computed on constants (stop_gradient) has the right value but no derivative."""
    frozen = cube_with(lambda g, ans, x: g * (3.0 * gc.stop_gradient(x) ** 2))
    gc.check_grads(frozen, on(device, X), order=1)
    with pytest.raises(AssertionError, match=rf"order 2: the VJP for argument 0 gives {NUMBER}"):
        gc.check_grads(frozen, on(device, X), order=2, modes=("rev",))
    # forward over reverse sees it too: the JVP of the VJP function
    with pytest.raises(AssertionError, match=r"vjp_of_cube, derivative of order 2: the JVP"):
        gc.check_grads(frozen, on(device, X), order=2, modes=("fwd", "rev"))


def test_the_worst_argument_is_named(device):
    @gc.primitive
    def weighted(x, y):
        return x * y

    # x's rule is off by 1%, y's rule by a factor 10: y is the one named
    gc.defvjp(weighted, lambda g, ans, x, y: g * y * 1.01, lambda g, ans, x, y: g * x * 10.0)
    gc.defjvp(weighted, lambda t, ans, x, y: t * y * 1.01, lambda t, ans, x, y: x * t * 10.0)
    for mode in ("fwd", "rev"):
        with pytest.raises(AssertionError, match="argument 1"):
            gc.check_grads(weighted, on(device, X), on(device, X + 1.0), order=1, modes=(mode,))


def test_float32_inputs_are_checked_in_float64(device):
    """Central differences in float32 would be noise; check_grads promotes to float64 first."""
    x = on(device, X, "float32")
    gc.check_grads(lambda x: gc.sum(gc.exp(x) * gc.sin(x)), x, order=2)


def test_pytree_arguments(device):
    params = {"w": on(device, [[0.1, 0.2], [0.3, -0.4]]), "b": [on(device, [0.5, -0.5])]}
    gc.check_grads(lambda p, x: gc.tanh(p["w"] @ x + p["b"][0]), params, on(device, [1.0, 2.0]))


def test_a_wrong_rule_for_a_python_float_argument():
    wrong = cube_with(lambda g, ans, x: g * x)
    with pytest.raises(AssertionError, match="argument 0"):
        gc.check_grads(wrong, 1.5, order=1)


def test_a_wrong_forward_rule_is_reported_as_a_jvp(device):
    wrong = cube_with(lambda g, ans, x: g * (3.0 * x * x), jvp=lambda t, ans, x: t * (2.0 * x * x))
    gc.check_grads(wrong, on(device, X), modes=("rev",))  # the VJP alone is right
    with pytest.raises(AssertionError) as caught:
        gc.check_grads(lambda y, x: gc.sum(wrong(x)) + gc.sum(y), on(device, X), on(device, X))
    message = str(caught.value)
    assert "order 1: the JVP for argument 1" in message, message
    numbers = re.search(f"gives ({NUMBER}) but central differences give ({NUMBER})", message)
    assert float(numbers.group(1)) == pytest.approx(float(numbers.group(2)) * 2 / 3, rel=1e-6)


def test_a_forward_rule_right_only_at_first_order_fails_at_second_order(device):
    frozen = cube_with(
        lambda g, ans, x: g * (3.0 * x * x),
        jvp=lambda t, ans, x: t * (3.0 * gc.stop_gradient(x) ** 2),
    )
    gc.check_grads(frozen, on(device, X), order=1)
    with pytest.raises(AssertionError, match=r"jvp_of_cube, derivative of order 2: the JVP"):
        gc.check_grads(frozen, on(device, X), order=2, modes=("fwd",))


def test_an_op_without_a_forward_rule_is_named():
    @gc.primitive
    def halve(x):
        return x * 0.5

    gc.defvjp(halve, lambda g, ans, x: g * 0.5)
    gc.check_grads(halve, X, modes=("rev",))
    with pytest.raises(NotImplementedError, match=r"halve: no JVP .* gradcore.defjvp\(halve"):
        gc.check_grads(halve, X)


def test_modes_are_checked():
    with pytest.raises(ValueError, match="modes are 'fwd' and 'rev', got 'forward'"):
        gc.check_grads(gc.sin, X, modes=("forward",))
