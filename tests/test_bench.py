"""The benchmark suite keeps running: ``python -m bench --quick`` end to end, and its report.

No timing is asserted here; these tests only check that every suite runs, that implementations
still agree (each suite checks that before timing) and that the output files are written.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import mlp, report  # noqa: E402
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
        "optimizers",
    ]
    for suite in suites.values():
        assert suite["rows"] or suite["notes"], suite["suite"]
        for row in suite["rows"]:
            assert {"case", "impl", "median_s", "min_s", "ratio"} <= set(row)
    mlp_impls = {row["impl"] for row in suites["mlp"]["rows"]}
    assert {"numpy (hand-written)", "gradcore"} <= mlp_impls
    assert {row["impl"] for row in suites["memory"]["rows"]} >= {"gradcore"}
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
    assert "| case | numpy (hand-written) | gradcore |" in text
    assert run["machine"]["cpu"] in text and run["machine"]["date"] in text


def test_readme_without_markers_is_refused(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# gradcore\n")
    with pytest.raises(SystemExit, match="bench:start"):
        report.update_readme(readme, "section")


def test_missing_peers_are_skipped_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlp, "installed", lambda module: False)
    notes: list[str] = []
    assert list(mlp.implementations("cpu", notes)) == [
        "numpy (hand-written)",
        "gradcore",
        "gradcore jit",
    ]
    assert any("autograd is not installed" in n for n in notes)
    assert any("PyTorch is not installed" in n for n in notes)


@pytest.mark.parametrize(
    "output, expected",
    [("test accuracy: 97.2%", 0.972), ("Test accuracy 0.9561\n", 0.9561), ("loss 0.1", None)],
)
def test_train_suite_reads_the_printed_accuracy(output: str, expected: float | None) -> None:
    assert printed_accuracy(output) == pytest.approx(expected)
