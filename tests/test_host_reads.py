"""No training step waits for the device: ``fit`` runs on the "counting" device, a NumPy stand-in
for CuPy whose arrays record every host read (tests/counting_backend.py), and no read may happen
inside a step.

A step is what ``gradcore.train._make_step`` builds: ``value_and_grad`` (replayed by ``gc.jit``,
or traced) and ``optimizer.step``; each call is marked here. Between steps fit stores the loss
into a device buffer (an index assignment, no read) and reads that buffer every ``READ_EVERY``
steps and at the end of each epoch, outside the steps; those reads are expected.

On the simulated CUDA device (``GRADCORE_SIMULATE_CUDA=1``) the same check runs on "cuda"
itself, through the real CuPy backend and kernels.
"""

from __future__ import annotations

import functools

import array_api_compat.common._aliases as compat_aliases
import numpy as np
import pytest
from conftest import SIMULATED_GPUS
from counting_backend import BACKEND, READS, CountingArray, register
from gradcore.backends.cudasim import ENV, host_reads

import gradcore as gc

register()


@pytest.fixture
def counted(monkeypatch):
    """Resets the counts, and marks each call of fit's training step as inside a step."""
    READS.reset()
    make_step = gc.train._make_step

    def marked(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def call(*call_args):
            with READS.step():
                return step(*call_args)

        return call

    monkeypatch.setattr(gc.train, "_make_step", marked)
    yield READS
    READS.reset()


def _loss(params, x, y):
    """The lecture notes' loss: clipped BCE on sigmoid outputs (clip), plus an L1 term (sign)."""
    p = gc.sigmoid(gc.nn.mlp(params, x))[:, 0]
    return gc.nn.binary_cross_entropy(p, y) + 1e-3 * gc.sum(gc.abs(params[0]["W"]))


def _fit(epochs=2, jit=True):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    params = gc.nn.init_mlp([8, 16, 1], seed=0, device="counting")
    optimizer = gc.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    history = gc.train.fit(
        _loss, params, x, y, optimizer=optimizer, epochs=epochs, batch_size=16,
        device="counting", progress=False, jit=jit,
    )  # fmt: skip
    return params, history


@pytest.mark.parametrize("jit", [True, False], ids=["replayed", "traced"])
def test_fit_steps_never_read_the_device(counted, jit):
    params, history = _fit(jit=jit)
    assert counted.steps == 2 * 4  # 4 steps, 2 epochs
    assert counted.in_step == []
    assert "get" in counted.elsewhere  # the loss buffer, read between steps
    assert all(type(p) is CountingArray for layer in params for p in layer.values())
    assert len(history.loss) == 2 and np.isfinite(history.loss).all()


def test_array_api_compat_clip_would_read_the_device_every_step(counted, monkeypatch):
    """array-api-compat's CuPy clip writes through boolean masks, and CuPy
    reads every mask's size back; here its clip, run on the counting arrays, is caught."""
    # as for CuPy arrays: the namespace and device of the counting arrays
    monkeypatch.setattr(compat_aliases, "array_namespace", lambda *xs, **kw: BACKEND.xp)
    monkeypatch.setattr(compat_aliases, "_get_device", lambda x: x.device)
    monkeypatch.setattr(BACKEND.xp, "clip", functools.partial(compat_aliases.clip, xp=np))
    _fit(epochs=1)
    assert counted.in_step.count("boolean-mask assignment") >= 2 * 4  # min and max, per step


def test_every_kind_of_host_read_is_counted(counted):
    x = BACKEND.asarray([1.0, -2.0, 3.0])
    with counted.step():
        bool(x[0] > 0), float(x[1]), int(x[2]), x.item(0), x.tolist(), x.get()
        x[x > 0], np.nonzero(x)
        x[x < 0] = 0.0
        x + 1.0, x * x, BACKEND.xp.clip(x, 0.0, 1.0), BACKEND.xp.sign(x), BACKEND.xp.zeros(3)
    assert counted.in_step == [
        "__bool__", "__float__", "__int__", "item", "tolist", "get",
        "boolean-mask index", "nonzero", "boolean-mask assignment",
    ]  # fmt: skip
    assert type(BACKEND.xp.sum(x)) is CountingArray and type(x[0]) is CountingArray


@pytest.mark.cuda
@pytest.mark.skipif(not SIMULATED_GPUS, reason=f"counts reads on the simulated GPU: {ENV}=1")
@pytest.mark.parametrize("jit", [True, False], ids=["replayed", "traced"])
def test_fit_steps_on_the_simulated_gpu_never_read_the_device(monkeypatch, jit):
    """The same on "cuda" itself: the real CuPy backend, kernels and fusion, on the simulated
    device, which counts every read of device data by the host."""
    in_step, make_step = [], gc.train._make_step

    def marked(*args, **kwargs):
        step = make_step(*args, **kwargs)

        def call(*call_args):
            with host_reads.counting() as seen:
                result = step(*call_args)
            in_step.extend(seen)
            return result

        return call

    monkeypatch.setattr(gc.train, "_make_step", marked)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")
    params = gc.nn.init_mlp([8, 16, 1], seed=0, device="cuda")
    optimizer = gc.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    with host_reads.counting() as everywhere:
        history = gc.train.fit(
            _loss, params, x, y, optimizer=optimizer, epochs=2, batch_size=16,
            device="cuda", progress=False, jit=jit,
        )  # fmt: skip
    assert in_step == []
    assert "get" in everywhere  # the loss buffer, read between steps
    assert len(history.loss) == 2 and np.isfinite(history.loss).all()
