"""The RFC 6455 opening handshake, both sides, on the types of `fastws.http`: the server checks
an upgrade request (`check_request`) and builds the 101 answer (`accept`) or the error answer
(`HandshakeError.response`); the client builds the request (`client_request`, `parse_ws_url`) and
checks the server's answer (`check_response`). Subprotocols are negotiated here, and extension
headers are parsed and formatted here so that extensions such as permessage-deflate only deal
with their own parameters. No I/O."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

from ._http_head import GUID, accept_key, is_plain_key
from .http import TOKEN, Headers, HeadersLike, Request, Response, is_request_target

__all__ = [
    "GUID",
    "Extension",
    "HandshakeError",
    "accept",
    "accept_key",
    "check_request",
    "check_response",
    "client_request",
    "format_extensions",
    "new_key",
    "parse_extensions",
    "parse_ws_url",
]

WEBSOCKET_VERSION = "13"

# An extension offer or answer: its name and its parameters, a value being None when absent.
Extension = tuple[str, list[tuple[str, str | None]]]

_OWS = re.compile(r"[ \t]*")


def new_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64-encoded (RFC 6455 4.1)."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


class HandshakeError(Exception):
    """A failed opening handshake.

    Server side, `status` is what to answer: 400 for a malformed request, 405 for a method other
    than GET, 426 for a missing or unsupported Sec-WebSocket-Version; `response()` builds that
    answer. Client side `status` is 0 and there is no response to build.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        """The error answer: a short text body naming the problem, and `Connection: close`."""
        if self.status == 0:
            raise RuntimeError("a client-side handshake error has no HTTP answer")
        headers = Headers({"Connection": "close"})
        if self.status == 426:
            # RFC 6455 4.4: tell the client which version we speak
            headers.add("Sec-WebSocket-Version", WEBSOCKET_VERSION)
        elif self.status == 405:
            headers.add("Allow", "GET")  # RFC 9110 15.5.6 requires it on a 405
        text = f"WebSocket handshake failed: {self.message}\n"
        return Response.text(self.status, text, headers=headers)


def _http_version_at_least_1_1(version: str) -> bool:
    if version == "1.1":
        return True
    try:
        major, minor = (int(part) for part in version.split("."))
    except ValueError:
        return False
    return (major, minor) >= (1, 1)


