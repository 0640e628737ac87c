"""connect(): open a WebSocket client connection to a ws:// or wss:// URL.

The TCP connect, the TLS handshake, the upgrade request and the check of the 101 answer
all run on the loop without blocking (name resolution excepted: getaddrinfo is called
directly, which is immediate for addresses and local names). `handler.on_upgraded(conn)`
runs once the connection is ready; a failure at any step reports
`handler.on_closed(conn, 1006, reason)` (1015 for TLS) with the cause in `conn.error`.
"""

from __future__ import annotations

import errno
import socket
import ssl as ssl_module
from collections.abc import Sequence
from typing import Any

from ._codec import CloseCode
from .connection import Connection, Limits
from .deflate import (
    CompressionSetting,
    Deflate,
    client_offer,
    deflate_options,
    negotiate_client,
)
from .handshake import (
    check_response,
    client_request,
    format_extensions,
    new_key,
    parse_ws_url,
)
from .http import HeadersLike, Response
from .loop import Loop, default_loop

__all__ = ["connect"]


def connect(url: str, handler: Any, *, ssl: ssl_module.SSLContext | None = None,
            loop: Loop | None = None, subprotocols: Sequence[str] = (),
            headers: HeadersLike = None, compression: CompressionSetting = True,
            **limits: Any) -> Connection:
    """Start connecting to `url`; returns the Connection at once (its handshake runs on the loop).

    For wss:// URLs `ssl` defaults to `ssl.create_default_context()`. Every frame is
    masked with a fresh key from the OS's random source.

    `compression` (True, False, a DeflateOptions or a dict of its fields) offers
    permessage-deflate (default offer: `permessage-deflate; client_max_window_bits`); when
    the server accepts, a Deflate stage joins the chain. An answer we cannot accept fails
    the connection: `on_closed(conn, 1010, reason)`, the cause in `conn.error`.
    """
    secure, host, port, resource = parse_ws_url(url)
    if secure and ssl is None:
        ssl = ssl_module.create_default_context()
    if not secure and ssl is not None:
        raise ValueError("an SSL context was given for a ws:// URL; use wss://")
    loop = loop if loop is not None else default_loop()
    settings = Limits().updated(limits)
    options = deflate_options(compression, is_client=True)
    offer = client_offer(options) if options is not None else None
    family, type_, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, type_, proto)
    sock.setblocking(False)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    conn = Connection(loop, sock, handler, is_client=True, limits=settings,
                      ssl_context=ssl if secure else None,
                      server_hostname=host if secure else None)
    key = new_key()
    request = client_request(host, port, resource, key, secure=secure,
                             subprotocols=subprotocols, headers=headers,
                             extensions=format_extensions([("permessage-deflate", offer)])
                             if offer is not None else None)

    def check(response: Response) -> Deflate | None:
        _, extensions = check_response(response, key, subprotocols=subprotocols,
                                       extensions_offered=offer is not None)
        if offer is None or options is None:
            return None
        return negotiate_client(extensions, offer, options)

    def established() -> None:
        conn._begin_client_handshake(request, key, check)

    def connected() -> None:
        loop.remove_writer(sock)
        if conn.closed:
            return
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            conn.error = ConnectionRefusedError(error, f"cannot connect to {host}:{port}: "
                                                       f"{errno.errorcode.get(error, error)}")
            conn._finish(CloseCode.ABNORMAL, str(conn.error))
            return
        try:
            conn.peername = sock.getpeername()
        except OSError:
            pass
        conn.start(established)

    err = sock.connect_ex(address)
    if err in (0, errno.EISCONN):
        loop.call_soon(connected)
    elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
        loop.add_writer(sock, connected)
    else:
        sock.close()
        raise ConnectionError(
            err, f"cannot connect to {host}:{port}: {errno.errorcode.get(err, err)}")
    return conn
