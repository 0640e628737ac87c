"""One connection: a socket (optionally TLS) driven by the loop, in HTTP or WebSocket mode.

The data path, top to bottom: the loop reports the socket readable; `_on_readable` reads
into the thread's read buffer and hands the bytes to the current mode: the HTTP request
parser (server, before an upgrade), the handshake response parser (client, before the
101), or the frame parser (after the switch). For an upgraded connection over plain TCP
that read, the parse and the send are C (ConnectionCore in fastws._fastpath); the other
modes and TLS read here, in `_on_readable_py`. Parsed frames travel the stage chain to
the handler; frames the application sends travel it back to the encoder and into the
write queue. Writes made while a read is being handled are batched and leave in one
`sendmsg` when the read is done. The close handshake, its timeout and the once-only
`on_closed` report live here too.
"""

from __future__ import annotations

import collections
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._codec import (
    CloseCode,
    Frame,
    OpCode,
    ProtocolError,
    close_payload,
    encode_frame,
    encode_into,
    frame_header,
    parse_close,
)
from ._fastpath import (
    MODE_CLIENT_HANDSHAKE,
    MODE_CLOSED,
    MODE_HTTP,
    MODE_TLS_HANDSHAKE,
    MODE_WEBSOCKET,
    ConnectionCore,
    FusedReader,
    next_masking_key,
)
from .deflate import EXTENSION_NAME, Deflate, deflate_options, negotiate_server
from .handshake import (
    HandshakeError,
    accept,
    check_request,
    format_extensions,
    parse_extensions,
)
from .http import HttpError, Request, RequestParser, Response, ResponseParser
from .limits import Limits
from .loop import Loop, Timer
from .stages import AutoPong, Consolidate, Stage

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["Connection", "Limits"]

logger = logging.getLogger("fastws")

_READ_SIZE = 256 * 1024
# The largest scratch buffer a thread keeps between large client frames (see _send_masked).
_SCRATCH_KEEP = 4 * 1024 * 1024
_NO_CAP = 1 << 62
_IOV_MAX = 512
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


_per_thread = threading.local()


def _thread_scratch() -> bytearray:
    """The buffer this thread's client connections mask large frames into (see _send_masked)."""
    scratch: bytearray | None = getattr(_per_thread, "scratch", None)
    if scratch is None:
        scratch = _per_thread.scratch = bytearray()
    return scratch


def _thread_read_buffer() -> tuple[bytearray, memoryview]:
    """The read buffer every connection of this thread's loop shares.

    Everything read is consumed (parsed, or copied by the parser for a frame still
    incomplete) before the callback returns, so one buffer per thread is enough and an
    idle connection costs no buffer at all.
    """
    buffer = getattr(_per_thread, "read_buffer", None)
    if buffer is None:
        buffer = _per_thread.read_buffer = bytearray(_READ_SIZE)
        _per_thread.read_view = memoryview(buffer)
    return buffer, _per_thread.read_view

# Connection modes
_TLS_HANDSHAKE = MODE_TLS_HANDSHAKE
_HTTP = MODE_HTTP
_CLIENT_HANDSHAKE = MODE_CLIENT_HANDSHAKE
_WEBSOCKET = MODE_WEBSOCKET
_CLOSED = MODE_CLOSED


def _default_on_request(conn: Connection, request: Request) -> None:
    """No on_request: accept WebSocket upgrades with the same handler, 404 anything else."""
    if request.upgrade:
        conn.upgrade(accept(request))
    else:
        conn.respond(Response.text(404, "Not Found\n"))


