"""A blocking WebSocket client: `with fastws.sync.connect(url) as ws:`, and reconnection with
`for ws in fastws.sync.connect(url):`.

The connection drives the same sans-I/O `Protocol` as every other fastws client (codec,
permessage-deflate, limits, the closing handshake) over a non-blocking socket that it waits
on with poll(). Where the bytes go, and who reads them:

* `recv()` takes the next message from a queue; only when the queue is empty does the
  calling thread read the socket itself: one `recv_into()` of up to 256 KiB into a buffer
  the connection owns, handed to the protocol's C parser, which queues every whole message
  in it. A stream of small messages costs one system call per few thousand messages, and a
  request/response exchange no hand-over between threads.
* A background thread, the keeper, answers the server's pings (and sees its close frame)
  while nobody is in `recv()`: it waits for the socket to become readable and reads it only
  when no caller has read it for a moment (`HANDOVER`, 10 ms) and fewer than `max_queue`
  messages wait, so it never competes with a caller that is receiving, and what it queues
  is bounded: past `max_queue` unread messages it stops reading and TCP slows the server.
* `send()` is safe from several threads: a frame is built by the protocol and written with
  one `send()` (and waits for the socket only when the kernel's buffer is full) under a
  lock, so frames never interleave; the keeper's pongs go through the same lock.

Errors are exceptions: ConnectionClosedOK / ConnectionClosedError carry the close code and
reason; opening raises as fastws.sync_open says (ConnectionRefusedError, ValueError for a
bad URL, InvalidStatus with the HTTP status, ProxyError, TimeoutError, ssl.SSLError).
"""

from __future__ import annotations

import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from .deflate import CompressionSetting
from .handshake import parse_ws_url
from .http import HeadersLike
from .limits import Limits
from .loop import DEFAULT_BUSY_POLL
from .proxy import ProxySetting
from .reconnect import Backoff, is_retryable
from .sync_connection import MAX_QUEUE, ClientConnection
from .sync_open import MAX_REDIRECTS, OpenOptions, open_websocket

__all__ = ["ClientConnection", "Connect", "connect"]

logger = logging.getLogger("fastws")


class Connect:
    """What `connect()` returns: `with` opens one connection; `for` opens one after another
    (reconnecting with back-off); `open()` returns a connection to close yourself."""

    def __init__(self, url: str, options: OpenOptions, *, max_queue: int, busy_poll: float,
                 backoff: Backoff, on_reconnecting: Callable[[float, BaseException], object]
                 | None) -> None:
        parse_ws_url(url)           # a malformed URL is a ValueError now, not at the `with`
        self.url = url
        self.busy_poll = busy_poll
        self.options = options
        self.max_queue = max_queue
        self.backoff = backoff
        self.on_reconnecting = on_reconnecting
        self._connection: ClientConnection | None = None

    def __getattr__(self, name: str) -> Any:
        # `ws = connect(url); ws.send(...)`, as websockets.sync reads: say what to write.
        if not name.startswith("_") and hasattr(ClientConnection, name):
            raise AttributeError(
                f"fastws.sync.connect() returns a Connect, not a connection (no {name!r}): "
                f"write `with fastws.sync.connect(url) as ws:` or "
                f"`ws = fastws.sync.connect(url).open()`")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def open(self) -> ClientConnection:
        """Open the connection now (raises as the module doc says)."""
        opened = open_websocket(self.url, self.options)
        return ClientConnection(opened, limits=self.options.limits, max_queue=self.max_queue,
                                busy_poll=self.busy_poll)

    def __enter__(self) -> ClientConnection:
        self._connection = self.open()
        return self._connection

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.__exit__(exc_type, exc, tb)

    def __iter__(self) -> Iterator[ClientConnection]:
        """Connections, one after another: a new one each time the loop comes round after the
        previous one closed or failed, after a back-off wait (see fastws.reconnect); it stops
        after a close the application asked for (`ws.close()`), and raises a failure that
        another try would repeat (a 4xx answer, refused proxy credentials, a bad URL)."""
        delays = self.backoff.delays()
        while True:
            try:
                connection = self.open()
            except Exception as exc:
                if not is_retryable(exc):
                    raise
                self._wait(next(delays), exc)
                continue
            delays = self.backoff.delays()          # it opened: start the schedule over
            try:
                yield connection
            finally:
                if not connection.closed:
                    connection.close()
            if connection.close_requested:
                return
            closed = connection._closed
            assert closed is not None
            self._wait(next(delays), closed)

    def _wait(self, delay: float, cause: BaseException) -> None:
        logger.info("fastws.sync: reconnecting to %s in %.2f s (%s)", self.url, delay, cause)
        if self.on_reconnecting is not None:
            self.on_reconnecting(delay, cause)
        time.sleep(delay)


def connect(url: str, *, timeout: float | None = 10.0,
            ssl: ssl_module.SSLContext | None = None, subprotocols: Sequence[str] = (),
            headers: HeadersLike = None, compression: CompressionSetting = True,
            proxy: ProxySetting = True, proxy_ssl: ssl_module.SSLContext | None = None,
            max_redirects: int = MAX_REDIRECTS, max_queue: int = MAX_QUEUE,
            busy_poll: float = DEFAULT_BUSY_POLL, backoff: Backoff | None = None,
            on_reconnecting: Callable[[float, BaseException], object] | None = None,
            **limits: Any) -> Connect:
    """A blocking WebSocket client for `url` (ws:// or wss://).

    `with connect(url) as ws:` opens one connection (closed with 1000 at the end of the
    block, 1011 when it ends with an exception); `for ws in connect(url):` reconnects (see
    `Connect.__iter__`; `backoff` is its schedule, default `fastws.Backoff()`;
    `on_reconnecting(delay, cause)` is called before each wait); `connect(url).open()`
    returns a connection.

    `timeout` bounds the whole opening (TCP, proxy, TLS, handshake, redirects); `ssl`
    defaults to `ssl.create_default_context()` for wss://; `proxy` is True (from the
    environment), None, or a proxy URL (http://, https://, socks5://, socks5h://,
    socks4://, socks4a://; credentials as user:password@), `proxy_ssl` the context for an
    https:// proxy; up to `max_redirects` 3xx answers are followed (never from wss:// to
    ws://). `busy_poll` (seconds, default 25 µs as the Loop's) is how long recv() polls for
    data before it sleeps, adapted to the traffic (0: sleep at once; docs/performance.md).
    `max_queue` bounds the messages the background thread reads ahead while the application
    is not in recv(). `compression` offers permessage-deflate as the Loop client does; `limits` are
    fastws.Limits fields (max_message_size, close_timeout, ...). ValueError at once for an
    invalid argument.
    """
    options = OpenOptions(ssl=ssl, proxy=proxy, proxy_ssl=proxy_ssl, subprotocols=subprotocols,
                          headers=headers, compression=compression, timeout=timeout,
                          max_redirects=max_redirects, limits=Limits().updated(limits))
    if max_queue < 1:
        raise ValueError("max_queue must be at least 1")
    if not 0.0 <= busy_poll < float("inf"):
        raise ValueError(f"busy_poll must be finite seconds >= 0, not {busy_poll!r}")
    return Connect(url, options, max_queue=max_queue, busy_poll=busy_poll,
                   backoff=backoff if backoff is not None else Backoff(),
                   on_reconnecting=on_reconnecting)
