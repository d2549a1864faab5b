"""The differential operators: grad, value_and_grad, vjp, elementwise_grad, stop_gradient,
to_dot; higher-order derivatives through nested traces; pytrees as arguments and gradients; and
every error the core raises, checked by its message.
"""

from __future__ import annotations

import gc as garbage_collector
import math
import weakref

import numpy as np
import pytest
from conftest import host, on

import gradcore as gc

X = np.array([-1.3, -0.2, 0.4, 1.7])


# ---------------------------------------------------------------------------------------------
# grad and friends


def test_grad_of_a_python_float_is_a_python_float():
    g = gc.grad(lambda x: x * x + 3.0 * x)(2.0)
    assert type(g) is float
    assert g == 7.0


def test_grad_follows_the_device_and_shape_of_its_input(device):
    x = on(device, X)
    g = gc.grad(lambda x: gc.sum(gc.sin(x)))(x)
    assert gc.device_of(g) == device
    np.testing.assert_allclose(host(g), np.cos(X), rtol=1e-14)


def test_fan_out_reuse_of_one_value_accumulates_every_path(device):
    """f(x) = x*x + sin(x)*x uses x four times; f'(x) = 2x + cos(x) x + sin(x)."""

    def f(x):
        return gc.sum(x * x + gc.sin(x) * x)

    g = gc.grad(f)(on(device, X))
    np.testing.assert_allclose(host(g), 2 * X + np.cos(X) * X + np.sin(X), rtol=1e-14)
    gc.check_grads(f, on(device, X), order=2)


def test_a_value_reused_through_a_deep_chain(device):
    """y = x; then y = y * x thirty times: d/dx x**31 = 31 x**30."""

    def f(x):
        y = x
        for _ in range(30):
            y = y * x
        return gc.sum(y)

    x_host = np.array([0.9, 1.0, 1.05])
    g = gc.grad(f)(on(device, x_host))
    np.testing.assert_allclose(host(g), 31 * x_host**30, rtol=1e-12)


def test_gradient_of_an_unused_argument_is_zero_of_its_shape_and_dtype(device):
    x, y = on(device, X, "float32"), on(device, np.ones((2, 3)), "float32")
    gx, gy = gc.grad(lambda x, y: gc.sum(x * 2.0), argnum=(0, 1))(x, y)
    np.testing.assert_array_equal(host(gx), np.full(4, 2.0, np.float32))
    assert host(gy).dtype == np.float32
    np.testing.assert_array_equal(host(gy), np.zeros((2, 3), np.float32))


def test_gradient_of_a_0d_array_is_a_0d_array(device):
    g = gc.grad(lambda x: x * x)(on(device, 1.5, "float32"))
    assert g.shape == () and host(g).dtype == np.float32 and float(host(g)) == 3.0
    if device == "cpu":
        assert type(g) is np.ndarray  # an array, not a NumPy scalar


def test_gradient_of_a_constant_function_is_zero(device):
    x = on(device, X)
    with pytest.warns(UserWarning, match="does not depend on argument 0"):
        np.testing.assert_array_equal(host(gc.grad(lambda x: 3.0)(x)), np.zeros(4))
    np.testing.assert_array_equal(host(gc.grad(lambda x: gc.sum(x) * 0.0)(x)), np.zeros(4))


def test_argnum_selects_and_orders_the_gradients(device):
    a, b, c = on(device, 2.0), on(device, 3.0), on(device, 5.0)

    def f(a, b, c):
        return a * b * b * c

    assert float(host(gc.grad(f)(a, b, c))) == 45.0
    assert float(host(gc.grad(f, argnum=1)(a, b, c))) == 60.0
    gc_, ga = gc.grad(f, argnum=(2, 0))(a, b, c)
    assert (float(host(gc_)), float(host(ga))) == (18.0, 45.0)
    (only,) = gc.grad(f, argnum=(1,))(a, b, c)
    assert float(host(only)) == 60.0


