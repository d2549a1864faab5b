"""The backward pass frees as it goes: each node's saved values are dropped once used."""

from __future__ import annotations

import gc as garbage_collector
import weakref

import numpy as np

import gradcore as gc


def test_saved_values_are_freed_during_backward() -> None:
    """By the time backward reaches the first layer, the later layers' outputs are gone."""
    alive_when_first_layer_ran: list[bool] = []
    outputs: list[weakref.ref] = []

    @gc.primitive
    def layer(x):
        out = np.tanh(x)
        outputs.append(weakref.ref(out))
        return out

    def layer_vjp(g, ans, x):
        if x is first_input:
            garbage_collector.collect()
            alive_when_first_layer_ran.extend(ref() is not None for ref in outputs[1:])
        return g * (1.0 - ans * ans)

    gc.defvjp(layer, layer_vjp)
    first_input = np.linspace(-1.0, 1.0, 1000)

    def deep(x):
        for _ in range(5):
            x = layer(x)
        return gc.sum(x)

    gc.grad(deep)(first_input)
    assert alive_when_first_layer_ran == [False, False, False, False]

    # vjp keeps the graph for repeated calls, so there the same outputs are all still alive
    alive_when_first_layer_ran.clear()
    outputs.clear()
    gc.vjp(deep, first_input)[1](1.0)
    assert alive_when_first_layer_ran == [True, True, True, True]


def test_vjp_keeps_the_graph_for_repeated_calls() -> None:
    x = np.linspace(-1.0, 1.0, 3)
    value, vjp_fn = gc.vjp(lambda x: gc.tanh(x) * 2.0, x)
    first = vjp_fn(np.ones(3))
    second = vjp_fn(np.ones(3))
    np.testing.assert_allclose(first[0], second[0])
    np.testing.assert_allclose(first[0], 2.0 * (1.0 - np.tanh(x) ** 2))
