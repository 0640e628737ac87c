"""Opening a blocking client connection: TCP, the proxy's tunnel, TLS, the opening handshake,
redirects, all within one deadline.

`open_websocket()` returns an `Opened`: the connected socket (non-blocking from here on: a
socket, an ssl.SSLSocket, or TLSLayers for wss:// through an https:// proxy), the server's
101 answer, the subprotocol and permessage-deflate agreed on, and the bytes that followed
the answer. Every rule it applies belongs to a sans-I/O object it drives: the proxy's
exchange (fastws.proxy), TLS in TLS (fastws.tls_layers), the opening handshake
(fastws.client.ClientHandshake); this module only moves their bytes and waits.

Failures raise: ValueError for an invalid URL or argument, ConnectionRefusedError (and
other OSErrors) naming the address, socket.gaierror for a name that does not resolve,
TimeoutError past the deadline, ssl.SSLError for TLS, ProxyError for a proxy that refuses,
InvalidStatus (with the HTTP status) for a server that does not answer 101, RedirectError
for a redirect that may not be followed, HandshakeError for an unacceptable 101.
"""

from __future__ import annotations

import select
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .client import MAX_REDIRECTS, REDIRECT_STATUSES, ClientHandshake, redirect_target
from .deflate import CompressionSetting, Deflate, deflate_options
from .exceptions import InvalidStatus, RedirectError
from .handshake import parse_ws_url
from .http import HeadersLike, Response
from .limits import Limits
from .proxy import Proxy, ProxySetting, resolve_for, select_proxy, tunnel_handshake
from .tls_layers import TLSLayers

__all__ = ["MAX_REDIRECTS", "OpenOptions", "Opened", "open_websocket"]

_READ_SIZE = 64 * 1024

Stream = Any   # socket.socket | ssl.SSLSocket | TLSLayers: what the connection reads and writes
T = TypeVar("T")


@dataclass
class OpenOptions:
    """What a blocking connect() was asked for, besides the URL."""

    ssl: ssl_module.SSLContext | None = None
    proxy: ProxySetting = True
    proxy_ssl: ssl_module.SSLContext | None = None
    subprotocols: Sequence[str] = ()
    headers: HeadersLike = None
    compression: CompressionSetting = True
    timeout: float | None = 10.0
    max_redirects: int = MAX_REDIRECTS
    limits: Limits = field(default_factory=Limits)


@dataclass
class Opened:
    """An open WebSocket connection, before its protocol object exists."""

    stream: Stream
    url: str
    response: Response
    subprotocol: str | None
    extension: Deflate | None
    tail: bytes
    proxy: Proxy | None


class Deadline:
    """The time left to open, shared by every step."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._end = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        if self._end is None:
            return None
        left = self._end - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the opening handshake did not complete in {self.timeout} s")
        return left


def wait_ready(stream: Stream, writable: bool, timeout: float | None) -> bool:
    """Wait until `stream`'s socket is readable (or writable); False on timeout."""
    poller = select.poll()
    poller.register(stream.fileno(), select.POLLOUT if writable else select.POLLIN)
    return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999))))


def blocking(call: Callable[[], T], stream: Stream, deadline: Deadline) -> T:
    """Run a non-blocking `call` on `stream` until it completes, waiting as it asks."""
    while True:
        try:
            return call()
        except (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError):
            writable = False
        except ssl_module.SSLWantWriteError:
            writable = True
        if not wait_ready(stream, writable, deadline.remaining()):
            deadline.remaining()   # raises TimeoutError
            raise TimeoutError("the opening handshake timed out")


def send_all(stream: Stream, data: bytes, deadline: Deadline) -> None:
    view = memoryview(data)
    while view:
        sent = blocking(lambda rest=view: stream.send(rest), stream, deadline)  # type: ignore[misc]
        view = view[sent:]


