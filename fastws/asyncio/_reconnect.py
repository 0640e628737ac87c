"""Reconnection for the asyncio client's callback form: `connect(url, handler, reconnect=True)`.

A `Supervisor` stands between the connections and the application's handler, as the Loop
client's does (fastws.loop_client.Supervisor), with the same hook and the same rules: when
a connection closes or fails in a way another try may fix (fastws.reconnect.is_retryable)
and the application did not close it itself, `handler.on_reconnecting(conn, delay)` is
called after `on_closed` (returning False stops) and a new connection is opened `delay`
seconds later, in a task; the handler gets it in `on_upgraded` as usual. A retry that fails
calls `on_reconnecting` again with that try's Connection (`conn.error` says why; it never
opened, so, as everywhere on the asyncio client, it gets no `on_closed`). A failure
another try would repeat (a 4xx answer, refused proxy credentials) ends it, logged.
Closing the last connection (`conn.close()`) stops a wait in progress too.

The first connection is not retried: `await connect(...)` raises its failure, so a wrong
URL or a server that is down is seen at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ..connection import Connection
from ..exceptions import connection_closed
from ..reconnect import Backoff, is_retryable

if TYPE_CHECKING:
    from .client import Connecting

__all__ = ["Supervisor"]

logger = logging.getLogger("fastws")

# The waits in progress: asyncio keeps only weak references to tasks.
_REDIALS: set[asyncio.Task[None]] = set()


class Supervisor:
    """The handler every connection of a reconnecting callback client gets (see the module
    doc). Callbacks it does not handle go straight to the application's handler."""

    def __init__(self, connecting: Connecting, handler: Any, backoff: Backoff) -> None:
        self.connecting = connecting
        self.application = handler
        self.backoff = backoff
        self.current: Connection | None = None
        self._delays: Iterator[float] = backoff.delays()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return getattr(self.application, name)
        raise AttributeError(name)

    def on_upgraded(self, conn: Connection) -> None:
        self.current = conn
        self._delays = self.backoff.delays()     # it opened: start the schedule over
        callback = getattr(self.application, "on_upgraded", None)
        if callback is not None:
            callback(conn)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        callback = getattr(self.application, "on_closed", None)
        if callback is not None:
            callback(conn, code, reason)
        if conn is not self.current or getattr(conn, "close_requested", False):
            return
        cause = conn.error if conn.error is not None else connection_closed(code, reason)
        if is_retryable(cause):
            self._schedule(conn)

    def _schedule(self, conn: Connection) -> None:
        delay = next(self._delays)
        hook = getattr(self.application, "on_reconnecting", None)
        if hook is not None and hook(conn, delay) is False:
            return
        logger.info("fastws.asyncio: reconnecting to %s in %.2f s", self.connecting.url, delay)
        task = asyncio.get_running_loop().create_task(self._redial(conn, delay))
        _REDIALS.add(task)
        task.add_done_callback(_REDIALS.discard)

    async def _redial(self, last: Connection, delay: float) -> None:
        await asyncio.sleep(delay)
        if getattr(last, "close_requested", False) or last is not self.current:
            return       # the application closed it while we waited
        try:
            await self.connecting
        except Exception as exc:
            failed = self.connecting.last_attempt
            if not is_retryable(exc) or failed is None:
                logger.error("fastws.asyncio: stopped reconnecting to %s: %s",
                             self.connecting.url, exc)
                return
            self.current = failed
            self._schedule(failed)

    def __repr__(self) -> str:
        return f"<fastws.asyncio reconnecting client for {self.connecting.url} " \
               f"({self.application!r})>"
