"""The server side of one HTTP/1.1 connection, sans I/O: bytes in, requests out, answers encoded
to bytes. `ServerConversation` keeps the rules a connection must follow between its first byte
and either its end or a switch to WebSocket: answers leave in request order (pipelining),
keep-alive and close (RFC 9112 9.3, 9.6), HEAD answers without a body, an upgrade request
declined or accepted, and the bytes that arrive behind an upgrade request before it is answered.
It has no socket, loop, timer or handler: the caller (fastws.connection) reads, hands requests
to the application, writes what the conversation returns, and stops when it says so. Nothing
WebSocket-specific is checked here; that is fastws.handshake's job.

    conv = ServerConversation(limits)          # a fastws.Limits (default: Limits())
    conv.receive_data(data)                    # any bytes-like, any chunking. Raises HttpError for
                                               # a bad request: answer conv.reject(exc.response())
    request = conv.next_request()              # the next request for the application, or None
    data = conv.respond(response)              # the answer to conv.awaiting, as bytes
    data, rest = conv.accept_upgrade(response) # the 101, and the bytes that followed the request
    data = conv.reject(response)               # an error answer; the conversation is closing
    conv.awaiting, conv.closing, conv.idle, conv.upgraded, conv.error

After each call the caller writes the bytes returned, then looks at `closing`: once True no more
input is read, and the caller flushes its output and shuts it down.
"""

from __future__ import annotations

from collections import deque

from .http import BytesLike, Headers, HttpError, Request, Response
from .http_parser import RequestParser
from .limits import Limits

__all__ = ["ServerConversation"]

# A WebSocket frame header is at most 14 bytes: 2, 8 for a 64-bit length, 4 for the mask.
_MAX_FRAME_HEADER = 14
# The bytes held behind an upgrade request when frames have no size limit.
_HELD_WITHOUT_FRAME_LIMIT = 1 << 20


