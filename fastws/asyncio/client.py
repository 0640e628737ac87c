"""`connect()` on a running asyncio loop: a WebSocket client, callback or awaitable form.

`await connect(url, handler)` opens the connection and returns the fastws Connection once
the opening handshake is done (after `handler.on_upgraded` ran); the handler then gets
every callback it gets on the fastws Loop. `await connect(url)` (no handler) returns a
`WebSocket` for coroutines; `async with connect(url) as ws:` closes it on exit. Either
way, a connection that cannot be opened raises in the caller: OSError (the name does not
resolve, the connection is refused), ssl.SSLError, fastws.HandshakeError or
fastws.HttpError (the server's answer), TimeoutError (past `handshake_timeout`). No
on_closed is reported for a connection that never opened.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any

from .._asyncio_websocket import WebSocket
from .._codec import CloseCode
from ..client import ClientHandshake
from ..connection import Connection
from ..deflate import CompressionSetting, deflate_options
from ..handler import check_handler
from ..handshake import parse_ws_url
from ..http import HeadersLike
from ..limits import Limits
from ._connections import new_connection

__all__ = ["Connecting", "connect"]


class _Opening:
    """The connection's handler until the handshake is done: then it hands over to the
    application's handler (or to a WebSocket) and resolves `opened`."""

    def __init__(self, handler: Any, opened: asyncio.Future[Any], max_queue: int | None) -> None:
        self.handler = handler
        self.opened = opened
        self.max_queue = max_queue

    def on_upgraded(self, conn: Connection) -> None:
        result: Any
        if self.handler is None:
            result = conn.handler = WebSocket(conn, max_queue=self.max_queue)
        else:
            result = conn
            conn.handler = self.handler
            on_upgraded = getattr(self.handler, "on_upgraded", None)
            if on_upgraded is not None:
                on_upgraded(conn)
        if not self.opened.done():
            self.opened.set_result(result)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        if not self.opened.done():
            error = conn.error
            if error is None:
                error = ConnectionError(f"connection closed ({code}) before the WebSocket "
                                        f"opened: {reason}")
            self.opened.set_exception(error)


class Connecting:
    """What connect() returns: `await` it, or `async with` it (closed on exit)."""

    def __init__(self, url: str, handler: Any, ssl: ssl_module.SSLContext | None,
                 subprotocols: Sequence[str], headers: HeadersLike,
                 compression: CompressionSetting, max_queue: int | None,
                 limits: dict[str, Any]) -> None:
        if handler is not None:
            check_handler(handler)
        self.secure, self.host, self.port, self.resource = parse_ws_url(url)
        if self.secure and ssl is None:
            ssl = ssl_module.create_default_context()
        if not self.secure and ssl is not None:
            raise ValueError("an SSL context was given for a ws:// URL; use wss://")
        self.handler = handler
        self.ssl = ssl
        self.max_queue = max_queue
        self.limits = Limits().updated(limits)
        self.options = deflate_options(compression, is_client=True)
        self.subprotocols = tuple(subprotocols)
        self.headers = headers
        self._opened: Any = None

    async def _open(self) -> Any:
        loop = asyncio.get_running_loop()
        handshake = ClientHandshake(self.host, self.port, self.resource, secure=self.secure,
                                    subprotocols=self.subprotocols, headers=self.headers,
                                    compression=self.options, limits=self.limits)
        opened: asyncio.Future[Any] = loop.create_future()
        conn = new_connection(loop, _Opening(self.handler, opened, self.max_queue),
                              is_client=True, limits=self.limits)
        conn.start(lambda: conn._begin_client_handshake(handshake))
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                transport, _ = await loop.create_connection(
                    lambda: conn._transport, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.secure else None)
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    try:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    except OSError:
                        pass
                return await opened
        except BaseException as exc:
            if not conn.closed:
                conn.error = exc
                conn._close_transport(CloseCode.ABNORMAL, f"connect failed: {exc!r}")
            if opened.done() and not opened.cancelled():
                opened.exception()        # retrieved: the exception raised is `exc`
            raise

    def __await__(self) -> Generator[Any, None, Any]:
        return self._open().__await__()

    async def __aenter__(self) -> Any:
        self._opened = await self._open()
        return self._opened

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        opened = self._opened
        if isinstance(opened, WebSocket):
            await opened.close()
        elif opened is not None:
            opened.close()


def connect(url: str, handler: Any = None, *, ssl: ssl_module.SSLContext | None = None,
            subprotocols: Sequence[str] = (), headers: HeadersLike = None,
            compression: CompressionSetting = True, max_queue: int | None = 16,
            **limits: Any) -> Connecting:
    """Open a WebSocket client connection to a ws:// or wss:// URL on the running loop.

    With a `handler` (an object with on_* callbacks) the result is the fastws Connection;
    without one it is a `WebSocket` for coroutines (`max_queue`: its receive queue in
    messages, None: unbounded). `ssl` defaults to `ssl.create_default_context()` for
    wss://; `subprotocols`, `headers`, `compression` and `limits` are those of
    fastws.connect(). Use `await connect(...)` or `async with connect(...) as ws:`.
    Failures raise (see the module doc).
    """
    return Connecting(url, handler, ssl, subprotocols, headers, compression, max_queue, limits)
