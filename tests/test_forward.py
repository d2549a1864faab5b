"""Forward mode and what is built on it: jvp, jacfwd, jacrev, hessian, hvp.

Each is checked in float64 on every backend against central differences and against reverse
mode, on random compositions of the ops; nested forward and reverse traces (jvp of grad, grad
of jvp) against each other; and a jitted jvp against the eager one, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host, on

import gradcore as gc
from gradcore.ops import affine, sigmoid_cross_entropy
from gradcore.tracer import Primitive

EPS = 1e-6


def central(fun, args, tangents):
    """``(f(x + eps t) - f(x - eps t)) / 2 eps`` on host float64 copies: the oracle."""
    plus = fun(*[a + EPS * t for a, t in zip(args, tangents)])
    minus = fun(*[a - EPS * t for a, t in zip(args, tangents)])
    return (host(plus) - host(minus)) / (2 * EPS)


# ---------------------------------------------------------------------------------------------
# random programs: each step applies one op to values already computed; every value has the
# shape (3, 4) (reductions are broadcast back), so that any op can follow any other


def _unary(device):
    w = on(device, np.random.default_rng(7).normal(size=(4, 4)) / 2)
    b = on(device, np.linspace(-0.5, 0.5, 4))
    return [
        gc.sin, gc.cos, gc.tanh, gc.sigmoid, gc.square,
        lambda a: gc.exp(0.3 * a),
        lambda a: gc.log(1.0 + gc.square(a)),
        lambda a: gc.sqrt(gc.square(a) + 0.5),
        lambda a: gc.relu(a) + 0.1 * a,
        lambda a: gc.abs(a) * a,
        lambda a: gc.clip(a, -0.9, 0.9),
        lambda a: a @ w,
        lambda a: affine(a, w, b),
        lambda a: gc.log_softmax(a, axis=1),
        lambda a: gc.softmax(a, axis=0),
        lambda a: a - gc.logsumexp(a, axis=1, keepdims=True),
        lambda a: a * gc.mean(a, axis=0, keepdims=True),
        lambda a: gc.sum(a, axis=1, keepdims=True) - a,
        lambda a: gc.max(a, axis=1, keepdims=True) * a,
        lambda a: gc.reshape(gc.transpose(a), (3, 4)),
        lambda a: gc.concatenate([a[:, 2:], a[:, :2]], axis=1),
        lambda a: gc.broadcast_to(gc.expand_dims(a[1, :], 0), (3, 4)) * a,
        lambda a: gc.squeeze(gc.expand_dims(a, 0)) ** 3,
        lambda a: gc.astype(a, a.dtype) / 2.0,
        gc.softplus, gc.erf, gc.gelu, gc.leaky_relu,
        lambda a: gc.gelu(a, approximate="tanh"),
        lambda a: gc.log1p(gc.square(a)),
        lambda a: gc.expm1(0.3 * a),
        lambda a: gc.cumsum(a, axis=1),
        lambda a: gc.flip(a, axis=0) * a,
        lambda a: gc.prod(a, axis=0, keepdims=True) + a,
        lambda a: (a - gc.mean(a, axis=0)) / gc.std(a, axis=0, keepdims=True, ddof=1),
        lambda a: a * gc.var(a, axis=1, keepdims=True),
        lambda a: a / gc.norm(a, axis=1, keepdims=True),
        lambda a: a * gc.min(a, axis=0, keepdims=True),
    ]  # fmt: skip


BINARY = [
    gc.add, gc.subtract, gc.multiply, gc.maximum, gc.minimum,
    lambda a, b: a / (1.0 + gc.square(b)),
    lambda a, b: gc.power(gc.square(a) + 1.0, 0.3 * b),
    lambda a, b: gc.where(a > b, a, 0.5 * b),
    lambda a, b: gc.stack([a, b])[1, ...] * a,
    lambda a, b: sigmoid_cross_entropy(a, gc.sigmoid(b)),
    lambda a, b: a * b[0, :],
    lambda a, b: 2.0 - a * 0.5 + b,
    gc.logaddexp,
]  # fmt: skip


def random_program(seed: int, device: str, steps: int = 6):
    """``f(x, y)`` of shape (3, 4) made of ``steps`` ops, with operands chosen by ``seed``.

    The ops are taken in turn from one shuffled list of every op, so that the seeds 0 to 11
    of 6 steps use each op at least once.
    """
    ops = [(op, 1) for op in _unary(device)] + [(op, 2) for op in BINARY]
    order = np.random.default_rng(0).permutation(len(ops))
    rng = np.random.default_rng(seed)
    plan = []
    for step in range(steps):
        op, arity = ops[order[(seed * steps + step) % len(ops)]]
        plan.append((op, tuple(rng.integers(step + 2, size=arity))))

    def program(x, y):
        values = [x, y]
        for op, operands in plan:
            values.append(op(*[values[i] for i in operands]))
        return values[-1] + 0.1 * (x - y)  # depends on both inputs

    return program


def inputs(device: str, seed: int, shape=(3, 4), count: int = 2):
    rng = np.random.default_rng(1000 + seed)
    return [on(device, rng.normal(size=shape)) for _ in range(count)]


SEEDS = range(12)


@pytest.mark.parametrize("seed", SEEDS)
def test_jvp_of_random_programs_against_central_differences_and_reverse_mode(device, seed):
    f = random_program(seed, device)
    x, y = inputs(device, seed)
    tx, ty = inputs(device, seed + 50)
    out, tangent = gc.jvp(f, (x, y), (tx, ty))
    np.testing.assert_allclose(host(out), host(f(x, y)), rtol=1e-13, atol=1e-13)
    assert gc.device_of(tangent) == gc.device_of(out) == device
    expected = central(f, (x, y), (tx, ty))
    np.testing.assert_allclose(host(tangent), expected, rtol=1e-6, atol=1e-7)
    # <u, J t> = <J^T u, t>: forward and reverse mode are transposes of each other
    (u,) = inputs(device, seed + 99, count=1)
    gx, gy = gc.vjp(f, x, y)[1](u)
    forward = np.sum(host(u) * host(tangent))
    reverse = np.sum(host(gx) * host(tx)) + np.sum(host(gy) * host(ty))
    assert forward == pytest.approx(reverse, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_check_grads_in_both_modes_on_random_programs(device, seed):
    f = random_program(seed, device, steps=4)
    gc.check_grads(f, *inputs(device, seed), modes=("fwd", "rev"), order=2)


@pytest.mark.parametrize("seed", range(4))
def test_jacfwd_and_jacrev_agree_with_each_other_and_with_central_differences(device, seed):
    f = random_program(seed, device)
    x, y = inputs(device, seed)
    forward = gc.jacfwd(f, argnum=(0, 1))(x, y)
    reverse = gc.jacrev(f, argnum=(0, 1))(x, y)
    for argnum in range(2):
        assert host(forward[argnum]).shape == (3, 4, 3, 4)
        np.testing.assert_allclose(host(forward[argnum]), host(reverse[argnum]), rtol=1e-12,
                                   atol=1e-12)  # fmt: skip
    # the column for x[1, 2] is the directional derivative along that unit vector
    unit = np.zeros((3, 4))
    unit[1, 2] = 1.0
    column = central(lambda x: f(x, y), (x,), (on(device, unit),))
    np.testing.assert_allclose(host(forward[0])[:, :, 1, 2], column, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(4))
def test_hessian_is_forward_over_reverse_and_agrees_with_reverse_over_reverse(device, seed):
    f = random_program(seed, device, steps=4)
    c = on(device, np.random.default_rng(seed).normal(size=(3, 4)))

    def loss(x, y):
        return gc.sum(f(x, y) * c)

    x, y = inputs(device, seed)
    h = host(gc.hessian(loss)(x, y))
    assert h.shape == (3, 4, 3, 4)
    np.testing.assert_allclose(h, host(gc.jacrev(gc.jacrev(loss))(x, y)), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(h, h.transpose(2, 3, 0, 1), rtol=1e-10, atol=1e-10)
    # H v against the central differences of the gradient, and against the full Hessian
    v = inputs(device, seed + 7, shape=(3, 4), count=1)[0]
    (hv,) = gc.hvp(lambda x: loss(x, y), (x,), (v,))
    np.testing.assert_allclose(host(hv), np.einsum("ijkl,kl->ij", h, host(v)), rtol=1e-10,
                               atol=1e-10)  # fmt: skip
    numeric = central(gc.grad(lambda x: loss(x, y)), (x,), (v,))
    np.testing.assert_allclose(host(hv), numeric, rtol=1e-5, atol=1e-6)


def test_hessian_of_a_quadratic_form_is_exact(device):
    a = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, -1.0], [0.0, -1.0, 4.0]])
    matrix = on(device, a)

    def quadratic(x):
        return 0.5 * gc.sum(x * (matrix @ x))

    x = on(device, [0.3, -0.7, 1.1])
    np.testing.assert_allclose(host(gc.hessian(quadratic)(x)), a, rtol=1e-14)
    np.testing.assert_allclose(host(gc.jacfwd(gc.grad(quadratic))(x)), a, rtol=1e-14)
    (hv,) = gc.hvp(quadratic, (x,), (on(device, [1.0, 0.0, 2.0]),))
    np.testing.assert_allclose(host(hv), a @ [1.0, 0.0, 2.0], rtol=1e-14)


def test_hvp_of_a_network_loss_against_differences_of_its_gradient(device):
    """A Hessian-vector product of a real training loss: an MLP with softmax cross-entropy."""
    params = gc.nn.init_mlp([4, 5, 3], seed=1, device=device, dtype="float64")
    rng = np.random.default_rng(3)
    x = on(device, rng.normal(size=(6, 4)))
    labels = on(device, np.eye(3)[rng.integers(3, size=6)])

    def loss(params):
        return gc.nn.softmax_cross_entropy(gc.nn.mlp(params, x, activation=gc.tanh), labels)

    v = [{k: on(device, rng.normal(size=host(p[k]).shape)) for k in p} for p in params]
    (hv,) = gc.hvp(loss, (params,), (v,))
    plus = gc.grad(loss)([{k: p[k] + EPS * d[k] for k in p} for p, d in zip(params, v)])
    minus = gc.grad(loss)([{k: p[k] - EPS * d[k] for k in p} for p, d in zip(params, v)])
    for layer in range(2):
        for k in ("W", "b"):
            numeric = (host(plus[layer][k]) - host(minus[layer][k])) / (2 * EPS)
            np.testing.assert_allclose(host(hv[layer][k]), numeric, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# nesting: the trace ids keep the perturbations of nested traces apart


def test_jvp_of_grad_and_grad_of_jvp(device):
    x = on(device, [0.4, -1.3, 2.0])
    t = on(device, [1.0, 0.5, -2.0])

    def f(x):
        return gc.sum(gc.sin(x) * x**2)

    def second(x):  # d2/dx2 of sin(x) x^2
        return 2.0 * np.sin(x) + 4.0 * x * np.cos(x) - x**2 * np.sin(x)

    expected = second(host(x)) * host(t)
    _, hv = gc.jvp(gc.grad(f), (x,), (t,))  # forward over reverse
    np.testing.assert_allclose(host(hv), expected, rtol=1e-13)
    # reverse over forward: the gradient of <grad f, t> = jvp(f)(t) is H t
    rof = gc.grad(lambda x: gc.jvp(f, (x,), (t,))[1])(x)
    np.testing.assert_allclose(host(rof), expected, rtol=1e-13)
    # forward over forward: a third derivative along t, t, t
    third = gc.jvp(lambda x: gc.jvp(f, (x,), (t,))[1], (x,), (t,))[1]
    analytic = gc.jvp(lambda x: gc.sum(gc.grad(f)(x) * t), (x,), (t,))[1]
    assert host(third) == pytest.approx(float(host(analytic)), rel=1e-13)


def test_nested_jvps_do_not_confuse_their_perturbations():
    """d/dx [x * d/dy (x + y)] = d/dx [x * 1] = 1; perturbation confusion would give 2."""

    def inner(x):
        return gc.jvp(lambda y: x + y, (1.0,), (1.0,))[1]

    assert gc.jvp(lambda x: x * inner(x), (2.0,), (1.0,))[1] == 1.0
    assert gc.grad(lambda x: x * inner(x))(2.0) == 1.0


# ---------------------------------------------------------------------------------------------
# pytrees, numbers, dtypes and argnums


def test_pytrees_in_and_out(device):
    params = {"w": on(device, [[0.5, -0.3], [0.2, 0.8]]), "b": [on(device, [0.1, -0.1])]}
    tangents = {"w": on(device, [[1.0, 0.0], [0.0, 2.0]]), "b": [on(device, [0.5, 0.5])]}
    x = on(device, [1.0, -2.0])

    def f(p, x):
        h = gc.tanh(p["w"] @ x + p["b"][0])
        return {"h": h, "total": [gc.sum(h)]}

    out, tangent = gc.jvp(f, (params, x), (tangents, gc.zeros_like(x)))
    assert set(tangent) == {"h", "total"} and len(tangent["total"]) == 1
    np.testing.assert_allclose(host(out["h"]), host(f(params, x)["h"]))
    expected = central(
        lambda w, b: f({"w": w, "b": [b]}, x)["h"],
        (params["w"], params["b"][0]),
        (tangents["w"], tangents["b"][0]),
    )
    np.testing.assert_allclose(host(tangent["h"]), expected, rtol=1e-6)
    assert host(tangent["total"][0]) == pytest.approx(expected.sum(), rel=1e-6)
    # the Jacobian: the output's tree holding the input's tree of blocks
    jac = gc.jacfwd(f)(params, x)
    assert host(jac["h"]["w"]).shape == (2, 2, 2) and host(jac["total"][0]["b"][0]).shape == (2,)
    rev = gc.jacrev(f)(params, x)
    np.testing.assert_allclose(host(jac["h"]["w"]), host(rev["h"]["w"]), rtol=1e-12)
    np.testing.assert_allclose(host(jac["total"][0]["b"][0]), host(rev["total"][0]["b"][0]))


def test_python_numbers_and_constant_outputs():
    out, tangent = gc.jvp(lambda a, b: a * b + 1.0, (2.0, 3.0), (1.0, 0.5))
    assert (out, tangent) == (7.0, 3.0 + 1.0)
    assert gc.jvp(lambda a: 5.0, (2.0,), (1.0,)) == (5.0, 0.0)
    x = gc.array([1.0, 2.0])
    out, tangent = gc.jvp(lambda x: (x, gc.ones_like(x)), (x,), (gc.ones_like(x),))
    np.testing.assert_array_equal(tangent[1], [0.0, 0.0])
    assert gc.jacfwd(lambda a: a**3)(2.0) == pytest.approx(12.0)
    assert gc.jacrev(lambda a: a**3)(2.0) == pytest.approx(12.0)
    assert gc.hessian(lambda a: a**3)(2.0) == pytest.approx(12.0)


def test_a_number_output_of_an_array_input_gives_an_array_jacobian(device):
    x = on(device, [1.0, 2.0, 3.0])
    for jac in (gc.jacfwd, gc.jacrev):
        got = jac(lambda x: gc.sum(x**2))(x)
        np.testing.assert_allclose(host(got), [2.0, 4.0, 6.0])
        got = jac(lambda x: [x, 2.0])(x)  # an output that does not depend on the input
        np.testing.assert_array_equal(host(got[1]), [0.0, 0.0, 0.0])


def test_tangents_keep_float32():
    x = gc.array([0.5, 1.5], dtype="float32")
    out, tangent = gc.jvp(lambda x: gc.sigmoid(x) * 2.0 + gc.sum(x), (x,), (gc.ones_like(x),))
    assert out.dtype == tangent.dtype == np.float32
    assert gc.jacfwd(gc.tanh)(x).dtype == np.float32
    assert gc.hessian(lambda x: gc.sum(gc.tanh(x)))(x).dtype == np.float32


def test_argnum_and_argnums_name_the_same_thing():
    x, y = gc.array([1.0, 2.0]), gc.array([3.0])

    def f(x, y):
        return x * y

    np.testing.assert_array_equal(gc.jacfwd(f, 1)(x, y), gc.jacfwd(f, argnums=1)(x, y))
    both = gc.jacrev(f, argnums=(0, 1))(x, y)
    assert isinstance(both, tuple) and both[1].shape == (2, 1)
    np.testing.assert_array_equal(
        gc.hessian(lambda x: gc.sum(x**3), argnums=0)(x), [[6, 0], [0, 12]]
    )
    with pytest.raises(TypeError, match="jacfwd: pass argnum or argnums, not both"):
        gc.jacfwd(f, 1, argnums=0)
    with pytest.raises(ValueError, match="jacrev: argnum 2 is out of range"):
        gc.jacrev(f, 2)(x, y)


# ---------------------------------------------------------------------------------------------
# errors


def test_every_op_has_a_forward_rule():
    prims = [value for value in vars(gc.ops).values() if isinstance(value, Primitive)]
    assert len(prims) > 50
    assert [p.name for p in prims if not p.jvps and p.jvp_argnum is None] == []


def test_an_op_without_a_forward_rule_is_named():
    @gc.primitive
    def twice(x):
        return 2.0 * x

    gc.defvjp(twice, lambda g, ans, x: 2.0 * g)
    x = gc.array([1.0])
    np.testing.assert_array_equal(gc.jacrev(twice)(x), [[2.0]])  # reverse mode works
    with pytest.raises(NotImplementedError, match=r"twice: no JVP .*gradcore.defjvp\(twice"):
        gc.jvp(twice, (x,), (x,))
    gc.defjvp(twice, lambda t, ans, x: 2.0 * t)
    np.testing.assert_array_equal(gc.jacfwd(twice)(x), [[2.0]])


def test_bad_tangents_are_refused_with_what_differs():
    x = gc.array([1.0, 2.0], dtype="float64")
    with pytest.raises(TypeError, match=r"jvp: primals and tangents must be tuples"):
        gc.jvp(gc.sin, x, x)
    with pytest.raises(ValueError, match="jvp: 1 primals but 2 tangents"):
        gc.jvp(gc.sin, (x,), (x, x))
    with pytest.raises(ValueError, match=r"shape \(3,\) but its primal has shape \(2,\)"):
        gc.jvp(gc.sin, (x,), (gc.array([1.0, 2.0, 3.0], dtype="float64"),))
    with pytest.raises(TypeError, match="dtype float32 but its primal has dtype float64"):
        gc.jvp(gc.sin, (x,), (gc.array([1.0, 2.0]),))
    with pytest.raises(ValueError, match="tangent of argument 0 must have the structure"):
        gc.jvp(lambda p: p[0], ([x, x],), ([x],))
    with pytest.raises(TypeError, match="jvp: argument 0 has dtype int64; derivatives"):
        gc.jvp(gc.sin, (np.array([1, 2]),), (np.array([1, 2]),))
    with pytest.raises(gc.DeviceError):
        gc.jvp(gc.sin, (x,), (gc.array([1.0, 2.0], dtype="float64", device="strict"),))
    with pytest.raises(TypeError, match=r"hvp: primals must be a tuple"):
        gc.hvp(lambda x: gc.sum(x), x, x)


# ---------------------------------------------------------------------------------------------
# jit


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jitted_jvp_equals_the_eager_one_bit_for_bit(device, seed, dtype):
    f = random_program(seed, device)
    jitted = gc.jit(lambda x, y, tx, ty: gc.jvp(f, (x, y), (tx, ty)))
    for call in range(3):  # the recording, then replays with new inputs
        rng = np.random.default_rng(seed + call)
        args = [on(device, rng.normal(size=(3, 4)), dtype) for _ in range(4)]
        got = jitted(*args)
        expected = gc.jvp(f, tuple(args[:2]), tuple(args[2:]))
        for g, e in zip(got, expected):
            assert host(g).dtype == np.dtype(dtype)
            np.testing.assert_array_equal(host(g), host(e))
    assert len(jitted.programs) == 1


def test_jvp_of_a_jitted_function_differentiates_the_function(device):
    f = random_program(5, device)
    x, y, tx, ty = inputs(device, 5, count=4)
    jitted = gc.jit(f)
    jitted(x, y)  # recorded
    got = gc.jvp(jitted, (x, y), (tx, ty))
    expected = gc.jvp(f, (x, y), (tx, ty))
    np.testing.assert_array_equal(host(got[1]), host(expected[1]))


def test_jitted_hvp_equals_the_eager_one_bit_for_bit(device):
    f = random_program(3, device, steps=4)

    def loss(x):
        return gc.sum(f(x, x * 0.5))

    jitted = gc.jit(lambda x, v: gc.hvp(loss, (x,), (v,)))
    for call in range(2):
        x, v = inputs(device, call)
        np.testing.assert_array_equal(host(jitted(x, v)[0]), host(gc.hvp(loss, (x,), (v,))[0]))
