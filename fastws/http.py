"""HTTP/1.1 for fastws: the `Headers`, `Request` and `Response` types, their wire encoding, and
incremental parsers built on httptools (llhttp). `RequestParser` is the server side (pipelining,
size limits mapped to 4xx `HttpError`s, and a clean stop at a protocol upgrade with the bytes that
followed it kept in `tail`); `ResponseParser` is the client side, used to read the answer to the
WebSocket opening handshake. Nothing here touches sockets: callers feed bytes and get objects."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, Union

import httptools

from .limits import Limits

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
# CR and LF would let a value start a new header line (header injection); NUL breaks C peers.
_UNSAFE_IN_VALUE = re.compile(r"[\r\n\x00]")
# A request target is URI text (RFC 9112 3.2, RFC 3986): visible ASCII only. Whitespace would
# split the request line; anything else must be percent-encoded.
_TARGET = re.compile(r"[\x21-\x7e]+")

# Parser limits default to the connection's (one place for every default).
_LIMITS = Limits()


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


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
        if isinstance(headers, Headers):
            pairs = headers._pairs
        elif isinstance(headers, Mapping):
            pairs = headers.items()
        else:
            pairs = headers
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        """Append one header line, keeping any earlier ones with the same name."""
        self._pairs.append((name, value))
        values = self._index.get(name.lower())
        if values is None:
            self._index[name.lower()] = [value]
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

    def get_all(self, name: str) -> list[str]:
        """Every value of `name`, in order (a new list)."""
        return list(self._index.get(name.lower(), ()))

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every `name` line, stripped and lower-cased.

        This is how list-valued headers such as Connection and Upgrade are compared (RFC 9110
        5.6.1); empty list elements are dropped.
        """
        tokens: list[str] = []
        for value in self._index.get(name.lower(), ()):
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