class ServerConversation:
    """The HTTP/1.1 conversation of one server connection (see the module's docstring).

    Requests are handed out one at a time: `next_request()` returns None while one is awaiting
    its answer, so answers leave in request order however requests were pipelined.

    A request that asks for an upgrade (`request.upgrade`) is the last one parsed: what follows
    it may be WebSocket frames. Until it is answered those bytes are held, at most one frame of
    `max_frame_size` (1 MiB when frames are unlimited) and its header: a client must wait for
    the answer before it sends (RFC 6455 4.1), so more than that is refused as a bad request
    (`receive_data` raises HttpError 400). Declining the upgrade (`respond()` with a non-101)
    goes on with HTTP, parsing the held bytes as requests; `accept_upgrade()` hands them over.

    Misuse raises RuntimeError: answering with nothing awaiting, `respond()` with a 1xx,
    `accept_upgrade()` for a request that did not ask for an upgrade or with another status
    than 101, any answer but `reject()` after `receive_data()` raised, `reject()` once closing,
    and any call but `next_request()` (None) after the upgrade. While closing, received data
    is ignored and `next_request()` returns None.
    """

    __slots__ = (
        "_limits",
        "_max_held",
        "_parser",
        "_pending",
        "_awaiting",
        "_held",
        "_closing",
        "_upgraded",
        "_error",
    )

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits if limits is not None else Limits()
        self._max_held = (
            self._limits.max_frame_size or _HELD_WITHOUT_FRAME_LIMIT
        ) + _MAX_FRAME_HEADER
        self._parser = self._new_parser()
        self._pending: deque[Request] = deque()
        self._awaiting: Request | None = None
        # the bytes after an upgrade request, from when it is parsed until it is answered
        self._held: bytearray | None = None
        self._closing = False
        self._upgraded = False
        self._error: HttpError | None = None

    # ------------------------------------------------------------------ state

    @property
    def awaiting(self) -> Request | None:
        """The request handed to the application and not answered yet, or None."""
        return self._awaiting

    @property
    def closing(self) -> bool:
        """True once no more input will be read: after an answer that ends the connection
        (Connection: close from either side, HTTP/1.0 without keep-alive) or `reject()`."""
        return self._closing

    @property
    def upgraded(self) -> bool:
        """True once `accept_upgrade()` ended the conversation: the rest is WebSocket."""
        return self._upgraded

    @property
    def idle(self) -> bool:
        """True when the conversation waits for a new request: none is awaiting an answer,
        pending or partly received, and it is neither closing nor over. The caller's idle
        keep-alive timer runs only then."""
        return (
            self._awaiting is None
            and not self._pending
            and self._held is None
            and not self._parser.in_message
            and not self._closing
            and not self._upgraded
            and self._error is None
        )

    @property
    def error(self) -> HttpError | None:
        """The HttpError that broke the conversation, if one did."""
        return self._error

    # ------------------------------------------------------------------ input

    def receive_data(self, data: BytesLike) -> None:
        """Take bytes read from the client; requests they complete wait for `next_request()`.

        Raises HttpError when they are not HTTP we accept (answer `reject(exc.response())`);
        every later call raises it again. Ignored while closing.
        """
        if self._upgraded:
            raise RuntimeError("the conversation ended with the upgrade: these are frames")
        if self._closing:
            return
        if self._error is not None:
            raise self._error
        if self._held is not None:
            self._held += data
            self._check_held()
        else:
            self._feed(data)

    def next_request(self) -> Request | None:
        """The next request for the application, which becomes `awaiting`; or None while one
        is awaiting its answer, when none is complete, or once the conversation is failing,
        closing or over."""
        if (self._awaiting is not None or not self._pending or self._closing
                or self._upgraded or self._error is not None):
            return None
        self._awaiting = self._pending.popleft()
        return self._awaiting

    # ------------------------------------------------------------------ output

    def respond(self, response: Response) -> bytes:
        """The bytes answering `awaiting` with `response` (any final status but 101).

        A HEAD request gets GET's head (Content-Length included) without the body. The
        connection stays open unless the request or the response says close; an HTTP/1.0
        client that asked to keep it is told `Connection: keep-alive`. Answering an upgrade
        request declines it: HTTP goes on with the bytes that followed it, which may complete
        more requests; if they hold a bad request, its error answer follows this one in the
        bytes returned and the conversation is closing (`error` says why).
        Raises ValueError (from Response.encode) for a response that cannot be sent; the
        conversation is then unchanged.
        """
        request = self._answerable("respond")
        if response.status == 101:
            raise RuntimeError("a 101 answers an upgrade request: use accept_upgrade()")
        if response.status < 200:
            raise RuntimeError(f"respond() sends final answers, not the interim {response.status}")
        keep_alive = request.keep_alive and "close" not in response.headers.tokens("connection")
        data = _encode(request, response, keep_alive)
        self._awaiting = None
        if not keep_alive:
            self._close()
        elif request.upgrade:
            # Declined: the bytes held behind the request were HTTP after all.
            held, self._held = self._held, None
            self._parser.release()
            self._parser = self._new_parser()
            if held:
                try:
                    self._feed(held)
                except HttpError as exc:
                    # Nobody else sees this error: answer it here, after this answer.
                    return data + self.reject(exc.response())
        return data

    def accept_upgrade(self, response: Response) -> tuple[bytes, bytes]:
        """Answer the awaiting upgrade request with `response` (a 101): returns its bytes and
        the bytes that followed the request (the client's first frames). The conversation is
        over (`upgraded`); check the request with fastws.handshake before."""
        request = self._answerable("accept_upgrade")
        if not request.upgrade:
            raise RuntimeError(
                f"accept_upgrade(): {request.method} {request.target} did not ask for an upgrade"
            )
        if response.status != 101:
            raise RuntimeError(
                f"accept_upgrade() answers 101 Switching Protocols, not {response.status}: "
                "decline with respond()"
            )
        data = response.encode()
        rest = bytes(self._held) if self._held else b""
        self._awaiting = None
        self._held = None
        self._upgraded = True
        self._parser.release()
        return data, rest

    def reject(self, response: Response) -> bytes:
        """The bytes of an error answer that ends the conversation: it says Connection: close,
        and the requests not answered yet are dropped (`closing` becomes True). For a bad
        request (`receive_data` raised), a failed handshake or an application error."""
        if self._upgraded:
            raise RuntimeError("the conversation ended with the upgrade: nothing to reject")
        if self._closing:
            raise RuntimeError("the conversation is closing: its last answer has been given")
        if response.status < 200:
            raise RuntimeError(f"reject() sends a final answer, not {response.status}")
        data = _encode(self._awaiting, response, keep_alive=False)
        self._close()
        return data

    # ------------------------------------------------------------------ inside

    def _new_parser(self) -> RequestParser:
        limits = self._limits
        return RequestParser(
            max_request_line=limits.max_request_line,
            max_header_size=limits.max_header_size,
            max_headers=limits.max_headers,
            max_body_size=limits.max_body_size,
        )

    def _feed(self, data: BytesLike) -> None:
        parser = self._parser
        try:
            requests = parser.feed(data)
        except HttpError as exc:
            self._error = exc
            raise
        self._pending.extend(requests)
        if parser.upgraded:
            self._held = bytearray(parser.tail)
            self._check_held()

    def _check_held(self) -> None:
        assert self._held is not None
        if len(self._held) > self._max_held:
            self._error = HttpError(
                400, f"more than {self._max_held} bytes arrived before the upgrade was answered"
            )
            raise self._error

    def _answerable(self, what: str) -> Request:
        if self._upgraded:
            raise RuntimeError(f"{what}(): the conversation ended with the upgrade")
        if self._error is not None:
            raise RuntimeError(f"{what}(): the conversation failed ({self._error}): reject()")
        if self._awaiting is None:
            raise RuntimeError(f"{what}(): no request is awaiting an answer")
        return self._awaiting

    def _close(self) -> None:
        self._closing = True
        self._awaiting = None
        self._pending.clear()
        self._held = None
        self._parser.release()

    def end(self) -> None:
        """The connection is gone: free what the conversation holds (see RequestParser.release)."""
        self._close()


def _encode(request: Request | None, response: Response, keep_alive: bool) -> bytes:
    """`response` on the wire as the answer to `request` (None: to no request in particular)."""
    # The Connection header must tell the client what happens next: HTTP/1.1 keeps the
    # connection open unless told "close", HTTP/1.0 closes it unless told "keep-alive"
    # (RFC 9112 9.3, 9.6, C.2.2). The application's own Connection header is kept.
    if not keep_alive:
        needed: str | None = "close"
    elif request is not None and request.version == "1.0":
        needed = "keep-alive"
    else:
        needed = None
    headers = response.headers
    # (encode() itself adds "Connection: close" when the response has no Connection header)
    if (needed is not None and needed not in headers.tokens("connection")
            and (needed == "keep-alive" or "connection" in headers)):
        headers = Headers(headers)
        headers.add("Connection", needed)
        response = Response(response.status, headers, response.body, response.reason,
                            response.version)
    data = response.encode(keep_alive=keep_alive)
    if request is not None and request.method == "HEAD" and response.body:
        # A HEAD answer has GET's headers (Content-Length included) but never a body.
        data = data[: len(data) - len(response.body)]
    return data