def test_keyword_arguments_are_passed_through_and_not_differentiated(device):
    x = on(device, X)
    g = gc.grad(lambda x, scale=1.0: gc.sum(x * scale))(x, scale=3.0)
    np.testing.assert_array_equal(host(g), np.full(4, 3.0))


def test_value_and_grad_returns_both(device):
    x = on(device, X)
    value, g = gc.value_and_grad(lambda x: gc.sum(gc.exp(x)))(x)
    assert float(host(value)) == pytest.approx(np.exp(X).sum(), rel=1e-14)
    np.testing.assert_allclose(host(g), np.exp(X), rtol=1e-14)
    value, (g0, g1) = gc.value_and_grad(lambda x, y: gc.sum(x * y), argnum=(0, 1))(x, x * 2.0)
    assert float(host(value)) == pytest.approx(2 * (X**2).sum())
    np.testing.assert_allclose(host(g0), 2 * X)
    np.testing.assert_allclose(host(g1), X)


def test_value_and_grad_of_a_python_float():
    value, g = gc.value_and_grad(gc.sin)(0.5)
    assert value == pytest.approx(math.sin(0.5))
    assert g == pytest.approx(math.cos(0.5))


def test_vjp_gives_the_value_and_a_function_that_may_be_called_twice(device):
    a = on(device, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    x = on(device, [0.5, -1.0])
    value, vjp_fun = gc.vjp(lambda a, x: gc.tanh(a @ x), a, x)
    expected = np.tanh(host(a) @ host(x))
    np.testing.assert_allclose(host(value), expected, rtol=1e-14)
    u = np.array([1.0, -2.0, 0.5])
    first = vjp_fun(on(device, u))
    second = vjp_fun(on(device, u))
    third = vjp_fun(on(device, 2 * u))
    local = u * (1 - expected**2)
    np.testing.assert_allclose(host(first[0]), np.outer(local, host(x)), rtol=1e-14)
    np.testing.assert_allclose(host(first[1]), host(a).T @ local, rtol=1e-14)
    for g1, g2, g3 in zip(first, second, third):
        np.testing.assert_array_equal(host(g1), host(g2))
        np.testing.assert_allclose(host(g3), 2 * host(g1), rtol=1e-14)


def test_vjp_of_a_function_with_several_outputs(device):
    x = on(device, X)
    value, vjp_fun = gc.vjp(lambda x: {"s": gc.sin(x), "c": [gc.cos(x), gc.sum(x)]}, x)
    np.testing.assert_allclose(host(value["c"][0]), np.cos(X))
    (g,) = vjp_fun({"s": on(device, np.ones(4)), "c": [on(device, np.ones(4)), on(device, 2.0)]})
    np.testing.assert_allclose(host(g), np.cos(X) - np.sin(X) + 2.0, rtol=1e-14)


def test_vjp_refuses_a_cotangent_of_the_wrong_shape(device):
    _, vjp_fun = gc.vjp(gc.sin, on(device, X))
    with pytest.raises(ValueError, match=r"vjp: the cotangent has shape \(3,\) .* \(4,\)"):
        vjp_fun(on(device, np.ones(3)))


def test_elementwise_grad_is_the_derivative_at_every_point(device):
    x = on(device, X)
    np.testing.assert_allclose(host(gc.elementwise_grad(gc.tanh)(x)), 1 - np.tanh(X) ** 2)
    g0, g1 = gc.elementwise_grad(lambda x, y: x * y, argnum=(0, 1))(x, x * 3.0)
    np.testing.assert_allclose(host(g0), 3 * X)
    np.testing.assert_allclose(host(g1), X)


def test_stop_gradient_treats_a_value_as_a_constant(device):
    x = on(device, X)
    g = gc.grad(lambda x: gc.sum(x * gc.stop_gradient(x)))(x)
    np.testing.assert_allclose(host(g), X)  # not 2x
    with pytest.warns(UserWarning, match="does not depend on argument 0"):
        g = gc.grad(lambda x: gc.sum(gc.stop_gradient(gc.sin(x))))(x)
    np.testing.assert_array_equal(host(g), np.zeros(4))
    # at second order too: d/dx [d/dy (y * stop(x))] = d/dx stop(x) = 0
    inner = lambda x: gc.elementwise_grad(lambda y: y * gc.stop_gradient(x))(x)
    second = gc.elementwise_grad(inner)
    np.testing.assert_array_equal(host(second(x)), np.zeros(4))
    # a Python number or a raw array passes through unchanged
    assert gc.stop_gradient(2.5) == 2.5
    assert gc.stop_gradient(x) is x


# ---------------------------------------------------------------------------------------------
# higher order: nested traces


def tanh_third_derivative(x):
    t = np.tanh(x)
    return (1 - t**2) * (6 * t**2 - 2)


def test_third_derivative_of_tanh_on_a_python_float():
    d3 = gc.grad(gc.grad(gc.grad(gc.tanh)))
    for x in [-2.0, -0.3, 0.0, 0.7, 1.5]:
        assert d3(x) == pytest.approx(tanh_third_derivative(x), rel=1e-12, abs=1e-15)


def test_third_derivative_of_tanh(device):
    d3 = gc.elementwise_grad(gc.elementwise_grad(gc.elementwise_grad(gc.tanh)))
    np.testing.assert_allclose(host(d3(on(device, X))), tanh_third_derivative(X), rtol=1e-12)
    scalar = gc.grad(gc.grad(gc.grad(gc.tanh)))(on(device, 0.7))
    assert float(host(scalar)) == pytest.approx(tanh_third_derivative(0.7), rel=1e-12)


def test_grad_of_grad_of_grad_of_a_polynomial(device):
    """d^3/dx^3 of x^4 + 2 x^3 = 24 x + 12; the fourth derivative is 24."""

    def f(x):
        return x**4 + 2.0 * x**3

    x = on(device, 1.5)
    assert float(host(gc.grad(gc.grad(gc.grad(f)))(x))) == pytest.approx(48.0)
    assert float(host(gc.grad(gc.grad(gc.grad(gc.grad(f))))(x))) == pytest.approx(24.0)


@pytest.mark.parametrize(
    "fun, second",
    [
        (gc.sin, lambda x: -np.sin(x)),
        (gc.exp, np.exp),
        (gc.sigmoid, lambda x: (s := 1 / (1 + np.exp(-x))) * (1 - s) * (1 - 2 * s)),
        (gc.log, lambda x: -1 / x**2),
        (gc.sqrt, lambda x: -0.25 * x**-1.5),
        (lambda x: 1.0 / x, lambda x: 2 / x**3),
        (lambda x: x**3, lambda x: 6 * x),
    ],
    ids=["sin", "exp", "sigmoid", "log", "sqrt", "reciprocal", "cube"],
)
def test_second_derivatives(device, fun, second):
    x_host = np.array([0.3, 0.9, 2.2])
    d2 = gc.elementwise_grad(gc.elementwise_grad(fun))
    np.testing.assert_allclose(host(d2(on(device, x_host))), second(x_host), rtol=1e-12)


def test_hessian_vector_product(device):
    """Reverse over reverse: grad of <grad f(x), v> is H v."""
    a_host = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 4.0]])
    a = on(device, a_host)

    def f(x):  # 1/2 x^T A x + sum(sin x): Hessian A - diag(sin x)
        return 0.5 * gc.sum(x * (a @ x)) + gc.sum(gc.sin(x))

    x_host, v_host = np.array([0.3, -0.7, 1.1]), np.array([1.0, 0.5, -2.0])
    v = on(device, v_host)
    hvp = gc.grad(lambda x: gc.sum(gc.grad(f)(x) * v))(on(device, x_host))
    expected = (a_host - np.diag(np.sin(x_host))) @ v_host
    np.testing.assert_allclose(host(hvp), expected, rtol=1e-12)


