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

import ssl as ssl_module
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

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
from .exceptions import InvalidStatus, RedirectError
from .handler import check_handler
from .handshake import HandshakeError, check_response, client_request, format_extensions, new_key
from .http import HeadersLike, Request, Response
from .http_parser import ResponseParser
from .limits import Limits
from .loop import Loop, default_loop
from .proxy import ProxySetting
from .reconnect import Backoff, backoff_from

__all__ = ["MAX_REDIRECTS", "REDIRECT_STATUSES", "ClientHandshake", "connect", "redirect_target"]

# Redirects followed on one opening handshake (as websockets does).
MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


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
        # Set by a client that follows redirects: called with a 3xx answer by check().
        self.on_redirect: Callable[[Response], None] | None = None

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
        InvalidStatus for an answer other than 101 (a 3xx goes to `on_redirect` first, when
        set), HandshakeError (NegotiationError: close with 1010) when the answer is
        unacceptable."""
        if response.status in REDIRECT_STATUSES and self.on_redirect is not None:
            self.on_redirect(response)        # raises RedirectError when it may not be followed
            raise HandshakeError(0, f"redirected ({response.status}) to "
                                 f"{response.headers.get('location')}")
        if response.status != 101:
            raise InvalidStatus(response)
        subprotocol, extensions = check_response(response, self.key,
                                                 subprotocols=self.subprotocols,
                                                 extensions_offered=self.offer is not None)
        if self.offer is None or self.options is None:
            return subprotocol, None
        return subprotocol, negotiate_client(extensions, self.offer, self.options)


def redirect_target(url: str, response: Response) -> str:
    """The ws:// or wss:// URL a 3xx answer points to (http(s) mapped to ws(s))."""
    location = response.headers.get("location")
    if not location:
        raise RedirectError(0, f"the server answered {response.status} without a Location")
    base = urlsplit(url)
    # urljoin resolves relative references for http(s); join on that, then map back.
    http_base = urlunsplit(("https" if base.scheme == "wss" else "http",) + tuple(base[1:]))
    target = urlsplit(urljoin(http_base, location))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(target.scheme.lower())
    if scheme is None:
        raise RedirectError(0, f"cannot follow a redirect to {location!r}: not a WebSocket URL")
    if base.scheme == "wss" and scheme == "ws":
        raise RedirectError(0, f"refusing a redirect from {url} to {location}: it would drop TLS")
    return urlunsplit((scheme,) + tuple(target[1:]))


def connect(url: str, handler: Any, *, ssl: ssl_module.SSLContext | None = None,
            loop: Loop | None = None, subprotocols: Sequence[str] = (),
            headers: HeadersLike = None, compression: CompressionSetting = True,
            proxy: ProxySetting = True, proxy_ssl: ssl_module.SSLContext | None = None,
            reconnect: bool | Backoff = False, max_redirects: int = MAX_REDIRECTS,
            **limits: Any) -> Connection:
    """Start connecting to `url`; returns the Connection at once (its handshake runs on the loop).

    For wss:// URLs `ssl` defaults to `ssl.create_default_context()`. Every frame is
    masked with a fresh key from the OS's random source.

    `compression` (True, False, a DeflateOptions or a dict of its fields) offers
    permessage-deflate (default offer: `permessage-deflate; client_max_window_bits`); when
    the server accepts, the protocol compresses. An answer we cannot accept fails the
    connection: `on_closed(conn, 1010, reason)`, the cause in `conn.error`.

    `proxy`: True (the default) takes the proxy from the environment (`wss_proxy`/`ws_proxy`,
    `https_proxy`, `http_proxy` for ws://, `all_proxy`, unless `no_proxy` names the host),
    None connects directly, a URL names one: http://, https:// (TLS to the proxy with
    `proxy_ssl`, default `ssl.create_default_context()`), socks5://, socks5h://, socks4://,
    socks4a://, with `user:password@` for credentials. A proxy that refuses reports
    `on_closed(conn, 1006, reason)` with a fastws.ProxyError (its HTTP status in `.status`)
    in `conn.error`. Up to `max_redirects` redirects (301, 302, 303, 307, 308) are
    followed, never from wss:// to ws://; the handler then gets the new Connection.

    `reconnect` (True, or a fastws.Backoff schedule) keeps the client connected: after a
    connection is lost or fails in a way another try may fix, and unless the application
    closed it, `handler.on_reconnecting(conn, delay)` is called (after `on_closed`) and a new
    connection is made after `delay` seconds (docs/clients.md).

    Raises ValueError for an invalid URL, proxy URL or argument; every failure to connect
    is reported through `on_closed` instead (see the module doc).
    """
    from .loop_client import DialOptions, reconnecting  # it builds on this module

    check_handler(handler)
    options = DialOptions(ssl=ssl, subprotocols=subprotocols, headers=headers,
                          compression=deflate_options(compression, is_client=True),
                          limits=Limits().updated(limits), proxy=proxy, proxy_ssl=proxy_ssl,
                          max_redirects=max_redirects)
    return reconnecting(url, handler, loop if loop is not None else default_loop(), options,
                        backoff_from(reconnect))
