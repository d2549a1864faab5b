"""The benchmark suite keeps running: ``python -m bench --quick`` end to end, and its report.

No timing is asserted here; these tests only check that every suite runs, that implementations
still agree (each suite checks that before timing) and that the output files are written.
"""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu, harness, mlp, report  # noqa: E402
from bench.train_time import printed_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One ``python -m bench --quick`` in a fresh process, writing into a temporary folder."""
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("*.json")
    return path, json.loads(path.read_text())


@pytest.mark.slow
def test_quick_run_covers_every_suite(quick_run: tuple[Path, dict]) -> None:
    path, run = quick_run
    suites = {suite["suite"]: suite for suite in run["suites"]}
    assert list(suites) == [
        "mlp",
        "memory",
        "overhead",
        "sigmoid",
        "train",
        "checkpoint",
        "scaling",
        "gpu",
        "estimators",
        "csv",
        "optimizers",
    ]
    for suite in suites.values():
        assert suite["rows"] or suite["notes"], suite["suite"]
        for row in suite["rows"]:
            assert {"case", "impl", "median_s", "min_s", "ratio"} <= set(row)
    mlp_rows = suites["mlp"]["rows"]
    assert {"numpy (expert)", "gradcore", "gradcore jit"} <= {row["impl"] for row in mlp_rows}
    for row in mlp_rows:  # each peer was also timed alone, and the suite says how it compared
        assert row["vs_alone"] == pytest.approx(row["median_s"] / row["alone_median_s"])
    assert any(note.startswith(("fair:", "**unfair**")) for note in suites["mlp"]["notes"])
    # the control, a second process of the floor, was timed in every case and kept out of rows
    assert set(suites["mlp"]["control"]) == {row["case"] for row in mlp_rows}
    assert mlp.CONTROL not in {row["impl"] for row in mlp_rows}
    assert any(note.startswith("control: ") for note in suites["mlp"]["notes"])
    assert suites["gpu"]["notes"] == [
        "not run: the GPU table needs `--device cuda` (bench/gpu_run.sh runs it)"
    ]
    assert {row["impl"] for row in suites["memory"]["rows"]} >= {"gradcore"}
    estimator_cases = {row["case"] for row in suites["estimators"]["rows"]}
    assert estimator_cases == {f"{data} {what}" for data in ("breast cancer", "digits")
                               for what in ("fit", "predict_proba")}  # fmt: skip
    assert path.with_suffix(".md").read_text().startswith("# Benchmarks: cpu")
    if importlib.util.find_spec("matplotlib"):
        assert path.with_suffix(".png").stat().st_size > 0


@pytest.mark.slow
def test_readme_block_is_generated_from_results(quick_run: tuple[Path, dict], tmp_path) -> None:
    _, run = quick_run
    run["quick"] = False  # quick runs are never published; pretend this one is a full run
    (tmp_path / f"{report.run_name(run)}.json").write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text(f"# gradcore\n\n{report.START}\nold\n{report.END}\n\nafter\n")
    report.main(["--results", str(tmp_path), "--readme", str(readme)])
    text = readme.read_text()
    assert "old" not in text and text.endswith("\n\nafter\n")
    assert "| case | numpy (expert) | gradcore | gradcore jit |" in text
    assert run["machine"]["cpu"] in text and run["machine"]["date"] in text
    assert "### GPU: not yet measured" in text  # no CUDA run among the results


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# gradcore\n")
    with pytest.raises(SystemExit, match="bench:start"):
        report.update_readme(readme, "section")


def test_missing_peers_are_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlp, "installed", lambda module: False)
    notes: list[str] = []
    assert list(mlp.implementations("cpu", notes)) == ["numpy (expert)", "gradcore", "gradcore jit"]
    for peer in ("autograd", "PyTorch", "JAX"):
        assert any(f"{peer} is not installed" in note for note in notes), peer


def test_torch_compile_needs_a_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlp, "installed", lambda module: module == "torch")
    monkeypatch.setattr(mlp.shutil, "which", lambda name: None)
    notes: list[str] = []
    assert "pytorch compile" not in mlp.implementations("cpu", notes)
    assert any("torch.compile skipped: it needs a C++ compiler" in note for note in notes)


def test_expert_floor_agrees_with_gradcore_over_steps() -> None:
    """The floor's preallocated buffers are reused step after step without going stale."""
    for loss, outputs in (("softmax", 3), ("bce", 1)):
        case = mlp.Case((5, 4, 4, outputs), loss, 6)
        floor = mlp.ExpertStep(*mlp.problem(case), case.loss)
        gradcore = mlp.GradcoreStep(*mlp.problem(case), case.loss, "cpu")
        for _ in range(3):
            assert float(floor()) == pytest.approx(float(gradcore()), rel=1e-5)
        for mine, theirs in zip(floor.current_params(), gradcore.current_params()):
            for k in mine:
                np.testing.assert_allclose(mine[k], theirs[k], rtol=1e-4, atol=1e-6)


