"""The ``memory`` suite: peak memory of one training step, next to the least it could need.

The least a step needs is the parameters, their gradients and velocities, and the activations
backward must keep: each hidden layer's sigmoid output (its derivative needs only the output)
and the loss's probabilities. The measured peak is what the parameters and velocities hold
before the step plus the most the step allocates on top of them, so Python objects (a graph's
nodes and boxes) count too. On the CPU the step is watched by tracemalloc, to which NumPy
reports its array buffers; on "cuda", every allocation from CuPy's memory pool is watched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.harness import mark_target, peak_cpu_bytes
from bench.mlp import Case, implementations, problem

TARGET = 1.2  # gradcore's peak at most this multiple of the minimum
BYTES_PER_FLOAT = 4  # float32 throughout


def cases(quick: bool) -> list[Case]:
    if quick:
        return [Case((20, 16, 16, 10), "softmax", 8)]
    return [
        Case((784, 256, 256, outputs), loss, batch)
        for loss, outputs in (("softmax", 10), ("bce", 1))
        for batch in (128, 1024)
    ]


def minimum_bytes(case: Case, param_bytes: int) -> int:
    """Parameters, gradients and velocities, plus every layer's output for one batch."""
    return 3 * param_bytes + BYTES_PER_FLOAT * case.batch * sum(case.sizes[1:])


def _peak_cuda(step: Callable[[], Any]) -> int:
    """As ``peak_cpu_bytes``, reading the CuPy pool's bytes in use after every allocation."""
    import cupy

    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    start = peak = pool.used_bytes()

    def watched_malloc(size: int) -> Any:
        nonlocal peak
        memory = pool.malloc(size)
        peak = max(peak, pool.used_bytes())
        return memory

    cupy.cuda.set_allocator(watched_malloc)
    try:
        step()
        cupy.cuda.Device().synchronize()
    finally:
        cupy.cuda.set_allocator(pool.malloc)
    return peak - start


def run(device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Peak bytes of one step (after a first step has made the velocities) per implementation."""
    notes = [
        "ratio = peak / minimum; minimum = parameters + gradients + velocities + each layer's "
        "output for the batch; peak = parameters + velocities + the buffers a step keeps "
        "between steps (the floor's) + the most one step allocates beyond them",
        "measured with tracemalloc (NumPy reports its buffers to it)"
        if device == "cpu"
        else "measured from every allocation out of CuPy's memory pool",
        "PyTorch is not measured: its allocator reports to neither",
    ]
    measure = _peak_cuda if device == "cuda" else peak_cpu_bytes
    factories = implementations(device, notes, peers=False)
    rows = []
    for case in cases(quick):
        params, x, y = problem(case)
        param_bytes = sum(v.nbytes for layer in params for v in layer.values())
        minimum = minimum_bytes(case, param_bytes)
        for name, factory in factories.items():
            step = factory(params, x, y, case.loss)
            step()  # the optimizer's velocities and any caches exist from now on
            # buffers a step keeps between steps (the floor's) are held during the step too
            peak = 2 * param_bytes + getattr(step, "buffer_bytes", 0) + measure(step)
            row = {
                "case": case.name,
                "impl": name,
                "median_s": None,
                "min_s": None,
                "ratio": peak / minimum,
                "peak_bytes": peak,
                "minimum_bytes": minimum,
            }
            if name in ("gradcore", "gradcore jit"):
                mark_target(row, f"<= {TARGET:.2f}x", peak / minimum <= TARGET)
            rows.append(row)
    return {"suite": "memory", "reference": "minimum", "rows": rows, "notes": notes}
