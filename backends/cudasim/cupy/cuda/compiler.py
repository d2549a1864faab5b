"""Simulated ``cupy.cuda.compiler``: the exception a kernel that does not compile raises."""

from __future__ import annotations

from typing import Any


class CompileException(Exception):
    """CuPy's: the compiler's message, the source, the kernel's name and options.

    On the simulator the compiler is g++, so the message is g++'s, not NVRTC's.
    """

    def __init__(self, msg: str, source: str, name: str, options: Any,
                 backend: str = "nvrtc") -> None:  # fmt: skip
        self._msg = msg
        self.source = source
        self.name = name
        self.options = options
        self.backend = backend
        super().__init__()

    def __str__(self) -> str:
        return self._msg

    __repr__ = __str__

    def get_message(self) -> str:
        return self._msg