def test_a_wrong_update_is_caught() -> None:
    case = mlp.Case((5, 4, 3), "softmax", 6)
    params = mlp.problem(case)[0]
    right = mlp.one_step_params(mlp.ExpertStep(*mlp.problem(case), case.loss))
    wrong = [{k: v * 1.01 for k, v in layer.items()} for layer in right]
    mlp.check_updates_agree({"floor": right, "same": right}, params)
    with pytest.raises(AssertionError, match="mlp: off's parameter update differs from floor's"):
        mlp.check_updates_agree({"floor": right, "off": wrong}, params)


def _failing_factory() -> None:
    raise ValueError("no such peer")


@pytest.mark.slow
def test_workers_time_in_turn_and_report_their_errors() -> None:
    case = mlp.Case((5, 4, 3), "softmax", 6)
    with harness.Worker("floor") as floor, harness.Worker("gradcore") as gradcore:
        floor.build("c", mlp.ExpertStep, *mlp.problem(case), case.loss)
        gradcore.build("c", mlp.GradcoreStep, *mlp.problem(case), case.loss, "cpu")
        rows = harness.time_isolated(
            {"floor": floor, "gradcore": gradcore}, "c", "floor",
            rounds=2, samples=2, number=3, warmup=1, settle_s=0.0,
        )  # fmt: skip
        assert [row["impl"] for row in rows] == ["floor", "gradcore"]
        assert rows[0]["ratio"] == 1.0 and rows[0]["min_ratio"] == 1.0
        assert len(floor.time("c", number=2, samples=4, warmup=0)) == 4
        with pytest.raises(harness.WorkerError, match="(?s)floor: .*ValueError: no such peer"):
            floor.build("bad", _failing_factory)
        assert floor.apply("c", mlp.one_step_params)[0]["W"].shape == (5, 4)  # still serving


class _CountingStep:
    def __init__(self) -> None:
        self.calls = self.synchronized = 0

    def __call__(self) -> None:
        self.calls += 1

    def synchronize(self) -> None:
        self.synchronized += 1


def test_a_slice_warms_up_for_its_seconds_one_synchronized_step_at_a_time() -> None:
    step = _CountingStep()
    assert len(harness._time_calls(step, number=2, samples=3, warmup=1, warm_s=0.0)) == 3
    assert step.calls == 1 + 2 * 3
    step = _CountingStep()
    harness._time_calls(step, number=2, samples=1, warmup=1, warm_s=0.02)
    warm_calls = step.calls - 2
    assert warm_calls > 100 and step.synchronized == warm_calls + 1  # each warm one waited for


def test_ratios_are_taken_round_by_round() -> None:
    """The machine turns 2x slower in round two, between the floor's slice and mine: the rounds'
    ratios are 0.9, 1.8 and 0.9, the row's 0.9, where the ratio of the two medians is 1.8."""
    floor = [1.0, 1.0, 1.0, 1.0, 2.0, 2.0]  # three rounds of two samples
    mine = [0.9, 0.9, 1.8, 1.8, 1.8, 1.8]
    rows = harness._rows({"floor": floor, "mine": mine}, "floor", per_round=2)
    assert rows[0]["ratio"] == 1.0
    assert rows[1]["ratio"] == pytest.approx(0.9) and rows[1]["median_s"] == 1.8
    assert rows[1]["min_ratio"] == pytest.approx(0.9)
    with pytest.raises(ValueError):
        harness._rows({"floor": floor, "mine": mine[:4]}, "floor", per_round=2)  # a round short


def test_a_replica_of_the_floor_joins_its_figure_and_gives_the_control() -> None:
    """The floor's second process runs 4% slower in round one and 1% faster in round two: each
    round's floor is the geometric mean of the two, and the replica's ratio to the first (the
    control) rides on the floor's row, not on a row of its own."""
    floor = [1.0, 1.0, 2.0, 2.0]  # two rounds of two samples
    replica = [1.04, 1.04, 1.98, 1.98]
    mine = [1.0, 1.0, 2.0, 2.0]
    rows = harness._rows(
        {"floor": floor, "mine": mine, "again": replica}, "floor", per_round=2, replica="again"
    )
    assert [row["impl"] for row in rows] == ["floor", "mine"]
    assert rows[0]["ratio"] == 1.0 and rows[0]["replica_ratio"] == pytest.approx(1.015)
    assert rows[0]["median_s"] == pytest.approx(1.51) and rows[0]["min_s"] == 1.0
    expected = statistics.median([1 / math.sqrt(1.04), 2 / math.sqrt(2 * 1.98)])
    assert rows[1]["ratio"] == pytest.approx(expected) and "replica_ratio" not in rows[1]


