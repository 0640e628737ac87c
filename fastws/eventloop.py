"""What a connection needs from an event loop, so that one `Connection` runs on several.

`Connection`, its stages (`AutoPing`, stage timers) and its transport use only two things
from the loop they run on: `time()`, a monotonic clock in seconds, and `call_later(delay,
callback, *args)`, which returns a handle whose `cancel()` stops the callback. The fastws
`Loop` has both, and so has every asyncio loop (the stdlib's and uvloop's), which is what lets
`fastws.asyncio` drive the same connections, stages and timers on asyncio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["EventLoop", "TimerHandle"]


class TimerHandle(Protocol):
    """A scheduled callback: `fastws.Timer`, or an asyncio `TimerHandle`."""

    def cancel(self) -> None: ...


class EventLoop(Protocol):
    """The part of an event loop that connections use: `fastws.Loop` or an asyncio loop."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object],
                   *args: Any) -> TimerHandle: ...
