"""Listening sockets: opened with `listen()`, accepted from by an `Acceptor` on any loop with
`add_reader` (the fastws Loop, asyncio's selector loop, uvloop).

One accept loop for both servers (fastws.server on the fastws Loop, fastws.asyncio's on an
asyncio loop): sockets are taken in batches per readiness event, a full descriptor table
pauses accepting for a moment instead of spinning, and the server can pause it at its
connection limit.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

from ._transport import HAVE_ACCEPT4, accept_fd

__all__ = ["Acceptor", "bind", "listen"]

logger = logging.getLogger("fastws")

# Accept at most this many sockets per readiness event, so one busy listener cannot
# starve the connections already open.
ACCEPTS_PER_EVENT = 64

# accept() errors that say "not now" rather than "this listener is broken".
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_PEER_GONE = (errno.ECONNABORTED, errno.EPROTO)


def listen(host: str | None, port: int, reuse_port: bool, backlog: int) -> socket.socket:
    """A non-blocking listening socket on the first address of host:port."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return bind(infos[:1], reuse_port, backlog)[0]


def bind(infos: list[tuple[Any, ...]], reuse_port: bool, backlog: int) -> list[socket.socket]:
    """A non-blocking listening socket for each of getaddrinfo()'s `infos` (IPv6 ones
    only for IPv6 when there are others, as asyncio binds every interface)."""
    sockets: list[socket.socket] = []
    try:
        for family, type_, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and len(infos) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Acceptor:
    """Accepts connections on a listening socket watched by `loop.add_reader`.

    `accepted(sock, peername)` gets each new socket (non-blocking, TCP_NODELAY set) and
    returns True to keep accepting, False to pause (the server's connection limit) until
    `resume()`. `may_resume()` is asked before resuming after a pause. With `bare_fds`, `sock`
    is the bare descriptor when the platform allows (an int, see fastws._transport.accept_fd),
    for a fastws Transport, which makes a socket object only if asked for one.
    """

    def __init__(self, loop: Any, sock: socket.socket,
                 accepted: Callable[[Any, Any], bool],
                 may_resume: Callable[[], bool] = lambda: True, *,
                 bare_fds: bool = False) -> None:
        self.loop = loop
        self._bare_fds = bare_fds and HAVE_ACCEPT4
        self.sock: socket.socket | None = sock
        self._accepted = accepted
        self._may_resume = may_resume
        self.accepting = True
        self._kind = (int(sock.family), int(sock.type), sock.proto)
        # TCP_NODELAY set on the listener is inherited by the sockets accepted from it (Linux):
        # one system call less per connection. None: not known until the first one is checked.
        self._nodelay_inherited: bool | None = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            self._nodelay_inherited = False   # not TCP (a Unix socket): nothing to inherit
        loop.add_reader(sock, self._on_acceptable)

    def _on_acceptable(self) -> None:
        listener = self.sock
        if listener is None:
            return
        family, type_, proto = self._kind
        listener_fd = listener.fileno()
        for _ in range(ACCEPTS_PER_EVENT):
            sock: socket.socket | int
            try:
                if self._nodelay_inherited and self._bare_fds:
                    # Nothing to set on the new socket: no socket object either.
                    sock, peername = accept_fd(listener_fd)
                else:
                    # socket.accept() without its wrapper, which converts the family and
                    # type of every new socket to enums: measurable in a connection storm.
                    fd, peername = listener._accept()  # type: ignore[attr-defined]
                    sock = socket.socket(family, type_, proto, fileno=fd)
                    if not self._nodelay_inherited:
                        self._set_nodelay(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    # Retrying at once would spin: wait for a descriptor to be freed.
                    logger.warning("cannot accept (%s); pausing accepts for 100 ms", exc)
                    self.pause()
                    self.loop.call_later(0.1, self.resume)
                    return
                if exc.errno in _PEER_GONE:
                    continue
                raise
            if not self._accepted(sock, peername):
                # Leave new connections in the kernel's backlog until resume().
                self.pause()
                return

    def _set_nodelay(self, sock: socket.socket) -> None:
        try:
            if (self._nodelay_inherited is None
                    and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)):
                self._nodelay_inherited = True
                return
            self._nodelay_inherited = False
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def pause(self) -> None:
        if self.accepting and self.sock is not None:
            self.accepting = False
            self.loop.remove_reader(self.sock)

    def resume(self) -> None:
        if self.accepting or self.sock is None or not self._may_resume():
            return
        self.accepting = True
        self.loop.add_reader(self.sock, self._on_acceptable)

    def close(self) -> None:
        """Stop accepting and close the listening socket."""
        if self.sock is not None:
            self.pause()
            self.sock.close()
            self.sock = None
