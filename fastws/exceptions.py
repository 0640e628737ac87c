"""The exceptions fastws' clients raise: a closed connection, a rejected opening handshake, a
proxy that refused to open a tunnel.

The blocking client (fastws.sync) and fastws.asyncio's WebSocket raise them; the Loop
client reports the same failures through `on_closed` with the exception in `conn.error`.
They live here, apart from any one client, so that every client raises the same types and
applications catch them once.
"""

from __future__ import annotations

from .handshake import HandshakeError
from .http import Response

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "InvalidStatus",
    "ProxyError",
    "RedirectError",
]


# The codes of a normal end, as websockets counts them.
_OK_CODES = frozenset({1000, 1001, 1005})


class ConnectionClosed(ConnectionError):
    """The WebSocket connection is closed: `code` and `reason` are the close frame's (1006
    and a description when the TCP connection ended without one).

    `rcvd_then_sent` is True when the peer started the closing handshake, False when we
    did, None when no close frame was exchanged.
    """

    def __init__(self, code: int, reason: str, *, rcvd_then_sent: bool | None = None) -> None:
        self.code = code
        self.reason = reason
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__(f"connection closed: {code} {reason}".rstrip())


class ConnectionClosedOK(ConnectionClosed):
    """Closed normally: 1000 (normal closure), 1001 (going away) or 1005 (a close frame
    without a code). Ends `for message in ws` / `async for message in ws`."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or without a closing handshake (1006)."""


def connection_closed(code: int, reason: str, *,
                      rcvd_then_sent: bool | None = None) -> ConnectionClosed:
    """The ConnectionClosed subclass for `code`."""
    kind = ConnectionClosedOK if code in _OK_CODES else ConnectionClosedError
    return kind(code, reason, rcvd_then_sent=rcvd_then_sent)


class InvalidStatus(HandshakeError):
    """The server answered the opening handshake with `status` instead of 101.

    `http_response` is the whole answer (its headers, and its body: the error message a
    server may put there).
    """

    def __init__(self, response: Response) -> None:
        super().__init__(response.status, f"the server answered {response.status} "
                         f"{response.reason} instead of 101 Switching Protocols")
        self.http_response = response

    def response(self) -> Response:
        raise RuntimeError("a client-side handshake error has no HTTP answer")


class RedirectError(HandshakeError):
    """A redirect that may not be followed: too many, a missing or invalid Location, or a
    wss:// URL redirected to ws:// (TLS may not be dropped)."""


class ProxyError(ConnectionError):
    """The proxy did not open a tunnel to the server.

    `status` is the HTTP proxy's answer (407 when it wants credentials or refused them,
    403, 502, ...), None for a SOCKS proxy or a proxy that broke the exchange; `proxy` is
    the proxy's URL without its credentials. `retryable` is False when trying again would
    fail the same way (a 4xx answer, refused credentials).
    """

    def __init__(self, message: str, *, proxy: str = "", status: int | None = None,
                 retryable: bool | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.proxy = proxy
        self.retryable = (status is None or status >= 500) if retryable is None else retryable
