"""`serve()` on a running asyncio loop: HTTP/1.1 and WebSocket connections for a handler
object (the callback form) or for `async def handler(ws)` (the awaitable form).

Every accepted connection is a fastws Connection, so it runs exactly as on the fastws
Loop: the same handler callbacks, stages, limits, plain-HTTP answers and
permessage-deflate. Its I/O is fastws' own or asyncio's. transport="socket" (the callback
form's default where the loop has add_reader): the Loop's Transport reads and writes the
socket and does TLS, the listening sockets are accepted from by fastws.acceptor, as on the
fastws Loop. transport="asyncio" (the awaitable form, proactor loops): create_server, an
AsyncioTransport per connection, TLS by asyncio. The awaitable form accepts every valid
upgrade request (plain HTTP requests get 404) and runs the coroutine once per WebSocket,
in its own task, with a `WebSocket`.

Topics are the Loop server's (fastws.topics.TopicServer: one `Topics`, one backplane, on
either loop): `server.topics`, `server.publish(topic, message)`, `conn.subscribe(topic)`
(or `ws.subscribe(topic)` in the awaitable form), the slow-consumer policy, and
`serve(pubsub=...)`, whose Redis connections run on this asyncio loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Callable, Collection, Coroutine, Generator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from .._asyncio_websocket import ConnectionClosed, WebSocket
from ..acceptor import Acceptor, bind
from ..connection import Connection
from ..deflate import CompressionSetting, DeflateOptions, deflate_options
from ..handler import check_handler
from ..limits import Limits
from ..topics import SlowConsumerSetting, TopicServer
from ..topics import slow_consumers as slow_consumers_policy
from ._connections import is_coroutine_handler, new_connection

if TYPE_CHECKING:
    from ..backplane import PubSubSetting

__all__ = ["Server", "Serving", "serve"]

logger = logging.getLogger("fastws")

CoroutineHandler = Callable[[WebSocket], Coroutine[Any, Any, object]]
TransportSetting = Literal["auto", "socket", "asyncio"]


def _choose_transport(setting: str, loop: asyncio.AbstractEventLoop,
                      awaitable: bool) -> str:
    """"socket" where fastws can read and write the sockets itself (the callback form on a
    loop with add_reader: asyncio's selector loop, uvloop), else "asyncio"."""
    if setting not in ("auto", "socket", "asyncio"):
        raise ValueError(f'transport must be "auto", "socket" or "asyncio", not {setting!r}')
    if setting == "asyncio":
        return setting
    watches_sockets = (isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
                       or type(loop).__module__.partition(".")[0] == "uvloop")
    if setting == "socket":
        if awaitable:
            raise ValueError('transport="socket" is for handler objects; the awaitable form '
                             'runs on asyncio\'s transports')
        if not watches_sockets:
            raise ValueError(f'transport="socket" needs a loop with add_reader for sockets '
                             f'(asyncio\'s selector loop, uvloop), not {type(loop).__name__}')
        return setting
    return "socket" if watches_sockets and not awaitable else "asyncio"


class _RunCoroutine:
    """The connection handler of the awaitable form: at the upgrade, the connection's
    handler becomes a WebSocket and the application's coroutine starts with it."""

    def __init__(self, server: Server, handler: CoroutineHandler, max_queue: int | None) -> None:
        self.server = server
        self.handler = handler
        self.max_queue = max_queue

    def on_upgraded(self, conn: Connection) -> None:
        ws = WebSocket(conn, max_queue=self.max_queue)
        conn.handler = ws
        task = conn.loop.create_task(self._run(ws))
        self.server._tasks.add(task)
        task.add_done_callback(self.server._tasks.discard)

    async def _run(self, ws: WebSocket) -> None:
        conn = ws.connection
        try:
            await self.handler(ws)
        except ConnectionClosed:
            pass
        except Exception as exc:
            logger.error("exception in the WebSocket handler of %s", conn, exc_info=exc)
            conn.error = exc
            conn.fail(1011, "internal error")
        # Returning closes the connection normally (unless it is closed or closing); the
        # WebSocket resumes reading if its queue had paused it, to see the peer's answer.
        if conn.is_open:
            ws.begin_close(1000, "")


class Server(TopicServer):
    """A listening asyncio server and the connections it accepted.

    `close()` stops accepting, sends 1001 to every open WebSocket, drops connections
    that are still in HTTP and closes the backplane; `wait_closed()` waits until every
    connection (and, in the awaitable form, every handler coroutine) has finished.
    `async with` does both on exit. Topics: `topics`, `publish`, `pubsub`,
    `slow_consumers` (fastws.topics.TopicServer).
    """

    loop: asyncio.AbstractEventLoop

    def __init__(self, handler: Any, limits: Limits, compression: DeflateOptions | None,
                 origins: Collection[str | None] | None, max_queue: int | None,
                 slow_consumers: SlowConsumerSetting = "close",
                 transport: TransportSetting = "auto") -> None:
        self.loop = asyncio.get_running_loop()
        self.transport = _choose_transport(transport, self.loop, is_coroutine_handler(handler))
        self.limits = limits
        self.compression = compression     # read by Connection.upgrade()
        self.origins = origins             # likewise
        self.all_connections: set[Connection] = set()   # every accepted connection
        self.connections: set[Connection] = set()       # the open WebSockets among them
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle: asyncio.Future[None] | None = None
        self._server: asyncio.Server | None = None          # transport="asyncio"
        self._acceptors: list[Acceptor] = []                 # transport="socket"
        self._ssl: ssl_module.SSLContext | None = None
        self._stopped: asyncio.Future[None] | None = None    # serve_forever's
        self._closing = False
        self.handler: Any = (_RunCoroutine(self, handler, max_queue)
                             if is_coroutine_handler(handler) else handler)
        check_handler(self.handler)
        # The backplane's events (on_backplane_lost, ...) go to the application's object:
        # in the awaitable form, an object whose `async def __call__(ws)` is the handler.
        self._application = handler
        self._init_topics(compression, slow_consumers)

    async def _listen(self, host: str | None, port: int, ssl: ssl_module.SSLContext | None,
                      backlog: int, reuse_port: bool, sock: socket.socket | None) -> None:
        if self.transport == "socket":
            if sock is not None:
                sock.setblocking(False)
                sock.listen(backlog)
                sockets = [sock]
            else:
                infos = await self.loop.getaddrinfo(host or None, port,
                                                    type=socket.SOCK_STREAM,
                                                    flags=socket.AI_PASSIVE)
                sockets = bind(infos[:1] if host else infos, reuse_port, backlog)
            self._ssl = ssl
            self._acceptors = [Acceptor(self.loop, listener, self._accepted)
                               for listener in sockets]
            return
        timeout = self.limits.handshake_timeout
        if sock is not None:
            self._server = await self.loop.create_server(
                self._new_protocol, sock=sock, ssl=ssl, backlog=backlog,
                ssl_handshake_timeout=timeout if ssl is not None else None)
        else:
            self._server = await self.loop.create_server(
                self._new_protocol, host, port, ssl=ssl, backlog=backlog,
                reuse_port=reuse_port or None,
                ssl_handshake_timeout=timeout if ssl is not None else None)
        for listener in self._server.sockets:
            self._nodelay(listener)

    @staticmethod
    def _nodelay(sock: Any) -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass

    def _accepted(self, sock: socket.socket, peername: Any) -> bool:
        """transport="socket": a fastws Connection reads and writes the accepted socket
        itself, watched with the loop's add_reader."""
        conn = Connection(self.loop, sock, self.handler, is_client=False, limits=self.limits,
                          ssl_context=self._ssl, server=self, peername=peername)
        self.all_connections.add(conn)
        conn.start()
        return True

    def _new_protocol(self) -> asyncio.BaseProtocol:
        conn = new_connection(self.loop, self.handler, is_client=False, limits=self.limits,
                              server=self)

        def established() -> None:
            # Counted from asyncio's connection_made on: a failed TLS handshake never gets
            # there (its connection ends at its handshake timeout).
            self.all_connections.add(conn)

        conn.start(established)
        transport: asyncio.BaseProtocol = conn._transport
        return transport

    def _connection_upgraded(self, conn: Connection) -> None:
        self.connections.add(conn)

    def _connection_closed(self, conn: Connection) -> None:
        self.all_connections.discard(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            self.topics.forget(conn)
        self._check_idle()

    def _backplane_listener(self) -> Any:
        return self._application

    def _dropped_listener(self, conn: Connection) -> tuple[Any, Any]:
        # The awaitable form: the application's object hears it, about the WebSocket.
        if isinstance(conn.handler, WebSocket):
            return self._application, conn.handler
        return conn.handler, conn

    def _check_idle(self) -> None:
        idle = self._idle
        if idle is not None and not idle.done() and not self.all_connections and not self._tasks:
            idle.set_result(None)

    # ------------------------------------------------------------------ public API

    @property
    def sockets(self) -> tuple[Any, ...]:
        if self._server is not None:
            return tuple(self._server.sockets)
        return tuple(acceptor.sock for acceptor in self._acceptors if acceptor.sock is not None)

    @property
    def port(self) -> int:
        """The port of the first listening socket (useful with port 0)."""
        return int(self.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return str(self.sockets[0].getsockname()[0])

    @property
    def is_serving(self) -> bool:
        if self._server is not None:
            return self._server.is_serving()
        return bool(self._acceptors)

    def close(self) -> None:
        """Stop accepting; close every WebSocket with 1001 and every HTTP connection now."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for acceptor in self._acceptors:
            acceptor.close()
        self._acceptors = []
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        if self.pubsub is not None:
            self.pubsub.close()
        for conn in list(self.all_connections):
            if conn.is_open:
                conn.close(1001, "server shutting down")
                conn.resume_reading()     # the peer's close frame must be read
            elif not conn.upgraded:
                conn.abort()

    async def wait_closed(self) -> None:
        """Wait until the listener and every connection (and handler coroutine) ended."""
        if self._server is not None:
            await self._server.wait_closed()
        while self.all_connections or self._tasks:
            self._idle = self.loop.create_future()
            # The connections' own close timeouts bound this wait.
            tasks = list(self._tasks)
            if tasks:
                await asyncio.wait([self._idle, *tasks], return_when=asyncio.FIRST_COMPLETED)
            else:
                await self._idle
            self._idle = None

    async def serve_forever(self) -> None:
        """Wait until the server is closed (returns then), or until this coroutine is
        cancelled (the server is closed and its connections finished, then it raises)."""
        if self._closing:
            raise RuntimeError(f"{self!r} is closed")
        if self._stopped is None:
            self._stopped = self.loop.create_future()
        try:
            await asyncio.shield(self._stopped)
        except asyncio.CancelledError:
            self.close()
            await self.wait_closed()
            raise

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
        await self.wait_closed()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.sockets else "closed"
        return f"<fastws.asyncio.Server {where} connections={len(self.connections)}>"


class Serving:
    """What serve() returns: `await` it for the Server, or `async with` it (closed on exit)."""

    def __init__(self, create: Callable[[], Coroutine[Any, Any, Server]]) -> None:
        self._create = create
        self._server: Server | None = None

    def __await__(self) -> Generator[Any, None, Server]:
        return self._create().__await__()

    async def __aenter__(self) -> Server:
        self._server = await self._create()
        return self._server

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        assert self._server is not None
        await self._server.__aexit__(exc_type, exc, tb)


def serve(handler: Any, host: str | None = "127.0.0.1", port: int = 9001, *,
          ssl: ssl_module.SSLContext | None = None, sock: socket.socket | None = None,
          backlog: int = 1024, reuse_port: bool = False, compression: CompressionSetting = True,
          origins: Collection[str | None] | None = None, max_queue: int | None = 16,
          slow_consumers: SlowConsumerSetting = "close", pubsub: PubSubSetting | None = None,
          transport: TransportSetting = "auto", **limits: Any) -> Serving:
    """Serve HTTP/1.1 and WebSockets on the running asyncio loop (asyncio's or uvloop).

    `handler` is either a handler object (on_request, on_upgraded, on_frame, on_rtt,
    on_closed, on_pause_writing, on_resume_writing: all optional, called as on the fastws
    Loop) or a coroutine function `async def handler(ws)`, run once per WebSocket with a
    `WebSocket` (the awaitable form; returning closes the connection with 1000, raising
    with 1011). `ssl`: a server-side SSLContext (wss://). `compression`, `origins` and the
    `limits` (fields of fastws.Limits) mean what they mean for fastws.serve(). `max_queue`:
    the awaitable form's receive queue, in messages (None: unbounded). `sock`: listen on
    this socket instead of host:port. Port 0 picks a free port (`server.port`).

    Topics (fastws.topics) work as with fastws.serve(): `slow_consumers` ("close", the
    default, "drop", or a SlowConsumers) decides what happens to a subscriber that does
    not keep up; `pubsub` (a "redis://..." or "rediss://..." URL, or a
    fastws.RedisPubSub) links the topics of every server through Redis, its connections
    running on this loop. The backplane's events (`on_backplane_lost(server, reason)`,
    `on_backplane_restored(server, seconds)`, `on_backplane_dropped(server, count)`) and
    `on_messages_dropped(conn, count)` are methods of `handler`; in the awaitable form,
    of an object with `async def __call__(self, ws)`, and on_messages_dropped is given
    the WebSocket.

    `transport`: how connections do their I/O. "socket": fastws reads and writes each
    socket itself (TLS included), watched with the loop's add_reader, as on the fastws
    Loop; "asyncio": through asyncio's transports (create_server). "auto" (the default)
    picks "socket" for a handler object on asyncio's selector loop or uvloop, "asyncio"
    for the awaitable form and on other loops (the proactor loop).

    Use `server = await serve(...)` or `async with serve(...) as server:`.
    """
    settings = Limits().updated(limits)
    options = deflate_options(compression, is_client=False)
    slow_consumers_policy(slow_consumers)           # checked now, as the other settings
    backplane = None
    if pubsub is not None:
        from ..backplane import pubsub_settings
        backplane = pubsub_settings(pubsub)

    async def create() -> Server:
        server = Server(handler, settings, options, origins, max_queue, slow_consumers,
                        transport)
        await server._listen(host, port, ssl, backlog, reuse_port, sock)
        if backplane is not None:
            backplane.start(server)
        return server

    return Serving(create)
