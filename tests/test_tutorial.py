"""The lecture tutorial (docs/tutorial/lecture.py) runs to the end: it checks every result it
prints, so an error or a wrong number fails it, and it writes its figures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorial" / "lecture.py"


@pytest.mark.slow
def test_lecture_tutorial_runs_and_draws_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures"
    done = subprocess.run(
        [sys.executable, str(TUTORIAL), "--out", str(out)], cwd=tmp_path,
        env={**os.environ, "MPLBACKEND": "Agg"}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    for part in ("1. Perceptron", "2. The chain rule", "3. Backpropagation", "4. The defvjp",
                 "5. SGD (Algorithm 8.1)"):  # fmt: skip
        assert f"=== {part}" in done.stdout
    assert (out / "optimizers.png").stat().st_size > 0
    dot = (out / "chain_rule.dot").read_text()
    z_node = '<z<br/>scalar<br/><font color="darkgreen">-4</font><br/><font color="red">3</font>>'
    assert z_node in dot  # the slide's z: value -4, gradient df/dz = q = 3