def test_nested_traces_do_not_confuse_perturbations(device):
    """d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1 (Siskind and Pearlmutter's example)."""

    def f(x):
        return x * gc.grad(lambda y: x + y)(on(device, 1.0))

    assert float(host(gc.grad(f)(on(device, 2.0)))) == 1.0


def test_closure_over_an_outer_traced_value(device):
    """grad_y sum(x y^2) = 2 x y; at y = x that is 2 x^2, whose derivative is 4 x."""
    x_host = np.array([0.5, -1.0])

    def outer(x):
        inner = gc.grad(lambda y: gc.sum(x * y * y))(x)  # 2 x y evaluated at y = x
        return gc.sum(inner)

    np.testing.assert_allclose(host(gc.grad(outer)(on(device, x_host))), 4 * x_host)


# ---------------------------------------------------------------------------------------------
# pytrees


def test_pytree_arguments_give_gradients_of_the_same_structure(device):
    params = {
        "layers": [
            {"W": on(device, [[1.0, 2.0], [3.0, 4.0]]), "b": on(device, [0.5, -0.5])},
            (on(device, [1.0, -1.0]), on(device, 2.0)),
        ],
        "scale": on(device, 3.0),
    }

    def loss(p, x):
        layer, (w2, b2) = p["layers"]
        h = gc.tanh(layer["W"] @ x + layer["b"])
        return p["scale"] * (gc.sum(w2 * h) + b2)

    x = on(device, [0.1, 0.2])
    g = gc.grad(loss)(params, x)
    assert isinstance(g, dict) and set(g) == {"layers", "scale"}
    assert isinstance(g["layers"], list) and len(g["layers"]) == 2
    assert isinstance(g["layers"][0], dict) and set(g["layers"][0]) == {"W", "b"}
    assert isinstance(g["layers"][1], tuple) and len(g["layers"][1]) == 2
    # against the chain rule by hand
    w, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([0.5, -0.5])
    xh = np.array([0.1, 0.2])
    h = np.tanh(w @ xh + b)
    dh = 3.0 * np.array([1.0, -1.0]) * (1 - h**2)
    np.testing.assert_allclose(host(g["layers"][0]["W"]), np.outer(dh, xh), rtol=1e-14)
    np.testing.assert_allclose(host(g["layers"][0]["b"]), dh, rtol=1e-14)
    np.testing.assert_allclose(host(g["layers"][1][0]), 3.0 * h, rtol=1e-14)
    assert float(host(g["layers"][1][1])) == 3.0
    assert float(host(g["scale"])) == pytest.approx(np.sum(np.array([1.0, -1.0]) * h) + 2.0)
    assert gc.device_of(g["layers"][0]["W"]) == device
    assert g["layers"][0]["W"].shape == (2, 2) and g["scale"].shape == ()


