"""gc.jit: a replayed call gives the eager call's bits; what a recording cannot see is refused."""

from __future__ import annotations

import math
import shutil
import subprocess
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import host, on
from gradcore.backends import cuda_fusion
from gradcore.backends.cuda_fusion import fusion_groups

import gradcore as gc
from gradcore.jit import SMALL, RecordingError, _nothing, update_in_place


def _layers(device, sizes=(6, 5, 3), seed=0):
    return gc.nn.init_mlp(list(sizes), seed=seed, device=device)


def _copy(device, params):
    return [{k: gc.to_device(gc.to_numpy(v), device) for k, v in layer.items()} for layer in params]


def _batch(device, seed, n=4, features=6, classes=3):
    rng = np.random.default_rng(seed)
    x = gc.array(rng.standard_normal((n, features)), dtype="float32", device=device)
    y = gc.array(rng.integers(0, classes, n), device=device)
    return x, y


def _host(tree):
    return [np.asarray(leaf) for leaf in gc.pytree.tree_leaves(gc.to_numpy(tree))]


def _same(a, b):
    ha, hb = _host(a), _host(b)
    return len(ha) == len(hb) and all(np.array_equal(x, y) for x, y in zip(ha, hb))


def _training_step(loss="softmax", momentum=0.9, learning_rate=None):
    optimizer = gc.optim.SGD(learning_rate or gc.optim.linear_decay(0.5, 0.05, 4), momentum)
    if loss == "softmax":
        objective = lambda p, x, y: gc.nn.softmax_cross_entropy(gc.nn.mlp(p, x), y)
    else:
        objective = lambda p, x, y: gc.nn.binary_cross_entropy_with_logits(
            gc.nn.mlp(p, x), gc.astype(y == 1, x.dtype)
        )
    value_and_grad = gc.value_and_grad(objective)

    def step(params, x, y):
        with gc.nn.target_checks(False):
            loss_value, grads = value_and_grad(params, x, y)
        optimizer.step(params, grads)
        return loss_value

    return step, optimizer


# ---------------------------------------------------------------------------------------------
# correctness: the same ops in the same order


@pytest.mark.parametrize("loss", ["softmax", "bce"])
def test_training_step_replays_the_eager_trajectory_bit_for_bit(device, loss):
    """Parameters, velocities and losses match eager at every step, a learning-rate schedule
    included: the update runs its Python (the schedule) at every replay."""
    start = _layers(device, sizes=(6, 5, 1 if loss == "bce" else 3))
    eager_params, jit_params = _copy(device, start), _copy(device, start)
    eager_step, eager_optimizer = _training_step(loss)
    jit_step, jit_optimizer = _training_step(loss)
    jitted = gc.jit(jit_step)
    for k in range(7):
        x, y = _batch(device, seed=k)
        assert _same(eager_step(eager_params, x, y), jitted(jit_params, x, y))
        assert _same(eager_params, jit_params)
        assert _same(eager_optimizer.state_dict(), jit_optimizer.state_dict())
    assert len(jitted.programs) == 1
    assert jit_optimizer.iterations == eager_optimizer.iterations == 7
    assert jit_optimizer.current_learning_rate() == pytest.approx(0.05)


def test_replay_runs_no_python_of_the_function():
    calls = []

    def f(x):
        calls.append(1)
        return gc.sum(gc.tanh(x) * 2.0)

    jitted = gc.jit(f)
    for k in range(3):
        x = gc.array(np.arange(3.0) + k)
        assert _same(jitted(x), f(x))
    assert len(calls) == 1 + 3  # one recording, then only the eager reference calls


def test_grad_of_grad(device):
    f = lambda x: gc.sum(gc.sin(x) * x**3.0)
    second = gc.grad(lambda x: gc.sum(gc.grad(f)(x) * gc.cos(x)))
    jitted = gc.jit(second)
    for k in range(3):
        x = gc.array(np.linspace(-1, 1, 5) + k, dtype="float64", device=device)
        assert _same(jitted(x), second(x))


def test_pytrees_in_and_out_and_value_and_grad_of_several_arguments(device):
    def f(tree, scale):
        return gc.sum(tree["a"] * tree["b"][0]) * gc.sum(scale) + gc.sum(tree["b"][1])

    both = gc.value_and_grad(f, argnum=(0, 1))
    jitted = gc.jit(lambda tree, scale: {"out": both(tree, scale), "n": 3})
    for k in range(3):
        tree = {
            "a": gc.array([1.0, 2.0 + k], device=device),
            "b": [gc.array([3.0, k], device=device), gc.array([[k, 1.0]], device=device)],
        }
        scale = gc.array(0.5 + k, device=device)
        got = jitted(tree, scale)
        assert got["n"] == 3
        assert _same(got["out"], both(tree, scale))


