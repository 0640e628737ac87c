"""Waking a fastws Loop from another thread: an eventfd on Linux, a socket pair elsewhere.

`Waker.fileobj` is what the loop watches for reading; `wake()` (any thread) makes it
readable and `drain()` (the loop's thread) empties it. Turning many wakes into one is the
loop's job (its pending flag), because there the order of the flag and the queue matters.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

__all__ = ["Waker"]

# A module attribute rather than a constant inside Waker so tests can force the socket pair.
_HAVE_EVENTFD = hasattr(os, "eventfd")


class Waker:
    """One wake-up channel (see the module doc)."""

    __slots__ = ("fileobj", "wake", "_eventfd", "_socks")

    fileobj: int | socket.socket
    wake: Callable[[], None]

    def __init__(self) -> None:
        self._eventfd = -1
        self._socks: tuple[socket.socket, socket.socket] | None = None
        if _HAVE_EVENTFD:
            self._eventfd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.fileobj = self._eventfd
            self.wake = self._eventfd_write
        else:
            rsock, wsock = socket.socketpair()
            rsock.setblocking(False)
            wsock.setblocking(False)
            self._socks = (rsock, wsock)
            self.fileobj = rsock
            self.wake = self._socket_write

    def _eventfd_write(self) -> None:
        os.eventfd_write(self._eventfd, 1)

    def _socket_write(self) -> None:
        assert self._socks is not None
        try:
            self._socks[1].send(b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so a wake-up is certainly pending

    def drain(self) -> None:
        """Empty the channel (it is readable again only after the next wake())."""
        if self._eventfd >= 0:
            try:
                os.eventfd_read(self._eventfd)
            except BlockingIOError:
                pass
        elif self._socks is not None:
            try:
                while self._socks[0].recv(4096):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def close(self) -> None:
        """Release the descriptors; idempotent. A wake() after it raises OSError."""
        if self._eventfd >= 0:
            os.close(self._eventfd)
            self._eventfd = -1
        if self._socks is not None:
            for sock in self._socks:
                sock.close()
            self._socks = None