def _list_elements(values: Sequence[str]) -> list[str]:
    # Like Headers.tokens but case is kept: subprotocol names are case-sensitive (RFC 6455 4.1).
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def check_request(request: Request) -> str:
    """Validate a client's opening handshake (RFC 6455 4.2.1); return its Sec-WebSocket-Key.

    Raises HandshakeError naming the first problem found. Sec-WebSocket-Version is checked
    before the key so that a client speaking another version learns which one to use (426).
    A request that passed keeps its key, so checking it again (accept() then the upgrade)
    costs nothing; a request is not meant to be edited after it was received.
    """
    if request._websocket_key is not None:
        return request._websocket_key
    headers = request.headers
    if request.method != "GET":
        raise HandshakeError(405, f"the method must be GET, not {request.method}")
    if not _http_version_at_least_1_1(request.version):
        raise HandshakeError(400, f"HTTP/1.1 or later is required, not HTTP/{request.version}")
    if len(headers._values("host")) != 1:
        raise HandshakeError(400, "exactly one Host header is required")
    # The usual values first (one comparison), then the general list-of-tokens reading;
    # request.upgrade says that Connection listed "upgrade" when the request was made.
    if (headers._values("upgrade") != ["websocket"]
            and "websocket" not in headers.tokens("upgrade")):
        raise HandshakeError(400, "the Upgrade header must contain websocket")
    if not request.upgrade and "upgrade" not in headers.tokens("connection"):
        raise HandshakeError(400, "the Connection header must contain upgrade")
    versions = headers._values("sec-websocket-version")
    if versions != [WEBSOCKET_VERSION]:
        found = ", ".join(versions) if versions else "none"
        raise HandshakeError(
            426, f"Sec-WebSocket-Version must be {WEBSOCKET_VERSION} (found {found})"
        )
    keys = headers._values("sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, f"exactly one Sec-WebSocket-Key is required, not {len(keys)}")
    key = keys[0]
    if not is_plain_key(key):         # the usual form, checked in C; else decode to decide
        try:
            nonce = base64.b64decode(key.encode("latin-1"), validate=True)
        except (binascii.Error, ValueError):
            nonce = b""
        if len(nonce) != 16:
            raise HandshakeError(400, f"Sec-WebSocket-Key {key!r} is not 16 bytes in base64")
    request._websocket_key = key
    return key


def accept(
    request: Request,
    *,
    subprotocols: Sequence[str] = (),
    headers: HeadersLike = None,
) -> Response:
    """The 101 Switching Protocols answer to a valid upgrade request.

    Picks the first of `subprotocols` (the server's preference order) that the client offered;
    no Sec-WebSocket-Protocol header when none matches. `headers` are appended. Raises
    HandshakeError (see `check_request`); answer with its `response()`.
    """
    answer = accept_key(check_request(request))
    # The Headers' list and index made directly: the three lines are known to be valid.
    response = Response(101, Headers._parsed(
        [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", answer)],
        {"upgrade": ["websocket"], "connection": ["Upgrade"], "sec-websocket-accept": [answer]},
    ))
    if subprotocols:
        offered = _list_elements(request.headers.get_all("sec-websocket-protocol"))
        for subprotocol in subprotocols:
            if subprotocol in offered:
                response.headers.add("Sec-WebSocket-Protocol", subprotocol)
                break
    if headers:
        for name, value in Headers(headers):
            response.headers.add(name, value)
    return response


def _parse_quoted_string(text: str, pos: int) -> tuple[str, int]:
    # text[pos] is the opening quote; a backslash escapes the next character (RFC 9110 5.6.4)
    chars: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(chars), pos + 1
        if char == "\\":
            pos += 1
            if pos == len(text):
                break
            char = text[pos]
        chars.append(char)
        pos += 1
    raise ValueError(f"unterminated quoted-string in {text!r}")


def _parse_token(text: str, pos: int, what: str) -> tuple[str, int]:
    match = TOKEN.match(text, pos)
    if match is None:
        raise ValueError(f"expected {what} at offset {pos} of {text!r}")
    return match.group(), match.end()


def _skip_ows(text: str, pos: int) -> int:
    match = _OWS.match(text, pos)
    assert match is not None  # zero or more spaces always match
    return match.end()


def _parse_extension_value(text: str, extensions: list[Extension]) -> None:
    pos = _skip_ows(text, 0)
    while pos < len(text):
        if text[pos] == ",":  # empty list element, allowed by RFC 9110 5.6.1
            pos = _skip_ows(text, pos + 1)
            continue
        name, pos = _parse_token(text, pos, "an extension name")
        params: list[tuple[str, str | None]] = []
        pos = _skip_ows(text, pos)
        while pos < len(text) and text[pos] == ";":
            pos = _skip_ows(text, pos + 1)
            param, pos = _parse_token(text, pos, "a parameter name")
            pos = _skip_ows(text, pos)
            value: str | None = None
            if pos < len(text) and text[pos] == "=":
                pos = _skip_ows(text, pos + 1)
                if pos < len(text) and text[pos] == '"':
                    value, pos = _parse_quoted_string(text, pos)
                    # RFC 6455 9.1: once unquoted, the value must still be a token
                    if TOKEN.fullmatch(value) is None:
                        raise ValueError(f"quoted value {value!r} is not a token in {text!r}")
                else:
                    value, pos = _parse_token(text, pos, "a parameter value")
                pos = _skip_ows(text, pos)
            params.append((param, value))
        extensions.append((name, params))
        if pos < len(text):
            if text[pos] != ",":
                raise ValueError(f"unexpected {text[pos]!r} at offset {pos} of {text!r}")
            pos = _skip_ows(text, pos + 1)


def parse_extensions(values: Sequence[str]) -> list[Extension]:
    """Parse Sec-WebSocket-Extensions header values (RFC 6455 9.1), all lines in order.

    `'a; x=1; y, b; z="2"'` gives `[("a", [("x", "1"), ("y", None)]), ("b", [("z", "2")])]`.
    Names keep their case. Raises ValueError on malformed input.
    """
    extensions: list[Extension] = []
    for value in values:
        _parse_extension_value(value, extensions)
    return extensions


def format_extensions(extensions: Sequence[tuple[str, Sequence[tuple[str, str | None]]]]) -> str:
    """The Sec-WebSocket-Extensions value for `extensions`, the reverse of `parse_extensions`.

    Raises ValueError for a name or value that is not a token (RFC 6455 9.1 requires tokens,
    so quoting is never needed).
    """
    def checked(word: str) -> str:
        if TOKEN.fullmatch(word) is None:
            raise ValueError(f"{word!r} is not a token")
        return word

    offers: list[str] = []
    for name, params in extensions:
        parts = [checked(name)]
        for param, value in params:
            parts.append(checked(param) if value is None else f"{checked(param)}={checked(value)}")
        offers.append("; ".join(parts))
    return ", ".join(offers)


def client_request(
    host: str,
    port: int,
    resource: str,
    key: str,
    *,
    secure: bool,
    subprotocols: Sequence[str] = (),
    extensions: str | None = None,
    headers: HeadersLike = None,
) -> Request:
    """The client's opening handshake request (RFC 6455 4.1); `headers` are appended.

    The Host header leaves out the port when it is the scheme's default and brackets IPv6
    literals. Raises ValueError for a subprotocol that is not a token.
    """
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    default_port = 443 if secure else 80
    request_headers = Headers(
        [
            ("Host", host if port == default_port else f"{host}:{port}"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", WEBSOCKET_VERSION),
        ]
    )
    for subprotocol in subprotocols:
        if TOKEN.fullmatch(subprotocol) is None:
            raise ValueError(f"subprotocol {subprotocol!r} is not a token")
    if subprotocols:
        request_headers.add("Sec-WebSocket-Protocol", ", ".join(subprotocols))
    if extensions:
        request_headers.add("Sec-WebSocket-Extensions", extensions)
    for name, value in Headers(headers):
        request_headers.add(name, value)
    return Request("GET", resource, request_headers)


def check_response(
    response: Response,
    key: str,
    *,
    subprotocols: Sequence[str] = (),
    extensions_offered: bool = False,
) -> tuple[str | None, list[Extension]]:
    """Validate the server's answer to our handshake (RFC 6455 4.1, client steps 1-6).

    Returns the subprotocol the server chose (or None) and the extensions it accepted, parsed.
    Raises HandshakeError (status 0) naming the problem.
    """
    headers = response.headers
    if response.status != 101:
        raise HandshakeError(
            0,
            f"the server answered {response.status} {response.reason} "
            "instead of 101 Switching Protocols",
        )
    if "websocket" not in headers.tokens("upgrade"):
        raise HandshakeError(0, "the response's Upgrade header does not contain websocket")
    if "upgrade" not in headers.tokens("connection"):
        raise HandshakeError(0, "the response's Connection header does not contain upgrade")
    if headers.get_all("sec-websocket-accept") != [accept_key(key)]:
        raise HandshakeError(0, "Sec-WebSocket-Accept is missing or does not match our key")
    chosen = _list_elements(headers.get_all("sec-websocket-protocol"))
    if len(chosen) > 1:
        raise HandshakeError(0, f"the server chose several subprotocols: {', '.join(chosen)}")
    if chosen and chosen[0] not in subprotocols:
        raise HandshakeError(
            0, f"the server chose subprotocol {chosen[0]!r}, which we did not offer"
        )
    try:
        extensions = parse_extensions(headers.get_all("sec-websocket-extensions"))
    except ValueError as exc:
        raise HandshakeError(0, f"malformed Sec-WebSocket-Extensions: {exc}") from None
    if extensions and not extensions_offered:
        names = ", ".join(name for name, _ in extensions)
        raise HandshakeError(0, f"the server accepted extensions we did not offer: {names}")
    return (chosen[0] if chosen else None), extensions


def parse_ws_url(url: str) -> tuple[bool, str, int, str]:
    """Split a ws:// or wss:// URL into (secure, host, port, resource) (RFC 6455 3).

    The port defaults to 80 or 443; the resource is the path ("/" when empty) plus "?query".
    Raises ValueError for another scheme, a fragment (forbidden by RFC 6455 3), credentials,
    a missing host, a bad port, or a character a URL cannot hold: whitespace, a control
    character or non-ASCII text (percent-encode it).
    """
    # Checked on the URL as given: urlsplit silently drops tabs and line breaks.
    if not is_request_target(url):
        raise ValueError(
            f"{url!r} has whitespace, control or non-ASCII characters; percent-encode them"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        raise ValueError(f"{url!r} is not a WebSocket URL: the scheme must be ws or wss")
    if "#" in url:
        raise ValueError(f"{url!r} has a fragment, which WebSocket URLs cannot have")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} has credentials; send an Authorization header instead")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url!r} has no host")
    secure = scheme == "wss"
    port = parts.port  # raises ValueError itself when out of range or not a number
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return secure, host, port if port is not None else (443 if secure else 80), resource
