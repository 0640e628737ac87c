"""fastws as uvicorn's WebSocket implementation.

    uvicorn app:app --ws fastws.uvicorn:WebSocketProtocol


uvicorn parses the HTTP request; when it is a WebSocket upgrade, it builds the `--ws`
class with `(config, server_state, app_state)`, calls `connection_made(transport)` and
`data_received(request_bytes)` (the request again, as bytes), and gives the protocol the
transport (`set_protocol`). From there `WebSocketProtocol` is a fastws Connection on that
asyncio transport (fastws.asyncio), with the application speaking ASGI:

* the request is checked as a WebSocket upgrade (an invalid one is answered 400 or 426
  before the application runs), then the ASGI app runs in a task with the scope;
* `websocket.accept` (subprotocol, headers) upgrades: 101, permessage-deflate when the
  client offers it and `--ws-per-message-deflate` is on, the protocol's limits from
  `--ws-max-size` (message and frame size), keepalive pings from `--ws-ping-interval` and
  `--ws-ping-timeout` (fastws.AutoPing), a receive queue of `--ws-max-queue` messages;
* `websocket.close` before accepting answers 403; `websocket.http.response.start/body`
  answer with the application's own response (the denial response extension);
* `websocket.receive` events come from a fastws.asyncio.WebSocket (a deque and one waiter),
  `websocket.send` and `websocket.close` go to the same WebSocket;
* `websocket.disconnect` carries the close code and reason (1006 without a closing
  handshake); `send` after the disconnect raises uvicorn's ClientDisconnected;
* `shutdown()` (uvicorn stopping) closes open WebSockets with 1012 and answers 500 to a
  request the application has not answered; an application that returns without closing
  closes with 1000, one that raises with 1011 (500 before accepting).

Every WebSocket rule is fastws' protocol's; this module only translates ASGI events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, get_local_addr, get_remote_addr, is_ssl
from uvicorn.server import ServerState

from ._asyncio_websocket import ConnectionClosed, WebSocket
from .asyncio._connections import AsyncioProtocol
from .connection import Connection
from .deflate import DeflateOptions
from .handshake import accept, check_request
from .http import Request, Response
from .limits import Limits
from .stages import AutoPing, AutoPong, Consolidate, Stage

__all__ = ["WebSocketProtocol"]

logger = logging.getLogger("uvicorn.error")


class WebSocketProtocol(AsyncioProtocol):
    """uvicorn's `--ws` protocol class on fastws (see the module doc)."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.app = config.loaded_app
        self.app_state = app_state
        self.root_path = config.root_path
        self.connections: set[Any] = server_state.connections
        self.tasks: set[Any] = server_state.tasks
        self.default_headers = server_state.default_headers
        self.compression = DeflateOptions() if config.ws_per_message_deflate else None
        self.origins = None                      # read by Connection.upgrade()
        self.scope: dict[str, Any] | None = None
        self.ws: WebSocket | None = None
        self.request: Request | None = None
        self._connect_sent = False
        self._answered = False                   # accepted, refused or responded
        self._response: tuple[int, list[tuple[str, str]], list[bytes]] | None = None
        self._disconnected: asyncio.Future[None] | None = None
        loop = _loop or asyncio.get_event_loop()
        limits = Limits(max_message_size=config.ws_max_size, max_frame_size=config.ws_max_size)
        self.limits = limits

        def as_transport(conn: Connection) -> WebSocketProtocol:
            AsyncioProtocol.__init__(self, loop, conn, is_client=False,
                                     close_timeout=limits.close_timeout)
            return self

        self.conn = Connection(loop, None, self, is_client=False, limits=limits, server=self,
                               transport_factory=as_transport)
        self.conn.start()

    # ------------------------------------------------------------------ uvicorn's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.connections.add(self)
        super().connection_made(transport)

    def shutdown(self) -> None:
        """uvicorn is stopping: 1012 to an open WebSocket, 500 to an unanswered request."""
        conn = self.conn
        if conn.closed:
            return
        if self.ws is not None and conn.is_open:
            self.ws.begin_close(1012, "server restarting")
        elif not self._answered and self._awaiting():
            self._respond(Response.text(500, "Internal Server Error\n"))
        elif not conn.upgraded:
            conn.abort()

    # ------------------------------------------------------------------ the connection's

    def on_request(self, conn: Connection, request: Request) -> None:
        check_request(request)              # HandshakeError: answered 400/426 by conn
        self.request = request
        transport = self.transport
        raw_path, _, query = request.target.partition("?")
        subprotocols = [token.strip() for value in request.headers.get_all(
            "sec-websocket-protocol") for token in value.split(",") if token.strip()]
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.config.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": "wss" if is_ssl(transport) else "ws",
            "server": get_local_addr(transport),
            "client": get_remote_addr(transport),
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": self.root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            "headers": [(name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in request.headers.items()],
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        task = conn.loop.create_task(self._run_asgi())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        # Before the upgrade (a refused or dropped request); after it, the WebSocket is the
        # connection's handler and reports the close itself.
        self._wake_disconnected()

    def _connection_upgraded(self, conn: Connection) -> None:
        """Called by the connection when it upgraded: uvicorn already counts it (its
        `server_state.connections` holds this protocol from connection_made on)."""

    def _connection_closed(self, conn: Connection) -> None:
        """Called by the connection when it closed, as it tells its server."""
        self.connections.discard(self)
        self._wake_disconnected()

    def _wake_disconnected(self) -> None:
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def _awaiting(self) -> bool:
        http = self.conn._http
        return http is not None and http.awaiting is not None

    # ------------------------------------------------------------------ ASGI

    async def _run_asgi(self) -> None:
        assert self.scope is not None
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException as exc:
            logger.exception("Exception in ASGI application\n")
            self.conn.error = exc
            self._fail()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            return
        else:
            if result is not None:
                logger.error("ASGI callable should return None, but returned '%s'.", result)
        if not self._answered:
            logger.error("ASGI callable returned without completing handshake.")
            self._fail()
        elif self.ws is not None and self.conn.is_open:
            self.ws.begin_close(1000, "")

    def _fail(self) -> None:
        if not self._answered and self._awaiting():
            self._respond(Response.text(500, "Internal Server Error\n"))
        elif self.conn.is_open:
            self.conn.fail(1011, "internal error")

    async def receive(self) -> dict[str, Any]:
        if not self._connect_sent:
            self._connect_sent = True
            return {"type": "websocket.connect"}
        ws = self.ws
        if ws is None:
            # Not accepted (yet): the next event is the disconnect.
            if not self.conn.closed:
                if self._disconnected is None:
                    self._disconnected = self.conn.loop.create_future()
                await self._disconnected
                if self.ws is None:
                    return {"type": "websocket.disconnect", "code": 1006}
                ws = self.ws
            else:
                return {"type": "websocket.disconnect", "code": 1006}
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            return {"type": "websocket.disconnect", "code": int(exc.code), "reason": exc.reason}
        if type(message) is str:
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: Any) -> None:
        kind = message["type"]
        ws = self.ws
        if ws is not None:
            if kind == "websocket.send":
                data = message.get("bytes")
                if data is None:
                    data = message.get("text")
                    if data is None:
                        raise RuntimeError("websocket.send needs 'text' or 'bytes'")
                try:
                    await ws.send(data)
                except ConnectionClosed:
                    raise ClientDisconnected() from None
            elif kind == "websocket.close":
                if not ws.closed:
                    ws.begin_close(message.get("code") or 1000, message.get("reason") or "")
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or "
                                   f"'websocket.close', but got '{kind}'.")
            return
        if self.conn.closed:
            raise ClientDisconnected()
        if self._response is not None:
            self._response_body(kind, message)
        elif self._answered:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending "
                               "'websocket.close'.")
        elif kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.close":
            self._answered = True
            self._log(403)
            self._respond(Response(403, [("Content-Length", "0"), ("Connection", "close")]))
        elif kind == "websocket.http.response.start":
            status = message["status"]
            if not 100 <= status < 600:
                raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
            headers = [(name.decode("latin-1"), value.decode("latin-1"))
                       for name, value in message.get("headers", [])]
            self._answered = True
            self._response = (status, headers, [])
        else:
            raise RuntimeError("Expected ASGI message 'websocket.accept', 'websocket.close' or "
                               f"'websocket.http.response.start' but got '{kind}'.")

    def _accept(self, message: Any) -> None:
        request = self.request
        assert request is not None
        subprotocol = message.get("subprotocol")
        headers = [(name.decode("latin-1"), value.decode("latin-1"))
                   for name, value in [*self.default_headers, *message.get("headers", [])]]
        response = accept(request, subprotocols=[subprotocol] if subprotocol else (),
                          headers=headers)
        config = self.config
        stages: list[Stage] = [AutoPong(), Consolidate()]
        if config.ws_ping_interval:
            stages.insert(0, AutoPing(config.ws_ping_interval, timeout=config.ws_ping_timeout))
        self._answered = True
        self._log("[accepted]")
        conn = self.conn
        ws = WebSocket(conn, max_queue=config.ws_max_queue or None)
        upgraded = conn.upgrade(response, ws, stages=stages)
        if upgraded:
            self.ws = ws
        self._wake_disconnected()

    def _response_body(self, kind: str, message: Any) -> None:
        assert self._response is not None
        if kind != "websocket.http.response.body":
            raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body' but got "
                               f"'{kind}'.")
        status, headers, body = self._response
        body.append(bytes(message.get("body", b"")))
        if message.get("more_body", False):
            return
        self._log(status)
        response = Response(status, headers, b"".join(body))
        response.headers.set("Connection", "close")
        if "content-length" not in response.headers:
            response.headers.set("Content-Length", str(len(response.body)))
        self._respond(response)

    def _respond(self, response: Response) -> None:
        self._answered = True
        if self._awaiting():
            self.conn.respond(response)

    def _log(self, outcome: int | str) -> None:
        scope = self.scope or {}
        client = scope.get("client")
        where = f"{client[0]}:{client[1]}" if client else ""
        path = scope.get("path", "")
        query = scope.get("query_string", b"")
        if query:
            path += "?" + query.decode("ascii")
        logger.info('%s - "WebSocket %s" %s', where, path, outcome)