def test_pytree_with_python_float_leaves_and_several_argnums():
    def f(tree, scale):
        a, b = tree["pair"]
        return (a * b + tree["c"][0] ** 2) * scale

    tree = {"pair": (2.0, 3.0), "c": [4.0]}
    g_tree, g_scale = gc.grad(f, argnum=(0, 1))(tree, 0.5)
    assert g_tree == {"pair": (1.5, 1.0), "c": [4.0]}
    assert type(g_tree["pair"][0]) is float
    assert g_scale == 22.0


def test_pytree_gradients_keep_each_leaf_dtype(device):
    tree = [on(device, [1.0, 2.0], "float32"), {"w": on(device, [3.0], "float64")}]
    g = gc.grad(lambda t: gc.sum(t[0]) * gc.sum(t[1]["w"]))(tree)
    assert host(g[0]).dtype == np.float32
    assert host(g[1]["w"]).dtype == np.float64


def test_check_grads_and_higher_order_through_pytrees(device):
    tree = {"a": on(device, [0.3, 0.8]), "b": [on(device, [[0.5], [-0.2]])]}
    gc.check_grads(lambda t: gc.sum(gc.sin(t["a"] * t["b"][0])), tree, order=2)


# ---------------------------------------------------------------------------------------------
# memory: saved values are dropped during backward, not at its end


