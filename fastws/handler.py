"""Handlers: the objects whose `on_*` methods a connection calls.

Any object will do, and every method is optional (a missing one is simply not called), but
subclassing `Handler` gives the callbacks' signatures to type checkers: mark your methods
with `@typing.override` (Python 3.12; `typing_extensions.override` before) and mypy reports a
misspelled callback such as `on_message`. At run time, the first time a handler class is
attached to a connection, an `on_*` method that is not a fastws callback draws a warning
naming the closest callback: such a method would never be called.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import TYPE_CHECKING

from .handshake import accept
from .http import Request, Response

if TYPE_CHECKING:
    from ._codec import Frame
    from .connection import Connection
    from .server import Server

__all__ = ["CALLBACKS", "Handler", "check_handler"]

CALLBACKS = frozenset({
    "on_request", "on_upgraded", "on_frame", "on_rtt", "on_closed",
    "on_pause_writing", "on_resume_writing", "on_reconnecting",
    # topics and the backplane (fastws.topics, fastws.backplane)
    "on_messages_dropped", "on_backplane_lost", "on_backplane_restored",
    "on_backplane_dropped",
})


class Handler:
    """Base class of handlers; every callback here does what a missing one does."""

    def on_request(self, conn: Connection, request: Request) -> None:
        """A plain HTTP request (server): answer it with `conn.respond(...)` or upgrade it with
        `conn.upgrade(fastws.accept(request))`. By default upgrades are accepted and other
        requests get 404."""
        if request.upgrade:
            conn.upgrade(accept(request))
        else:
            conn.respond(Response.text(404, "Not Found\n"))

    def on_upgraded(self, conn: Connection) -> None:
        """The connection is a WebSocket now (both sides)."""

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        """A message (whole, unless reassembly is off), or a pong."""

    def on_rtt(self, conn: Connection, seconds: float) -> None:
        """A round-trip time measured by AutoPing."""

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        """The WebSocket connection is closed (reported exactly once), or a client's
        connection or handshake failed (1006, or 1015 for TLS; the cause in `conn.error`)."""

    def on_reconnecting(self, conn: Connection, delay: float) -> bool | None:
        """A client made with `connect(..., reconnect=True)` will try again in `delay`
        seconds (called after `on_closed` of `conn`, the connection that ended or failed;
        `conn.error` says why). Return False to stop reconnecting."""
        return None

    def on_pause_writing(self, conn: Connection) -> None:
        """More than `write_high_water` bytes wait to be sent: stop producing."""

    def on_resume_writing(self, conn: Connection) -> None:
        """The write buffer drained below `write_low_water`."""

    def on_messages_dropped(self, conn: Connection, count: int) -> None:
        """Published messages were not sent to this slow subscriber (the server's
        `slow_consumers` policy is "drop"): `count` in this loop iteration;
        `conn.messages_dropped` is the total."""

    def on_backplane_lost(self, server: Server, reason: str) -> None:
        """The server lost its pub/sub backplane (Redis): until `on_backplane_restored`,
        messages published on other workers and machines do not reach this server's
        subscribers, and this server's publishes wait in a bounded queue."""

    def on_backplane_restored(self, server: Server, down: float) -> None:
        """The backplane is back after `down` seconds: subscriptions are restored and the
        queued publishes sent."""

    def on_backplane_dropped(self, server: Server, count: int) -> None:
        """`count` publishes may not have reached the backplane: they did not fit in the
        queue kept while it was away, or were sent but not acknowledged when its
        connection dropped (at most one call per loop iteration)."""


# What other WebSocket libraries call their callbacks, and fastws' name for each.
_OTHER_NAMES = {
    "on_message": "on_frame", "on_data": "on_frame", "on_text": "on_frame",
    "on_binary": "on_frame", "on_ws_frame": "on_frame", "on_pong": "on_frame",
    "on_open": "on_upgraded", "on_connect": "on_upgraded", "on_connected": "on_upgraded",
    "on_ws_connected": "on_upgraded", "on_close": "on_closed", "on_disconnect": "on_closed",
    "on_disconnected": "on_closed", "on_ws_disconnected": "on_closed", "on_error": "on_closed",
    "on_http_request": "on_request", "on_latency": "on_rtt",
}

_checked: set[type] = set()


def check_handler(handler: object) -> None:
    """Refuse a function (a handler is an object with on_* methods); warn once per class
    about `on_*` methods that no connection will ever call."""
    if inspect.isroutine(handler):
        raise TypeError(
            f"the handler must be an object with on_* callbacks (see fastws.Handler), not the "
            f"function {getattr(handler, '__qualname__', handler)!r}; an `async def "
            f"handler(ws)` coroutine function is fastws.asyncio's awaitable form")
    kind = type(handler)
    if kind in _checked:
        return
    _checked.add(kind)
    for name in dir(kind):
        if name.startswith("on_") and name not in CALLBACKS and callable(getattr(kind, name)):
            close = _OTHER_NAMES.get(name) or next(
                iter(difflib.get_close_matches(name, CALLBACKS, n=1)), None)
            hint = f" (did you mean {close}?)" if close else ""
            warnings.warn(f"{kind.__qualname__}.{name} is not a fastws callback and will never "
                          f"be called{hint}", stacklevel=3)