def test_comparisons_and_stop_gradient_are_recorded_not_frozen(device):
    """relu's VJP compares (a constant-valued op) and stop_gradient unwraps: both must stay
    computed from the inputs in the program."""
    f = gc.grad(lambda x: gc.sum(gc.relu(x) * gc.stop_gradient(x)))
    jitted = gc.jit(f)
    for values in ([1.0, -1.0, 2.0], [-1.0, 1.0, -2.0], [3.0, 3.0, -3.0]):
        x = gc.array(values, device=device)
        assert _same(jitted(x), f(x))


# ---------------------------------------------------------------------------------------------
# signatures


def test_new_signature_records_again_and_static_arguments_are_part_of_it():
    f = gc.jit(lambda x, power: gc.sum(x**power), static_argnums=1)
    x3, x4 = gc.array([1.0, 2.0, 3.0]), gc.array([1.0, 2.0, 3.0, 4.0])
    assert f(x3, 2.0) == 14.0
    assert f(x3, 3.0) == 36.0
    assert f(x4, 2.0) == 30.0
    assert f(gc.array([1.0, 1.0, 1.0]), 2.0) == 3.0
    assert f(gc.array([1, 2, 3], dtype="float64"), 2.0) == 14.0
    assert len(f.programs) == 4  # shapes, static values and dtypes tell programs apart


def test_unhashable_static_arguments_are_refused_clearly():
    f = gc.jit(lambda x, shape: gc.reshape(x, shape), static_argnums=1)
    with pytest.raises(TypeError, match="must be hashable"):
        f(gc.array([1.0, 2.0]), [2, 1])


def test_python_numbers_are_constants_of_a_signature():
    f = gc.jit(lambda x, lr: x * lr)
    x = gc.array([1.0, 2.0])
    assert _same(f(x, 0.5), x * 0.5)
    assert _same(f(x, 0.25), x * 0.25)
    assert len(f.programs) == 2
    n = gc.array([3, 4])
    assert f(n, 2).dtype == n.dtype and f(n, 2.0).dtype != n.dtype  # 2 == 2.0, other types


