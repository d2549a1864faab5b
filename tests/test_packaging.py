"""The wheel a user installs: the backends as gradcore.backends, and py.typed (PEP 561), so that
a type checker reads gradcore's type hints in the user's own code."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_wheel_ships_py_typed_and_the_backends(tmp_path):
    source = tmp_path / "source"  # a copy: setuptools leaves a build/ folder where it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("gradcore", "backends"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path)]
    subprocess.run([*command, str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("gradcore-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gradcore/py.typed" in names
    assert "gradcore/backends/numpy_backend.py" in names
