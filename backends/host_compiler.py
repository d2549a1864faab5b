"""Kernels written at run time, compiled for the host: the CPU's fused kernels
(``numpy_kernels``) and the simulated CUDA device's (``cudasim``).

A translation unit is compiled once per user into a shared library, cached on disk under a hash
of its source, the compiler's version and the flags (so a new compiler or flag builds anew), and
once per process in memory; ctypes loads it. Writing to a temporary file and renaming it makes
the cache safe for processes that build the same unit at once.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
from functools import cache
from pathlib import Path

__all__ = ["CompileError", "NoCompilerError", "build", "cache_root", "compiler_version"]


class CompileError(Exception):
    """The compiler refused a translation unit; the message is the compiler's."""

    def __init__(self, message: str, source: str) -> None:
        super().__init__(message)
        self.source = source


class NoCompilerError(OSError):
    """The compiler named cannot run."""


def cache_root() -> Path:
    """Per user: ``$XDG_CACHE_HOME/gradcore``, else ``~/.cache/gradcore``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gradcore"


@cache
def compiler_version(compiler: str) -> str | None:
    """The first line of ``compiler --version``, or None where it cannot run."""
    try:
        done = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.partition("\n")[0] if done.returncode == 0 else None


_loaded: dict[str, ctypes.CDLL] = {}  # by key: what this process has loaded


def build(
    source: str, compiler: str, flags: tuple[str, ...], folder: Path, suffix: str
) -> ctypes.CDLL:
    """The shared library of ``source`` (a ``suffix`` file: ".c", ".cpp"), compiled once per
    user into ``folder``. Raises ``NoCompilerError`` or ``CompileError``."""
    version = compiler_version(compiler)
    if version is None:
        raise NoCompilerError(f"{compiler!r} cannot run")
    key = hashlib.sha256("\0".join([version, *flags, source]).encode()).hexdigest()
    library = _loaded.get(key)
    if library is not None:
        return library
    path = folder / f"{key[:32]}.so"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as scratch:
            unit = Path(scratch) / f"kernel{suffix}"
            unit.write_text(source)
            built = Path(scratch) / "kernel.so"
            done = subprocess.run(
                [compiler, *flags, "-o", str(built), str(unit)], capture_output=True, text=True
            )
            if done.returncode != 0:
                raise CompileError(done.stderr.replace(str(unit), unit.name), source)
            os.replace(built, path)  # atomic: another process may be building it too
    library = _loaded[key] = ctypes.CDLL(str(path))
    return library