def _encode_head(first_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [first_line]
    for name, value in headers:
        if TOKEN.fullmatch(name) is None:
            raise ValueError(f"invalid header name {name!r}")
        if _UNSAFE_IN_VALUE.search(value) is not None:
            raise ValueError(f"header {name!r} has CR, LF or NUL in its value {value!r}")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("HTTP heads must be latin-1; encode other text in the value") from None


def is_request_target(text: str) -> bool:
    """True when `text` can be sent as a request target: non-empty visible ASCII (no spaces or
    control characters; other characters must be percent-encoded)."""
    return _TARGET.fullmatch(text) is not None


def _short_repr(body: bytes) -> str:
    return repr(body) if len(body) <= 64 else f"<{len(body)} bytes>"


def _wants_upgrade(headers: Headers) -> bool:
    # An empty Upgrade value names no protocol; llhttp agrees and does not stop for it.
    return "upgrade" in headers.tokens("connection") and any(
        value.strip() for value in headers.get_all("upgrade")
    )


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
        if keep_alive is None:
            connection = self.headers.tokens("connection")
            if version in ("1.0", "0.9"):
                keep_alive = "keep-alive" in connection
            else:
                keep_alive = "close" not in connection
        self.keep_alive = keep_alive
        self.upgrade = _wants_upgrade(self.headers)
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
        head = _encode_head(f"{self.method} {self.target} HTTP/{self.version}\r\n", pairs)
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
        if _UNSAFE_IN_VALUE.search(self.reason) is not None:
            raise ValueError(f"reason phrase has CR, LF or NUL: {self.reason!r}")
        pairs = self.headers.items()
        if _is_bodyless_status(self.status):
            if self.body:
                raise ValueError(f"a {self.status} response cannot have a body")
        elif "content-length" not in self.headers and "transfer-encoding" not in self.headers:
            pairs.append(("Content-Length", str(len(self.body))))
        if not keep_alive and "connection" not in self.headers:
            pairs.append(("Connection", "close"))
        head = _encode_head(f"HTTP/{self.version} {self.status} {self.reason}\r\n", pairs)
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


class _Released:
    """Stands in for llhttp's parser once a parser was released."""

    def feed_data(self, data: BytesLike) -> None:
        raise RuntimeError("this HTTP parser was released")

    def __getattr__(self, name: str) -> object:
        raise RuntimeError("this HTTP parser was released")


_RELEASED: Any = _Released()


class _MessageParser:
    """What the request and response parsers share: the httptools callbacks for header lines
    and bodies, with their limits, and the bound on what llhttp buffers without telling us.

    A subclass adds its first line (`on_url` or `on_status`) and fills in `_new_error` (what a
    failure raises), `_head_complete` (the head is in: build the message) and `_complete` (the
    message is in). `_kind` names the message in error details.
    """

    __slots__ = (
        "_parser",
        "_max_header_size",
        "_max_headers",
        "_max_body_size",
        "_error",
        "_callback_error",
        "_progressed",
        "_stalled",
        "_in_message",
        "_in_head",
        "_headers",
        "_head_size",
        "_header_count",
        "_body_parts",
        "_body_size",
    )

    _kind = "message"

    def __init__(
        self,
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
        max_header_size: int,
        max_headers: int,
        max_body_size: int,
    ) -> None:
        self._parser = parser
        self._max_header_size = max_header_size
        self._max_headers = max_headers
        self._max_body_size = max_body_size
        self._error: HttpError | None = None
        # httptools reports callback exceptions without their object for some callbacks
        self._callback_error: HttpError | None = None
        self._progressed = False
        self._stalled = 0
        self._in_message = False
        self._in_head = False
        self._headers = Headers()
        self._head_size = 0
        self._header_count = 0
        self._body_parts: list[bytes] = []
        self._body_size = 0

    @property
    def in_message(self) -> bool:
        """True from the first byte of a message until its end: a message is partly received."""
        return self._in_message

    def release(self) -> None:
        """Free llhttp's parser now. It holds this object's callbacks and this object holds
        it: without this the pair waits for the garbage collector. Feeding raises after."""
        self._parser = _RELEASED

    def _new_error(self, status: int, detail: str) -> HttpError:
        raise NotImplementedError

    def _head_complete(self) -> None:
        raise NotImplementedError

    def _complete(self) -> None:
        raise NotImplementedError

    def _parse(self, data: BytesLike) -> int | None:
        """Run llhttp over `data`; the offset of the first byte after an upgrade, else None.

        Raises the HttpError that a callback or llhttp found (see `_parse_failed`).
        """
        self._progressed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            return int(upgrade.args[0])
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
            return None
        if self._in_message and not self._progressed:
            # httptools buffers a header line until it is complete, with no callback; a feed
            # with no callback at all mid-message therefore added only unreported head bytes
            # (or trailer and chunk-size bytes). Counting them bounds that buffer, and a head
            # is never counted larger than it is.
            self._stalled += len(data)
            if self._head_size + self._stalled > self._max_header_size:
                self._error = self._new_error(431, self._head_too_large())
                raise self._error
        return None

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        error = self._callback_error or self._new_error(400, str(exc) or type(exc).__name__)
        self._error = error
        raise error from None

    def _fail(self, status: int, detail: str) -> HttpError:
        self._callback_error = self._new_error(status, detail)
        return self._callback_error

    def _head_too_large(self) -> str:
        return f"{self._kind} head over {self._max_header_size} bytes"

    def _check_content_length(self) -> str | None:
        """The Content-Length value (llhttp checked that it is one number), or None; a length
        over the body limit fails at once, before the body is read."""
        content_length = self._headers.get("content-length")
        if content_length is not None and int(content_length) > self._max_body_size:
            raise self._fail(413, f"body over {self._max_body_size} bytes")
        return content_length

    def _take_body(self) -> bytes:
        parts = self._body_parts
        self._body_parts = []
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # httptools callbacks

    def on_message_begin(self) -> None:
        self._progressed = True
        self._in_message = True
        self._in_head = True
        self._stalled = 0
        self._headers = Headers()
        self._head_size = 0
        self._header_count = 0
        self._body_parts = []
        self._body_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._progressed = True
        self._stalled = 0
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4
        if self._header_count > self._max_headers:
            raise self._fail(431, f"more than {self._max_headers} header lines")
        if self._head_size > self._max_header_size:
            raise self._fail(431, self._head_too_large())
        if self._in_head:
            # latin-1 maps bytes to code points one to one: nothing is lost or rejected
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))
        # trailers (after a chunked body) count against the limits but are dropped

    def on_headers_complete(self) -> None:
        self._progressed = True
        self._stalled = 0
        self._in_head = False
        self._head_complete()

    def on_body(self, piece: bytes) -> None:
        self._progressed = True
        self._stalled = 0
        self._body_size += len(piece)
        if self._body_size > self._max_body_size:
            raise self._fail(413, f"body over {self._max_body_size} bytes")
        self._body_parts.append(piece)

    def on_message_complete(self) -> None:
        self._progressed = True
        self._in_message = False
        self._complete()


