"""`Connection`: the object handlers get, from the accepted or connected socket to `on_closed`.

A connection goes through phases: the TLS handshake (when there is one), then HTTP (a server:
requests answered or upgraded, fastws.http1) or the opening handshake (a client, fastws.client),
then WebSocket, then closed. Each phase's work lives elsewhere and this class only moves the
connection from one to the next:

* bytes move through its `Transport` (fastws._transport), which reports back to it as its
  listener (`connection_made`, `data_received`, `eof_received`, `connection_lost`, ...);
* every WebSocket rule is the `Protocol`'s (fastws._protocol), which writes to the transport
  and hands frames to this connection's C half (fastws._connection.ConnectionBase), which
  calls the handler's `on_frame` or the stage chain (fastws.stages);
* the handler's callbacks, the timers of the opening handshake and of idle keep-alive
  connections, and the once-only `on_closed` report are here.
"""

from __future__ import annotations

import enum
import logging
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._codec import CloseCode, Frame, OpCode
from ._connection import ConnectionBase
from ._protocol import Protocol
from ._transport import Transport
from .deflate import Deflate, deflate_options, negotiate_response
from .eventloop import TimerHandle
from .handler import Handler, check_handler
from .handshake import HandshakeError, check_request
from .http import HttpError, Request, Response
from .http1 import ServerConversation
from .limits import Limits
from .stages import Stage, StageChain
from .topics import Subscriber

if TYPE_CHECKING:
    from .client import ClientHandshake

__all__ = ["Connection", "Limits"]

logger = logging.getLogger("fastws")

_DEFAULT_HANDLER = Handler()


class Phase(enum.Enum):
    TLS_HANDSHAKE = "TLS handshake"
    HTTP = "HTTP"
    OPENING_HANDSHAKE = "opening handshake"
    WEBSOCKET = "WebSocket"
    CLOSED = "closed"


