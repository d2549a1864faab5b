"""gc.grad's checks of how it is called: argnum in range, and a warning, once, when the output
does not depend on the input (the gradient would silently be zero)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import gradcore as gc


@pytest.mark.parametrize("make", [gc.grad, gc.value_and_grad, gc.elementwise_grad])
def test_argnum_out_of_range_names_it_and_the_range(make):
    f = make(lambda x, y: gc.sum(x * y), argnum=2)
    with pytest.raises(
        ValueError,
        match=r"argnum 2 is out of range for a call with 2 positional arguments; pass argnum "
        r"between 0 and 1",
    ):
        f(np.ones(2), np.ones(2))
    with pytest.raises(ValueError, match=r"argnum -3 is out of range"):
        make(lambda x, y: gc.sum(x * y), argnum=(0, -3))(np.ones(2), np.ones(2))
    np.testing.assert_array_equal(
        gc.grad(lambda x, y: gc.sum(x * y), argnum=-1)(np.ones(2), np.full(2, 3.0)), np.ones(2)
    )


@pytest.mark.parametrize(
    "constant",
    [
        lambda x: 3,
        lambda x: 2.5,
        lambda x: math.exp(float(gc.sum(x))),
        lambda x: gc.sum(np.ones(2)),
    ],
    ids=["int", "float", "through-float", "other-array"],
)
def test_a_constant_output_warns_once_saying_so(constant):
    g = gc.grad(constant)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            np.testing.assert_array_equal(g(np.ones(2)), np.zeros(2))
    assert len(caught) == 1
    assert caught[0].filename == __file__  # points at the caller's line
    assert "does not depend on argument 0 (it is constant with respect to it), so the " \
        "gradient is zero" in str(caught[0].message)  # fmt: skip


def test_a_real_gradient_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gc.grad(lambda x: gc.sum(x * x))(np.ones(2))
        gc.value_and_grad(lambda x, y: gc.sum(y), argnum=1)(np.ones(2), np.ones(2))
