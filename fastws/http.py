"""HTTP/1.1 for fastws: the `Headers`, `Request` and `Response` types, their wire encoding, and
the errors a request or response can earn (`HttpError`). The incremental parsers that produce
them live in fastws.http_parser (`RequestParser`, `ResponseParser`, also importable from here).
Nothing here touches sockets."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Union

from ._http_head import encode_head, has_unsafe_char

__all__ = [
    "TOKEN",
    "Headers",
    "HeadersLike",
    "HttpError",
    "HttpResponseError",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "is_request_target",
]

BytesLike = bytes | bytearray | memoryview
HeadersLike = Union["Headers", Mapping[str, str], Iterable[tuple[str, str]], None]

# RFC 9110 5.6.2 token: what a header name, a method, a subprotocol or an extension name must be.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A request target is URI text (RFC 9112 3.2, RFC 3986): visible ASCII only. Whitespace would
# split the request line; anything else must be percent-encoded.
_TARGET = re.compile(r"[\x21-\x7e]+")


_PHRASES = {status.value: status.phrase for status in HTTPStatus}


def _reason_phrase(status: int) -> str:
    return _PHRASES.get(status, "Unknown")


def _is_bodyless_status(status: int) -> bool:
    # RFC 9110 6.4.1: these responses never have content, whatever the headers say.
    return status < 200 or status == 204 or status == 304


class Headers:
    """An ordered multi-map of (name, value) string pairs with case-insensitive names.

    Names keep the case they were given or received in; lookups ignore case. Iterating yields
    the pairs in order, as `items()` does.
    """

    __slots__ = ("_pairs", "_index")

    def __init__(self, headers: HeadersLike = None) -> None:
        self._pairs: list[tuple[str, str]] = []
        # lower-cased name -> values in order, so lookups need no scan
        self._index: dict[str, list[str]] = {}
        if headers is None:
            return
        pairs: Iterable[tuple[str, str]]
        if isinstance(headers, (Headers, list)):
            pairs = headers._pairs if isinstance(headers, Headers) else headers
        elif isinstance(headers, Mapping):
            pairs = headers.items()
        else:
            pairs = headers
        for name, value in pairs:
            self.add(name, value)

    @classmethod
    def _parsed(cls, pairs: list[tuple[str, str]], index: dict[str, list[str]]) -> Headers:
        """Headers made of a parser's own list of pairs and lower-cased index (no copy)."""
        headers = cls.__new__(cls)
        headers._pairs = pairs
        headers._index = index
        return headers

    def add(self, name: str, value: str) -> None:
        """Append one header line, keeping any earlier ones with the same name."""
        self._pairs.append((name, value))
        key = name.lower()
        values = self._index.get(key)
        if values is None:
            self._index[key] = [value]
        else:
            values.append(value)

    def set(self, name: str, value: str) -> None:
        """Replace every line named `name` by one line, at the place of the first of them."""
        key = name.lower()
        if key not in self._index:
            self.add(name, value)
            return
        replaced: list[tuple[str, str]] = []
        placed = False
        for pair in self._pairs:
            if pair[0].lower() != key:
                replaced.append(pair)
            elif not placed:
                replaced.append((name, value))
                placed = True
        self._pairs = replaced
        self._index[key] = [value]

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of `name`, or `default` when there is none."""
        values = self._index.get(name.lower())
        return values[0] if values else default

    def _values(self, key: str) -> list[str]:
        """The values of the lower-cased name `key`, in order: the index's own list (no copy;
        for reading only) or an empty one."""
        return self._index.get(key) or []

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order (a new list)."""
        return list(self._index.get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every `name` line, stripped and lower-cased.

        This is how list-valued headers such as Connection and Upgrade are compared (RFC 9110
        5.6.1); empty list elements are dropped.
        """
        values = self._index.get(name.lower())
        if not values:
            return []
        if len(values) == 1 and "," not in values[0]:
            token = values[0].strip().lower()     # the usual case: one line, one token
            return [token] if token else []
        tokens: list[str] = []
        for value in values:
            for part in value.split(","):
                token = part.strip()
                if token:
                    tokens.append(token.lower())
        return tokens

    def items(self) -> list[tuple[str, str]]:
        return list(self._pairs)

    def __getitem__(self, name: str) -> str:
        values = self._index.get(name.lower())
        if not values:
            raise KeyError(name)
        return values[0]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._pairs] == [
            (n.lower(), v) for n, v in other._pairs
        ]

    def __repr__(self) -> str:
        return f"Headers({self._pairs!r})"


def is_request_target(text: str) -> bool:
    """True when `text` can be sent as a request target: non-empty visible ASCII (no spaces or
    control characters; other characters must be percent-encoded)."""
    return _TARGET.fullmatch(text) is not None


def _short_repr(body: bytes) -> str:
    return repr(body) if len(body) <= 64 else f"<{len(body)} bytes>"


def _names_a_protocol(headers: Headers) -> bool:
    # An empty Upgrade value names no protocol; llhttp agrees and does not stop for it.
    return any(map(str.strip, headers._index.get("upgrade", ())))


class Request:
    """An HTTP request: what `RequestParser` produces and what a client sends.

    `path` and `query` split the raw `target` at its first '?' (no percent-decoding).
    `keep_alive` follows HTTP/1.x rules unless given; `upgrade` is computed once, at
    construction: True when Connection lists "upgrade" and an Upgrade header names a protocol.

    A request is what was received: `fastws.handshake.check_request` remembers on it that it
    passed (so the second check of one upgrade is free) and does not look again if it is edited
    afterwards. To change a request, build a new one.
    """

    __slots__ = (
        "method",
        "target",
        "path",
        "query",
        "version",
        "headers",
        "body",
        "keep_alive",
        "upgrade",
        # the Sec-WebSocket-Key, once check_request has validated this request (else None)
        "_websocket_key",
    )

    def __init__(
        self,
        method: str = "GET",
        target: str = "/",
        headers: HeadersLike = None,
        body: bytes = b"",
        version: str = "1.1",
        *,
        keep_alive: bool | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path, _, self.query = target.partition("?")
        self.version = version
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        connection = self.headers.tokens("connection")
        if keep_alive is None:
            if version in ("1.0", "0.9"):
                keep_alive = "keep-alive" in connection
            else:
                keep_alive = "close" not in connection
        self.keep_alive = keep_alive
        self.upgrade = "upgrade" in connection and _names_a_protocol(self.headers)
        self._websocket_key: str | None = None

    def encode(self) -> bytes:
        """The request on the wire; adds Content-Length when there is a body and none is set.

        Raises ValueError for a method that is not a token, a target with whitespace or control
        characters, or a header that could inject lines.
        """
        if TOKEN.fullmatch(self.method) is None:
            raise ValueError(f"invalid method {self.method!r}")
        if not is_request_target(self.target):
            raise ValueError(f"invalid request target {self.target!r}")
        pairs = self.headers.items()
        if (
            self.body
            and "content-length" not in self.headers
            and "transfer-encoding" not in self.headers
        ):
            pairs.append(("Content-Length", str(len(self.body))))
        head = encode_head(f"{self.method} {self.target} HTTP/{self.version}\r\n", pairs)
        return head + self.body if self.body else head

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in _REQUEST_FIELDS)

    def __repr__(self) -> str:
        return (
            f"Request({self.method} {self.target!r} HTTP/{self.version}, "
            f"headers={self.headers!r}, body={_short_repr(self.body)}, "
            f"keep_alive={self.keep_alive}, upgrade={self.upgrade})"
        )


# What makes two requests equal: what was sent, not what was learnt about it since.
_REQUEST_FIELDS = tuple(name for name in Request.__slots__ if not name.startswith("_"))


class Response:
    """An HTTP response: what a server sends and what `ResponseParser` produces."""

    __slots__ = ("status", "reason", "headers", "body", "version")

    def __init__(
        self,
        status: int = 200,
        headers: HeadersLike = None,
        body: bytes = b"",
        reason: str | None = None,
        version: str = "1.1",
    ) -> None:
        self.status = status
        self.reason = _reason_phrase(status) if reason is None else reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body
        self.version = version

    @classmethod
    def text(
        cls,
        status: int,
        text: str,
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: HeadersLike = None,
    ) -> Response:
        """A response whose body is `text` in UTF-8, with Content-Type set (extra headers after)."""
        response = cls(status, [("Content-Type", content_type)], text.encode("utf-8"))
        for name, value in Headers(headers):
            response.headers.add(name, value)
        return response

    @classmethod
    def html(cls, status: int, html: str, *, headers: HeadersLike = None) -> Response:
        return cls.text(status, html, content_type="text/html; charset=utf-8", headers=headers)

    def encode(self, *, keep_alive: bool = True) -> bytes:
        """The response on the wire.

        Adds Content-Length when absent, unless the status forbids a body (1xx, 204, 304) or a
        Transfer-Encoding header is set (then the body must already be in that coding). Adds
        `Connection: close` when `keep_alive` is False and no Connection header is set.
        Raises ValueError for header names that are not tokens, CR/LF/NUL in a value or the
        reason (header injection), a status outside 100-999, or a body on a bodyless status.
        """
        if not 100 <= self.status <= 999:
            raise ValueError(f"invalid status {self.status}")
        if has_unsafe_char(self.reason):
            raise ValueError(f"reason phrase has CR, LF or NUL: {self.reason!r}")
        pairs = self.headers.items()
        if _is_bodyless_status(self.status):
            if self.body:
                raise ValueError(f"a {self.status} response cannot have a body")
        elif "content-length" not in self.headers and "transfer-encoding" not in self.headers:
            pairs.append(("Content-Length", str(len(self.body))))
        if not keep_alive and "connection" not in self.headers:
            pairs.append(("Connection", "close"))
        head = encode_head(f"HTTP/{self.version} {self.status} {self.reason}\r\n", pairs)
        return head + self.body if self.body else head

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in Response.__slots__)

    def __repr__(self) -> str:
        return (
            f"Response({self.status} {self.reason!r} HTTP/{self.version}, "
            f"headers={self.headers!r}, body={_short_repr(self.body)})"
        )


class HttpError(Exception):
    """A request the server refuses: `status` and `reason` are what to answer.

    `detail` says what was wrong; `response()` is the answer to send before closing.
    """

    def __init__(self, status: int, detail: str = "", *, reason: str | None = None) -> None:
        self.status = status
        self.reason = _reason_phrase(status) if reason is None else reason
        self.detail = detail
        message = f"{status} {self.reason}"
        super().__init__(f"{message}: {detail}" if detail else message)

    def response(self) -> Response:
        """A small text response with `Connection: close`: the parser is dead after an error."""
        text = f"{self.status} {self.reason}\n" + (f"{self.detail}\n" if self.detail else "")
        return Response.text(self.status, text, headers={"Connection": "close"})


class HttpResponseError(HttpError):
    """A malformed or oversized response read by `ResponseParser` (client side).

    `status` is 0: there is nobody to answer, so `response()` raises RuntimeError.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(0, detail, reason="Invalid HTTP response")
        self.args = (f"invalid HTTP response: {detail}",)      # no status to show

    def response(self) -> Response:
        raise RuntimeError("a client-side response error has no HTTP answer")


# The parsers build the types above; they are importable from here as well.
from .http_parser import RequestParser, ResponseParser  # noqa: E402
