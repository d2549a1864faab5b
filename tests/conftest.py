"""One test body, every backend: the ``device`` fixture runs a test on "cpu", on the
array-api-strict test backend, and on "cuda" (marked ``cuda``, skipped with the reason when no GPU
answers). NumPy in float64 is the oracle.

``GRADCORE_SIMULATE_CUDA=1`` (or 2, for two GPUs) runs the ``cuda`` tests on the simulated CUDA
device (gradcore.backends.cudasim): installed here before any test imports CuPy, and said in
the report's header, since no GPU code runs then.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import strict_backend  # noqa: E402
from gradcore.backends import cudasim  # noqa: E402

import gradcore as gc  # noqa: E402

strict_backend.register()
SIMULATED_GPUS = cudasim.device_count()
if SIMULATED_GPUS:
    cudasim.install()


def pytest_report_header(config: pytest.Config) -> str | None:
    if not SIMULATED_GPUS:
        return None
    return (
        f"cuda: SIMULATED ({cudasim.ENV}={SIMULATED_GPUS}): no GPU code runs; the cuda tests "
        f"execute on gradcore.backends.cudasim ({SIMULATED_GPUS} simulated GPU(s), kernels "
        "compiled for the host CPU by g++)"
    )


ALL_DEVICES = ["cpu", "strict", pytest.param("cuda", marks=pytest.mark.cuda)]


def on(device: str, value, dtype: str = "float64"):
    """A host value as a gradcore array of ``dtype`` on ``device``."""
    return gc.array(np.asarray(value), dtype=dtype, device=device)


def run_gradcore(*args: str, cwd=None, timeout: float = 300) -> subprocess.CompletedProcess:
    """The ``gradcore`` command, run as a user runs it: in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "gradcore", *args],
        capture_output=True, text=True, timeout=timeout, cwd=cwd,
    )  # fmt: skip


def host(x):
    """Host NumPy copies: an array (or Python number) as an ndarray, a pytree leaf by leaf."""
    copied = gc.to_numpy(x)
    return copied if isinstance(copied, (list, tuple, dict)) else np.asarray(copied)


def cuda_unavailable_reason() -> str | None:
    try:
        gc.backend.backend_for_device("cuda")
    except gc.DeviceError as error:
        return str(error)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("cuda") is not None:
        reason = cuda_unavailable_reason()
        if reason is not None:
            pytest.skip(
                f"no GPU answers: {reason} ({cudasim.ENV}=1 runs the cuda tests on the "
                "simulated device)"
            )


@pytest.fixture(params=ALL_DEVICES)
def device(request: pytest.FixtureRequest) -> str:
    """Each available device in turn."""
    return request.param
