"""gc.optim: SGD with momentum, Nesterov and weight decay, step by step against the formulas,
and the learning-rate schedules against theirs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import host

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


# ---------------------------------------------------------------------------------------------
# Adam, AdamW, RMSprop, Adagrad (and clipping) against the formulas written out in float64

SHAPES = [(3, 2), (4,)]  # two parameters of different sizes share the scratch buffers


def _gradient(theta, k):
    """A gradient that depends on the parameters (so that errors compound) and on the step."""
    noise = np.random.default_rng(k).standard_normal(theta.shape)
    return 0.5 * theta**3 - theta + noise * (1.0 + 0.1 * k)


def run_optimizer(device, optimizer, steps, dtype="float64", start=None):
    """``steps`` updates from the fixed start; host copies of the params after each."""
    rng = np.random.default_rng(7)
    start = start or [rng.standard_normal(shape) for shape in SHAPES]
    params = [gc.array(theta, dtype=dtype, device=device) for theta in start]
    after = []
    for k in range(steps):
        grads = [gc.array(_gradient(gc.to_numpy(p).astype(np.float64), k), dtype=dtype,
                          device=device) for p in params]  # fmt: skip
        optimizer.step(params, grads)
        after.append([gc.to_numpy(p) for p in params])
    return after


def _clip(grads, clipnorm=None, clipvalue=None, global_clipnorm=None):
    """Keras's clipping: g c / max(||g||, c), each or jointly, or elementwise to [-c, c]."""
    if clipvalue is not None:
        return [np.clip(g, -clipvalue, clipvalue) for g in grads]
    if clipnorm is not None:
        return [g * clipnorm / max(np.sqrt(np.sum(g * g)), clipnorm) for g in grads]
    if global_clipnorm is not None:
        norm = np.sqrt(sum(np.sum(g * g) for g in grads))
        return [g * global_clipnorm / max(norm, global_clipnorm) for g in grads]
    return grads


def written_out(kind, kwargs, steps):
    """The trajectory by the formulas in the docstrings, in plain NumPy float64."""
    rng = np.random.default_rng(7)
    thetas = [rng.standard_normal(shape) for shape in SHAPES]
    clipping = {
        k: kwargs.pop(k) for k in ("clipnorm", "clipvalue", "global_clipnorm") if k in kwargs
    }
    schedule = kwargs.pop("learning_rate")
    zeros = [np.zeros_like(theta) for theta in thetas]
    s, r, r_max, m, b, v = ([z.copy() for z in zeros] for _ in range(6))
    if kind == "Adagrad":
        r = [np.full_like(theta, kwargs.get("initial_accumulator_value", 0.1)) for theta in thetas]
    after = []
    for k in range(steps):
        t = k + 1
        lr = schedule(k) if callable(schedule) else schedule
        grads = _clip([_gradient(theta, k) for theta in thetas], **clipping)
        wd = kwargs.get("weight_decay", 0.004 if kind == "AdamW" else 0.0)
        new = []
        for i, (theta, g) in enumerate(zip(thetas, grads)):
            if kind == "AdamW":
                theta = theta - lr * wd * theta
            else:
                g = g + wd * theta
            if kind in ("Adam", "AdamW"):
                b1, b2 = kwargs.get("beta_1", 0.9), kwargs.get("beta_2", 0.999)
                eps = kwargs.get("epsilon", 1e-7)
                s[i] = b1 * s[i] + (1 - b1) * g
                r[i] = b2 * r[i] + (1 - b2) * g * g
                r_max[i] = np.maximum(r_max[i], r[i])
                used = r_max[i] if kwargs.get("amsgrad") else r[i]
                s_hat_rate = lr / (1 - b1**t)
                theta = theta - s_hat_rate * s[i] / (np.sqrt(used) / np.sqrt(1 - b2**t) + eps)
            elif kind == "RMSprop":
                rho, alpha = kwargs.get("rho", 0.9), kwargs.get("momentum", 0.0)
                eps = kwargs.get("epsilon", 1e-7)
                r[i] = rho * r[i] + (1 - rho) * g * g
                if kwargs.get("centered"):
                    m[i] = rho * m[i] + (1 - rho) * g
                    d = np.sqrt(r[i] - m[i] * m[i]) + eps
                else:
                    d = np.sqrt(r[i]) + eps
                if alpha:
                    b[i] = alpha * b[i] + g / d
                    theta = theta - lr * b[i]
                else:
                    theta = theta - lr * g / d
            elif kind == "Adagrad":
                r[i] = r[i] + g * g
                theta = theta - lr * g / (np.sqrt(r[i]) + kwargs.get("epsilon", 1e-7))
            elif kind == "SGD":
                alpha = kwargs.get("momentum", 0.0)
                v[i] = alpha * v[i] - lr * g
                theta = theta + v[i]
            new.append(theta)
        thetas = new
        after.append(thetas)
    return after