class Connection(ConnectionCore):
    """A server or client connection. Users get it in handler callbacks; they never build one.

    The write side's state and hot methods (send, send_text, send_binary, is_open, the
    write queue and its batching) live in ConnectionCore, in C (fastws._fastpath).
    """

    def __init__(self, loop: Loop, sock: socket.socket, handler: Any, *, is_client: bool,
                 limits: Limits, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, server: Any = None) -> None:
        self.loop = loop
        self._handler = handler
        self.is_client = is_client
        self.limits = limits
        self.max_frame_size = limits.max_frame_size
        self.max_message_size = limits.max_message_size
        self.server = server
        self.request: Request | None = None       # the upgrade request (server) or ours (client)
        self.response: Response | None = None     # the 101 we sent (server) or got (client)
        self.subprotocol: str | None = None
        self.error: BaseException | None = None   # why a connection failed before or during use
        self.close_code: int | None = None
        self.close_reason = ""
        sock.setblocking(False)
        try:
            self.peername = sock.getpeername()
        except OSError:
            self.peername = None
        self._sock: socket.socket = sock
        self._fd = sock.fileno()
        self._tls = ssl_context is not None
        self._mode = _TLS_HANDSHAKE if self._tls else (_CLIENT_HANDSHAKE if is_client else _HTTP)
        self._read_buffer, self._read_view = _thread_read_buffer()
        self._reading = False
        self._reading_paused = False
        self._write_queue: collections.deque[bytes | memoryview] = collections.deque()
        self._write_size = 0
        self._writer_registered = False
        self._corked = False
        self._eager = False
        self._writing_paused = False
        self._shutdown_after_flush = False
        self._overflowed = False
        self._stages: list[Stage] = []
        self._parser: FusedReader | None = None
        self._fused = False           # default chain fused into the parser (see _fastpath)
        self._cache_write_limits()
        self._http_parser: RequestParser | None = None
        self._response_parser: ResponseParser | None = None
        self._pending_requests: collections.deque[Request] = collections.deque()
        self._awaiting: Request | None = None
        self._held: bytearray | None = None       # bytes after an upgrade request, until answered
        self._close_sent = False
        self._close_received = False
        self._input_closed = False
        self._closing_timer: Timer | None = None
        self._handshake_timer: Timer | None = None
        self._idle_timer: Timer | None = None
        self._closed_reported = False
        self._on_established: Callable[[], None] | None = None
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        if limits.handshake_timeout is not None:
            self._handshake_timer = self.call_later(limits.handshake_timeout,
                                                    self._on_handshake_timeout)

    # ------------------------------------------------------------------ public API

    @property
    def handler(self) -> Any:
        """The object whose on_* methods this connection calls; may be replaced."""
        return self._handler

    @handler.setter
    def handler(self, handler: Any) -> None:
        self._handler = handler
        if self._parser is not None:
            self._parser.handler_on_frame = getattr(handler, "on_frame", None)

    @property
    def closed(self) -> bool:
        return self._mode == _CLOSED

    @property
    def upgraded(self) -> bool:
        return self._parser is not None

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stage chain, from the wire (first) to the handler (last)."""
        return tuple(self._stages)

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted for sending that the kernel has not taken yet."""
        return self._write_size

    @property
    def socket(self) -> socket.socket:
        """The connection's socket, for options and addresses. Do not read, write or close
        it: the connection does its I/O on the descriptor directly; use close() or abort()."""
        return self._sock

    def respond(self, response: Response) -> None:
        """Answer the current HTTP request (server, before an upgrade)."""
        request = self._awaiting
        if request is None:
            raise RuntimeError("there is no HTTP request waiting for a response")
        if response.status == 101:
            raise ValueError("use conn.upgrade() to answer with 101 Switching Protocols")
        self._awaiting = None
        keep_alive = request.keep_alive and "close" not in response.headers.tokens("connection")
        encoded = response.encode(keep_alive=keep_alive)
        if request.method == "HEAD" and response.body:
            # A HEAD answer has GET's headers (Content-Length included) but never a body.
            encoded = encoded[:len(encoded) - len(response.body)]
        self._write(encoded)
        if not keep_alive:
            self._input_closed = True
            self._shutdown_when_flushed()
            return
        if request.upgrade:
            # The upgrade was declined: carry on as HTTP with what followed the request.
            self._http_parser = self._new_request_parser()
            held, self._held = self._held, None
            if held:
                self._http_received(memoryview(held))
        if not self._corked:
            self._dispatch_requests()
            self.flush()
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if (self.limits.idle_timeout is not None and self._idle_timer is None
                and self._mode == _HTTP and self._awaiting is None
                and not self._pending_requests):
            self._idle_timer = self.loop.call_later(self.limits.idle_timeout,
                                                    self._on_idle_timeout)

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self._mode == _HTTP and self._awaiting is None and not self._pending_requests:
            self._finish(CloseCode.ABNORMAL, "idle keep-alive connection")

    def upgrade(self, response: Response, handler: Any = None, *,
                stages: Sequence[Stage] | None = None, compression: Any = None,
                **limits: Any) -> bool:
        """Answer the current upgrade request with `response` (a 101) and switch to WebSocket.

        The response goes out and the connection changes mode in one step: frames the
        client sent right behind its request are parsed by the new mode, none is lost.
        `handler` replaces the connection's handler (default: keep it); `stages` replaces
        the default chain (Consolidate, AutoPong); `limits` override max_frame_size,
        max_message_size, close_timeout, ... for this connection. When the request is not
        a valid upgrade, answers 400/426 itself and returns False.

        permessage-deflate: when the request offers it and `compression` allows it (None,
        the default: the server's `serve(compression=...)` setting; else True, False, a
        DeflateOptions or a dict of its fields), the answer gets a Sec-WebSocket-Extensions
        header and the negotiated Deflate stage goes into the chain: in place of a Deflate
        found in `stages`, else just before Consolidate, else last. Without an agreement a
        Deflate in `stages` is dropped. A response that already carries
        Sec-WebSocket-Extensions is left alone: the application negotiated by itself.
        """
        request = self._awaiting
        if request is None or self.is_client:
            raise RuntimeError("there is no HTTP request waiting for a response")
        if response.status != 101:
            raise ValueError(f"an upgrade answers 101 Switching Protocols, not {response.status}")
        try:
            check_request(request)
        except HandshakeError as exc:
            self._reject(exc.response())
            return False
        origins = getattr(self.server, "origins", None)
        if origins is not None and request.headers.get("origin") not in origins:
            self._reject(Response.text(403, "Forbidden: this origin may not open a WebSocket\n"))
            return False
        self._awaiting = None
        if handler is not None:
            self.handler = handler
        if limits:
            self._apply_limits(limits)
        self.request = request
        self.response = response
        self.subprotocol = response.headers.get("sec-websocket-protocol")
        deflate = self._negotiate_deflate(request, response, compression)  # permessage-deflate
        self._write(response.encode())
        held, self._held = self._held, None
        self._start_websocket(stages, deflate)
        if held:
            self._frames_received(memoryview(held))
        if not self._corked:
            self.flush()
        return True

    def _negotiate_deflate(self, request: Request, response: Response,
                           compression: Any) -> Stage | None:
        """permessage-deflate (server): add the answer's header, return the stage or None."""
        if compression is None:
            options = getattr(self.server, "compression", None)
        else:
            options = deflate_options(compression, is_client=False)
        if options is None or response.headers.get("sec-websocket-extensions") is not None:
            return None
        try:
            offers = parse_extensions(request.headers.get_all("sec-websocket-extensions"))
        except ValueError:
            return None          # a malformed header: answer without extensions
        agreed = negotiate_server(offers, options)
        if agreed is None:
            return None
        params, stage = agreed
        response.headers.add("Sec-WebSocket-Extensions",
                             format_extensions([(EXTENSION_NAME, params)]))
        return stage

    def ping(self, data: bytes = b"") -> None:
        self.send(Frame(opcode=OpCode.PING, data=data))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake (WebSocket), or close the connection (HTTP).

        The peer's close frame is awaited for `close_timeout` seconds, then the TCP
        connection is dropped. `on_closed` reports this code and reason.
        """
        if self._mode == _CLOSED:
            return
        if self._mode != _WEBSOCKET:
            self._finish(CloseCode.ABNORMAL, "closed before the WebSocket handshake")
            return
        if self._close_sent:
            return
        payload = close_payload(code, reason)
        self._send_close(payload, code, reason)
        if self._close_received:
            self._closing_handshake_done()
        else:
            self._start_close_timer()

    def fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): send a close frame with `code`,
        ignore further input and drop TCP once the frame is out."""
        if self._mode == _CLOSED:
            return
        if self._mode != _WEBSOCKET:
            self.error = self.error or ProtocolError(code, reason)
            self._finish(CloseCode.ABNORMAL, reason)
            return
        logger.debug("fastws: failing %s: %s (%d)", self, reason, code)
        self._close_input()
        if not self._close_sent:
            self._send_close(close_payload(code, reason[:123]), code, reason)
        self._shutdown_when_flushed()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._finish(CloseCode.ABNORMAL, "aborted")

    def pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            if self._mode != _CLOSED and self._reading:
                self.loop.remove_reader(self._sock)
                self._reading = False

    def resume_reading(self) -> None:
        if self._reading_paused:
            self._reading_paused = False
            # During the TLS handshake the handshake owns the socket's reader; reading
            # starts when it is done (_established).
            if self._mode not in (_CLOSED, _TLS_HANDSHAKE):
                self._start_reading()
                sock = self._sock
                if self._tls and isinstance(sock, ssl.SSLSocket) and sock.pending():
                    self.loop.call_soon(self._on_readable)

    # --- the stage chain

    def add_stage(self, stage: Stage, index: int = 0) -> None:
        """Insert a stage; index 0 (default) is nearest the wire, len(stages) the handler."""
        if stage.conn is not None:
            raise ValueError(f"{stage!r} is already in a chain")
        self._stages.insert(index if index >= 0 else len(self._stages) + 1 + index, stage)
        stage.conn = self
        self._link_stages()
        stage.on_attached()

    def remove_stage(self, stage: Stage | type[Stage]) -> Stage:
        """Remove a stage (or the first stage of a type); returns it."""
        found = self.find_stage(stage) if isinstance(stage, type) else stage
        if found is None or found not in self._stages:
            raise ValueError(f"{stage!r} is not in this connection's chain")
        self._stages.remove(found)
        self._link_stages()
        found._detach()
        return found

    def replace_stage(self, old: Stage | type[Stage], new: Stage) -> Stage:
        found = self.find_stage(old) if isinstance(old, type) else old
        if found is None or found not in self._stages:
            raise ValueError(f"{old!r} is not in this connection's chain")
        index = self._stages.index(found)
        self.remove_stage(found)
        self.add_stage(new, index)
        return found

    def find_stage(self, kind: type[Stage] | Stage) -> Stage | None:
        for stage in self._stages:
            if stage is kind or (isinstance(kind, type) and isinstance(stage, kind)):
                return stage
        return None

    # --- timers guarded like every other connection callback

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Timer:
        return self.loop.call_later(delay, self._guarded, callback, args)

    def _guarded(self, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        if self._mode == _CLOSED:
            return
        try:
            callback(*args)
        except Exception as exc:
            self._internal_error(exc)
        self.flush()

    # ------------------------------------------------------------------ reading

    def start(self, on_established: Callable[[], None] | None = None) -> None:
        """Begin I/O (called by serve/connect once the socket is connected)."""
        self._on_established = on_established
        if self._mode == _CLOSED:
            return
        if self._tls:
            assert self._ssl_context is not None
            try:
                self.peername = self._sock.getpeername()
                self._sock = self._ssl_context.wrap_socket(
                    self._sock, server_side=not self.is_client,
                    server_hostname=self._server_hostname, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                self.error = exc
                self._finish(CloseCode.TLS_HANDSHAKE, f"TLS setup failed: {exc}")
                return
            self._do_tls_handshake()
        else:
            self._established()

    def _established(self) -> None:
        if self._mode == _TLS_HANDSHAKE:
            self._mode = _CLIENT_HANDSHAKE if self.is_client else _HTTP
        if self._mode == _HTTP:
            self._http_parser = self._new_request_parser()
        self._start_reading()
        if self._on_established is not None:
            callback, self._on_established = self._on_established, None
            self._run_guarded(callback)

    def _start_reading(self) -> None:
        if not self._reading and not self._reading_paused and self._mode != _CLOSED:
            self.loop.add_reader(self._sock, self._on_readable)
            self._reading = True

    def _do_tls_handshake(self) -> None:
        sock = self._sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self.loop.add_reader(sock, self._do_tls_handshake)
            self.loop.remove_writer(sock)
            return
        except ssl.SSLWantWriteError:
            self.loop.add_writer(sock, self._do_tls_handshake)
            return
        except (OSError, ssl.SSLError) as exc:
            self.error = exc
            self._finish(CloseCode.TLS_HANDSHAKE, f"TLS handshake failed: {exc}")
            return
        self.loop.remove_writer(sock)
        self.loop.remove_reader(sock)
        self._established()

    def _on_readable_py(self) -> None:
        """Reading outside the C path (ConnectionCore._on_readable): HTTP, handshakes, TLS."""
        sock = self._sock
        while True:
            try:
                n = sock.recv_into(self._read_buffer)
            except _TRY_AGAIN:
                return
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                n = 0
            except OSError as exc:
                self._read_failed(exc)
                return
            if n == 0:
                self._on_eof()
                return
            self._cork()
            try:
                self._data_received(self._read_view[:n])
            except Exception as exc:
                self._internal_error(exc)
            finally:
                self._corked = False
            if self._mode == _CLOSED:
                return
            if self._awaiting is None and self._pending_requests:
                self._dispatch_requests()
            self.flush()
            # TLS may hold decrypted bytes that the socket will not signal again.
            if (not (self._tls and isinstance(sock, ssl.SSLSocket) and sock.pending())
                    or self._reading_paused or self._mode == _CLOSED):
                return

    def _read_failed(self, exc: OSError) -> None:
        self.error = exc
        self._finish(CloseCode.ABNORMAL, f"connection lost: {exc}")

    def _data_received(self, data: memoryview) -> None:
        if self._input_closed:
            return
        mode = self._mode
        if mode == _WEBSOCKET:
            self._frames_received(data)
        elif mode == _HTTP:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._held is not None:
                self._held += data
                self._check_held()
            else:
                self._http_received(data)
        elif mode == _CLIENT_HANDSHAKE:
            self._response_received(data)

    def _frames_received(self, data: memoryview) -> None:
        parser = self._parser
        assert parser is not None
        parser.feed(data)

    def _on_eof(self) -> None:
        if self._mode == _CLIENT_HANDSHAKE and self._response_parser is not None:
            try:
                self._on_response(self._response_parser.feed_eof())
            except HttpError as exc:
                self.error = exc
            if self._mode == _CLOSED:
                return
        if self._mode == _WEBSOCKET and not (self._close_sent or self._close_received):
            self._finish(CloseCode.ABNORMAL,
                         "the peer closed the TCP connection without a close frame")
        else:
            self._finish(self.close_code or CloseCode.ABNORMAL, self.close_reason)

    # ------------------------------------------------------------------ HTTP (server)

    def _new_request_parser(self) -> RequestParser:
        limits = self.limits
        return RequestParser(max_request_line=limits.max_request_line,
                             max_header_size=limits.max_header_size,
                             max_headers=limits.max_headers,
                             max_body_size=limits.max_body_size)

    def _http_received(self, data: memoryview) -> None:
        parser = self._http_parser
        assert parser is not None
        try:
            requests = parser.feed(data)
        except HttpError as exc:
            self._reject(exc.response())
            return
        self._pending_requests.extend(requests)
        if parser.upgraded:
            self._held = bytearray(parser.tail)
            self._check_held()
        self._dispatch_requests()

    def _check_held(self) -> None:
        # Bytes a client sends after its upgrade request before we answer it are kept;
        # bound them so a client cannot park unlimited data here.
        if self._held is not None and len(self._held) > (self.max_frame_size or 1 << 20) + 14:
            self._input_closed = True
            self._held = None
            self._shutdown_when_flushed()

    def _dispatch_requests(self) -> None:
        while self._pending_requests and self._awaiting is None and self._mode == _HTTP \
                and not self._input_closed:
            request = self._pending_requests.popleft()
            self._awaiting = request
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            on_request = getattr(self.handler, "on_request", None)
            try:
                if on_request is None:
                    _default_on_request(self, request)
                else:
                    on_request(self, request)
            except HandshakeError as exc:
                if self._awaiting is request:
                    self._reject(exc.response())
            except Exception:
                logger.exception("fastws: exception in on_request for %s %s", request.method,
                                 request.target)
                if self._awaiting is request:
                    self._reject(Response.text(500, "Internal Server Error\n"))

    def _reject(self, response: Response) -> None:
        """Answer with an error response and close once it is out."""
        self._awaiting = None
        self._pending_requests.clear()
        self._held = None
        self._input_closed = True
        self._write(response.encode(keep_alive=False))
        self._shutdown_when_flushed()

    # ------------------------------------------------------------------ client handshake

    def _begin_client_handshake(self, request: Request, key: str,
                                check: Callable[[Response], Stage | None]) -> None:
        self.request = request
        self._client_check = check
        self._response_parser = ResponseParser(max_header_size=self.limits.max_header_size,
                                               max_headers=self.limits.max_headers)
        self._write(request.encode())
        self.flush()

    def _response_received(self, data: memoryview) -> None:
        parser = self._response_parser
        assert parser is not None
        try:
            response = parser.feed(data)
        except HttpError as exc:
            self.error = exc
            self._finish(CloseCode.ABNORMAL, f"bad handshake response: {exc}")
            return
        if response is not None:
            self._on_response(response)
            if self._mode == _WEBSOCKET and parser.tail:
                self._frames_received(memoryview(parser.tail))

    def _on_response(self, response: Response) -> None:
        self.response = response
        try:
            deflate = self._client_check(response)     # a Deflate stage when negotiated
        except HandshakeError as exc:
            self.error = exc
            # 1010 when the server's permessage-deflate answer is unacceptable
            self._finish(getattr(exc, "close_code", CloseCode.ABNORMAL), str(exc))
            return
        self.subprotocol = response.headers.get("sec-websocket-protocol")
        self._start_websocket(None, deflate)

    # ------------------------------------------------------------------ WebSocket mode

    def _apply_limits(self, overrides: dict[str, Any]) -> None:
        self.limits = self.limits.updated(overrides)
        self.max_frame_size = self.limits.max_frame_size
        self.max_message_size = self.limits.max_message_size
        self._cache_write_limits()

    def _cache_write_limits(self) -> None:
        # Read on every write: plain attributes, and no None test for "no cap".
        cap = self.limits.max_write_buffer
        self._write_cap = cap if cap is not None else _NO_CAP
        self._high_water = self.limits.write_high_water

    def _start_websocket(self, stages: Sequence[Stage] | None,
                         deflate: Stage | None = None) -> None:
        self._mode = _WEBSOCKET
        self._http_parser = None
        self._response_parser = None
        self._pending_requests.clear()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._parser = FusedReader(self, expect_mask=not self.is_client,
                                   max_frame_size=self.max_frame_size,
                                   max_message_size=self.max_message_size)
        self._parser.handler_on_frame = getattr(self._handler, "on_frame", None)
        chain = list(stages) if stages is not None else [AutoPong(), Consolidate()]
        # permessage-deflate: RSV1 allowed; the negotiated Deflate replaces one given in
        # `stages`, else goes before Consolidate, else last. Not negotiated: no Deflate.
        index = next((i for i, stage in enumerate(chain) if isinstance(stage, Deflate)), -1)
        if index < 0:
            index = next((i for i, stage in enumerate(chain) if isinstance(stage, Consolidate)),
                         len(chain))
        chain = [stage for stage in chain if not isinstance(stage, Deflate)]
        if deflate is not None:
            self._parser.allowed_rsv = 4
            chain.insert(index, deflate)
        for stage in chain:
            self.add_stage(stage, len(self._stages))
        self._notify("on_upgraded")

    def _link_stages(self) -> None:
        stages = self._stages
        for i, stage in enumerate(stages):
            stage._pass_in = stages[i + 1].on_frame_in if i + 1 < len(stages) else self._deliver
            stage._pass_out = stages[i - 1].on_frame_out if i > 0 else self._write_frame
        # The default chain, exactly, runs fused in the parser; anything else in Python.
        fused = (len(stages) == 2 and type(stages[0]) is AutoPong
                 and type(stages[1]) is Consolidate and stages[1].max_message_size is None)
        parser = self._parser
        if parser is not None and parser.fused != fused:
            if not fused:
                partial = parser.take_partial_message()
                consolidate = self.find_stage(Consolidate)
                if partial is not None and isinstance(consolidate, Consolidate):
                    consolidate._opcode, consolidate._rsv, consolidate._parts, \
                        consolidate._size = partial
            parser.fused = fused
        self._fused = fused

    def _frame_parsed(self, frame: Frame) -> None:
        if self._input_closed:
            return
        if self._stages:
            self._stages[0].on_frame_in(frame)
        else:
            self._deliver(frame)

    def _frame_error(self, code: int, reason: str) -> None:
        self.fail(code, reason)

    def _answer_ping(self, payload: bytes) -> None:
        """AutoPong, fused: the pong carries the ping's payload."""
        if not self._input_closed and not self._close_sent:
            self._write_frame(Frame(opcode=OpCode.PONG, data=payload))

    def _close_input(self) -> None:
        """Stop reading frames: the connection is failing or closing."""
        self._input_closed = True
        if self._parser is not None:
            self._parser.stop()

    def _deliver(self, frame: Frame) -> None:
        """The end of the inbound chain: close frames are ours, the rest is the handler's."""
        if self._input_closed:
            return
        if frame.opcode == OpCode.CLOSE:
            self._close_frame_received(frame)
            return
        on_frame = getattr(self.handler, "on_frame", None)
        if on_frame is not None:
            on_frame(self, frame)

    def _close_frame_received(self, frame: Frame) -> None:
        try:
            code, reason = parse_close(frame.data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)
            return
        self._close_received = True
        self._close_input()
        if not self._close_sent:
            self.close_code, self.close_reason = code, reason
            # Echo the code (RFC 6455 5.5.1); a close without a code gets one without a code.
            echo = close_payload(code if code != CloseCode.NO_STATUS else None)
            self._send_close(echo, code, reason)
        self._closing_handshake_done()

    def _send_close(self, payload: bytes, code: int, reason: str) -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._close_sent = True
        self._write_frame(Frame(opcode=OpCode.CLOSE, data=payload))

    def _closing_handshake_done(self) -> None:
        if self.is_client:
            # RFC 6455 7.1.1: the server closes TCP first; wait for it (bounded).
            self._start_close_timer()
        else:
            self._shutdown_when_flushed()

    def _start_close_timer(self) -> None:
        if self._closing_timer is None:
            self._closing_timer = self.loop.call_later(self.limits.close_timeout,
                                                       self._on_close_timeout)

    def _on_close_timeout(self) -> None:
        self._finish(self.close_code or CloseCode.ABNORMAL, self.close_reason)

    def _on_handshake_timeout(self) -> None:
        if self._mode in (_TLS_HANDSHAKE, _HTTP, _CLIENT_HANDSHAKE) and self._awaiting is None:
            self.error = TimeoutError("opening handshake timed out")
            self._finish(CloseCode.ABNORMAL, "opening handshake timed out")

    # ------------------------------------------------------------------ writing

    def _write_frame(self, frame: Frame) -> None:
        """The end of the outbound chain: encode (masking on a client) and queue."""
        if self._mode != _CLOSED:
            self._write_data(frame.opcode, frame.data, frame.fin, frame.rsv)

    def _write_large(self, opcode: int, data: Buffer, fin: bool, rsv: int) -> None:
        """A frame of at least SEPARATE_PAYLOAD_SIZE bytes (ConnectionCore sends the rest)."""
        if self.is_client:
            if self._write_queue:
                self._write(encode_frame(opcode, data, fin, rsv, next_masking_key()))
            else:
                self._send_masked(opcode, data, fin, rsv)
        elif not self._tls:
            # Large payloads are not copied: header and payload leave in one sendmsg().
            # (A memoryview marks the payload as the rest of a frame: see _overflow.)
            # The header counts bytes: len() of a buffer of wider items counts items.
            payload = data if type(data) is bytes else bytes(data)
            self._write(frame_header(opcode, len(payload), fin, rsv), corked=True)
            self._write(memoryview(payload))
        else:
            self._write(encode_frame(opcode, data, fin, rsv))

    def _send_masked(self, opcode: int, data: Buffer, fin: bool, rsv: int) -> None:
        """Mask a large frame into the thread's scratch buffer and send it from there.

        Only with nothing queued (the frame goes out in order). A new megabyte-sized
        buffer per message costs page faults, not just a copy (glibc hands large blocks
        back to the kernel); reusing one halves a client's CPU per 1 MiB message. What the
        kernel does not take now is copied out and queued as the rest of a partly sent
        frame.
        """
        scratch = _thread_scratch()
        size = encode_into(scratch, opcode, data, fin, rsv, next_masking_key(), 0)
        with memoryview(scratch) as view:
            frame = view[:size]
            try:
                sent = self._sock.send(frame)
            except _TRY_AGAIN:
                sent = 0
            except OSError as exc:
                sent = -1
                self.error = exc
            rest = frame[sent:].tobytes() if 0 <= sent < size else None
            frame.release()
        if size > _SCRATCH_KEEP:
            _per_thread.scratch = bytearray()       # an exceptional size: not kept
        if sent < 0:
            self._finish(CloseCode.ABNORMAL, f"connection lost: {self.error}")
        elif rest is not None:
            self._write(memoryview(rest))

    def _overflow(self) -> None:
        """The peer does not read: drop what it has not started to receive, fail with 1008.

        Checked after each send attempt, against what the kernel would not take.
        A frame already partly sent stays (cutting it would corrupt the stream): the head of
        the queue is a memoryview exactly then (the rest of a partial send, or a payload
        whose header went out). Every later frame is dropped; the close frame follows.
        """
        self._overflowed = True
        logger.warning("fastws: %s: more than %d bytes unsent; closing (1008)", self,
                       self.limits.max_write_buffer)
        queue = self._write_queue
        keep = [queue[0]] if queue and isinstance(queue[0], memoryview) else []
        queue.clear()
        queue.extend(keep)
        self._write_size = sum(len(chunk) for chunk in keep)
        if self._mode == _WEBSOCKET:
            self.fail(CloseCode.POLICY_VIOLATION, "write buffer overflow: the peer is not reading")
        else:
            self._finish(CloseCode.ABNORMAL, "write buffer overflow")

    def _send_queued(self) -> None:
        queue = self._write_queue
        sock = self._sock
        while queue:
            try:
                if self._tls:
                    # SSLSocket has no sendmsg: join the small pieces into one record.
                    if len(queue) > 1:
                        joined = b"".join(queue)
                        queue.clear()
                        queue.append(joined)
                    sent = sock.send(queue[0])
                elif len(queue) == 1:
                    sent = sock.send(queue[0])
                else:
                    sent = sock.sendmsg(list(queue)[:_IOV_MAX] if len(queue) > _IOV_MAX else queue)
            except _TRY_AGAIN:
                break
            except OSError as exc:
                self.error = exc
                self._finish(CloseCode.ABNORMAL, f"connection lost: {exc}")
                return
            self._write_size -= sent
            while sent:
                head = queue[0]
                if sent >= len(head):
                    sent -= len(head)
                    queue.popleft()
                else:
                    queue[0] = memoryview(head)[sent:]
                    sent = 0
        self._after_send()

    def _after_send(self) -> None:
        """After a send: wait for the socket to drain, or stop waiting; resume writing."""
        queue = self._write_queue
        sock = self._sock
        if queue:
            cap = self.limits.max_write_buffer
            if cap is not None and self._write_size > cap and not self._overflowed:
                self._overflow()
                return
            if not self._writer_registered:
                self._writer_registered = True
                self.loop.add_writer(sock, self._on_writable)
        else:
            if self._writer_registered:
                self._writer_registered = False
                self.loop.remove_writer(sock)
            if self._shutdown_after_flush:
                self._shutdown_output()
        if self._writing_paused and self._write_size <= self.limits.write_low_water:
            self._writing_paused = False
            self._notify("on_resume_writing")

    def _on_writable(self) -> None:
        self._send_queued()

    def _shutdown_when_flushed(self) -> None:
        self._shutdown_after_flush = True
        # Bounded: a peer that does not read must not keep us waiting for the flush.
        self._start_close_timer()
        if not self._write_queue and not self._corked:
            self._shutdown_output()

    def _shutdown_output(self) -> None:
        """Our side is done: half-close, then wait (bounded) for the peer to close too.

        Closing outright with unread input would make the kernel send a reset that can
        destroy our last frames before the peer reads them.
        """
        if self._mode == _CLOSED:
            return
        self._shutdown_after_flush = False
        self._close_input()
        if self._tls:
            self._finish(self.close_code or CloseCode.ABNORMAL, self.close_reason)
            return
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._finish(self.close_code or CloseCode.ABNORMAL, self.close_reason)
            return
        self._start_reading()
        self._start_close_timer()

    # ------------------------------------------------------------------ the end

    def _finish(self, code: int, reason: str) -> None:
        """Release everything and report on_closed once (for upgraded connections)."""
        if self._mode == _CLOSED:
            return
        was_websocket = self._parser is not None or self.is_client
        self._mode = _CLOSED
        for timer in (self._closing_timer, self._handshake_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._closing_timer = self._handshake_timer = self._idle_timer = None
        loop = self.loop
        if not loop.is_closed:
            loop.remove_reader(self._sock)
            loop.remove_writer(self._sock)
        self._fd = -1
        try:
            self._sock.close()
        except OSError:
            pass
        self._write_queue.clear()
        self._write_size = 0
        self._held = None
        stages, self._stages = self._stages, []
        for stage in stages:
            try:
                stage._detach()
            except Exception:
                logger.exception("fastws: exception in %r.on_detached", stage)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self.server is not None:
            self.server._connection_closed(self)
        if was_websocket and not self._closed_reported:
            self._closed_reported = True
            on_closed = getattr(self.handler, "on_closed", None)
            if on_closed is not None:
                try:
                    on_closed(self, self.close_code, self.close_reason)
                except Exception:
                    logger.exception("fastws: exception in on_closed")

    def _internal_error(self, exc: BaseException) -> None:
        logger.error("fastws: exception in a handler of %s", self, exc_info=exc)
        self.error = exc
        if self._mode == _WEBSOCKET:
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
        elif self._mode == _HTTP and self._awaiting is not None:
            self._reject(Response.text(500, "Internal Server Error\n"))
        else:
            self._finish(CloseCode.ABNORMAL, f"internal error: {exc!r}")

    def _notify(self, name: str, *args: object) -> None:
        """Call handler.<name>(conn, *args) if the handler has it."""
        method = getattr(self.handler, name, None)
        if method is not None:
            method(self, *args)

    def _run_guarded(self, callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception as exc:
            self._internal_error(exc)

    def _state_name(self) -> str:
        if self._mode == _WEBSOCKET and self._close_sent:
            return "closing"
        return self._mode

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        return f"<fastws.Connection {side} {self._state_name()} peer={self.peername}>"