def test_saved_values_are_freed_during_backward():
    """By the time backward reaches the first layer, the later layers' outputs are gone; vjp,
    which keeps the graph for repeated calls, still holds them all."""
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

    gc.defvjp(layer, layer_vjp, saves="both")
    first_input = np.linspace(-1.0, 1.0, 1000)

    def deep(x):
        for _ in range(5):
            x = layer(x)
        return gc.sum(x)

    gc.grad(deep)(first_input)
    assert alive_when_first_layer_ran == [False, False, False, False]

    alive_when_first_layer_ran.clear()
    outputs.clear()
    gc.vjp(deep, first_input)[1](1.0)
    assert alive_when_first_layer_ran == [True, True, True, True]


# ---------------------------------------------------------------------------------------------
# to_dot


def test_to_dot_draws_the_graph_with_op_names_and_shapes(device):
    w, x = on(device, np.ones((3, 4))), on(device, np.ones(4))
    dot = gc.to_dot(lambda w, x: gc.sum(gc.tanh(w @ x) * 2.0), w, x)
    assert dot.startswith("digraph")
    assert dot.rstrip().endswith("}")
    for name in ["matmul", "tanh", "multiply", "sum"]:
        assert name in dot
    assert "3x4" in dot  # the weight
    assert "scalar" in dot  # the loss
    assert dot.count("->") == 5  # w, x -> matmul -> tanh -> multiply -> sum
    assert "<w<br/>3x4>" in dot and "<x<br/>4<br/>" in dot  # the inputs, by parameter name


def test_to_dot_carries_each_nodes_value_and_gradient():
    """The lecture's graph q = x + y, f = q * z at x=-2, y=5, z=-4: df/dq = z, df/dz = q."""
    dot = gc.to_dot(lambda x, y, z: (x + y) * z, -2.0, 5.0, -4.0)
    green, red = '<font color="darkgreen">{}</font>', '<font color="red">{}</font>'
    for name, value, gradient in [
        ("x", -2, -4), ("y", 5, -4), ("z", -4, 3), ("add", 3, -4), ("multiply", -12, 1)
    ]:  # fmt: skip
        label = f"<{name}<br/>scalar<br/>{green.format(value)}<br/>{red.format(gradient)}>"
        assert label in dot, name
    unnamed = gc.to_dot(lambda *xs: xs[0] * xs[1], 2.0, 3.0)
    assert "<arg 0<br/>" in unnamed and "<arg 1<br/>" in unnamed
    no_gradient = gc.to_dot(lambda x: x * 2.0, np.ones(3))  # not a scalar: values only
    assert '"red"' not in no_gradient and "[2, 2, 2]" in no_gradient


# ---------------------------------------------------------------------------------------------
# errors, each checked by its message


@pytest.mark.parametrize(
    "value, dtype_name",
    [([1, 2], "int64"), ([True, False], "bool"), ([1, 2], "int32")],
)
def test_grad_refuses_integer_and_boolean_arrays(device, value, dtype_name):
    x = gc.array(np.asarray(value, dtype=dtype_name), device=device)
    with pytest.raises(TypeError, match=rf"grad: argument 0 has dtype \S*{dtype_name}"):
        gc.grad(lambda x: gc.sum(x))(x)


@pytest.mark.parametrize("name", ["elementwise_grad", "vjp"])
def test_the_other_operators_refuse_integers_too(device, name):
    x = gc.array(np.array([1, 2]), device=device)
    with pytest.raises(TypeError, match=rf"{name}: argument 0 has dtype \S*int64"):
        if name == "vjp":
            gc.vjp(gc.sin, x)
        else:
            gc.elementwise_grad(gc.sin)(x)


