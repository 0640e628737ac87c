"""One connection to a Redis server on an event loop, for the backplane (fastws.backplane).

A `Link` connects a non-blocking socket (and does the TLS handshake for rediss://), sends
what its owner gives it in as few writes as possible, hands what it reads to its owner
(`owner._received(link, data)`), and when the connection fails tells the owner
(`owner._link_lost(link, reason)`) and connects again after an exponential back-off with
jitter, until it is closed. The loop is the server's: the fastws Loop or an asyncio loop
(it needs only what fastws.eventloop.IOEventLoop names: add_reader/add_writer, their
removal, call_later and time). What the bytes mean is the session's business
(fastws.redis_session, sans I/O): `session.hello()` is sent first on every connection.
"""

from __future__ import annotations

import errno
import random
import socket
import ssl as ssl_module
from collections import deque
from typing import TYPE_CHECKING, Protocol

from .eventloop import loop_is_closed
from .redis_session import RedisError

if TYPE_CHECKING:
    from .eventloop import IOEventLoop, TimerHandle

__all__ = ["Link", "LinkOwner", "Session"]

_READ_SIZE = 256 * 1024
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError,
              ssl_module.SSLWantWriteError)


class Session(Protocol):
    """What a link needs from its session."""

    ready: bool

    def hello(self) -> bytes: ...
    def ping(self) -> bytes: ...
    @property
    def unanswered_pings(self) -> int: ...


class LinkOwner(Protocol):
    """What a link needs from its owner (fastws.backplane.RedisPubSub)."""

    reconnect_min: float
    reconnect_max: float
    connect_timeout: float
    tls: bool

    @property
    def loop(self) -> IOEventLoop: ...
    def ssl_context(self) -> ssl_module.SSLContext: ...
    def _received(self, link: Link, data: bytes) -> None: ...
    def _link_lost(self, link: Link, reason: str) -> None: ...


class Link:
    """One connection to a Redis server on the server's loop (see the module doc)."""

    def __init__(self, owner: LinkOwner, name: str, address: tuple[str, int],
                 session: Session) -> None:
        self.owner = owner
        self.name = name
        self.address = address
        self.session = session
        self.sock: socket.socket | None = None
        self.open = False                       # connected (and TLS done): bytes flow
        self._out: deque[bytes | memoryview] = deque()
        self.unsent = 0
        self._writing = False
        self._attempt = 0
        self._timer: TimerHandle | None = None        # reconnect, or the connect deadline
        self.closed = False

    @property
    def loop(self) -> IOEventLoop:
        return self.owner.loop

    # -- connecting

    def connect(self) -> None:
        self._timer = None
        if self.closed:
            return
        host, port = self.address
        try:
            # Name resolution blocks (as in fastws.connect); use an address or /etc/hosts
            # names where that matters.
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self._failed(f"cannot resolve {host}: {exc}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._failed(f"cannot connect: {errno.errorcode.get(err, err)}")
            return
        self._timer = self.loop.call_later(self.owner.connect_timeout, self._timed_out)
        self.loop.add_writer(sock, self._connected)

    def _timed_out(self) -> None:
        self._timer = None
        self._failed("connection timed out")

    def _connected(self) -> None:
        sock = self.sock
        assert sock is not None
        self.loop.remove_writer(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._failed(f"cannot connect: {errno.errorcode.get(err, err)}")
            return
        if self.owner.tls:
            try:
                self.sock = self.owner.ssl_context().wrap_socket(
                    sock, server_hostname=self.address[0], do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                self._failed(f"TLS: {exc}")
                return
            self._tls_handshake()
            return
        self._start()

    def _tls_handshake(self) -> None:
        sock = self.sock
        assert sock is not None
        loop = self.loop
        try:
            sock.do_handshake()          # type: ignore[attr-defined]
        except ssl_module.SSLWantReadError:
            loop.remove_writer(sock)
            loop.add_reader(sock, self._tls_handshake)
            return
        except ssl_module.SSLWantWriteError:
            loop.remove_reader(sock)
            loop.add_writer(sock, self._tls_handshake)
            return
        except OSError as exc:
            self._failed(f"TLS handshake failed: {exc}")
            return
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._start()

    def _start(self) -> None:
        sock = self.sock
        assert sock is not None
        self.open = True
        self.loop.add_reader(sock, self._on_readable)
        self.send(self.session.hello())

    # -- bytes

    def send(self, data: bytes) -> None:
        if not data or not self.open:
            return
        self._out.append(data)
        self.unsent += len(data)
        if not self._writing:
            self._write()

    def _write(self) -> None:
        sock = self.sock
        out = self._out
        assert sock is not None
        while out:
            if len(out) > 1:
                joined = b"".join(out)        # one send for everything queued
                out.clear()
                out.append(joined)
            try:
                sent = sock.send(out[0])
            except _TRY_AGAIN:
                break
            except OSError as exc:
                self._failed(f"write failed: {exc}")
                return
            self.unsent -= sent
            if sent < len(out[0]):
                out[0] = memoryview(out[0])[sent:]
                break
            out.popleft()
        if out and not self._writing:
            self._writing = True
            self.loop.add_writer(sock, self._write)
        elif not out and self._writing:
            self._writing = False
            self.loop.remove_writer(sock)

    def _on_readable(self) -> None:
        sock = self.sock
        while sock is not None and self.open:
            try:
                data = sock.recv(_READ_SIZE)
            except _TRY_AGAIN:
                return
            except OSError as exc:
                self._failed(f"read failed: {exc}")
                return
            if not data:
                self._failed("Redis closed the connection")
                return
            try:
                self.owner._received(self, data)
            except RedisError as exc:
                self._failed(f"Redis: {exc}")
                return
            if not isinstance(sock, ssl_module.SSLSocket) or not sock.pending():
                return

    # -- ending

    def _failed(self, reason: str) -> None:
        """Drop the connection, tell the owner, and try again after a back-off."""
        self._drop()
        if self.closed:
            return
        self.owner._link_lost(self, reason)
        owner = self.owner
        delay = min(owner.reconnect_max, owner.reconnect_min * (2 ** self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        delay *= random.uniform(0.5, 1.0)      # jitter: workers do not reconnect in step
        self._timer = self.loop.call_later(delay, self.connect)

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self.sock = self.sock, None
        self.open = False
        self._writing = False
        self._out.clear()
        self.unsent = 0
        if sock is not None:
            loop = self.loop
            if not loop_is_closed(loop):
                loop.remove_reader(sock)
                loop.remove_writer(sock)
            sock.close()

    def ready(self) -> None:
        """The session answered its first PING: the connection is usable."""
        self._attempt = 0
        if self._timer is not None:         # the connect deadline
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self._drop()