CASES = [
    ("Adam", {}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True, "weight_decay": 0.05}),
    ("Adam", {"learning_rate": optim.exponential_decay(0.02, 0.5, 20), "beta_1": 0.5}),
    ("AdamW", {}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1, "amsgrad": True, "epsilon": 1e-3}),
    ("RMSprop", {}),
    ("RMSprop", {"learning_rate": 0.01, "centered": True}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.9, "rho": 0.8}),
    ("RMSprop", {"learning_rate": 0.005, "centered": True, "momentum": 0.5, "weight_decay": 0.1}),
    ("Adagrad", {}),
    ("Adagrad", {"learning_rate": 0.1, "initial_accumulator_value": 0.0, "weight_decay": 0.01}),
    ("Adam", {"learning_rate": 0.01, "clipnorm": 1.0}),
    ("AdamW", {"learning_rate": 0.01, "global_clipnorm": 0.5}),
    ("RMSprop", {"learning_rate": 0.01, "clipvalue": 0.3}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "clipnorm": 0.7}),
    ("SGD", {"learning_rate": 0.05, "global_clipnorm": 1.5}),
    ("SGD", {"learning_rate": 0.05, "clipvalue": 0.1}),
]
DEFAULT_RATES = {"SGD": 0.01, "Adam": 0.001, "AdamW": 0.001, "RMSprop": 0.001, "Adagrad": 0.001}


def _case_id(case):
    kind, kwargs = case
    return kind + "".join(f"-{k}" for k in kwargs if k != "learning_rate")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_each_optimizer_follows_its_formulas_for_60_steps(device, case):
    kind, kwargs = case
    after = run_optimizer(device, getattr(optim, kind)(**kwargs), steps=60)
    expected = written_out(kind, {"learning_rate": DEFAULT_RATES[kind], **kwargs}, steps=60)
    for k, (got, want) in enumerate(zip(after, expected)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12, err_msg=f"step {k + 1}")


TORCH_NAMES = {  # Keras's names -> torch.optim's
    "Adam": lambda kw: {"betas": (kw.pop("beta_1", 0.9), kw.pop("beta_2", 0.999)),
                        "eps": kw.pop("epsilon", 1e-7), **kw},
    "AdamW": lambda kw: {"betas": (kw.pop("beta_1", 0.9), kw.pop("beta_2", 0.999)),
                         "eps": kw.pop("epsilon", 1e-7), "weight_decay": 0.004, **kw},
    "RMSprop": lambda kw: {"alpha": kw.pop("rho", 0.9), "eps": kw.pop("epsilon", 1e-7), **kw},
    "Adagrad": lambda kw: {"initial_accumulator_value": 0.1, "eps": kw.pop("epsilon", 1e-7), **kw},
}  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c[0] in TORCH_NAMES and not callable(c[1].get("learning_rate"))
     and not {"clipnorm", "clipvalue", "global_clipnorm"} & set(c[1])],
    ids=_case_id,
)  # fmt: skip
def test_each_optimizer_equals_torch_optim_for_60_steps(case):
    """The same, against PyTorch itself where it is installed (it is no test dependency)."""
    torch = pytest.importorskip("torch")
    kind, kwargs = case
    after = run_optimizer("cpu", getattr(optim, kind)(**kwargs), steps=60)
    rng = np.random.default_rng(7)
    params = [torch.tensor(rng.standard_normal(shape), requires_grad=True) for shape in SHAPES]
    torch_kwargs = TORCH_NAMES[kind](dict(kwargs))
    torch_kwargs["lr"] = torch_kwargs.pop("learning_rate", DEFAULT_RATES[kind])
    optimizer = getattr(torch.optim, kind)(params, foreach=False, **torch_kwargs)
    for k in range(60):
        for p in params:
            p.grad = torch.from_numpy(_gradient(p.detach().numpy(), k))
        optimizer.step()
        for p, got in zip(params, after[k]):
            np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-10, atol=1e-12)


