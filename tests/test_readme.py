"""README.md's Python examples run as shown: every ```python block, in order, as one script.

A reader pastes the blocks one after the other into one session, so they run here the same way,
from an empty directory (the files they write land there), in a fresh interpreter.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_script(text: str) -> str:
    """The README's python blocks joined into one script, each announced so a failure names it."""
    blocks = PYTHON_BLOCK.findall(text)
    return "".join(
        f"print('--- README python block {number}', flush=True)\n{block}"
        for number, block in enumerate(blocks, start=1)
    )


def test_blocks_are_found() -> None:
    script = readme_script("text\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a\n```\n")
    assert "a = 1" in script and "b = a" in script and "ls" not in script
    assert script.count("--- README python block") == 2


@pytest.mark.slow
def test_readme_python_blocks_run_in_order(tmp_path: Path) -> None:
    script = tmp_path / "readme.py"
    script.write_text(readme_script(README.read_text()))
    run = tmp_path / "run"  # an empty working directory for what the examples write
    run.mkdir()
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=run, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    last_block = re.findall(r"--- README python block \d+", done.stdout)
    where = last_block[-1] if last_block else "before the first block"
    assert done.returncode == 0, f"failed in {where}:\n{done.stderr[-3000:]}"
    blocks = len(PYTHON_BLOCK.findall(README.read_text()))
    assert last_block[-1] == f"--- README python block {blocks}"