def test_many_recordings_warn_once_naming_the_argument_whose_shape_changes():
    f = gc.jit(lambda w, x: gc.sum(x * w))
    w = gc.array(1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for n in range(1, 13):
            f(w, gc.array(np.ones(n)))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "argument 1 keeps changing shape" in messages[0]


# ---------------------------------------------------------------------------------------------
# what a recording refuses


@pytest.mark.parametrize(
    ("body", "conversion"),
    [
        (lambda x: x * 2 if gc.sum(x) > 1 else x, "bool()"),
        (lambda x: x * float(gc.sum(x)), "float()"),
        (lambda x: x * int(gc.sum(x)), "int()"),
        (lambda x: x * math.exp(gc.sum(x)), "float()"),
        (lambda x: x * gc.sum(x).item(), ".item()"),
        (lambda x: x if bool(gc.max(x)) else -x, "bool()"),
    ],
)
def test_python_reads_of_traced_values_are_refused_while_recording(body, conversion):
    with pytest.raises(RecordingError) as error:
        gc.jit(body)(gc.array([1.0, 2.0]))
    message = str(error.value)
    assert conversion in message
    assert "gc.where" in message and "static_argnums" in message and "without jit" in message


def test_python_reads_are_refused_inside_grad_too():
    with pytest.raises(RecordingError, match="float"):
        gc.jit(gc.grad(lambda x: gc.sum(x) * float(gc.sum(x))))(gc.array([1.0]))


@pytest.mark.parametrize(
    "numpy_call", [np.exp, np.mean, np.asarray, lambda x: np.reshape(x, (2, 1))]
)
def test_numpy_call_on_a_traced_value_raises(numpy_call):
    """NumPy's ufuncs refuse a Box (``__array_ufunc__ = None``), and its other functions
    convert it (``__array__``), which a recording refuses: no silent constant."""
    with pytest.raises(TypeError):
        gc.jit(numpy_call)(gc.array([1.0, 2.0]))


def test_globals_read_inside_are_frozen_as_documented():
    """Not detectable: a global array read while recording is a constant of the program
    (by reference: updating it in place is seen, rebinding the name is not)."""
    scale = gc.array([2.0, 2.0])
    f = gc.jit(lambda x: x * scale)
    # the gradient, scale times the seed, reads no input: it is still computed at every call
    gradient = gc.jit(gc.grad(lambda x: gc.sum(x * scale)))
    x = gc.array([1.0, 1.0])
    assert _same(f(x), gc.array([2.0, 2.0])) and _same(gradient(x), gc.array([2.0, 2.0]))
    scale[...] = 3.0
    assert _same(f(x), gc.array([3.0, 3.0])) and _same(gradient(x), gc.array([3.0, 3.0]))
    scale = gc.array([5.0, 5.0])  # noqa: F841 - the program still holds the old array
    assert _same(f(x), gc.array([3.0, 3.0]))


def test_random_numbers_drawn_inside_are_frozen_as_documented():
    """Not detectable: a draw made while recording is a constant of the program. Draw outside
    and pass the array in."""
    rng = np.random.default_rng(0)
    f = gc.jit(lambda x: x + rng.standard_normal(2))
    x = gc.array([0.0, 0.0])
    assert _same(f(x), f(x))


def test_returning_a_function_is_refused():
    with pytest.raises(RecordingError, match="returns a function"):
        gc.jit(lambda x: gc.vjp(gc.sin, x))(gc.array([1.0]))


def test_vjp_inside_jit_is_replayed():
    f = lambda x: gc.vjp(gc.sin, x)[1](gc.ones_like(x))
    jitted = gc.jit(f)
    for k in range(2):
        x = gc.array([1.0, 2.0 + k])
        assert _same(jitted(x), f(x))


def test_a_function_of_no_arrays_is_refused():
    """Its arrays can only come from closures or globals: all of it would be frozen."""
    params = gc.array([1.0, 2.0])
    with pytest.raises(RecordingError, match="no argument is an array"):
        gc.jit(lambda: gc.sum(params * 2.0))()


def test_an_update_of_arrays_that_are_not_arguments_is_refused():
    params = [gc.array([1.0, 2.0])]
    optimizer = gc.optim.SGD(0.1)

    def step(x):
        optimizer.step(params, [gc.array([0.5, 0.5])])  # nothing here depends on x
        return x

    with pytest.raises(RecordingError, match="not arguments of the jitted function"):
        gc.jit(step)(gc.array([1.0, 1.0]))


def test_closure_over_an_outer_traced_value_is_refused():
    def outer(w):
        return gc.jit(lambda x: gc.sum(x * w))(gc.array([1.0, 2.0]))

    with pytest.raises(RecordingError, match="pass it as an argument"):
        gc.grad(outer)(gc.array(2.0))


def test_jit_inside_grad_is_differentiated_like_the_function():
    f = gc.jit(lambda x: gc.sum(gc.sin(x)))
    x = gc.array([0.1, 0.2])
    assert _same(gc.grad(f)(x), gc.cos(x))


def test_fallback_warns_once_and_runs_eagerly():
    def f(x):
        return x * 2 if gc.sum(x) > 0 else x

    jitted = gc.jit(f, fallback=True)
    with pytest.warns(UserWarning, match="recording failed, running eagerly"):
        assert _same(jitted(gc.array([1.0])), gc.array([2.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _same(jitted(gc.array([-1.0])), gc.array([-1.0]))


# ---------------------------------------------------------------------------------------------
# the program


def test_intermediates_are_released_after_their_last_use():
    """Every array over SMALL elements is dropped by the time the next step runs after its last
    reader (smaller ones may wait for their slot's reuse)."""
    step, _ = _training_step()
    jitted = gc.jit(step)
    params = _layers("cpu", sizes=(100, 128, 10))
    x, y = _batch("cpu", 0, n=64, features=100, classes=10)  # activations: 8192 elements
    jitted(params, x, y)
    (program,) = jitted.programs.values()
    slots = program.initial.copy()
    slots[: program.n_inputs] = [*gc.pytree.tree_leaves(params), x, y]
    fixed = program.n_inputs + len(program.constants)  # inputs, then constants, then results
    kept = set(range(fixed)) | set(program.get_outputs(range(len(slots))))
    reads = [set(get(range(len(slots)))) for _, get, _ in program.compiled]
    checked = 0
    for index, (fun, get, out) in enumerate(program.compiled):  # Program.run, looking on
        if fun is not _nothing:  # a clear runs just after a slot's last reader
            held = {slot for slot, value in enumerate(slots)
                    if getattr(value, "size", 0) > SMALL} - kept  # fmt: skip
            assert held <= set().union(*reads[index:]), f"before step {index}"
            checked += len(held)
        slots[out] = fun(*get(slots))
    assert checked  # large intermediates were there to check
    results = {out for _, _, out in program.compiled}
    assert len(results) < len(program.steps) / 2  # results share slots, like registers


def test_replay_peak_memory_is_at_most_eager():
    step, _ = _training_step(learning_rate=0.1)
    params = _layers("cpu", sizes=(300, 200, 10))
    x, y = _batch("cpu", 0, n=256, features=300, classes=10)
    jitted = gc.jit(step)
    jitted(params, x, y)

    def peak(fn):
        fn(params, x, y)
        tracemalloc.start()
        try:
            fn(params, x, y)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak(jitted) <= peak(step)


def test_describe_shows_steps_slots_and_in_place_updates():
    step, _ = _training_step()
    jitted = gc.jit(step)
    assert "nothing recorded" in jitted.describe()
    jitted(_layers("cpu"), *_batch("cpu", 0))
    text = jitted.describe()
    assert "gc.jit(step) on cpu" in text
    assert "= affine(s4, s0, s1)  # float32(4, 5)" in text
    assert "SGD._update(s0, s1, s2, s3" in text and "# in place" in text
    assert "outputs s" in text


def test_describe_shows_results_written_over_dead_arguments():
    step, _ = _training_step()
    jitted = gc.jit(step)
    jitted(_layers("cpu"), *_batch("cpu", 0))
    (program,) = jitted.programs.values()
    overwritten = [step for step in program.steps if step.over is not None]
    assert {step.name for step in overwritten} >= {"sigmoid", "sigmoid_grad"}
    assert "= sigmoid(s" in jitted.describe() and ", over s" in jitted.describe()
    # Of two dead arguments, the one written last: the sigmoid's derivative goes over the
    # cotangent computed just before, not over the activation computed in forward.
    for step in overwritten:
        if step.name == "sigmoid_grad":
            activation, cotangent = step.args
            assert step.over == cotangent and cotangent > activation


# ---------------------------------------------------------------------------------------------
# the passes: constants computed once, unread steps dropped, results written over dead arguments


def test_backward_seed_is_a_constant_and_unread_forward_steps_are_dropped(device):
    f = gc.jit(gc.grad(lambda x: gc.sum(gc.sin(x) * 2.0)))
    x = on(device, np.linspace(-1.0, 1.0, 5))
    expected = 2.0 * np.cos(np.linspace(-1.0, 1.0, 5))
    for _ in range(2):
        np.testing.assert_array_equal(
            host(f(x)), host(gc.grad(lambda x: gc.sum(gc.sin(x) * 2.0))(x))
        )
    np.testing.assert_allclose(host(f(x)), expected, rtol=1e-15)
    (program,) = f.programs.values()
    # sin, * 2 and sum only lead to the value grad throws away; ones_like, reshape,
    # broadcast_to and 2 * seed give the same array at every call
    assert [step.name for step in program.steps] == ["cos", "multiply"]
    assert program.recorded_steps > len(program.steps)


def _add_one_then_step(param, grad):
    grad += 1.0
    param += grad


def test_a_constant_handed_to_an_in_place_update_is_made_anew_at_every_call():
    """zeros_like depends on the shape alone, but an update writes into it: folding it would
    carry the write over to the next call."""

    def step(p):
        update_in_place(_add_one_then_step, p, gc.zeros_like(p))

    eager, jitted = np.zeros(3), np.zeros(3)
    f = gc.jit(step)
    for _ in range(3):
        step(eager)
        f(jitted)
    np.testing.assert_array_equal(jitted, eager)
    np.testing.assert_array_equal(eager, [3.0, 3.0, 3.0])


def _step_returning_grads():
    optimizer = gc.optim.SGD(0.5, momentum=0.9)
    value_and_grad = gc.value_and_grad(lambda p, x, y: gc.nn.softmax_cross_entropy(
        gc.nn.mlp(p, x), y))  # fmt: skip

    def step(params, x, y):
        _, grads = value_and_grad(params, x, y)
        optimizer.step(params, grads)
        return grads

    return step, optimizer


@pytest.mark.parametrize("make_step, scratch", [(_training_step, True),
                                                (_step_returning_grads, False)])  # fmt: skip
def test_gradients_are_scratch_for_the_update_only_where_nothing_else_reads_them(
    make_step, scratch
):
    """The update may write over gradients nobody reads afterwards; returned ones stay intact."""
    eager_step, _ = make_step()
    jit_step, _ = make_step()
    eager_params, jit_params = _layers("cpu"), _layers("cpu")
    jitted = gc.jit(jit_step)
    for k in range(3):
        x, y = _batch("cpu", seed=k)
        assert _same(eager_step(eager_params, x, y), jitted(jit_params, x, y))
        assert _same(eager_params, jit_params)
    (program,) = jitted.programs.values()
    assert ("overwriting" in program.describe()) is scratch


def _update_noting_scratch(param, grad, scratch=False):
    _update_noting_scratch.calls.append(scratch)
    param -= grad


def test_an_update_is_told_its_consumed_arrays_are_scratch_only_in_a_replay():
    _update_noting_scratch.calls = []

    def step(p):
        update_in_place(_update_noting_scratch, p, gc.sin(p) * 2.0, consumed=(1,))

    p = np.ones(3)
    f = gc.jit(step)
    for _ in range(3):
        f(p)
    step(p)
    assert _update_noting_scratch.calls == [False, True, True, False]  # record, replays, eager


def _view_still_read(x):
    a = x * 2.0
    v = gc.transpose(a)  # a view of a, read after a's last direct use
    b = a + 1.0
    return b * gc.transpose(v)


def _view_returned(x):
    a = x * 2.0
    flat = gc.reshape(a, (-1,))  # returned: a's memory must survive the call
    return flat, a + 1.0


def _broadcast_view_dies(x):
    wide = gc.broadcast_to(gc.sum(x, axis=0) * 2.0, (5, 4))  # a read-only, overlapping view
    return wide * 3.0


def _input_itself(x):
    return x + 1.0, x * 3.0


@pytest.mark.parametrize("fun", [_view_still_read, _view_returned, _broadcast_view_dies,
                                 _input_itself])  # fmt: skip
def test_results_overwrite_only_memory_nothing_else_sees(device, fun):
    x_host = np.arange(12.0).reshape(3, 4)
    x = on(device, x_host)
    jitted = gc.jit(fun)
    expected = _host(fun(x))
    for _ in range(3):
        got = _host(jitted(x))
        assert len(got) == len(expected) and all(map(np.array_equal, got, expected))
    np.testing.assert_array_equal(host(x), x_host)  # inputs are never written over


def _reshaped_and_shifted(x):
    t = x * 2.0
    return gc.reshape(t, (12,)), t + 1.0  # the reshape is a view of t, or a copy: by layout


def _step_returning_reshaped_grads():
    optimizer = gc.optim.SGD(0.1)
    value_and_grad = gc.value_and_grad(lambda p, x: gc.sum(p * x))

    def step(p, x):
        _, g = value_and_grad(p, x)
        flat = gc.reshape(g, (12,))
        optimizer.step(p, g)  # SGD may use g as scratch only if flat is a copy
        return flat

    return step


def test_an_input_of_another_memory_layout_records_again():
    """Which results are views follows the inputs' strides, so the signature holds them."""
    column_major, row_major = np.arange(12.0).reshape(4, 3).T, np.arange(12.0).reshape(3, 4)
    jitted = gc.jit(_reshaped_and_shifted)
    for x in (column_major, row_major, column_major, row_major):
        assert _same(jitted(x), _reshaped_and_shifted(x))
    assert len(jitted.programs) == 2
    eager, step = _step_returning_reshaped_grads(), gc.jit(_step_returning_reshaped_grads())
    for x in (np.ones((4, 3)).T, np.ones((3, 4))):
        assert _same(step(np.zeros((3, 4)), x), eager(np.zeros((3, 4)), x))


def test_zero_and_minus_zero_are_two_signatures():
    jitted = gc.jit(lambda x, s: x * s)
    x = np.ones(2)
    assert np.signbit(jitted(x, 0.0)).tolist() == [False, False]
    assert np.signbit(jitted(x, -0.0)).tolist() == [True, True]


def test_the_recording_call_returns_its_own_copy_of_a_folded_result():
    gradient = gc.jit(gc.grad(lambda x: gc.sum(x * 0.5)))  # 0.5 * ones: folded
    x = np.ones(3)
    first = gradient(x)
    first *= 0.0  # the caller's array, not the program's
    np.testing.assert_array_equal(gradient(x), [0.5, 0.5, 0.5])


def test_arrays_closed_over_in_index_tuples_keywords_and_outputs_are_held_by_reference():
    rows, low, returned = np.array([0, 0, 1]), np.array([0.0, 2.0, 5.0]), np.zeros(2)

    def gather(x):
        return gc.sum(x[rows, :])

    def clipped(x):
        return x + gc.clip(gc.ones_like(x), min=low), returned

    gather_grad, clipped_jit = gc.jit(gc.grad(gather)), gc.jit(clipped)
    x = np.zeros((3, 2))
    gather_grad(x), clipped_jit(x[:, 0])
    rows[...], low[...], returned[...] = 2, 9.0, 1.0
    assert _same(gather_grad(x), gc.grad(gather)(x))
    assert _same(clipped_jit(x[:, 0]), clipped(x[:, 0]))


def _arithmetic_with_numbers(x):
    powers = (gc.abs(x) ** 0.5, x**2, 2.0**x)  # NumPy's own paths for number exponents
    return ((x * 1.001 + 0.1 - 0.1) / 3 - 2 * x, 0.0 * x, -0.0 * x, 1e300 * x, 7 - x, *powers)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_python_numbers_typed_once_give_the_eager_bits(device, dtype):
    """Numbers meet arrays as 0-d arrays of their dtype, converted once: the same arithmetic."""
    x = on(device, [-1.5, 0.25, 3.0], dtype)
    jitted = gc.jit(_arithmetic_with_numbers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 1e300 overflows float32, eagerly too
        expected = _host(_arithmetic_with_numbers(x))
        for _ in range(2):
            got = _host(jitted(x))  # compared as bytes: -0.0 is not 0.0
            assert [(a.dtype, a.tobytes()) for a in got] == [
                (b.dtype, b.tobytes()) for b in expected
            ]
    text = jitted.describe()
    if "[fused group" in text:  # CUDA writes the numbers into the fused kernel, as (T)1.001
        assert "multiply(s0, 1.001)" in text and "multiply(-0.0, s0)" in text
    else:
        assert f"{dtype}(1.00" in text and f"{dtype}(-0.0)" in text  # strict prefixes its names


NAN = float("nan")
NAN_CASES = {
    "numbers of either sign": lambda x, s: (x + NAN, x + -NAN, NAN * x, -NAN - x),
    "number first, over a dead array": lambda x, s: (NAN + (x * 1.0), NAN * (x * 1.0)),
    "two arrays, over the second": lambda x, s: (x + (-x * 1.0), x * (x * 1.0)),
    "a NumPy scalar and a number": lambda x, s: ((s * 1.0) + NAN, (s * 1.0) * -NAN),
}


@pytest.mark.parametrize("case", NAN_CASES, ids=str)
def test_which_nan_comes_out_is_the_eager_one(device, case):
    """When both operands are NaN, the result is one of them: the replay keeps each op's
    operand order, and numbers and NumPy scalars their eager arithmetic, so it is the same."""
    fun = NAN_CASES[case]
    x = on(device, [-NAN, 1.0, NAN], "float32")
    s = on(device, -NAN, "float32")
    jitted = gc.jit(fun)
    expected = [(a.dtype, a.tobytes()) for a in _host(fun(x, s))]
    for _ in range(2):
        assert [(a.dtype, a.tobytes()) for a in _host(jitted(x, s))] == expected


def test_nan_arguments_of_either_sign_are_two_signatures():
    jitted = gc.jit(lambda x, c: x * c)
    x = np.ones(2)
    for c in (NAN, -NAN, NAN, -NAN):
        assert jitted(x, c).tobytes() == (x * c).tobytes()
    assert len(jitted.programs) == 2


def test_dtype_classes_and_numpy_scalars_pass_through_as_eagerly():
    c = np.float32(3.0)
    jitted = gc.jit(lambda x: (gc.astype(x, np.float64), c))
    for _ in range(2):
        cast, constant = jitted(np.ones(2, np.float32))
        assert cast.dtype == np.float64 and type(constant) is np.float32 and constant == 3.0


def test_results_are_written_over_a_dead_intermediate():
    f = gc.jit(lambda x: gc.sigmoid(x @ x) * 2.0)
    x = np.eye(3, dtype=np.float32)
    f(x)
    (program,) = f.programs.values()
    assert [(step.name, step.over is not None) for step in program.steps] == [
        ("matmul", False), ("sigmoid", True), ("multiply", True),
    ]  # fmt: skip
    np.testing.assert_array_equal(f(x), gc.sigmoid(x @ x) * 2.0)


def test_the_numpy_backend_overwrites_only_arrays_owning_unshared_memory():
    cpu = gc.backend.backend_for_device("cpu")
    a = np.ones((3, 4))
    read_only = np.ones(3)
    read_only.flags.writeable = False
    assert cpu.may_overwrite(a, [np.ones(2), 1.0])
    assert not cpu.may_overwrite(a, [a.T])  # a view of it is still in use
    assert not cpu.may_overwrite(a.T, [])  # a view: its memory is another array's
    assert not cpu.may_overwrite(read_only, [])
    assert not cpu.may_overwrite(np.float64(1.0), [])  # a NumPy scalar, not an array


# ---------------------------------------------------------------------------------------------
# CUDA fusion, planned and generated on the CPU

NVCC = shutil.which("nvcc")


def _bce(p, y):
    """The README's hand-written binary cross-entropy."""
    return -gc.mean(y * gc.log(p) + (1.0 - y) * gc.log(1.0 - p))


def _bce_program():
    p = gc.array([0.2, 0.7, 0.9], dtype="float32")
    y = gc.array([0.0, 1.0, 1.0], dtype="float32")
    jitted = gc.jit(gc.value_and_grad(_bce))
    jitted(p, y)
    (program,) = jitted.programs.values()
    return jitted, program, (p, y)


def _names(program, group):
    return [program.steps[index].name for index in group]


def test_planner_groups_the_elementwise_chains_of_bce_and_its_backward():
    _, program, _ = _bce_program()
    groups = fusion_groups(program)
    # forward: y*log(p) + (1-y)*log(1-p) is one kernel; mean ends it
    assert _names(program, groups[0]) == [
        "log", "multiply", "subtract", "subtract", "log", "multiply", "add",
    ]  # fmt: skip
    # backward: the cotangents of both logs and of p, from the broadcast mean cotangent
    backward = [name for group in groups[1:] for name in _names(program, group)]
    assert backward.count("divide") == 2 and "negative" in backward
    reductions = {"mean", "broadcast_to", "reshape", "ones_like"}
    assert not reductions & {name for group in groups for name in _names(program, group)}


def _interpret(kernel):
    """Run a generated kernel body with NumPy: checks the source computes the right thing."""
    functions = {"exp": np.exp, "log": np.log, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
                 "sqrt": np.sqrt, "fabs": np.abs, "max": np.maximum, "min": np.minimum,
                 "pow": np.power, "copysign": np.copysign}  # fmt: skip

    def call(*inputs):
        scope = dict(functions, **{f"in{k}": np.asarray(v) for k, v in enumerate(inputs)})
        for line in kernel.body.replace("(T)", "").splitlines():
            target, expression = line.removeprefix("const T ").rstrip(";").split(" = ")
            scope[target] = eval(expression, scope)  # noqa: S307 - our own generated source
        outs = tuple(scope[f"out{k}"] for k in range(kernel.n_outputs))
        return outs if len(outs) > 1 else outs[0]

    return call


def test_fused_program_computes_what_the_unfused_one_does():
    jitted, program, (p, y) = _bce_program()
    eager = gc.value_and_grad(_bce)(p, y)
    program._compile(program.fused_steps(cuda_fusion.fuse(program, build=_interpret)))
    fused = jitted(p, y)
    for got, expected in zip(fused, eager):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert "[fused group 0]" in program.describe()


def _sigmoid_layer(w, x):
    return gc.sum(gc.sigmoid(x * w + 0.5) * 2.0)


def test_the_jit_fuses_through_its_backends_fuse_and_only_there(monkeypatch):
    """The protocol, end to end on the CPU: a backend with ``fuse`` gets each recorded program
    and its kernels replace the steps; the sigmoid's fused line is its formula, interpreted."""
    cpu = gc.backend.backend_for_device("cpu")
    w = gc.array(np.linspace(-40, 40, 7), dtype="float64")
    x = gc.array(np.linspace(-3, 3, 7), dtype="float64")
    eager = gc.value_and_grad(_sigmoid_layer)(w, x)
    plain = gc.jit(gc.value_and_grad(_sigmoid_layer))
    plain(w, x)
    assert not next(iter(plain.programs.values())).groups  # NumPy's backend has no fuse
    asked = []

    def fuse(program):
        asked.append(program)
        return cuda_fusion.fuse(program, build=_interpret)

    monkeypatch.setattr(cpu, "fuse", fuse, raising=False)
    jitted = gc.jit(gc.value_and_grad(_sigmoid_layer))
    for _ in range(2):  # recorded, then replayed
        got = jitted(w, x)
        for a, b in zip(got, eager):
            np.testing.assert_allclose(a, b, rtol=1e-13)
    (program,) = jitted.programs.values()
    assert asked == [program]
    fused_names = [name for group in program.groups for name in _names(program, group)]
    assert fused_names[:4] == ["multiply", "add", "sigmoid", "multiply"]
    assert "[fused group 0]" in program.describe()


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH")
def test_generated_kernels_compile_with_nvcc_for_float_and_double(tmp_path):
    _, program, _ = _bce_program()
    groups = fusion_groups(program)
    source = "\n".join(cuda_fusion.generate(program, g)[0].translation_unit() for g in groups)
    path = tmp_path / "fused.cu"
    path.write_text(source)
    command = [NVCC, "--ptx", "-Werror", "all-warnings", str(path), "-o", str(tmp_path / "f.ptx")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "f.ptx").read_text().count(".entry") == 2 * len(groups)


def test_cupy_accepts_the_generated_kernels():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    _, program, _ = _bce_program()
    for group in fusion_groups(program):
        kernel = cuda_fusion.generate(program, group)[0]
        built = cupy.ElementwiseKernel(
            kernel.in_params, kernel.out_params, kernel.body, kernel.name
        )
        assert (built.nin, built.nout) == (kernel.n_inputs, kernel.n_outputs)


@pytest.mark.cuda
def test_fused_training_step_on_cuda_matches_eager():
    jitted = gc.jit(gc.value_and_grad(_bce))
    p = gc.array([0.2, 0.7, 0.9], dtype="float32", device="cuda")
    y = gc.array([0.0, 1.0, 1.0], dtype="float32", device="cuda")
    for _ in range(2):
        got, expected = jitted(p, y), gc.value_and_grad(_bce)(p, y)
        for a, b in zip(got, expected):
            np.testing.assert_allclose(gc.to_numpy(a), gc.to_numpy(b), rtol=1e-5)
    (program,) = jitted.programs.values()
    assert program.groups


# ---------------------------------------------------------------------------------------------
# the trainer


def _fit(jit, loss_fn=None, epochs=2):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 6)).astype("float32")
    y = rng.integers(0, 3, 50)
    params = _layers("cpu")
    loss_fn = loss_fn or (lambda p, xb, yb: gc.nn.softmax_cross_entropy(gc.nn.mlp(p, xb), yb))
    optimizer = gc.optim.SGD(gc.optim.linear_decay(0.5, 0.1, 6), momentum=0.9)
    history = gc.train.fit(
        loss_fn, params, x, y, optimizer, epochs=epochs, batch_size=16, progress=False, jit=jit
    )
    return params, history


def test_fit_with_jit_trains_exactly_as_without():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jitted, jit_history = _fit(jit=True)
    eager, eager_history = _fit(jit=False)
    assert _same(jitted, eager)
    assert jit_history.loss == eager_history.loss


def test_fit_falls_back_to_eager_with_one_warning():
    def loss_fn(p, xb, yb):
        loss = gc.nn.softmax_cross_entropy(gc.nn.mlp(p, xb), yb)
        return loss * 2.0 if loss > 100.0 else loss  # Python control flow on a traced value

    with pytest.warns(UserWarning, match="recording failed, running eagerly") as caught:
        params, _ = _fit(jit=True, loss_fn=loss_fn)
    assert len([w for w in caught if "gc.jit" in str(w.message)]) == 1
    assert _same(params, _fit(jit=False, loss_fn=loss_fn)[0])


# ---------------------------------------------------------------------------------------------
# found in review


def test_fallback_never_runs_an_update_twice():
    """A recording that fails after the optimizer's update raises: running the function
    again eagerly would update the parameters a second time."""
    params = {"w": np.array([1.0, 2.0])}
    optimizer = gc.optim.SGD(0.1)

    def step(params):
        loss, grads = gc.value_and_grad(lambda p: gc.sum(p["w"]))(params)
        optimizer.step(params, grads)
        return float(loss)  # refused while recording, after the update ran

    with pytest.raises(RecordingError, match=r"float\(\) of a traced value"):
        gc.jit(step, fallback=True)(params)
    np.testing.assert_array_equal(params["w"], [0.9, 1.9])
    assert optimizer.iterations == 1


def test_constant_outputs_are_fresh_arrays_at_every_call():
    """The zero gradient of an unused argument is a constant of the program; each call gets
    its own copy, so writing into one changes no later call."""
    grad = gc.jit(gc.grad(lambda p, x: gc.sum(p["w"] * x)))
    params, x = {"w": np.ones(2), "b": np.zeros(2)}, np.array([3.0, 4.0])
    first = grad(params, x)
    first["b"] += 5.0
    second = grad(params, x)
    np.testing.assert_array_equal(second["b"], [0.0, 0.0])
    np.testing.assert_array_equal(second["w"], [3.0, 4.0])
