"""`connect()` on a running asyncio loop: a WebSocket client, callback or awaitable form.

`await connect(url, handler)` opens the connection and returns the fastws Connection once
the opening handshake is done (after `handler.on_upgraded` ran); the handler then gets
every callback it gets on the fastws Loop. `await connect(url)` (no handler) returns a
`WebSocket` for coroutines; `async with connect(url) as ws:` closes it on exit; `async for
ws in connect(url):` gives one WebSocket after another, reconnecting with back-off.

Opening goes through a proxy when one is set or the environment names one (the rules are
fastws.proxy's; the asyncio side is ._tunnel), and follows redirects (fastws.client's
`redirect_target`: ws:// to wss:// allowed, never wss:// to ws://). A connection that
cannot be opened raises in the caller: OSError (the name does not resolve, the connection
is refused), ssl.SSLError, fastws.ProxyError (the proxy refused; `.status` for an HTTP
proxy), fastws.InvalidStatus / HandshakeError / HttpError (the server's answer),
fastws.RedirectError, TimeoutError (past `handshake_timeout`, which bounds the whole
opening, redirects included). No on_closed is reported for a connection that never opened.
Which failures are worth another try is fastws.reconnect's `is_retryable`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl as ssl_module
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from types import TracebackType
from typing import Any

from .._asyncio_websocket import WebSocket, closed_exception
from .._codec import CloseCode
from ..client import MAX_REDIRECTS, ClientHandshake, redirect_target
from ..connection import Connection
from ..deflate import CompressionSetting, deflate_options
from ..exceptions import RedirectError
from ..handler import check_handler
from ..handshake import HandshakeError, parse_ws_url
from ..http import HeadersLike, Response
from ..limits import Limits
from ..loop_client import ClientConnection
from ..proxy import ProxySetting, select_proxy
from ..reconnect import Backoff, backoff_from, is_retryable
from ._connections import new_connection
from ._reconnect import Supervisor
from ._tunnel import open_through_proxy

__all__ = ["Connecting", "connect"]

logger = logging.getLogger("fastws")

# What on_reconnecting= may be: called with the delay and the cause before each wait.
ReconnectHook = Callable[[float, BaseException], object]


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
    """What connect() returns: `await` it, `async with` it (closed on exit), or `async for`
    over it (reconnecting)."""

    def __init__(self, url: str, handler: Any, ssl: ssl_module.SSLContext | None,
                 subprotocols: Sequence[str], headers: HeadersLike,
                 compression: CompressionSetting, max_queue: int | None,
                 limits: dict[str, Any], *, proxy: ProxySetting = True,
                 proxy_ssl: ssl_module.SSLContext | None = None,
                 max_redirects: int = MAX_REDIRECTS, backoff: Backoff | None = None,
                 on_reconnecting: ReconnectHook | None = None,
                 reconnect: bool | Backoff = False) -> None:
        if handler is not None:
            check_handler(handler)
        schedule = backoff_from(reconnect)
        if schedule is not None and handler is None:
            raise ValueError("reconnect= is for the callback form (a handler); without one, "
                             "use `async for ws in connect(url):`")
        secure = parse_ws_url(url)[0]         # ValueError at once for a bad URL
        if not secure and ssl is not None:
            # (A ws:// URL may still redirect to wss://, where the context is used.)
            raise ValueError("an SSL context was given for a ws:// URL; use wss://")
        if isinstance(proxy, str):
            select_proxy(proxy, secure=secure, host="", port=0)   # ValueError at once
        if max_redirects < 0:
            raise ValueError("max_redirects must be >= 0")
        self.url = url
        self.handler = handler
        self.ssl = ssl
        self.max_queue = max_queue
        self.limits = Limits().updated(limits)
        self.options = deflate_options(compression, is_client=True)
        self.subprotocols = tuple(subprotocols)
        self.headers = headers
        self.proxy = proxy
        self.proxy_ssl = proxy_ssl
        self.max_redirects = max_redirects
        self.backoff = backoff if backoff is not None else Backoff()
        self.on_reconnecting = on_reconnecting
        if schedule is not None:
            self.handler = Supervisor(self, handler, schedule)
        # The Connection of the latest attempt (the reconnecting callback form reports a
        # failed one with it).
        self.last_attempt: Connection | None = None
        self._opened: Any = None

    async def _open(self) -> Any:
        """Open a connection to the URL, following redirects, within handshake_timeout."""
        url = self.url
        async with asyncio.timeout(self.limits.handshake_timeout):
            for _ in range(self.max_redirects + 1):
                opened, response = await self._attempt(url)
                if response is None:
                    return opened
                target = redirect_target(url, response)    # RedirectError for wss -> ws
                logger.info("fastws: %s redirected (%d) to %s", url, response.status, target)
                if response.status in (301, 308) and url == self.url:
                    self.url = target      # moved for good: reconnect there from now on
                url = target
        raise RedirectError(0, f"more than {self.max_redirects} redirects")

    async def _attempt(self, url: str) -> tuple[Any, Response | None]:
        """One connection: (the handler's Connection or a WebSocket, None), or (None, the
        3xx answer) when the server redirects."""
        loop = asyncio.get_running_loop()
        secure, host, port, resource = parse_ws_url(url)
        ssl = None
        if secure:
            ssl = self.ssl if self.ssl is not None else ssl_module.create_default_context()
        proxy = select_proxy(self.proxy, secure=secure, host=host, port=port)
        handshake = ClientHandshake(host, port, resource, secure=secure,
                                    subprotocols=self.subprotocols, headers=self.headers,
                                    compression=self.options, limits=self.limits)
        redirects: list[Response] = []
        handshake.on_redirect = redirects.append      # check() then fails the handshake
        opened: asyncio.Future[Any] = loop.create_future()
        conn = new_connection(loop, _Opening(self.handler, opened, self.max_queue),
                              is_client=True, limits=self.limits,
                              connection_class=ClientConnection)
        self.last_attempt = conn
        conn.start(lambda: conn._begin_client_handshake(handshake))
        try:
            if proxy is None:
                transport, _ = await loop.create_connection(
                    lambda: conn._transport, host, port, ssl=ssl,
                    server_hostname=host if secure else None)
                _no_delay(transport)
            else:
                await open_through_proxy(loop, conn._transport, proxy, host, port, ssl=ssl,
                                         proxy_ssl=self.proxy_ssl)
            return await opened, None
        except HandshakeError:
            if redirects:
                return None, redirects[0]
            raise
        except BaseException as exc:
            if not conn.closed:
                conn.error = exc
                conn._close_transport(CloseCode.ABNORMAL, f"connect failed: {exc!r}")
            raise
        finally:
            if opened.done() and not opened.cancelled():
                opened.exception()        # retrieved: what is raised is the same or newer

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

    async def __aiter__(self) -> AsyncIterator[WebSocket]:
        """WebSockets, one after another: each time the loop comes round after the previous
        one closed or failed in a way another try may fix, a new one after a back-off wait
        (`backoff`; `on_reconnecting(delay, cause)` first). It stops after a close the
        application asked for (`ws.close()`, or the body ending while the WebSocket is still
        open: it is closed with 1000) or a `break` (the WebSocket is closed as the generator
        ends), and raises a failure another try would repeat (a 4xx answer, refused proxy
        credentials, a bad redirect)."""
        if self.handler is not None:
            raise TypeError("async for over connect() gives WebSockets: call "
                            "connect(url) without a handler")
        delays = self.backoff.delays()
        while True:
            try:
                ws = await self._open()
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                await self._wait(next(delays), exc)
                continue
            delays = self.backoff.delays()          # it opened: start the schedule over
            try:
                yield ws
            finally:
                if not ws.closed:
                    await ws.close()
            if getattr(ws.connection, "close_requested", False):
                return
            # The cause is what ws.recv() raises now (fastws.asyncio.ConnectionClosed).
            await self._wait(next(delays), closed_exception(ws.close_code, ws.close_reason))

    async def _wait(self, delay: float, cause: BaseException) -> None:
        logger.info("fastws.asyncio: reconnecting to %s in %.2f s (%s)", self.url, delay, cause)
        if self.on_reconnecting is not None:
            result = self.on_reconnecting(delay, cause)
            if inspect.isawaitable(result):
                await result
        await asyncio.sleep(delay)


def _no_delay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def connect(url: str, handler: Any = None, *, ssl: ssl_module.SSLContext | None = None,
            subprotocols: Sequence[str] = (), headers: HeadersLike = None,
            compression: CompressionSetting = True, max_queue: int | None = 16,
            proxy: ProxySetting = True, proxy_ssl: ssl_module.SSLContext | None = None,
            max_redirects: int = MAX_REDIRECTS, reconnect: bool | Backoff = False,
            backoff: Backoff | None = None, on_reconnecting: ReconnectHook | None = None,
            **limits: Any) -> Connecting:
    """Open a WebSocket client connection to a ws:// or wss:// URL on the running loop.

    With a `handler` (an object with on_* callbacks) the result is the fastws Connection;
    without one it is a `WebSocket` for coroutines (`max_queue`: its receive queue in
    messages, None: unbounded). `ssl` defaults to `ssl.create_default_context()` for
    wss://; `subprotocols`, `headers`, `compression` and `limits` are those of
    fastws.connect(). Use `await connect(...)`, `async with connect(...) as ws:`, or
    `async for ws in connect(url):` to reconnect (see `Connecting.__aiter__`; `backoff`
    is its schedule, default `fastws.Backoff()`; `on_reconnecting(delay, cause)`, a
    function or a coroutine function, is called before each wait). With a handler,
    `reconnect` (True, or a fastws.Backoff schedule) reconnects as the Loop client does:
    `handler.on_reconnecting(conn, delay)` after each loss (fastws.asyncio._reconnect).

    `proxy` is True (from the environment: `wss_proxy`/`ws_proxy`, `https_proxy`,
    `http_proxy` for ws://, `all_proxy`, unless `no_proxy` names the host), None, or a
    proxy URL (http://, https://, socks5://, socks5h://, socks4://, socks4a://; credentials
    as user:password@); `proxy_ssl` is the context for an https:// proxy (default
    `ssl.create_default_context()`). Up to `max_redirects` 3xx answers are followed (never
    from wss:// to ws://). Failures raise (see the module doc); an invalid URL, proxy URL
    or argument raises ValueError at once.
    """
    return Connecting(url, handler, ssl, subprotocols, headers, compression, max_queue, limits,
                      proxy=proxy, proxy_ssl=proxy_ssl, max_redirects=max_redirects,
                      backoff=backoff, on_reconnecting=on_reconnecting, reconnect=reconnect)