def test_grad_refuses_python_ints_and_bools():
    with pytest.raises(TypeError, match="argument 0 has dtype int"):
        gc.grad(lambda x: x * 2.0)(3)
    with pytest.raises(TypeError, match="argument 1 has dtype bool"):
        gc.grad(lambda x, y: x * y, argnum=1)(1.0, True)


def test_grad_refuses_an_integer_leaf_of_a_pytree(device):
    tree = {"w": on(device, [1.0]), "n": gc.array(np.array([3]), device=device)}
    with pytest.raises(TypeError, match=r"a leaf of argument 0 has dtype \S*int64"):
        gc.grad(lambda t: gc.sum(t["w"]))(tree)


def test_grad_refuses_a_non_scalar_output_and_suggests_the_alternatives(device):
    with pytest.raises(TypeError, match=r"shape \(4,\).*elementwise_grad.*vjp"):
        gc.grad(gc.sin)(on(device, X))


def test_grad_refuses_a_tuple_output_and_suggests_vjp(device):
    with pytest.raises(TypeError, match="must return a scalar.*vjp"):
        gc.grad(lambda x: (gc.sum(x), gc.sum(x)))(on(device, X))


def test_a_primitive_without_a_vjp_names_the_op(device):
    @gc.primitive
    def mystery_op(x):
        return x * 2.0

    x = on(device, X)
    assert host(mystery_op(x)).tolist() == (2 * X).tolist()  # the forward works untraced
    with pytest.raises(NotImplementedError, match=r"mystery_op.*no VJP.*defvjp"):
        gc.grad(lambda x: gc.sum(mystery_op(x)))(x)


def test_a_none_vjp_marks_an_argument_as_constant(device):
    @gc.primitive
    def scaled(x, s):
        return x * s

    gc.defvjp(scaled, lambda g, ans, x, s: g * s, None)
    x, s = on(device, X), on(device, 3.0)
    np.testing.assert_array_equal(host(gc.grad(lambda x: gc.sum(scaled(x, s)))(x)), np.full(4, 3))
    gx, gs = gc.grad(lambda x, s: gc.sum(scaled(x, s)), argnum=(0, 1))(x, s)
    np.testing.assert_array_equal(host(gs), 0.0)  # declared constant: no gradient flows to s


def test_a_missing_rule_for_one_argument_names_the_op_and_the_argument(device):
    @gc.primitive
    def half_done(x, y):
        return x * y

    gc.defvjp(half_done, lambda g, ans, x, y: g * y)  # no rule for y
    x, y = on(device, X), on(device, X)
    gc.grad(lambda x: gc.sum(half_done(x, y)))(x)  # fine: y is not traced
    with pytest.raises(NotImplementedError, match=r"half_done.*argument 1"):
        gc.grad(lambda y: gc.sum(half_done(x, y)))(y)


def test_assignment_into_a_traced_value_is_refused(device):
    def f(x):
        x[0] = 1.0
        return gc.sum(x)

    with pytest.raises(TypeError, match="assignment into a traced value"):
        gc.grad(f)(on(device, X))


def test_shape_mismatch_names_the_op_and_the_shapes(device):
    a, b = on(device, np.ones(3)), on(device, np.ones(4))
    pattern = r"add\(.*\(3,\).*\(4,\)\)"
    with pytest.raises(ValueError, match=pattern):
        gc.add(a, b)
    with pytest.raises(ValueError, match=pattern):  # the same inside a trace
        gc.grad(lambda a: gc.sum(a + b))(a)
    with pytest.raises(ValueError, match=r"multiply\(.*\(3,\).*\(4,\)\)"):
        gc.grad(lambda a: gc.sum(a * b))(a)
