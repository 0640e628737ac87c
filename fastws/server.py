"""serve(): a listening socket on the loop that turns accepted sockets into Connections.

Every accepted connection starts as an HTTP/1.1 server connection (after its TLS
handshake, when `ssl` is given); the handler decides per request whether to answer it
or upgrade it to a WebSocket. `server.connections` holds the WebSocket connections (from
the upgrade until they close: what a broadcast iterates); `server.all_connections` every
accepted one, HTTP included. `server.topics` (fastws.topics) keeps who subscribes to
what; `serve(pubsub=...)` links it to the other workers and machines (fastws.backplane).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from .acceptor import Acceptor, listen
from .connection import Connection
from .deflate import CompressionSetting, DeflateOptions, deflate_options
from .handler import check_handler
from .limits import Limits
from .loop import Loop, default_loop
from .topics import SlowConsumerSetting, TopicServer

if TYPE_CHECKING:
    from .backplane import PubSubSetting

__all__ = ["Server", "serve"]

logger = logging.getLogger("fastws")


class Server(TopicServer):
    """A listening socket and the connections it accepted. Close with `close()`.

    Its topics (`topics`, `publish`, `pubsub`, `slow_consumers`) are
    fastws.topics.TopicServer's.
    """

    loop: Loop

    def __init__(self, loop: Loop, sock: socket.socket, handler: Any,
                 ssl_context: ssl_module.SSLContext | None, limits: Limits,
                 compression: DeflateOptions | None = None,
                 origins: Collection[str | None] | None = None,
                 max_connections: int | None = None,
                 slow_consumers: SlowConsumerSetting = "close") -> None:
        self.loop = loop
        self.origins = origins             # allowed Origin values for upgrades; None: any
        self.max_connections = max_connections
        self.handler = handler
        self.ssl_context = ssl_context
        self.limits = limits
        self.compression = compression     # permessage-deflate settings; None: off
        self.connections: set[Connection] = set()      # WebSocket: upgraded, not closed
        self.all_connections: set[Connection] = set()  # every accepted one, HTTP too
        self._init_topics(compression, slow_consumers)  # topics, pubsub (fastws.topics)
        self.worker = 0                    # 0: the parent (or only) process; see serve(workers=)
        self.worker_pids: list[int] = []   # in the parent: the worker processes it forked
        self._worker_pipe: tuple[int, int] | None = None  # closed by the parent: workers stop
        address = sock.getsockname()
        self.host: str = address[0]
        self.port: int = address[1]
        self._acceptor: Acceptor | None = Acceptor(loop, sock, self._accepted,
                                                   self._below_limit, bare_fds=True)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        acceptor = self._acceptor
        return (acceptor.sock,) if acceptor is not None and acceptor.sock is not None else ()

    @property
    def is_serving(self) -> bool:
        return self._acceptor is not None

    def _accepted(self, sock: socket.socket | int, peername: Any) -> bool:
        conn = Connection(self.loop, sock, self.handler, is_client=False, limits=self.limits,
                          ssl_context=self.ssl_context, server=self, peername=peername)
        self.all_connections.add(conn)
        conn.start()
        return self._below_limit()

    def _below_limit(self) -> bool:
        return (self.max_connections is None
                or len(self.all_connections) < self.max_connections)

    def _connection_upgraded(self, conn: Connection) -> None:
        self.connections.add(conn)

    def _connection_closed(self, conn: Connection) -> None:
        self.all_connections.discard(conn)
        if conn in self.connections:
            self.connections.discard(conn)
            self.topics.forget(conn)
        if self._acceptor is not None and not self._acceptor.accepting:
            self._acceptor.resume()

    def close(self) -> None:
        """Stop accepting and close every connection gracefully.

        Open WebSockets get a close frame with 1001 (Going Away) and `close_timeout` seconds
        to answer before their TCP connection is dropped; connections still in HTTP mode
        are closed at once. `server.all_connections` empties as they finish. The backplane
        (serve(pubsub=...)) is closed. In the parent of
        `serve(workers=N)` the workers are told to do the same (see `join_workers`).
        """
        if self._acceptor is not None:
            self._acceptor.close()
            self._acceptor = None
        if self.worker == 0 and self._worker_pipe is not None:
            os.close(self._worker_pipe[1])
            self._worker_pipe = None
        if self.pubsub is not None:
            self.pubsub.close()
        for conn in list(self.all_connections):
            if conn.is_open:
                conn.close(1001, "server shutting down")
            elif not conn.upgraded:
                conn.abort()

    def join_workers(self, timeout: float | None = None) -> bool:
        """In the parent: wait for the workers to exit (after `close()`); True if all did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.worker_pids:
            pid = self.worker_pids[0]
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.worker_pids.pop(0)
            elif deadline is not None and time.monotonic() >= deadline:
                return False
            else:
                time.sleep(0.01)
        return True

    def shutdown(self, then: Callable[[], object] | None = None) -> None:
        """Close gracefully, then call `then` (default: stop the loop) once every connection
        has finished, or after `close_timeout` (plus a little) at most."""
        self.close()
        loop = self.loop
        deadline = loop.time() + self.limits.close_timeout + 0.5
        done = then if then is not None else loop.stop

        def wait() -> None:
            if self.all_connections and loop.time() < deadline:
                loop.call_later(0.02, wait)
            else:
                done()

        wait()

    def _watch_parent(self, pipe: tuple[int, int] | None) -> None:
        """In a worker: when the parent closes its end of the pipe, shut down gracefully."""
        assert pipe is not None
        read_end = pipe[0]
        loop = self.loop

        def parent_gone() -> None:
            loop.remove_reader(read_end)
            os.close(read_end)
            self.shutdown()

        loop.add_reader(read_end, parent_gone)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<fastws.Server {self.host}:{self.port} connections={len(self.connections)}>"


