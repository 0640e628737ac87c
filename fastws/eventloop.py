"""What fastws needs from an event loop, so that one `Connection` (and one `Topics`, one
backplane) runs on several loops: the fastws `Loop`, and every asyncio loop (the stdlib's and
uvloop's).

A connection, its stages (`AutoPing`, stage timers) and its transport use two things:
`time()`, a monotonic clock in seconds, and `call_later(delay, callback, *args)`, which
returns a handle whose `cancel()` stops the callback (`EventLoop`). Topics and broadcast
(fastws.topics, fastws._fanout) also call `call_soon(callback, *args)`, which runs the
callback once the current loop iteration's events are handled: the held transports are
released there, one write per socket per iteration. The Redis backplane (fastws.backplane,
fastws.redis_link) watches its own non-blocking sockets with `add_reader`/`remove_reader`
and `add_writer`/`remove_writer` (`IOEventLoop`). The fastws `Loop` has all of these, and so
has every asyncio loop, with the same meaning.

The one difference is `is_closed`: a property on the fastws `Loop`, a method on asyncio's;
`loop_is_closed(loop)` answers for both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EventLoop", "IOEventLoop", "TimerHandle", "loop_is_closed"]


class TimerHandle(Protocol):
    """A scheduled callback: `fastws.Timer`, or an asyncio `Handle`/`TimerHandle`."""

    def cancel(self) -> None: ...


class EventLoop(Protocol):
    """The part of an event loop that connections and topics use: `fastws.Loop` or an
    asyncio loop."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> TimerHandle: ...

    def call_soon(self, callback: Callable[..., object], *args: Any) -> TimerHandle: ...


class IOEventLoop(EventLoop, Protocol):
    """An EventLoop that also watches file descriptors (the Redis backplane's sockets)."""

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...

    def remove_reader(self, fd: Any) -> bool: ...

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None: ...

    def remove_writer(self, fd: Any) -> bool: ...


def loop_is_closed(loop: object) -> bool:
    """True when `loop` is closed: `fastws.Loop.is_closed` is a property, asyncio's a
    method."""
    closed = getattr(loop, "is_closed", False)
    return bool(closed() if callable(closed) else closed)
