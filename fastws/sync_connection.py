"""The blocking client's connection: `fastws.sync.ClientConnection` (opened by fastws.sync).

See fastws.sync for who reads the socket (the caller in recv(), a keeper thread while nobody
is in it) and how sends from several threads stay whole. The protocol's rules are all in
the sans-I/O `Protocol` this class drives; its messages reach the queue through
`fastws._inbox.Inbox`, in C.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import ssl as ssl_module
import threading
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from ._codec import CloseCode
from ._inbox import Inbox
from ._protocol import Protocol
from .exceptions import ConnectionClosed, ConnectionClosedOK, connection_closed
from .http import Response
from .limits import Limits
from .loop import _MIN_SPIN, DEFAULT_BUSY_POLL
from .sync_open import Opened

__all__ = ["HANDOVER", "MAX_QUEUE", "ClientConnection"]

logger = logging.getLogger("fastws")

READ_SIZE = 256 * 1024
# The keeper reads only when no caller has read the socket for this long.
HANDOVER = 0.010
# Messages queued by the keeper, at most, before it stops reading (callers read past it).
MAX_QUEUE = 16
_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError)


class ClientConnection:
    """An open blocking WebSocket client connection (see the module doc).

    `recv()` returns a `str` for a text message and `bytes` for a binary one; iterating
    yields messages until the connection closes normally. `response` is the server's 101
    answer, `subprotocol` the subprotocol it chose.
    """

    def __init__(self, opened: Opened, *, limits: Limits, max_queue: int = MAX_QUEUE,
                 busy_poll: float = DEFAULT_BUSY_POLL) -> None:
        self.url = opened.url
        self.response: Response = opened.response
        self.subprotocol = opened.subprotocol
        self.socket = opened.stream
        self.close_timeout = limits.close_timeout
        self.max_queue = max_queue
        # Longest poll for data before sleeping in recv() (seconds; 0: sleep at once).
        self.busy_poll = busy_poll
        self._spin = busy_poll
        self._tls = hasattr(self.socket, "pending")     # SSLSocket or TLSLayers
        self._protocol = Protocol(True, max_frame_size=limits.max_frame_size,
                                  max_message_size=limits.max_message_size,
                                  extension=opened.extension)
        self._messages: collections.deque[str | bytes] = collections.deque()
        self._inbox = Inbox(self._messages)
        self._protocol.receiver = self._inbox
        self._buffer = bytearray(READ_SIZE)
        self._view = memoryview(self._buffer)
        self._read_lock = threading.Lock()     # one reader of the socket at a time
        self._send_lock = threading.Lock()     # frames leave whole, in the protocol's order
        self._proto_lock = threading.Lock()    # the protocol's state
        # Each call on the socket, held for that non-blocking call only: OpenSSL aborts the
        # process when one thread closes (or reads) an SSL object another is writing to.
        self._io_lock = threading.Lock()
        self._reads = 0                        # socket reads by callers (the keeper backs off)
        self._flush_wanted = False             # a reader left bytes for the send lock's holder
        self._pings: dict[bytes, tuple[threading.Event, list[float]]] = {}
        self._closed: ConnectionClosed | None = None
        self._close_requested = False
        self._eof = False
        self._poll_in = select.poll()
        self._poll_in.register(self.socket.fileno(), select.POLLIN)
        if opened.tail:
            self._feed(memoryview(opened.tail))
        self._keeper = threading.Thread(target=self._keep, name="fastws-sync-keeper",
                                        daemon=True)
        self._keeper.start()

    # ---------------------------------------------------------------- receiving

    def recv(self, timeout: float | None = None) -> str | bytes:
        """The next message: `str` for text, `bytes` for binary.

        Waits up to `timeout` seconds (None: forever; 0: only what has arrived) and raises
        TimeoutError when none came. Raises ConnectionClosedOK / ConnectionClosedError once
        the connection is closed and every message received before was returned.
        """
        messages = self._messages
        if messages:
            return messages.popleft()
        return self._recv_wait(timeout)

    def __iter__(self) -> Iterator[str | bytes]:
        return self

    def __next__(self) -> str | bytes:
        """The next message; StopIteration after a normal close (1000, 1001, 1005)."""
        messages = self._messages
        if messages:
            return messages.popleft()
        try:
            return self._recv_wait(None)
        except ConnectionClosedOK:
            raise StopIteration from None

    def _recv_wait(self, timeout: float | None) -> str | bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._read_lock.acquire(timeout=-1 if timeout is None else timeout):
            if self._messages:
                return self._messages.popleft()
            raise TimeoutError("no message received in time")
        try:
            while True:
                if self._messages:
                    return self._messages.popleft()
                if self._closed is not None:
                    raise self._closed
                self._reads += 1
                if not self._read(deadline):
                    raise TimeoutError("no message received in time")
        finally:
            self._read_lock.release()

    # ---------------------------------------------------------------- reading (one reader)

    def _read(self, deadline: float | None) -> bool:
        """Read the socket once (waiting until `deadline`) and handle what came; False on
        timeout. Called with the read lock held."""
        sock = self.socket
        n = 0
        while True:
            # Wait first: a caller that reads the socket found the queue empty, so the data
            # is usually not there yet, and poll() costs less than a failed recv's exception.
            if not (self._tls and self._pending()):
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout < 0:
                    timeout = 0
                if not self._wait_readable(timeout):
                    return False
            try:
                with self._io_lock:
                    n = sock.recv_into(self._buffer)
            except _WOULD_BLOCK:
                continue          # a wake-up with nothing to read (or TLS wants more)
            except ssl_module.SSLWantWriteError:
                # TLS needs to write before it can read on: wait for room.
                poller = select.poll()
                poller.register(sock.fileno(), select.POLLOUT)
                poller.poll(100)
                continue
            except (ssl_module.SSLZeroReturnError, ssl_module.SSLEOFError):
                n = 0
            except OSError as exc:
                self._lost(f"connection lost: {exc}")
                return True
            break
        if n == 0:
            self._lost("the server closed the TCP connection without a close frame")
            return True
        self._feed(self._view[:n])
        # TLS can hold decrypted bytes the socket will not signal again: take them now.
        while self._tls and self._closed is None and self._pending():
            try:
                with self._io_lock:
                    n = sock.recv_into(self._buffer)
            except (_WOULD_BLOCK + (ssl_module.SSLWantWriteError,)):
                break
            except OSError:
                break
            if n == 0:
                break
            self._feed(self._view[:n])
        return True

    def _pending(self) -> bool:
        """Decrypted bytes the TLS layer holds (the socket will not signal them)."""
        with self._io_lock:
            return self._closed is None and bool(self.socket.pending())

    def _wait_readable(self, timeout: float | None) -> bool:
        """Wait for the socket to become readable: poll for up to the adaptive spin first,
        then sleep (as the fastws Loop does: on this kind of machine a wake-up costs more
        CPU and latency than polling for a few microseconds while answers come quickly)."""
        poll = self._poll_in.poll
        if poll(0):
            return True
        if timeout == 0:
            return False
        monotonic = time.monotonic
        start = now = monotonic()
        spin = self._spin if timeout is None else min(self._spin, timeout)
        if spin:
            end = start + spin
            while now < end:
                if poll(0):
                    return True
                now = monotonic()
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        ready = poll(None if timeout is None else timeout * 1000)
        slept = monotonic() - now
        busy_poll = self.busy_poll
        if ready and slept < 2.0 * busy_poll:
            self._spin = min(max(self._spin * 2.0, _MIN_SPIN), busy_poll)
        elif self._spin:
            self._spin = 0.0 if self._spin < 2.0 * _MIN_SPIN else self._spin / 2.0
        return bool(ready)

    def _feed(self, data: memoryview) -> None:
        """Parse received bytes: messages land in the queue (through the Inbox, in C)."""
        protocol = self._protocol
        with self._proto_lock:
            protocol.receive_data(data)
            ended = protocol.sink.ended
        pongs = self._inbox.pongs
        if pongs:
            now = time.monotonic()
            for payload in pongs:
                waiter = self._pings.pop(payload, None)
                if waiter is not None:
                    waiter[1].append(now)
                    waiter[0].set()
            pongs.clear()
        self._flush()
        if ended:
            self._finish()

    def _finish(self) -> None:
        """The protocol has nothing more to send (close frames exchanged, or it failed the
        connection): wait for the server to close TCP (bounded), then close."""
        deadline = time.monotonic() + self.close_timeout
        sock = self.socket
        while not self._eof:
            try:
                with self._io_lock:
                    n = sock.recv_into(self._buffer)
            except _WOULD_BLOCK:
                left = deadline - time.monotonic()
                if left <= 0 or not self._poll_in.poll(left * 1000 + 1):
                    break
                continue
            except OSError:
                break
            if n == 0:
                break
        self._lost(None)

    def _lost(self, why: str | None) -> None:
        """The connection is over: record how, close the socket, release ping waiters."""
        if self._closed is not None:
            return
        self._eof = True
        protocol = self._protocol
        with self._proto_lock:
            protocol.receive_eof()
            sent, rcvd = protocol.close_sent, protocol.close_rcvd
            code, reason = protocol.close_code, protocol.close_reason
        if code is None or code == CloseCode.ABNORMAL:
            code, reason = CloseCode.ABNORMAL, why or "closed without a closing handshake"
        order = None if sent is None or rcvd is None else not self._close_requested
        self._closed = connection_closed(int(code), reason, rcvd_then_sent=order)
        with self._io_lock:
            try:
                self.socket.close()
            except OSError:
                pass
        for event, _ in list(self._pings.values()):
            event.set()

    # ---------------------------------------------------------------- the keeper thread

    def _keep(self) -> None:
        """Answer pings and see the close while nobody is in recv() (see the module doc)."""
        poller = select.poll()      # its own: a poll object may not be used by two threads
        try:
            poller.register(self.socket.fileno(), select.POLLIN)
        except (OSError, ValueError):
            return
        while not self._is_closed():
            reads = self._reads
            try:
                ready = poller.poll(1000)
            except (OSError, ValueError):
                return
            if self._is_closed():     # another thread may have closed it while we waited
                return
            if not ready:
                continue
            if self._reads != reads or len(self._messages) >= self.max_queue \
                    or not self._read_lock.acquire(blocking=False):
                time.sleep(HANDOVER)
                continue
            try:
                if self._closed is None:
                    self._read(time.monotonic())   # what is there now; no waiting
            except Exception:
                logger.exception("fastws.sync: the keeper thread failed; closing")
                self._lost("internal error in the keeper thread")
            finally:
                self._read_lock.release()

    # ---------------------------------------------------------------- sending

    def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send a text message (a str) or a binary one (a bytes-like object); safe to call
        from several threads. Raises ConnectionClosed once the connection is closing."""
        protocol = self._protocol
        self._send_lock.acquire()
        try:
            with self._proto_lock:
                try:
                    if isinstance(message, str):
                        protocol.send_text(message)
                    else:
                        protocol.send_binary(message)
                except ConnectionError:
                    raise self._closing_error() from None
                data = protocol.data_to_send()
            self._send_bytes(data)
        finally:
            self._release_send()

    def ping(self, data: bytes | None = None, timeout: float | None = None) -> float:
        """Ping the server and wait for its pong; the round-trip time in seconds.

        `data` (at most 125 bytes) defaults to 4 random bytes. Raises TimeoutError when no
        pong came within `timeout`, ConnectionClosed when the connection closed first.
        """
        payload = os.urandom(4) if data is None else bytes(data)
        event = threading.Event()
        times: list[float] = []
        self._pings[payload] = (event, times)
        start = time.monotonic()
        self._send_lock.acquire()
        try:
            with self._proto_lock:
                try:
                    self._protocol.ping(payload)
                except ConnectionError:
                    self._pings.pop(payload, None)
                    raise self._closing_error() from None
                out = self._protocol.data_to_send()
            self._send_bytes(out)
        finally:
            self._release_send()
        deadline = None if timeout is None else start + timeout
        while not event.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                self._pings.pop(payload, None)
                raise TimeoutError("no pong received in time")
            if self._read_lock.acquire(timeout=min(left, 0.05) if left is not None else 0.05):
                try:
                    if not event.is_set() and self._closed is None:
                        self._reads += 1
                        self._read(deadline)
                finally:
                    self._read_lock.release()
            else:
                event.wait(0.05 if left is None else min(left, 0.05))
        if not times:
            raise self._closed if self._closed is not None else self._closing_error()
        return times[0] - start

    def _flush(self) -> None:
        """Send what the protocol wrote while reading (pongs, the close echo).

        A reader never waits for the send lock: a sender may be stuck until the server
        reads, and the server may be waiting for us to read. It leaves a note instead, and
        whoever holds the lock sends the bytes when it releases it (`_release_send`).
        """
        self._flush_wanted = True
        if self._send_lock.acquire(blocking=False):
            self._release_send()

    def _release_send(self) -> None:
        """Release the send lock, then send what readers left in the protocol meanwhile.

        The note is set before a reader tries the lock and read by every holder after it
        released it, so bytes a reader left are never forgotten."""
        self._send_lock.release()
        while self._flush_wanted and self._send_lock.acquire(blocking=False):
            try:
                self._flush_wanted = False
                with self._proto_lock:
                    data = self._protocol.data_to_send()
                if data:
                    self._send_bytes(data)
            except ConnectionClosed:
                pass
            finally:
                self._send_lock.release()

    def _send_bytes(self, data: bytes) -> None:
        """Send it all (with the send lock held); waits while the kernel's buffer is full."""
        sock = self.socket
        view: Any = data
        while True:
            sent, error = 0, None
            with self._io_lock:
                if self._closed is not None:
                    raise self._closed          # the socket is closed: do not touch it
                try:
                    sent = sock.send(view)
                except (BlockingIOError, InterruptedError, ssl_module.SSLWantWriteError,
                        ssl_module.SSLWantReadError):
                    pass
                except OSError as exc:
                    error = exc
            if error is not None:
                self._lost_on_send(error)
                return
            if sent == len(view):
                return
            view = memoryview(view)[sent:]
            poller = select.poll()
            try:
                poller.register(sock.fileno(), select.POLLOUT)
            except (OSError, ValueError):
                raise self._closing_error() from None
            poller.poll(1000)
            if self._closed is not None:
                raise self._closed

    def _lost_on_send(self, exc: OSError) -> None:
        # Whoever reads will find the end; the sender learns it now.
        if self._closed is None:
            if self._read_lock.acquire(blocking=False):
                try:
                    self._lost(f"connection lost: {exc}")
                finally:
                    self._read_lock.release()
            else:
                raise connection_closed(CloseCode.ABNORMAL, f"connection lost: {exc}")
        raise self._closing_error()

    def _closing_error(self) -> ConnectionClosed:
        if self._closed is not None:
            return self._closed
        protocol = self._protocol
        code = protocol.close_code
        return connection_closed(int(code) if code is not None else CloseCode.ABNORMAL,
                                 protocol.close_reason or "the connection is closing")

    # ---------------------------------------------------------------- closing

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection: send a close frame, wait (up to `close_timeout`) for the
        server's and for it to close TCP, then release the socket. Messages not yet
        received are dropped. Safe to call more than once."""
        self._close_requested = True
        if self._closed is None:
            self._send_lock.acquire()
            try:
                with self._proto_lock:
                    self._protocol.close(code, reason)
                    data = self._protocol.data_to_send()
                if data:
                    self._send_bytes(data)
            except ConnectionClosed:
                pass
            finally:
                self._release_send()
            deadline = time.monotonic() + self.close_timeout
            if self._read_lock.acquire(timeout=self.close_timeout):
                try:
                    while self._closed is None:
                        if time.monotonic() >= deadline or not self._read(deadline):
                            self._lost("the server did not answer the close frame in time")
                finally:
                    self._read_lock.release()
        if self._keeper is not threading.current_thread():
            self._keeper.join(self.close_timeout + 1.5)

    @property
    def close_code(self) -> int | None:
        """The close code once closed (1006 when the connection was lost), else None."""
        return self._closed.code if self._closed is not None else None

    @property
    def close_reason(self) -> str | None:
        return self._closed.reason if self._closed is not None else None

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _is_closed(self) -> bool:
        return self._closed is not None

    @property
    def close_requested(self) -> bool:
        """True once the application called close()."""
        return self._close_requested

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(CloseCode.NORMAL if exc_type is None else CloseCode.INTERNAL_ERROR)

    def __repr__(self) -> str:
        state = "closed" if self._closed is not None else self._protocol.state_name
        return f"<fastws.sync.ClientConnection {self.url} {state}>"