JIT_CASES = [
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("Adam", {"learning_rate": optim.linear_decay(0.01, 0.001, 10), "amsgrad": True}),
    ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.05}),
    ("RMSprop", {"learning_rate": 0.01, "centered": True, "momentum": 0.5, "weight_decay": 0.01}),
    ("Adagrad", {"learning_rate": 0.05}),
    ("Adam", {"learning_rate": 0.01, "clipnorm": 0.1}),
    ("RMSprop", {"global_clipnorm": 0.1}),
    ("Adagrad", {"clipvalue": 0.01}),
]


@pytest.mark.parametrize("case", JIT_CASES, ids=[_case_id(c) for c in JIT_CASES])
def test_jitted_training_step_is_eager_bit_for_bit_for_20_steps(device, case):
    """A whole step (loss, gradients, update) under gc.jit, replayed: params, optimizer state
    and losses have the eager bits at every step, so nothing (the update count, the bias
    corrections, the schedule) was frozen when the step was recorded."""
    kind, kwargs = case
    rng = np.random.default_rng(0)
    x = gc.array(rng.standard_normal((16, 5)), dtype="float32", device=device)
    y = gc.array(rng.integers(0, 3, 16), device=device)
    loss = lambda p, x, y: gc.nn.softmax_cross_entropy(gc.nn.mlp(p, x), y)  # noqa: E731
    value_and_grad = gc.value_and_grad(loss)
    runs = []
    for jitted in (False, True):
        optimizer = getattr(optim, kind)(**kwargs)

        def step(params, x, y, optimizer=optimizer):
            value, grads = value_and_grad(params, x, y)
            optimizer.step(params, grads)
            return value

        params = gc.nn.init_mlp([5, 4, 3], seed=1, device=device)
        runs.append((gc.jit(step) if jitted else step, params, optimizer))
    (eager, eager_params, eager_opt), (jitted, jit_params, jit_opt) = runs
    for k in range(20):
        assert np.array_equal(host(eager(eager_params, x, y)), host(jitted(jit_params, x, y)))
        for a, b in zip(tree_host(eager_params), tree_host(jit_params)):
            assert np.array_equal(a, b), f"params differ at step {k + 1}"
        for a, b in zip(tree_host(eager_opt.state_dict()), tree_host(jit_opt.state_dict())):
            assert np.array_equal(a, b), f"optimizer state differs at step {k + 1}"
    assert len(jitted.programs) == 1 and jit_opt.iterations == eager_opt.iterations == 20


def tree_host(tree):
    return [np.asarray(leaf) for leaf in gc.pytree.tree_leaves(gc.to_numpy(tree))]


