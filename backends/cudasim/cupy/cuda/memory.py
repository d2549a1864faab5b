"""Simulated memory pools: host memory underneath, so pools count nothing and free nothing."""

from __future__ import annotations

from typing import Any

from cupy._core import MemoryPointer  # noqa: F401


class MemoryPool:
    """CuPy's device memory pool; the simulator's arrays live in host memory, unpooled."""

    def __init__(self, allocator: Any = None) -> None:
        if allocator is not None:
            raise NotImplementedError("a MemoryPool over a custom allocator is not simulated")
        self._limit = 0

    def malloc(self, size: int) -> Any:
        raise NotImplementedError("MemoryPool.malloc is not simulated (arrays use host memory)")

    def free_all_blocks(self, stream: Any = None) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0

    def used_bytes(self) -> int:
        raise NotImplementedError("device memory use is not simulated (MemoryPool.used_bytes)")

    total_bytes = used_bytes

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        if size is not None and fraction is not None:
            raise ValueError("size and fraction cannot be specified at one time")
        self._limit = size or 0

    def get_limit(self) -> int:
        return self._limit


class PinnedMemoryPool(MemoryPool):
    """CuPy's pinned host memory pool."""


_pool = MemoryPool()
_pinned = PinnedMemoryPool()


def get_default_memory_pool() -> MemoryPool:
    return _pool


def get_default_pinned_memory_pool() -> PinnedMemoryPool:
    return _pinned


def set_allocator(allocator: Any = None) -> None:
    if allocator is not None and allocator != _pool.malloc:
        raise NotImplementedError("custom device allocators are not simulated (set_allocator)")


def set_pinned_memory_allocator(allocator: Any = None) -> None:
    if allocator is not None and allocator != _pinned.malloc:
        raise NotImplementedError("custom pinned allocators are not simulated")