class RequestParser(_MessageParser):
    """Incremental server-side parser: `feed()` bytes, get the requests they complete.

    Any chunking works and pipelined requests come back in order. Limits (defaults from
    `fastws.Limits`) and their errors: a request line longer than `max_request_line` -> 414
    (URI Too Long: the target is what grows), a head (request line, header lines and trailers)
    over `max_header_size` bytes or more than `max_headers` lines -> 431, a body over
    `max_body_size` -> 413. Anything llhttp rejects (among them every request-smuggling shape:
    Content-Length with Transfer-Encoding, two Content-Lengths, folded lines, whitespace before
    a colon, NUL, bare CR or LF), a request line without a version, or a Host header missing
    (HTTP/1.1) or repeated (RFC 9112 3.2) -> 400, CONNECT -> 501, a version other than HTTP/1.x
    -> 505. On an error `feed()` raises `HttpError`, drops requests completed earlier in the
    same chunk, and raises the same error on every later call.

    After a request that does not keep the connection alive (`request.keep_alive` False:
    Connection: close, or HTTP/1.0 without keep-alive) whatever follows is ignored: RFC 9112
    9.6 forbids processing further requests on that connection.

    When a request asks for an upgrade (`request.upgrade`), parsing stops after it (and its
    Content-Length body, if any): it is the last request returned, `upgraded` becomes True and
    `tail` holds every byte that followed it; further `feed()` raises RuntimeError.
    """

    __slots__ = (
        "upgraded",
        "tail",
        "_max_request_line",
        "_completed",
        "_closed",
        "_target",
        "_request",
        "_upgrade_request",
        "_upgrade_body",
        "_upgrade_body_length",
    )

    _kind = "request"

    def __init__(
        self,
        *,
        max_request_line: int = _LIMITS.max_request_line,
        max_header_size: int = _LIMITS.max_header_size,
        max_headers: int = _LIMITS.max_headers,
        max_body_size: int = _LIMITS.max_body_size,
    ) -> None:
        super().__init__(
            httptools.HttpRequestParser(self), max_header_size, max_headers, max_body_size
        )
        self.upgraded = False
        self.tail = b""
        self._max_request_line = max_request_line
        self._completed: list[Request] = []
        self._closed = False
        self._target = b""
        self._request: Request | None = None
        self._upgrade_request: Request | None = None
        self._upgrade_body = bytearray()
        self._upgrade_body_length = 0

    def feed(self, data: BytesLike) -> list[Request]:
        """Parse `data`; return the requests it completed, in order (often none or one)."""
        if self._error is not None:
            raise self._error
        if self.upgraded:
            raise RuntimeError("the parser stopped at an upgrade; the rest is in parser.tail")
        if self._upgrade_request is not None:
            return self._feed_upgrade_body(memoryview(data))
        if self._closed:
            return []
        offset = self._parse(data)
        if offset is not None:
            return self._stop_at_upgrade(data, offset)
        completed = self._completed
        self._completed = []
        return completed

    @property
    def in_message(self) -> bool:
        """True from the first byte of a request until it is complete, body included (the body
        of an upgrade request is read after llhttp has let go of it)."""
        return self._in_message or self._upgrade_request is not None

    def _new_error(self, status: int, detail: str) -> HttpError:
        return HttpError(status, detail)

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        # After a request that closes the connection llhttp refuses any further byte; those
        # bytes are no request of ours (RFC 9112 9.6), not an error in the ones before.
        if not self._closed:
            super()._parse_failed(exc)

    def _stop_at_upgrade(self, data: BytesLike, offset: int) -> list[Request]:
        completed = self._completed
        self._completed = []
        # llhttp completes the upgrade request before pausing, but skips its body
        if self._upgrade_body_length:
            self._upgrade_request = completed.pop()
            return completed + self._feed_upgrade_body(memoryview(data)[offset:])
        self.upgraded = True
        self.tail = bytes(memoryview(data)[offset:])
        return completed

    def _feed_upgrade_body(self, data: memoryview) -> list[Request]:
        missing = self._upgrade_body_length - len(self._upgrade_body)
        self._upgrade_body += data[:missing]
        if len(self._upgrade_body) < self._upgrade_body_length:
            return []
        request = self._upgrade_request
        assert request is not None
        request.body = bytes(self._upgrade_body)
        self._upgrade_request = None
        self._upgrade_body = bytearray()
        self.upgraded = True
        self.tail = bytes(data[missing:])
        return [request]

    # httptools callbacks (and the hooks of _MessageParser)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._target = b""

    def on_url(self, piece: bytes) -> None:
        self._progressed = True
        self._stalled = 0
        self._target += piece
        self._head_size += len(piece)
        if len(self._target) > self._max_request_line:
            raise self._fail(414, f"request line over {self._max_request_line} bytes")

    def _head_complete(self) -> None:
        parser = self._parser
        assert isinstance(parser, httptools.HttpRequestParser)
        method = parser.get_method().decode("ascii")
        # "METHOD SP target SP HTTP/x.y CRLF"
        line_size = len(method) + len(self._target) + 12
        if line_size > self._max_request_line:
            raise self._fail(414, f"request line over {self._max_request_line} bytes")
        self._head_size += len(method) + 14
        if self._head_size > self._max_header_size:
            raise self._fail(431, self._head_too_large())
        version = parser.get_http_version()
        if version[:2] != "1.":
            # llhttp reads a line without a version as HTTP/0.9: for us it is malformed
            if version == "0.9":
                raise self._fail(400, "the request line has no HTTP version")
            raise self._fail(505, f"HTTP/{version} is not supported")
        headers = self._headers
        hosts = len(headers.get_all("host"))
        # RFC 9112 3.2: which host a request is for must not be left to guesswork
        if hosts > 1:
            raise self._fail(400, "more than one Host header")
        if hosts == 0 and version != "1.0":
            raise self._fail(400, f"an HTTP/{version} request needs a Host header")
        content_length = self._check_content_length()
        request = Request(
            method,
            self._target.decode("latin-1"),
            headers,
            b"",
            version,
            keep_alive=parser.should_keep_alive(),
        )
        if method == "CONNECT":
            raise self._fail(501, "CONNECT is not supported")
        if request.upgrade != parser.should_upgrade():
            # Never guess where HTTP ends: refuse what llhttp and the header rule disagree on.
            raise self._fail(400, "ambiguous Connection/Upgrade headers")
        if request.upgrade:
            if "transfer-encoding" in headers:
                raise self._fail(400, "an upgrade request cannot have a chunked body")
            self._upgrade_body_length = int(content_length or 0)
        self._request = request

    def _complete(self) -> None:
        request = self._request
        assert request is not None
        self._request = None
        request.body = self._take_body()
        self._closed = not request.keep_alive
        self._completed.append(request)