class Connection(ConnectionBase, Subscriber):
    """A server or client connection. Users get it in handler callbacks; they never build one.

    Sending (`send`, `send_text`, `send_binary`, `is_open`) is in the C base class; topics
    (`subscribe`, `unsubscribe`, `publish`, `topics`, a server's) in fastws.topics.Subscriber.
    """

    def __init__(self, loop: Any, sock: socket.socket | int | None, handler: Any, *,
                 is_client: bool, limits: Limits, ssl_context: ssl.SSLContext | None = None,
                 server_hostname: str | None = None, server: Any = None,
                 transport_factory: Callable[[Connection], Any] | None = None,
                 peername: Any = None) -> None:
        # `loop` is a fastws Loop, or an asyncio loop when fastws.asyncio made the connection:
        # the connection itself only uses time() and call_later() (fastws.eventloop).
        self.loop: Any = loop
        self.is_client = is_client
        self.limits = limits
        self.server = server
        self.request: Request | None = None       # the upgrade request (server) or ours (client)
        self.response: Response | None = None     # the 101 we sent (server) or got (client)
        self.subprotocol: str | None = None
        self.error: BaseException | None = None   # why a connection failed before or during use
        self.close_code: int | None = None        # what on_closed reports
        self.close_reason = ""
        if server is None:
            check_handler(handler)    # serve() checked its handler once, for every connection
        self._use_handler(handler)
        self._phase = Phase.TLS_HANDSHAKE if ssl_context is not None else (
            Phase.OPENING_HANDSHAKE if is_client else Phase.HTTP)
        # The transport moves the bytes and reports back to this connection (see
        # fastws._transport's module doc for the interface). By default a socket on the fastws
        # Loop; `transport_factory(conn)` supplies another one with the same interface (an
        # asyncio transport's adapter: fastws._asyncio_transport), already connected or not.
        if transport_factory is None:
            assert sock is not None
            self._transport: Any = Transport(
                loop, sock, self, is_client=is_client, ssl_context=ssl_context,
                server_hostname=server_hostname, close_timeout=limits.close_timeout,
                peername=peername)
        else:
            self._transport = transport_factory(self)
            self._transport.close_timeout = limits.close_timeout
        self._transport.set_write_limits(limits.write_high_water, limits.write_low_water,
                                         limits.max_write_buffer)
        self._http: ServerConversation | None = None
        self._dispatching = False
        self._client_handshake: ClientHandshake | None = None
        self._chain: StageChain | None = None
        self._ending: tuple[int, str] | None = None   # the code and reason of a close we chose
        self._eof = False
        self._on_established: Callable[[], None] | None = None
        self._handshake_timer: TimerHandle | None = None   # the opening handshake's deadline
        self._idle_timer: TimerHandle | None = None        # an idle HTTP keep-alive connection's
        if limits.handshake_timeout is not None:
            # The loop's timer, not self.call_later's guarded one: the callback checks the
            # state itself, and closing cancels it.
            self._handshake_timer = loop.call_later(limits.handshake_timeout,
                                                    self._on_handshake_timeout)

    # ------------------------------------------------------------------ public API

    @property
    def handler(self) -> Any:
        """The object whose on_* methods this connection calls; may be replaced."""
        return self._handler

    @handler.setter
    def handler(self, handler: Any) -> None:
        check_handler(handler)
        self._use_handler(handler)

    def _use_handler(self, handler: Any) -> None:
        self._handler = handler
        self._on_frame = getattr(handler, "on_frame", None)

    @property
    def closed(self) -> bool:
        return self._phase is Phase.CLOSED

    @property
    def upgraded(self) -> bool:
        return self._protocol is not None

    @property
    def state(self) -> Phase:
        """The connection's phase (the WebSocket state is `conn.protocol.state`)."""
        return self._phase

    @property
    def protocol(self) -> Protocol | None:
        """The WebSocket protocol (None before the upgrade)."""
        return self._protocol

    @property
    def max_frame_size(self) -> int | None:
        return self.limits.max_frame_size

    @property
    def max_message_size(self) -> int | None:
        return self.limits.max_message_size

    @property
    def stages(self) -> tuple[Stage, ...]:
        """The stage chain, from the wire (first) to the handler (last)."""
        return tuple(self._stages)

    @property
    def write_buffer_size(self) -> int:
        """Bytes accepted for sending that the kernel has not taken yet."""
        return int(self._transport.write_buffer_size)

    @property
    def bytes_sent(self) -> int:
        """Bytes the kernel took from this connection so far (TLS: before encryption)."""
        return int(self._transport.bytes_sent)

    @property
    def bytes_received(self) -> int:
        """Bytes read from this connection so far (TLS: after decryption)."""
        return int(self._transport.bytes_received)

    @property
    def socket(self) -> socket.socket | None:
        """The connection's socket, for options and addresses. Do not read, write or close
        it: the transport does its I/O on the descriptor directly; use close() or abort().
        None once the connection is closed if it was never asked for before (a server makes
        the object only when asked: its transport works on the bare descriptor)."""
        sock: socket.socket | None = self._transport.sock
        return sock

    @property
    def peername(self) -> Any:
        return self._transport.peername

    def respond(self, response: Response) -> None:
        """Answer the current HTTP request (server, before an upgrade)."""
        http = self._http
        if http is None or http.awaiting is None:
            raise RuntimeError("there is no HTTP request waiting for a response")
        self._transport.write_bytes(http.respond(response))
        if http.closing:
            self._transport.end_output()
            return
        if not self._dispatching:
            self._dispatch_requests()
            self._transport.flush()
        self._arm_idle_timer()

    def upgrade(self, response: Response, handler: Any = None, *,
                stages: Sequence[Stage] | None = None, compression: Any = None,
                **limits: Any) -> bool:
        """Answer the current upgrade request with `response` (a 101) and switch to WebSocket.

        The response goes out and the connection changes phase in one step: frames the
        client sent right behind its request are parsed by the new phase, none is lost.
        `handler` replaces the connection's handler (default: keep it); `stages` replaces
        the default chain `[AutoPong(), Consolidate()]` (AutoPong and Consolidate switch on
        the protocol's answering of pings and reassembly of fragments; other stages form the
        chain); `limits` override max_frame_size, max_message_size, close_timeout, ... for
        this connection. When the request is not a valid upgrade, or its Origin is not
        allowed, answers 400/403/426 itself and returns False.

        permessage-deflate: when the request offers it and `compression` allows it (None,
        the default: the server's `serve(compression=...)` setting; else True, False, a
        DeflateOptions or a dict of its fields), the answer gets a Sec-WebSocket-Extensions
        header and the protocol compresses. A response that already carries
        Sec-WebSocket-Extensions is left alone: the application negotiated by itself.
        """
        http = self._http
        request = http.awaiting if http is not None else None
        if http is None or request is None:
            raise RuntimeError("there is no HTTP request waiting for a response")
        if response.status != 101:
            raise ValueError(f"an upgrade answers 101 Switching Protocols, not {response.status}")
        try:
            check_request(request)
        except HandshakeError as exc:
            self._reject(exc.response(), exc.message)
            return False
        origins = getattr(self.server, "origins", None)
        if origins is not None and request.headers.get("origin") not in origins:
            self._reject(Response.text(403, "Forbidden: this origin may not open a WebSocket\n"),
                         f"origin {request.headers.get('origin')!r} not allowed")
            return False
        if handler is not None:
            self.handler = handler
        if limits:
            self._apply_limits(limits)
        self.request = request
        self.response = response
        self.subprotocol = response.headers.get("sec-websocket-protocol")
        options = (getattr(self.server, "compression", None) if compression is None
                   else deflate_options(compression, is_client=False))
        extension = negotiate_response(request, response, options)
        answer, rest = http.accept_upgrade(response)
        self._http = None
        self._transport.write_bytes(answer)
        self._start_websocket(stages, extension, rest)
        return True

    def ping(self, data: bytes = b"") -> None:
        self.send(Frame(opcode=OpCode.PING, data=data))

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake (WebSocket), or close the connection (HTTP).

        The peer's close frame is awaited for `close_timeout` seconds, then the TCP
        connection is dropped. `on_closed` reports this code and reason.
        """
        if self._phase is Phase.CLOSED:
            return
        protocol = self._protocol
        if protocol is None:
            self._close_transport(CloseCode.ABNORMAL, "closed before the WebSocket handshake")
            return
        protocol.close(code, reason)
        self._transport.close_after(self.limits.close_timeout)
        self._transport.flush()

    def fail(self, code: int, reason: str) -> None:
        """Fail the WebSocket connection (RFC 6455 7.1.7): send a close frame with `code`,
        ignore further input and drop TCP once the frame is out."""
        if self._phase is Phase.CLOSED:
            return
        if self._protocol is None:
            self._close_transport(CloseCode.ABNORMAL, reason)
            return
        self._protocol.fail(code, reason)
        self._transport.flush()

    def abort(self) -> None:
        """Drop the TCP connection at once, without a closing handshake."""
        self._close_transport(CloseCode.ABNORMAL, "aborted")

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def flush(self) -> None:
        """Send what is queued now (writes made during a read are flushed after it)."""
        self._transport.flush()

    # --- the stage chain

    def add_stage(self, stage: Stage, index: int = 0) -> None:
        """Insert a stage; index 0 (default) is nearest the wire, len(stages) the handler."""
        self._stage_chain().add(stage, index)

    def remove_stage(self, stage: Stage | type[Stage]) -> Stage:
        """Remove a stage (or the first stage of a type); returns it."""
        return self._stage_chain().remove(stage)

    def replace_stage(self, old: Stage | type[Stage], new: Stage) -> Stage:
        return self._stage_chain().replace(old, new)

    def find_stage(self, kind: type | object) -> Any:
        """The first stage (or switch, or the Deflate extension) of a type, or None."""
        return self._chain.find(kind) if self._chain is not None else None

    def _stage_chain(self) -> StageChain:
        if self._chain is None:
            raise RuntimeError("the stage chain exists once the connection is upgraded")
        return self._chain

    # --- timers guarded like every other connection callback

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Any:
        """Run `callback(*args)` after `delay` seconds unless the connection closed by then;
        an exception in it fails the connection (1011) as in any handler callback. Returns
        the loop's handle (a fastws.Timer, or an asyncio.TimerHandle on asyncio): `cancel()`
        stops it."""
        return self.loop.call_later(delay, self._guarded, callback, args)

    def _guarded(self, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        if self._phase is Phase.CLOSED:
            return
        try:
            callback(*args)
        except Exception as exc:
            self.internal_error(exc)
        self._transport.flush()

    # ------------------------------------------------------------------ starting

    def start(self, on_established: Callable[[], None] | None = None) -> None:
        """Begin I/O (called by serve/connect once the socket is connected)."""
        self._on_established = on_established
        self._transport.start()

    # ------------------------------------------------------------------ transport events

    def connection_made(self) -> None:
        """The transport is ready (after TLS): HTTP (server) or the opening handshake."""
        if self.is_client:
            self._phase = Phase.OPENING_HANDSHAKE
        else:
            self._phase = Phase.HTTP
            self._http = ServerConversation(self.limits)
        if self._on_established is not None:
            callback, self._on_established = self._on_established, None
            try:
                callback()
            except Exception as exc:
                self.internal_error(exc)

    def data_received(self, data: memoryview) -> None:
        """Bytes before the upgrade (the transport hands the rest to the protocol)."""
        if self._phase is Phase.HTTP:
            self._http_received(data)
        elif self._phase is Phase.OPENING_HANDSHAKE and self._client_handshake is not None:
            self._response_received(data)

    def eof_received(self) -> None:
        self._eof = True
        handshake = self._client_handshake
        if self._phase is Phase.OPENING_HANDSHAKE and handshake is not None:
            try:
                response = handshake.receive_eof()
            except (HttpError, HandshakeError) as exc:
                self.error = exc
                self._ending = (CloseCode.ABNORMAL, str(exc))
                return
            self._on_response(response)

    def connection_lost(self, exc: BaseException | None) -> None:
        """The transport closed: release everything and report `on_closed` once."""
        if self._phase is Phase.CLOSED:
            return
        phase, self._phase = self._phase, Phase.CLOSED
        self._cancel_timers()
        if exc is not None and self.error is None:
            self.error = exc
        code, reason = self._final_close(phase, exc)
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
        if self._http is not None:
            self._http.end()
            self._http = None
        if self._client_handshake is not None:
            self._client_handshake.end()
            self._client_handshake = None
        protocol = self._protocol
        if protocol is not None:
            protocol.receiver = None      # no reference cycle is left behind
        chain, self._chain = self._chain, None
        if chain is not None:
            chain.detach_all()
        if self.server is not None:
            self.server._connection_closed(self)
        if protocol is not None or self.is_client:
            self._report_closed(protocol)

    def _final_close(self, phase: Phase, exc: BaseException | None) -> tuple[int, str]:
        """The code and reason on_closed reports, given how the transport ended."""
        protocol = self._protocol
        if self._ending is not None:
            return self._ending
        if phase is Phase.TLS_HANDSHAKE:
            return CloseCode.TLS_HANDSHAKE, f"TLS handshake failed: {exc}"
        code = protocol.close_code if protocol is not None else None
        if protocol is not None and code is not None and code != CloseCode.ABNORMAL:
            return code, protocol.close_reason
        if exc is not None:
            return CloseCode.ABNORMAL, f"connection lost: {exc}"
        if protocol is not None:
            if self._eof:
                return (CloseCode.ABNORMAL,
                        "the peer closed the TCP connection without a close frame")
            return CloseCode.ABNORMAL, "closed without a closing handshake"
        return CloseCode.ABNORMAL, f"closed during the {phase.value}"

    def _report_closed(self, protocol: Protocol | None) -> None:
        code, reason = self.close_code, self.close_reason
        on_closed = getattr(self._handler, "on_closed", None)
        failure = protocol.failure if protocol is not None else None
        if failure is not None:
            logger.info("%s: failed the connection with %d: %s", self._peer(),
                        failure.code, failure.reason)
        elif protocol is None:
            # A client that never connected: say so even when nobody listens for it.
            level = logging.INFO if on_closed is not None else logging.WARNING
            logger.log(level, "%s: %s", self._peer(), reason)
        if on_closed is not None:
            try:
                on_closed(self, code, reason)
            except Exception:
                logger.exception("exception in on_closed of %s", self)

    def pause_writing(self) -> None:
        self._notify("on_pause_writing")

    def resume_writing(self) -> None:
        self._notify("on_resume_writing")

    def write_overflow(self) -> None:
        """The peer does not read (more than max_write_buffer unsent): fail with 1008."""
        logger.warning("%s: more than %d bytes unsent; closing (1008)", self._peer(),
                       self.limits.max_write_buffer)
        if self._protocol is not None:
            self.fail(CloseCode.POLICY_VIOLATION, "write buffer overflow: the peer is not reading")
        else:
            self._close_transport(CloseCode.ABNORMAL, "write buffer overflow")

    def internal_error(self, exc: BaseException) -> None:
        """A handler (or stage) callback raised: fail with 1011, or answer 500 (HTTP)."""
        logger.error("exception in a handler of %s", self, exc_info=exc)
        self.error = exc
        if self._protocol is not None:
            self.fail(CloseCode.INTERNAL_ERROR, "internal error")
        elif self._http is not None and self._http.awaiting is not None:
            self._reject(Response.text(500, "Internal Server Error\n"), repr(exc))
        else:
            self._close_transport(CloseCode.ABNORMAL, f"internal error: {exc!r}")

    # ------------------------------------------------------------------ HTTP (server)

    def _http_received(self, data: memoryview) -> None:
        http = self._http
        assert http is not None
        if self._idle_timer is not None:
            self._idle_timer.cancel()   # a request is coming
            self._idle_timer = None
        try:
            http.receive_data(data)
        except HttpError as exc:
            self._reject(exc.response(), exc.detail or str(exc))
            return
        self._dispatch_requests()

    def _dispatch_requests(self) -> None:
        self._dispatching = True
        try:
            while self._http is not None and self._phase is Phase.HTTP:
                request = self._http.next_request()
                if request is None:
                    break
                self._dispatch(request)
        finally:
            self._dispatching = False
        self._arm_idle_timer()

    def _dispatch(self, request: Request) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()    # a request came in time
            self._handshake_timer = None
        on_request = getattr(self._handler, "on_request", None) or _DEFAULT_HANDLER.on_request
        try:
            on_request(self, request)
        except HandshakeError as exc:
            if self._awaiting_is(request):
                self._reject(exc.response(), exc.message)
        except Exception:
            logger.exception("exception in on_request for %s %s", request.method, request.target)
            if self._awaiting_is(request):
                self._reject(Response.text(500, "Internal Server Error\n"),
                             "exception in on_request")
            elif self._protocol is not None:
                self.fail(CloseCode.INTERNAL_ERROR, "internal error")

    def _awaiting_is(self, request: Request) -> bool:
        return self._http is not None and self._http.awaiting is request

    def _reject(self, response: Response, detail: str) -> None:
        """Answer with an error response and close once it is out."""
        http = self._http
        assert http is not None
        logger.info("%s: answered %d %s: %s", self._peer(), response.status, response.reason,
                    detail)
        self._transport.write_bytes(http.reject(response))
        self._transport.end_output()

    def _arm_idle_timer(self) -> None:
        http = self._http
        if (http is not None and http.idle and not http.closing and self._idle_timer is None
                and self._handshake_timer is None and self.limits.idle_timeout is not None):
            self._idle_timer = self.call_later(self.limits.idle_timeout, self._on_idle_timeout)

    def _on_idle_timeout(self) -> None:
        self._idle_timer = None
        if self._http is not None and self._http.idle:
            self._close_transport(CloseCode.ABNORMAL, "idle keep-alive connection")

    def _on_handshake_timeout(self) -> None:
        self._handshake_timer = None
        if self._protocol is None and (self._http is None or self._http.awaiting is None):
            self.error = TimeoutError("opening handshake timed out")
            logger.info("%s: opening handshake timed out", self._peer())
            self._close_transport(CloseCode.ABNORMAL, "opening handshake timed out")

    # ------------------------------------------------------------------ client handshake

    def _begin_client_handshake(self, handshake: ClientHandshake) -> None:
        self.request = handshake.request
        self._client_handshake = handshake
        self._transport.write_bytes(handshake.request_bytes())

    def _response_received(self, data: memoryview) -> None:
        handshake = self._client_handshake
        assert handshake is not None
        try:
            response = handshake.receive_data(data)
        except HttpError as exc:
            self.error = exc
            self._close_transport(CloseCode.ABNORMAL, str(exc))
            return
        if response is not None:
            self._on_response(response)

    def _on_response(self, response: Response) -> None:
        handshake = self._client_handshake
        assert handshake is not None
        self.response = response
        try:
            self.subprotocol, extension = handshake.check(response)
        except HandshakeError as exc:
            self.error = exc
            # 1010 when the server's permessage-deflate answer is unacceptable
            self._close_transport(getattr(exc, "close_code", CloseCode.ABNORMAL), str(exc))
            return
        self._client_handshake = None
        handshake.end()
        self._start_websocket(None, extension, handshake.tail)

    # ------------------------------------------------------------------ WebSocket

    def _apply_limits(self, overrides: dict[str, Any]) -> None:
        limits = self.limits = self.limits.updated(overrides)
        self._transport.close_timeout = limits.close_timeout
        self._transport.set_write_limits(limits.write_high_water, limits.write_low_water,
                                          limits.max_write_buffer)

    def _start_websocket(self, stages: Sequence[Stage] | None, extension: Deflate | None,
                         rest: bytes) -> None:
        self._cancel_timers()
        self._phase = Phase.WEBSOCKET
        protocol = Protocol(self.is_client, max_frame_size=self.limits.max_frame_size,
                            max_message_size=self.limits.max_message_size, extension=extension)
        protocol.sink = self._transport
        protocol.receiver = self
        self._protocol = protocol
        self._chain = StageChain(self, protocol, extension)
        self._chain.setup(stages)
        self._transport.protocol = protocol
        if self.server is not None:
            self.server._connection_upgraded(self)      # into server.connections
        try:
            self._notify("on_upgraded")
            if rest:
                protocol.receive_data(rest)
        except Exception as exc:
            self.internal_error(exc)
        self._transport.flush()

    # ------------------------------------------------------------------ the end

    def _cancel_timers(self) -> None:
        for timer in (self._handshake_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._handshake_timer = self._idle_timer = None

    def _close_transport(self, code: int, reason: str) -> None:
        """Close the TCP connection now; on_closed reports `code` and `reason`."""
        if self._phase is Phase.CLOSED:
            return
        if self._ending is None:
            self._ending = (code, reason)
        self._transport.close(None)

    def _notify(self, name: str, *args: object) -> None:
        """Call handler.<name>(conn, *args) if the handler has it."""
        method = getattr(self._handler, name, None)
        if method is not None:
            method(self, *args)

    def _peer(self) -> str:
        peer = self._transport.peername
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer)

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        state = self._phase.value
        if self._protocol is not None and self._phase is Phase.WEBSOCKET:
            state = f"WebSocket {self._protocol.state_name}"
        return f"<fastws.Connection {side} {state} peer={self._peer()}>"
