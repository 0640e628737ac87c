"""Connections on an asyncio loop: a fastws `Connection` over an `AsyncioTransport`.

The Connection is the same class the fastws Loop runs (handlers, stages, limits, HTTP,
the client's handshake, timers); only its transport differs. asyncio recognises a buffered
protocol by its class, so the Cython adapter is given `asyncio.BufferedProtocol` as a
second base here: asyncio and uvloop then hand it their read buffer requests
(`get_buffer`/`buffer_updated`) instead of a bytes object per read.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from .._asyncio_transport import AsyncioTransport
from ..connection import Connection
from ..limits import Limits

__all__ = ["AsyncioProtocol", "is_coroutine_handler", "new_connection"]


class AsyncioProtocol(AsyncioTransport, asyncio.BufferedProtocol):
    """The adapter as asyncio sees it: a BufferedProtocol (no state of its own)."""

    __slots__ = ()


def new_connection(loop: asyncio.AbstractEventLoop, handler: Any, *, is_client: bool,
                   limits: Limits, server: Any = None,
                   connection_class: type[Connection] = Connection) -> Connection:
    """A Connection whose transport is an AsyncioProtocol, not yet connected: hand
    `conn._transport` to asyncio as the protocol (create_server, create_connection).
    The client passes a `connection_class` that remembers the application's close."""

    def transport(conn: Connection) -> AsyncioProtocol:
        return AsyncioProtocol(loop, conn, is_client=is_client,
                               close_timeout=limits.close_timeout)

    return connection_class(loop, None, handler, is_client=is_client, limits=limits,
                            server=server, transport_factory=transport)


def is_coroutine_handler(handler: Any) -> bool:
    """True for `async def handler(ws)` (or an object whose __call__ is one): the
    awaitable form. Any other object is a handler with on_* callbacks."""
    if inspect.iscoroutinefunction(handler):
        return True
    # An object whose class defines `async def __call__`. (For a class without __call__,
    # type(handler).__call__ is type's own, which is not a coroutine function.)
    return not inspect.isfunction(handler) and inspect.iscoroutinefunction(
        type(handler).__call__)
