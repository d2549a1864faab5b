"""Simulated ``cupy.cuda``: devices, streams, events and memory pools (see the submodules)."""

from cupy.cuda import compiler, curand, device, memory, runtime, stream  # noqa: F401
from cupy.cuda.device import Device, get_device_id, is_available  # noqa: F401
from cupy.cuda.memory import (  # noqa: F401
    MemoryPointer,
    MemoryPool,
    PinnedMemoryPool,
    set_allocator,
    set_pinned_memory_allocator,
)
from cupy.cuda.stream import Event, Stream, get_current_stream, get_elapsed_time  # noqa: F401