@pytest.mark.parametrize("case", JIT_CASES[:5], ids=[_case_id(c) for c in JIT_CASES[:5]])
def test_state_dict_round_trip_mid_trajectory_continues_identically(device, case):
    """Stopped after 30 steps, saved (on the host, as a checkpoint holds it), loaded into a
    new optimizer: the next 30 steps are those of the uninterrupted run, bit for bit."""
    kind, kwargs = case
    whole = run_optimizer(device, getattr(optim, kind)(**kwargs), steps=60, dtype="float32")
    first = getattr(optim, kind)(**kwargs)
    halfway = run_optimizer(device, first, steps=30, dtype="float32")[-1]
    state = gc.to_numpy(first.state_dict())
    assert state["iterations"] == 30 and all(isinstance(v, (int, list)) for v in state.values())
    second = getattr(optim, kind)(**kwargs)
    second.load_state_dict(state)
    rest = run_optimizer_from(device, second, halfway, first_step=30, steps=30)
    for got, want in zip(rest, whole[30:]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def run_optimizer_from(device, optimizer, start, first_step, steps):
    params = [gc.array(theta, dtype="float32", device=device) for theta in start]
    after = []
    for k in range(first_step, first_step + steps):
        grads = [gc.array(_gradient(gc.to_numpy(p).astype(np.float64), k), dtype="float32",
                          device=device) for p in params]  # fmt: skip
        optimizer.step(params, grads)
        after.append([gc.to_numpy(p) for p in params])
    return after


def test_state_starts_empty_and_names_its_slots():
    assert optim.Adam().state_dict() == {"iterations": 0, "first_moment": [], "second_moment": []}
    assert set(optim.Adam(amsgrad=True).state_dict()) == {
        "iterations", "first_moment", "second_moment", "max_second_moment"
    }  # fmt: skip
    assert set(optim.RMSprop(centered=True, momentum=0.9).state_dict()) == {
        "iterations", "mean_square", "mean_gradient", "velocity"
    }  # fmt: skip
    optimizer = optim.Adagrad(initial_accumulator_value=0.25)
    run_optimizer("cpu", optimizer, steps=1)
    assert optimizer.state_dict()["accumulator"][0].shape == SHAPES[0]


def test_loading_another_optimizers_state_is_refused():
    sgd = optim.SGD(0.1, momentum=0.9)
    run_optimizer("cpu", sgd, steps=1)
    with pytest.raises(ValueError, match=r"Adam: the state to load holds \['iterations', "
                       r"'velocity'\] but this optimizer keeps \['first_moment', 'iterations', "
                       r"'second_moment'\]; was it saved by another optimizer"):  # fmt: skip
        optim.Adam().load_state_dict(sgd.state_dict())


def test_a_cpu_step_allocates_no_temporary_per_parameter():
    """After the first step (state and the two scratch buffers), a step of each optimizer
    allocates less than one parameter's worth of memory: the ufuncs write into place."""
    import tracemalloc

    n = 250_000  # 1 MB per float32 parameter
    for optimizer in (optim.SGD(0.1, momentum=0.9), optim.Adam(amsgrad=True, weight_decay=0.1),
                      optim.AdamW(), optim.RMSprop(centered=True, momentum=0.9),
                      optim.Adagrad(clipnorm=1.0)):  # fmt: skip
        params = [np.ones(n, np.float32), np.ones((n // 2, 2), np.float32)]
        grads = [np.full(n, 0.5, np.float32), np.full((n // 2, 2), -0.5, np.float32)]
        optimizer.step(params, grads)
        tracemalloc.start()
        optimizer.step(params, grads)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < n, f"{type(optimizer).__name__} allocated {peak} bytes in a step"


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda: optim.Adam(beta_1=1.0), ValueError, r"Adam: beta_1 must be in \[0, 1\), got 1.0"),
        (lambda: optim.Adam(beta_2="0.9"), TypeError, r"Adam: beta_2 must be a number, got str"),
        (lambda: optim.Adam(epsilon=-1.0), ValueError, r"Adam: epsilon must be non-negative"),
        (lambda: optim.Adam(amsgrad="yes"), TypeError, r"Adam: amsgrad must be True or False"),
        (lambda: optim.AdamW(learning_rate=-1.0), ValueError,
         r"AdamW: learning_rate must be positive, got -1.0"),
        (lambda: optim.RMSprop(rho=-0.1), ValueError, r"RMSprop: rho must be in \[0, 1\)"),
        (lambda: optim.RMSprop(momentum=1.5), ValueError, r"RMSprop: momentum must be in"),
        (lambda: optim.RMSprop(centered=None), TypeError, r"RMSprop: centered must be True"),
        (lambda: optim.Adagrad(initial_accumulator_value=-1.0), ValueError,
         r"Adagrad: initial_accumulator_value must be non-negative, got -1.0"),
        (lambda: optim.Adagrad(weight_decay=float("nan")), ValueError,
         r"Adagrad: weight_decay must be non-negative, got nan"),
        (lambda: optim.Adam(clipnorm=0.0), ValueError, r"Adam: clipnorm must be positive, got 0.0"),
        (lambda: optim.SGD(clipvalue="1"), TypeError, r"SGD: clipvalue must be a number, got str"),
        (lambda: optim.SGD(clipnorm=1.0, global_clipnorm=2.0), ValueError,
         r"SGD: only one of clipnorm, clipvalue and global_clipnorm can be set, got "
         r"clipnorm=1.0, global_clipnorm=2.0"),
    ],
)  # fmt: skip
def test_adaptive_optimizers_refuse_bad_arguments_by_name(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_keras_defaults():
    adam, adamw = optim.Adam(), optim.AdamW()
    assert (adam.learning_rate, adam.beta_1, adam.beta_2, adam.epsilon, adam.amsgrad) == (
        0.001, 0.9, 0.999, 1e-7, False
    )  # fmt: skip
    assert adamw.weight_decay == 0.004 and adam.weight_decay == 0.0
    rms = optim.RMSprop()
    assert (rms.learning_rate, rms.rho, rms.momentum, rms.epsilon, rms.centered) == (
        0.001, 0.9, 0.0, 1e-7, False
    )  # fmt: skip
    adagrad = optim.Adagrad()
    assert (adagrad.learning_rate, adagrad.initial_accumulator_value, adagrad.epsilon) == (
        0.001, 0.1, 1e-7
    )  # fmt: skip
    assert optim.SGD().clipnorm is optim.SGD().clipvalue is optim.SGD().global_clipnorm is None


def test_step_refuses_gradients_that_do_not_match_the_params():
    with pytest.raises(ValueError, match=r"Adam.step: 2 parameter arrays but 1 gradients"):
        optim.Adam().step([np.ones(2), np.ones(3)], [np.ones(2)])


def test_no_step_reads_the_device():
    """On the "counting" device (CuPy's namespace over NumPy, counting host reads), a step of
    each optimizer, clipping included, never waits for the device."""
    from counting_backend import READS, register

    register()
    for optimizer in (optim.SGD(0.1, momentum=0.9, nesterov=True, clipvalue=1.0),
                      optim.Adam(amsgrad=True, weight_decay=0.1, clipnorm=1.0),
                      optim.AdamW(global_clipnorm=1.0), optim.RMSprop(centered=True, momentum=0.9),
                      optim.Adagrad()):  # fmt: skip
        params = [
            gc.array(np.ones((3, 2)), device="counting"),
            gc.array(np.ones(4), device="counting"),
        ]
        grads = [
            gc.array(np.full((3, 2), 0.5), device="counting"),
            gc.array(np.ones(4), device="counting"),
        ]
        READS.reset()
        with READS.step():
            optimizer.step(params, grads)
            optimizer.step(params, grads)
        assert READS.in_step == [], type(optimizer).__name__
    READS.reset()


@pytest.mark.parametrize("case", JIT_CASES[:5], ids=[_case_id(c) for c in JIT_CASES[:5]])
def test_fit_checkpoints_carry_every_optimizers_state(tmp_path, case):
    """Two epochs, a checkpoint, two more from it: the params of four epochs in one run."""
    kind, kwargs = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")

    def loss(p, x, y):
        return gc.nn.binary_cross_entropy_with_logits(gc.nn.mlp(p, x)[:, 0], y)

    def fit(params, epochs, **more):
        optimizer = getattr(optim, kind)(**kwargs)
        gc.train.fit(loss, params, x, y, optimizer=optimizer, epochs=epochs, batch_size=8,
                     progress=False, **more)  # fmt: skip

    whole, resumed = gc.nn.init_mlp([4, 5, 1]), gc.nn.init_mlp([4, 5, 1])
    fit(whole, 4)
    fit(resumed, 2, checkpoint=tmp_path / "run.npz")
    fit(resumed, 4, checkpoint=tmp_path / "run.npz", resume=True)
    for a, b in zip(tree_host(whole), tree_host(resumed)):
        np.testing.assert_array_equal(a, b)


def test_a_resume_with_other_optimizer_settings_is_refused_by_name(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")

    def fit(optimizer, **more):
        loss = lambda p, x, y: gc.nn.binary_cross_entropy_with_logits(  # noqa: E731
            gc.nn.mlp(p, x)[:, 0], y
        )
        path = tmp_path / "run.npz"
        gc.train.fit(loss, gc.nn.init_mlp([3, 2, 1]), x, y, optimizer=optimizer, epochs=1,
                     batch_size=8, progress=False, checkpoint=path, **more)  # fmt: skip

    fit(optim.Adam(0.01, amsgrad=True, clipnorm=1.0))
    _, meta = gc.train.load_checkpoint(tmp_path / "run.npz")
    assert meta["settings"] == {
        "optimizer": "Adam", "learning_rate": 0.01, "weight_decay": 0.0, "beta_1": 0.9,
        "beta_2": 0.999, "epsilon": 1e-7, "amsgrad": True, "clipnorm": 1.0, "batch_size": 8,
        "seed": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match=r"written with beta_1=0.9 but this run has beta_1=0.5"):
        fit(optim.Adam(0.01, beta_1=0.5, amsgrad=True, clipnorm=1.0), resume=True)
    with pytest.raises(ValueError, match=r"written with optimizer='Adam', .* this run has "
                       r"optimizer='RMSprop'"):  # fmt: skip
        fit(optim.RMSprop(0.01), resume=True)