def open_tcp(host: str, port: int, deadline: Deadline) -> socket.socket:
    """A connected, non-blocking TCP socket to host:port (TCP_NODELAY set)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        words = exc.strerror or str(exc)
        raise socket.gaierror(exc.errno, f"cannot resolve {host}: "
                              f"{words[:1].lower()}{words[1:]}") from None
    error: OSError | None = None
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except TimeoutError:
            sock.close()
            raise TimeoutError(f"cannot connect to {host}:{port}: timed out") from None
        except OSError as exc:
            sock.close()
            words = exc.strerror or str(exc)
            error = type(exc)(exc.errno, f"cannot connect to {host}:{port}: {words.lower()}")
            continue
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    assert error is not None
    raise error


def open_tunnel(proxy: Proxy, host: str, port: int, proxy_ssl: ssl_module.SSLContext | None,
                deadline: Deadline) -> tuple[Stream, bytes]:
    """A stream to host:port through `proxy` (TLS to the proxy first for https://)."""
    resolved = resolve_for(proxy, host, port)
    exchange = tunnel_handshake(proxy, host, port, resolved=resolved)
    sock = open_tcp(proxy.host, proxy.port, deadline)
    stream: Stream = sock
    try:
        if proxy.tls:
            layers = TLSLayers(sock)
            layers.add_layer(proxy_ssl or ssl_module.create_default_context(), proxy.host)
            blocking(layers.do_handshake, layers, deadline)
            stream = layers
        while True:
            data = exchange.data_to_send()
            if data:
                send_all(stream, data, deadline)
            chunk = blocking(lambda: stream.recv(_READ_SIZE), stream, deadline)
            if not chunk:
                exchange.receive_eof()
            if exchange.receive_data(chunk):
                break
        if exchange.data_to_send():
            raise AssertionError("a tunnel exchange ended with bytes to send")
    except BaseException:
        stream.close()
        raise
    return stream, exchange.tail


def open_websocket(url: str, options: OpenOptions) -> Opened:
    """Open a WebSocket connection to `url` (see the module doc), following redirects."""
    deadline = Deadline(options.timeout)
    compression = deflate_options(options.compression, is_client=True)
    if options.ssl is not None and not parse_ws_url(url)[0]:
        # (A ws:// URL may still redirect to wss://, where the context is used.)
        raise ValueError("an SSL context was given for a ws:// URL; use wss://")
    for _ in range(options.max_redirects + 1):
        secure, host, port, resource = parse_ws_url(url)
        proxy = select_proxy(options.proxy, secure=secure, host=host, port=port)
        handshake = ClientHandshake(host, port, resource, secure=secure,
                                    subprotocols=options.subprotocols, headers=options.headers,
                                    compression=compression, limits=options.limits)
        if proxy is not None:
            stream, leftover = open_tunnel(proxy, host, port, options.proxy_ssl, deadline)
            if leftover:
                stream.close()
                raise ConnectionError(f"the proxy {proxy} sent data before the server spoke")
        else:
            stream = open_tcp(host, port, deadline)
        try:
            if secure:
                stream = _start_tls(stream, options.ssl, host, deadline)
            response = _handshake(stream, handshake, deadline)
            if response.status in REDIRECT_STATUSES:
                url = redirect_target(url, response)
                stream.close()
                continue
            if response.status != 101:
                raise InvalidStatus(response)
            subprotocol, extension = handshake.check(response)
        except BaseException:
            stream.close()
            raise
        finally:
            handshake.end()
        return Opened(stream, url, response, subprotocol, extension, handshake.tail, proxy)
    raise RedirectError(0, f"more than {options.max_redirects} redirects")


def _start_tls(stream: Stream, context: ssl_module.SSLContext | None, host: str,
               deadline: Deadline) -> Stream:
    context = context if context is not None else ssl_module.create_default_context()
    if isinstance(stream, TLSLayers):
        stream.add_layer(context, host)
        tls: Stream = stream
    else:
        tls = context.wrap_socket(stream, server_hostname=host, do_handshake_on_connect=False)
    blocking(tls.do_handshake, tls, deadline)
    return tls


def _handshake(stream: Stream, handshake: ClientHandshake, deadline: Deadline) -> Response:
    send_all(stream, handshake.request_bytes(), deadline)
    while True:
        chunk = blocking(lambda: stream.recv(_READ_SIZE), stream, deadline)
        response = handshake.receive_eof() if not chunk else handshake.receive_data(chunk)
        if response is not None:
            return response
