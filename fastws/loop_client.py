"""The Loop client's connection attempts: direct or through a proxy, redirects, reconnection.

`Dialer` makes one attempt, without blocking the loop (name resolution excepted, as
before): the TCP connect, then the proxy's tunnel when there is one (fastws.tunnel), then the
Connection's own TLS and opening handshake. For an https:// proxy the transport gets the
TLS layers the tunnel used (fastws.tls_layers.PreparedTLS stands in for the SSL context), so
that a wss:// server's TLS runs inside the proxy's.

A 301/302/303/307/308 answer is followed with a new attempt to the Location (at most
`max_redirects`; ws:// to wss:// allowed, wss:// to ws:// refused): the handler then gets
the new Connection in its callbacks, and the first one closes without a report.

With `reconnect`, a `Supervisor` wraps the handler: when a connection closes or fails in a
way that another try may fix (fastws.reconnect.is_retryable) and the application did not
close it itself, it calls `handler.on_reconnecting(conn, delay)` after `on_closed` and
tries again after the back-off delay (returning False from on_reconnecting stops it).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl as ssl_module
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._codec import CloseCode
from .client import MAX_REDIRECTS, ClientHandshake, redirect_target
from .connection import Connection
from .deflate import DeflateOptions
from .exceptions import RedirectError, connection_closed
from .handshake import HandshakeError, parse_ws_url
from .http import HeadersLike, Response
from .limits import Limits
from .loop import Loop, Timer
from .proxy import Proxy, ProxySetting, resolve_for, select_proxy, tunnel_handshake
from .reconnect import Backoff, is_retryable
from .tls_layers import PreparedTLS, TLSLayers
from .tunnel import LoopTunnel

__all__ = ["ClientConnection", "DialOptions", "Dialer", "Supervisor", "reconnecting"]

logger = logging.getLogger("fastws")


class ClientConnection(Connection):
    """A Loop client's Connection: remembers that the application closed it (a close it
    asked for is never followed by a reconnection)."""

    close_requested = False

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self.close_requested = True
        super().close(code, reason)

    def abort(self) -> None:
        self.close_requested = True
        super().abort()


@dataclass
class DialOptions:
    ssl: ssl_module.SSLContext | None
    subprotocols: Sequence[str]
    headers: HeadersLike
    compression: DeflateOptions | None
    limits: Limits
    proxy: ProxySetting = True
    proxy_ssl: ssl_module.SSLContext | None = None
    max_redirects: int = MAX_REDIRECTS
    redirects: int = field(default=0)


class Dialer:
    """One attempt to connect `url` for `handler` on `loop` (see the module doc)."""

    def __init__(self, url: str, handler: Any, loop: Loop, options: DialOptions) -> None:
        self.url = url
        self.handler = handler
        self.loop = loop
        self.options = options

    def dial(self) -> ClientConnection:
        """Start the attempt; the Connection is returned at once. ValueError for an invalid
        URL, argument or proxy URL; every other failure is reported through on_closed."""
        options = self.options
        secure, host, port, resource = parse_ws_url(self.url)
        ssl = options.ssl
        if secure and ssl is None:
            ssl = ssl_module.create_default_context()
        if not secure and ssl is not None and options.redirects == 0:
            # (A redirect from ws:// to wss:// uses the context.)
            raise ValueError("an SSL context was given for a ws:// URL; use wss://")
        proxy = select_proxy(options.proxy, secure=secure, host=host, port=port)
        handshake = ClientHandshake(host, port, resource, secure=secure,
                                    subprotocols=options.subprotocols, headers=options.headers,
                                    compression=options.compression, limits=options.limits)
        handshake.on_redirect = self._redirect
        target_host, target_port = (proxy.host, proxy.port) if proxy else (host, port)
        try:
            family, type_, proto, _, address = socket.getaddrinfo(
                target_host, target_port, type=socket.SOCK_STREAM)[0]
            error: OSError | None = None
        except socket.gaierror as exc:
            # Reported like a refused connection, below, with the name that did not resolve.
            family, type_, proto, address = socket.AF_INET, socket.SOCK_STREAM, 0, None
            words = exc.strerror or str(exc)
            error = socket.gaierror(exc.errno, f"cannot resolve {target_host}: "
                                    f"{words[:1].lower()}{words[1:]}")
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        layers: TLSLayers | None = None
        transport_tls: Any = ssl if secure else None
        if proxy is not None and proxy.tls:
            layers = TLSLayers(sock)
            layers.add_layer(options.proxy_ssl or ssl_module.create_default_context(), proxy.host)
            transport_tls = PreparedTLS(layers, ssl if secure else None)
        conn = ClientConnection(self.loop, sock, self.handler, is_client=True,
                                limits=options.limits, ssl_context=transport_tls,
                                server_hostname=host if secure else None)
        self._conn = conn
        loop = self.loop

        def failed(exc: BaseException) -> None:
            conn.error = exc
            conn._close_transport(CloseCode.ABNORMAL, getattr(exc, "strerror", None) or str(exc))

        def begin() -> None:
            if not conn.closed:
                conn.start(lambda: conn._begin_client_handshake(handshake))

        def connected() -> None:
            loop.remove_writer(sock)
            if conn.closed:
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                failed(_connect_error(err, target_host, target_port, proxy))
                return
            begin()

        if error is not None or address is None:
            loop.call_soon(failed, error)
            return conn
        if proxy is not None:
            try:
                exchange = tunnel_handshake(proxy, host, port,
                                            resolved=resolve_for(proxy, host, port))
            except (OSError, ValueError) as exc:
                loop.call_soon(failed, exc)
                return conn
            tunnel = LoopTunnel(loop, sock, proxy, exchange, layers, begin, failed)
            connected_step = tunnel.start_after_connect
        else:
            connected_step = lambda: loop.add_writer(sock, connected)  # noqa: E731
        err = sock.connect_ex(address)
        if err in (0, errno.EISCONN, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            connected_step()
        else:
            loop.call_soon(failed, _connect_error(err, target_host, target_port, proxy))
        return conn

    def _redirect(self, response: Response) -> None:
        """ClientHandshake's hook for a 3xx answer: dial the Location with the same handler
        and close this attempt quietly. RedirectError when it may not be followed."""
        options = self.options
        if options.redirects >= options.max_redirects:
            raise RedirectError(0, f"more than {options.max_redirects} redirects")
        url = redirect_target(self.url, response)
        old = self._conn
        logger.info("fastws: %s redirected (%d) to %s", self.url, response.status, url)
        options.redirects += 1
        new = Dialer(url, self.handler, self.loop, options).dial()
        supervisor = _supervisor_of(self.handler)
        if supervisor is not None:
            if response.status in (301, 308):
                supervisor.url = url          # moved for good: reconnect there from now on
            supervisor.current = new
        old.handler = _QUIET


class _Quiet:
    """The handler of an attempt that was redirected: it reports nothing."""

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        pass


_QUIET = _Quiet()


def _connect_error(err: int, host: str, port: int, proxy: Proxy | None) -> OSError:
    """The OSError subclass for `err` (ConnectionRefusedError, ...), naming the address."""
    what = f"the proxy {proxy}" if proxy is not None else f"{host}:{port}"
    return OSError(err, f"cannot connect to {what}: {os.strerror(err).lower()}")


def _supervisor_of(handler: Any) -> Supervisor | None:
    return handler if isinstance(handler, Supervisor) else None


class Supervisor:
    """Stands between a Loop client's connections and the application's handler to
    reconnect (see the module doc). Callbacks it does not handle go straight to the
    application's handler (`__getattr__`), so `on_frame` costs nothing more."""

    def __init__(self, url: str, handler: Any, loop: Loop, options: DialOptions,
                 backoff: Backoff) -> None:
        self.url = url
        self.application = handler
        self.loop = loop
        self.options = options
        self.backoff = backoff
        self.current: ClientConnection | None = None
        self.attempts = 0
        self._delays: Iterator[float] = backoff.delays()
        self._timer: Timer | None = None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return getattr(self.application, name)
        raise AttributeError(name)

    def start(self) -> ClientConnection:
        self.options.redirects = 0
        self.current = Dialer(self.url, self, self.loop, self.options).dial()
        return self.current

    def on_upgraded(self, conn: Connection) -> None:
        self._delays = self.backoff.delays()    # it opened: start the schedule over
        self.attempts = 0
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
        if isinstance(cause, HandshakeError) and not is_retryable(cause):
            return
        if not is_retryable(cause):
            return
        delay = next(self._delays)
        self.attempts += 1
        hook = getattr(self.application, "on_reconnecting", None)
        if hook is not None and hook(conn, delay) is False:
            return
        logger.info("fastws: reconnecting to %s in %.2f s (%s %s)", self.url, delay, code, reason)
        self._timer = self.loop.call_later(delay, self._redial, conn)

    def _redial(self, last: ClientConnection) -> None:
        self._timer = None
        if last.close_requested or last is not self.current:
            return     # the application closed it (again) while we waited
        try:
            self.start()
        except ValueError:
            logger.exception("fastws: cannot reconnect to %s", self.url)

    def __repr__(self) -> str:
        return f"<fastws reconnecting client for {self.url} ({self.application!r})>"


def reconnecting(url: str, handler: Any, loop: Loop, options: DialOptions,
                 backoff: Backoff | None) -> ClientConnection:
    """Start connecting: through a Supervisor when `backoff` is given."""
    if backoff is None:
        options.redirects = 0
        return Dialer(url, handler, loop, options).dial()
    return Supervisor(url, handler, loop, options, backoff).start()