def test_fairness_is_the_suite_median_over_the_alone_median() -> None:
    row = {"median_s": 2.2}
    assert harness.mark_fairness(row, [1.0, 2.0, 9.0])  # median 2.0: 1.1x, within 1.2x
    assert row["alone_median_s"] == 2.0 and row["vs_alone"] == pytest.approx(1.1)
    row = {"median_s": 1.3}
    assert not harness.mark_fairness(row, [1.0, 1.0, 1.0])
    assert row["vs_alone"] == pytest.approx(1.3)


def test_the_control_note_gives_the_spread_of_the_floor_against_itself() -> None:
    note = mlp.control_note({"softmax b=32": 1.064, "bce b=32": 0.981})
    assert note.startswith(
        "control: the floor's second process, timed as a peer, ran at 0.98-1.06x its first "
        "(softmax b=32 1.06x, bce b=32 0.98x): ideally 1.00x"
    )


def test_a_floor_off_its_own_alone_time_is_reported_as_machine_drift() -> None:
    rows = [{"impl": "floor", "vs_alone": v} for v in (1.0, 1.1)] + [
        {"impl": "peer", "vs_alone": 2.0}
    ]
    assert mlp.machine_drift(rows, "floor") is None  # within 1.2x: the peer's flag stands
    rows[0]["vs_alone"] = 0.6  # the floor alone was 1.67x slower: the machine changed
    assert mlp.machine_drift(rows, "floor").startswith(
        "**machine drift**: the floor was 0.60-1.10x its own time alone"
    )


def test_gpu_table_runs_its_code_on_the_cpu() -> None:
    result = gpu.table("cpu", quick=True)
    impls = {row["impl"] for row in result["rows"]}
    assert {"copy", "fused", "numpy (expert)", "gradcore jit"} <= impls
    fused = next(row for row in result["rows"] if row["impl"] == "fused")
    assert fused["of_peak"] is None and fused["of_copy"].endswith("%")  # no peak off CUDA
    if mlp.installed("torch"):
        jit = next(row for row in result["rows"] if row["impl"] == "gradcore jit")
        assert jit["vs_pytorch"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not mlp.installed("torch"), reason="PyTorch is not installed")
def test_torch_compile_step_agrees_with_the_floor() -> None:
    case = mlp.Case((5, 4, 3), "softmax", 6)
    params = mlp.problem(case)[0]
    stepped = {
        "floor": mlp.one_step_params(mlp.ExpertStep(*mlp.problem(case), case.loss)),
        "compile": mlp.one_step_params(mlp.TorchCompiledStep(*mlp.problem(case), case.loss, "cpu")),
    }
    mlp.check_updates_agree(stepped, params)


@pytest.mark.parametrize(
    "output, expected",
    [("test accuracy: 97.2%", 0.972), ("Test accuracy 0.9561\n", 0.9561), ("loss 0.1", None)],
)
def test_train_suite_reads_the_printed_accuracy(output: str, expected: float | None) -> None:
    assert printed_accuracy(output) == pytest.approx(expected)


class _BrokenStep(mlp.ExpertStep):
    """A peer that builds but fails at its first step, as torch.compile does without a compiler."""

    def __call__(self) -> None:
        raise RuntimeError("compiler not found")


@pytest.mark.slow
def test_a_peer_that_fails_to_step_is_skipped_with_the_reason() -> None:
    notes: list[str] = []
    factories = {"numpy (expert)": mlp.ExpertStep, "broken": _BrokenStep}
    workers = mlp.start_workers(factories, [mlp.Case((5, 4, 3), "softmax", 6)], notes)
    try:
        assert list(workers) == ["numpy (expert)"]
    finally:
        for worker in workers.values():
            worker.close()
    reason = "(RuntimeError: compiler not found)"
    assert notes == [f"broken skipped: it failed to build or to step {reason}"]


def test_the_simulated_cuda_device_gives_no_speed_figure(monkeypatch, capsys) -> None:
    """The simulator is a test double (gradcore.backends.cudasim): the suite refuses to time it."""
    from bench.__main__ import main

    monkeypatch.setenv("GRADCORE_SIMULATE_CUDA", "1")
    assert main(["--device", "cuda", "--suite", "gpu", "--quick"]) == 2
    assert "never gives a speed figure" in capsys.readouterr().err
