"""Simulated ``cupy.cuda.stream``: streams and events, ordered no-ops that check their
arguments (kernels run synchronously on the host); nothing here measures time."""

from __future__ import annotations

from typing import Any

from cupy import _core


class Stream:
    """A stream: a context that makes it current; work on it runs at once, in order."""

    _current: list[Stream] = []

    def __init__(self, null: bool = False, non_blocking: bool = False, priority: int = 0,
                 ptds: bool = False) -> None:  # fmt: skip
        if null and ptds:
            raise ValueError("null and ptds cannot both be True")
        self.device_id = _core.current_id()
        self.null = null
        self.ptr = 0 if null else id(self)

    def __enter__(self) -> Stream:
        Stream._current.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Stream._current.pop()

    def use(self) -> Stream:
        Stream._current[:] = [self]
        return self

    def synchronize(self) -> None:
        _core.host_read("Stream.synchronize")

    def record(self, event: Event | None = None) -> Event:
        event = Event() if event is None else event
        event.record(self)
        return event

    def wait_event(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"wait_event takes a cupy.cuda.Event, not {type(event).__name__}")

    @property
    def done(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return hash(self.ptr)


Stream.null = Stream(null=True)


def get_current_stream(device_id: int | None = None) -> Stream:
    return Stream._current[-1] if Stream._current else Stream.null


class Event:
    """An event: ``record`` marks a point in a stream's (already finished) work."""

    def __init__(self, block: bool = False, disable_timing: bool = False,
                 interprocess: bool = False) -> None:  # fmt: skip
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.disable_timing = disable_timing
        self.recorded = False

    def record(self, stream: Stream | None = None) -> None:
        if stream is not None and not isinstance(stream, Stream):
            raise TypeError(f"record takes a cupy.cuda.Stream, not {type(stream).__name__}")
        self.recorded = True

    def synchronize(self) -> None:
        _core.host_read("Event.synchronize")

    @property
    def done(self) -> bool:
        return True


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    raise NotImplementedError(
        "cupy.cuda.get_elapsed_time: the simulated device never measures time (it is a test "
        "double); time kernels on a real GPU (bench/gpu_run.sh)"
    )