def serve(handler: Any, host: str = "127.0.0.1", port: int = 9001, *,
          ssl: ssl_module.SSLContext | None = None, loop: Loop | None = None,
          backlog: int = 1024, reuse_port: bool = False, workers: int = 1,
          compression: CompressionSetting = True,
          origins: Collection[str | None] | None = None,
          max_connections: int | None = None,
          slow_consumers: SlowConsumerSetting = "close",
          pubsub: PubSubSetting | None = None, **limits: Any) -> Server:
    """Listen on host:port and serve HTTP/1.1 and WebSocket connections with `handler`.

    `handler.on_request(conn, request)` sees every HTTP request and answers it with
    `conn.respond(response)` or upgrades it with `conn.upgrade(fastws.accept(request))`;
    without on_request, upgrade requests are accepted and other requests get 404.
    `ssl` is a server-side `ssl.SSLContext`; `limits` override fields of `Limits`.
    Port 0 picks a free port (see `server.port`). `compression` (True, False, a
    DeflateOptions or a dict of its fields) accepts permessage-deflate offers in
    `conn.upgrade()` (which can override it per connection). `origins`: the Origin
    header values allowed to open a WebSocket (None in the list allows requests without
    one); others get 403. `max_connections`: above it, accepting pauses until a
    connection closes.

    `workers=N` (N > 1, Linux and other systems with fork and SO_REUSEPORT) forks N - 1
    worker processes, each with its own socket on the same port (the kernel spreads new
    connections over them) and its own fresh loop. serve() returns in every process, each
    with its own Server (`server.worker`: 0 in the parent, 1 to N - 1 in the workers),
    so the code that follows, normally `loop.run()`, runs in all of them. Call it before
    starting threads. When the parent's server closes, or the parent dies, the workers
    close their servers gracefully and their loops stop; `server.join_workers()` in the
    parent waits for them.

    Topics (fastws.topics): `slow_consumers` ("close", the default, "drop", or a
    SlowConsumers with its max_backlog) decides what happens to a subscriber that does
    not keep up. `pubsub` links the topics of every worker and machine through a
    backplane: a "redis://[user:password@]host:port/db" or "rediss://..." URL, or a
    fastws.backplane.RedisPubSub for more settings (sharded pub/sub, queue size, TLS
    context). Each worker opens its own connection to it after the fork.
    """
    check_handler(handler)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    if workers > 1 and not (hasattr(os, "fork") and hasattr(socket, "SO_REUSEPORT")):
        raise ValueError("workers > 1 needs os.fork and SO_REUSEPORT (Linux, BSD, macOS)")
    loop = loop if loop is not None else default_loop()
    settings = Limits().updated(limits)
    options = deflate_options(compression, is_client=False)
    reuse_port = reuse_port or workers > 1
    sock = listen(host, port, reuse_port, backlog)
    backplane = None
    if pubsub is not None:
        from .backplane import pubsub_settings
        backplane = pubsub_settings(pubsub)     # checked now; connected in each process
    server = Server(loop, sock, handler, ssl, settings, options, origins, max_connections,
                    slow_consumers)
    try:
        for index in range(1, workers):
            # Every worker binds the port the parent got (port 0 resolved), after the fork.
            if _fork_worker(server, index):
                worker = _start_worker(server, index, host, backlog)
                if backplane is not None:
                    backplane.start(worker)
                return worker
    except BaseException:
        pipe = server._worker_pipe
        server.close()                        # workers already forked see it and stop
        if pipe is not None:
            os.close(pipe[0])
        raise
    if server._worker_pipe is not None:
        os.close(server._worker_pipe[0])      # the parent keeps only the write end
    if backplane is not None:
        backplane.start(server)
    return server


def _start_worker(parent: Server, index: int, host: str, backlog: int) -> Server:
    """In a forked child: a fresh loop and a listener of its own on the parent's port.

    A failure here must not unwind into the caller's code as if this were the parent:
    it is logged and the child exits.
    """
    try:
        loop = parent.loop
        loop._reset_after_fork()
        sock = listen(host, parent.port, True, backlog)
        worker = Server(loop, sock, parent.handler,
                        parent.ssl_context, parent.limits, parent.compression, parent.origins,
                        parent.max_connections, parent.slow_consumers)
        worker.worker = index
        worker._watch_parent(parent._worker_pipe)
        return worker
    except BaseException:
        logger.exception("worker %d could not start", index)
        os._exit(1)


def _fork_worker(server: Server, index: int) -> bool:
    """Fork one worker; True in the child. The parent keeps the pipe the workers watch."""
    if server._worker_pipe is None:
        server._worker_pipe = os.pipe()
    pid = os.fork()
    if pid == 0:
        # The child's copies of the parent's listener and pipe end are not its own. (Not
        # acceptor.close(): the epoll instance is still the parent's until the loop resets.)
        if server._acceptor is not None and server._acceptor.sock is not None:
            server._acceptor.sock.close()
        server._acceptor = None
        os.close(server._worker_pipe[1])
        return True
    server.worker_pids.append(pid)
    return False