class ResponseParser(_MessageParser):
    """Incremental client-side parser for one response (the answer to the opening handshake).

    `feed()` returns the response once complete: at the end of the head for a 101, at the end
    of the body otherwise (Content-Length or chunked). A response framed by the end of the
    connection is returned by `feed_eof()`. Interim 1xx responses other than 101 are skipped.

    `tail` holds the bytes after a 101 response with Upgrade and Connection headers (the first
    WebSocket frames). After any other response the connection is not reused (the handshake
    failed), so bytes after it are discarded and `tail` stays empty. Errors raise
    `HttpResponseError` (status 0); limits as in `RequestParser` (defaults from
    `fastws.Limits`), the status line counting against `max_header_size`.
    """

    __slots__ = ("tail", "_reason", "_response", "_until_eof", "_done", "_returned")

    _kind = "response"

    def __init__(
        self,
        *,
        max_header_size: int = _LIMITS.max_header_size,
        max_headers: int = _LIMITS.max_headers,
        max_body_size: int = _LIMITS.max_body_size,
    ) -> None:
        super().__init__(
            httptools.HttpResponseParser(self), max_header_size, max_headers, max_body_size
        )
        self.tail = b""
        self._reason = b""
        self._response: Response | None = None
        self._until_eof = False
        self._done: Response | None = None
        self._returned = False

    def feed(self, data: BytesLike) -> Response | None:
        """Parse `data`; return the response once it is complete, else None."""
        if self._error is not None:
            raise self._error
        if self._returned:
            raise RuntimeError("the response is complete; the rest is in parser.tail")
        offset = self._parse(data)
        if offset is not None:
            self.tail = bytes(memoryview(data)[offset:])
        if self._done is not None:
            self._returned = True
            return self._done
        return None

    def feed_eof(self) -> Response:
        """The peer closed: return a response framed by the end of the connection.

        Raises HttpResponseError if the connection closed before a complete response.
        """
        if self._error is not None:
            raise self._error
        if self._returned:
            raise RuntimeError("the response was already returned")
        response = self._response
        if response is None or not self._until_eof:
            self._error = HttpResponseError("connection closed before the response was complete")
            raise self._error
        response.body = self._take_body()
        self._returned = True
        return response

    def _new_error(self, status: int, detail: str) -> HttpError:
        return HttpResponseError(detail)  # nobody to answer: no status

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        # Once the response is complete, whatever llhttp says about later bytes is moot.
        if self._done is None:
            super()._parse_failed(exc)

    # httptools callbacks (and the hooks of _MessageParser)

    def on_message_begin(self) -> None:
        if self._done is not None:
            # the bytes after a complete response belong to nobody: stop llhttp here
            raise self._fail(0, "data after the response")
        super().on_message_begin()
        self._reason = b""

    def on_status(self, piece: bytes) -> None:
        self._progressed = True
        self._stalled = 0
        self._reason += piece
        self._head_size += len(piece)
        if self._head_size > self._max_header_size:
            raise self._fail(431, self._head_too_large())

    def _head_complete(self) -> None:
        parser = self._parser
        assert isinstance(parser, httptools.HttpResponseParser)
        status = parser.get_status_code()
        headers = self._headers
        content_length = self._check_content_length()
        self._until_eof = (
            not _is_bodyless_status(status)
            and content_length is None
            and "transfer-encoding" not in headers
        )
        self._response = Response(
            status,
            headers,
            b"",
            self._reason.decode("latin-1"),
            parser.get_http_version(),
        )

    def _complete(self) -> None:
        response = self._response
        assert response is not None
        self._response = None
        if 100 <= response.status < 200 and response.status != 101:
            return  # interim response (100 Continue, 103 Early Hints): the real one follows
        response.body = self._take_body()
        self._done = response
