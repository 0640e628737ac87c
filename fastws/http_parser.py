"""Incremental HTTP/1.1 parsers built on httptools (llhttp): bytes in, fastws.http objects out.

`RequestParser` is the server side (pipelining, size limits mapped to 4xx `HttpError`s, and a
clean stop at a protocol upgrade with the bytes that followed it kept in `tail`);
`ResponseParser` is the client side, used to read the answer to the WebSocket opening
handshake. Both share `_MessageParser`: the header and body callbacks, their limits, and the
bound on what llhttp buffers without telling us. Limits default to fastws.Limits'.
"""

from __future__ import annotations

from typing import Any

import httptools

from ._http_head import parse_plain_get
from .http import (
    BytesLike,
    Headers,
    HttpError,
    HttpResponseError,
    Request,
    Response,
    _is_bodyless_status,
)
from .limits import Limits

__all__ = ["RequestParser", "ResponseParser"]

# Parser limits default to the connection's (one place for every default).
_LIMITS = Limits()


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
        parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None,
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
        parser = self._parser
        assert parser is not None       # made before the first feed
        self._progressed = False
        try:
            parser.feed_data(data)
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
        "_plain_heads",
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
        # llhttp's parser is made when a request first needs it (most are plain heads)
        super().__init__(None, max_header_size, max_headers, max_body_size)
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
        # Plain GET heads are parsed in C until a request (or part of one) goes to llhttp.
        self._plain_heads = True    # (False: llhttp from the start; tests compare the two)

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
        plain: list[Request] = []
        if self._parser is None:
            if self._plain_heads:
                plain, rest = self._take_plain_heads(data)
                if rest is None:
                    return plain
                data = rest
            self._parser = httptools.HttpRequestParser(self)  # it has the connection from here on
        offset = self._parse(data)
        if offset is not None:
            return plain + self._stop_at_upgrade(data, offset)
        completed = self._completed
        self._completed = []
        return plain + completed if plain else completed

    def _take_plain_heads(self, data: BytesLike) -> tuple[list[Request], BytesLike | None]:
        """The plain GET requests at the start of `data`, parsed in one C pass
        (fastws._http_head), and the bytes left for llhttp (None when there are none)."""
        requests: list[Request] = []
        end = 0
        while True:
            found = parse_plain_get(data, end, self._max_request_line, self._max_header_size,
                                    self._max_headers)
            if found is None:
                return requests, (memoryview(data)[end:] if end else data)
            end, target, pairs, index = found
            request = Request("GET", target, Headers._parsed(pairs, index))
            requests.append(request)
            if request.upgrade:
                self.upgraded = True
                self.tail = bytes(memoryview(data)[end:])
                return requests, None
            if not request.keep_alive:
                self._closed = True     # what follows is no request of ours (RFC 9112 9.6)
                return requests, None
            if end == len(data):
                return requests, None

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


class _HeadComplete(Exception):
    """Raised from a callback to stop llhttp at the end of a head (ResponseParser head_only)."""


class ResponseParser(_MessageParser):
    """Incremental client-side parser for one response (the answer to the opening handshake).

    `feed()` returns the response once complete: at the end of the head for a 101, at the end
    of the body otherwise (Content-Length or chunked). A response framed by the end of the
    connection is returned by `feed_eof()`. Interim 1xx responses other than 101 are skipped.

    With `head_only`, the response is complete at the end of its head whatever its status:
    the answer of an HTTP proxy to CONNECT, which has no body when it opens a tunnel (the
    caller, which fed only the head, knows what follows it).

    `tail` holds the bytes after a 101 response with Upgrade and Connection headers (the first
    WebSocket frames). After any other response the connection is not reused (the handshake
    failed), so bytes after it are discarded and `tail` stays empty. Errors raise
    `HttpResponseError` (status 0); limits as in `RequestParser` (defaults from
    `fastws.Limits`), the status line counting against `max_header_size`.
    """

    __slots__ = ("tail", "_reason", "_response", "_until_eof", "_done", "_returned", "_head_only")

    _kind = "response"

    def __init__(
        self,
        *,
        max_header_size: int = _LIMITS.max_header_size,
        max_headers: int = _LIMITS.max_headers,
        max_body_size: int = _LIMITS.max_body_size,
        head_only: bool = False,
    ) -> None:
        super().__init__(
            httptools.HttpResponseParser(self), max_header_size, max_headers, max_body_size
        )
        self._head_only = head_only
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
        if self._head_only:
            # Stop llhttp here: _parse_failed ignores what it says once _done is set.
            self._done = self._response
            raise _HeadComplete

    def _complete(self) -> None:
        response = self._response
        assert response is not None
        self._response = None
        if 100 <= response.status < 200 and response.status != 101:
            return  # interim response (100 Continue, 103 Early Hints): the real one follows
        response.body = self._take_body()
        self._done = response
