"""connect(): open a WebSocket client connection to a ws:// or wss:// URL.

The TCP connect, the TLS handshake, the upgrade request and the check of the 101 answer
all run on the loop without blocking (name resolution excepted: getaddrinfo is called
directly, which is immediate for addresses and local names). `handler.on_upgraded(conn)`
runs once the connection is ready; a failure at any step (the name does not resolve, the
connection is refused, TLS or the handshake fails) reports `handler.on_closed(conn, 1006,
reason)` (1015 for TLS) with the cause in `conn.error`, and is logged. An invalid URL or
argument raises at once. `ClientHandshake` is the opening handshake itself, sans I/O.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any

from ._codec import CloseCode
from .connection import Connection
from .deflate import (
    EXTENSION_NAME,
    CompressionSetting,
    Deflate,
    DeflateOptions,
    client_offer,
    deflate_options,
    negotiate_client,
)
from .handler import check_handler
from .handshake import check_response, client_request, format_extensions, new_key, parse_ws_url
from .http import HeadersLike, Request, Response
from .http_parser import ResponseParser
from .limits import Limits
from .loop import Loop, default_loop

__all__ = ["ClientHandshake", "connect"]


class ClientHandshake:
    """The client's opening handshake (RFC 6455 4.1), sans I/O: the request to send, the
    response read from the bytes that follow, and its check (subprotocol, extensions)."""

    def __init__(self, host: str, port: int, resource: str, *, secure: bool,
                 subprotocols: Sequence[str] = (), headers: HeadersLike = None,
                 compression: DeflateOptions | None = None, limits: Limits | None = None) -> None:
        limits = limits if limits is not None else Limits()
        self.key = new_key()
        self.subprotocols = tuple(subprotocols)
        self.options = compression
        self.offer = client_offer(compression) if compression is not None else None
        extensions = (format_extensions([(EXTENSION_NAME, self.offer)])
                      if self.offer is not None else None)
        self.request: Request = client_request(host, port, resource, self.key, secure=secure,
                                               subprotocols=self.subprotocols, headers=headers,
                                               extensions=extensions)
        self._parser = ResponseParser(max_header_size=limits.max_header_size,
                                      max_headers=limits.max_headers)

    def request_bytes(self) -> bytes:
        return self.request.encode()

    def receive_data(self, data: bytes | memoryview) -> Response | None:
        """The response once it is complete (HttpError when malformed), else None."""
        return self._parser.feed(data)

    def receive_eof(self) -> Response:
        return self._parser.feed_eof()

    def end(self) -> None:
        """The handshake is over: free the response parser (see ResponseParser.release)."""
        self._parser.release()

    @property
    def tail(self) -> bytes:
        """Bytes after a 101 response: the server's first frames."""
        return self._parser.tail

    def check(self, response: Response) -> tuple[str | None, Deflate | None]:
        """The subprotocol the server chose and the permessage-deflate extension agreed on;
        HandshakeError (NegotiationError: close with 1010) when the answer is unacceptable."""
        subprotocol, extensions = check_response(response, self.key,
                                                 subprotocols=self.subprotocols,
                                                 extensions_offered=self.offer is not None)
        if self.offer is None or self.options is None:
            return subprotocol, None
        return subprotocol, negotiate_client(extensions, self.offer, self.options)


def connect(url: str, handler: Any, *, ssl: ssl_module.SSLContext | None = None,
            loop: Loop | None = None, subprotocols: Sequence[str] = (),
            headers: HeadersLike = None, compression: CompressionSetting = True,
            **limits: Any) -> Connection:
    """Start connecting to `url`; returns the Connection at once (its handshake runs on the loop).

    For wss:// URLs `ssl` defaults to `ssl.create_default_context()`. Every frame is
    masked with a fresh key from the OS's random source.

    `compression` (True, False, a DeflateOptions or a dict of its fields) offers
    permessage-deflate (default offer: `permessage-deflate; client_max_window_bits`); when
    the server accepts, the protocol compresses. An answer we cannot accept fails the
    connection: `on_closed(conn, 1010, reason)`, the cause in `conn.error`.

    Raises ValueError for an invalid URL or argument; every failure to connect is reported
    through `on_closed` instead (see the module doc).
    """
    check_handler(handler)
    secure, host, port, resource = parse_ws_url(url)
    if secure and ssl is None:
        ssl = ssl_module.create_default_context()
    if not secure and ssl is not None:
        raise ValueError("an SSL context was given for a ws:// URL; use wss://")
    loop = loop if loop is not None else default_loop()
    settings = Limits().updated(limits)
    handshake = ClientHandshake(host, port, resource, secure=secure, subprotocols=subprotocols,
                                headers=headers, compression=deflate_options(
                                    compression, is_client=True), limits=settings)
    try:
        family, type_, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)[0]
        error: OSError | None = None
    except socket.gaierror as exc:
        # Reported like a refused connection, below, with the name that did not resolve.
        family, type_, proto, address = socket.AF_INET, socket.SOCK_STREAM, 0, None
        words = exc.strerror or str(exc)
        error = socket.gaierror(exc.errno, f"cannot resolve {host}: {words[:1].lower()}{words[1:]}")
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    conn = Connection(loop, sock, handler, is_client=True, limits=settings,
                      ssl_context=ssl if secure else None,
                      server_hostname=host if secure else None)

    def failed(exc: OSError) -> None:
        conn.error = exc
        conn._close_transport(CloseCode.ABNORMAL, exc.strerror or str(exc))

    def connected() -> None:
        loop.remove_writer(sock)
        if conn.closed:
            return
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            failed(_connect_error(err, host, port))
            return
        conn.start(lambda: conn._begin_client_handshake(handshake))

    if error is not None or address is None:
        loop.call_soon(failed, error)
        return conn
    err = sock.connect_ex(address)
    if err in (0, errno.EISCONN):
        loop.call_soon(connected)
    elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        loop.add_writer(sock, connected)
    else:
        loop.call_soon(failed, _connect_error(err, host, port))
    return conn


def _connect_error(err: int, host: str, port: int) -> OSError:
    """The OSError subclass for `err` (ConnectionRefusedError, ...), naming the address."""
    message = f"cannot connect to {host}:{port}: {os.strerror(err).lower()}"
    return OSError(err, message)
