# cython: language_level=3
"""The awaitable WebSocket of fastws.asyncio: messages in a bounded deque, one waiter future.

`WebSocket` is the handler of one open Connection (its `on_frame`, `on_closed`,
`on_pause_writing` and `on_resume_writing` are called by the connection, on the loop) and
the object a coroutine uses: `await ws.recv()`, `async for message in ws`, `await
ws.send(message)`, `await ws.ping()`, `await ws.close()`. It costs no task and no queue
per message: a received message is the protocol's Frame, appended to a deque; a coroutine
waiting in recv() waits on one future, woken once per read however many messages that
read brought. While the coroutine keeps up, messages are parsed one at a time as it asks
for them (see fastws._asyncio_transport): its answers leave before what the protocol
writes for later input. When the deque holds `max_queue` messages the connection stops
reading (TCP back-pressure to the peer) until the application has taken all but a quarter
of them.

`send()` hands the message to the protocol at once and waits only while the connection's
write buffer is above its high-water mark. Every failure is an exception in the caller:
a closed connection raises ConnectionClosedOK (1000, 1001, or a close frame without a
code) or ConnectionClosedError (anything else, 1006 when TCP went away without a closing
handshake); `async for` ends on ConnectionClosedOK.

On a server, `ws.subscribe(topic)`, `ws.unsubscribe(topic)` and `ws.publish(topic, message)`
are its connection's topic methods (fastws.topics), and `fastws.broadcast()` takes
WebSockets as well as connections.
"""

import asyncio
import collections
import struct
import time

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from fastws._asyncio_transport cimport AsyncioTransport
from fastws._codec cimport OP_BINARY, OP_PONG, OP_TEXT, Frame

from fastws._codec import Frame as PyFrame
from fastws._codec import OpCode

# One set of exception types for every client and the awaitable server (fastws.exceptions).
from fastws.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK
from fastws.exceptions import connection_closed


def closed_exception(code, reason):
    """ConnectionClosedOK or ConnectionClosedError for `code` (None: 1006, no closing
    handshake)."""
    return connection_closed(1006 if code is None else code, reason)


_NO_CALLBACKS = object()


def _time_out(waiter):
    if not waiter.done():
        waiter.set_exception(TimeoutError("no message within the timeout"))


@cython.auto_pickle(False)
cdef class WebSocket:
    """An open WebSocket connection for coroutines (fastws.asyncio). See the module doc."""

    cdef readonly object connection   # the fastws Connection underneath
    cdef readonly object loop
    cdef readonly Py_ssize_t max_queue
    cdef Py_ssize_t _resume_at
    cdef object _messages             # deque of Frames (text and binary messages)
    cdef object _waiter               # the future recv() waits on, or None
    cdef AsyncioTransport _transport  # None on another transport
    cdef bint _reading_paused
    cdef bint _writing_paused
    cdef object _drained              # future send() waits on while writing is paused
    cdef bint _closing                # close() was called: later messages are dropped
    cdef bint _closed
    cdef object _closed_future
    cdef object _pings                # OrderedDict: payload -> (future, time sent)
    cdef unsigned long long _ping_count
    cdef readonly object close_code   # None while open
    cdef readonly str close_reason
    cdef readonly object latency      # the last ping's round-trip time, seconds

    def __init__(self, connection, *, max_queue=16):
        if max_queue is not None and max_queue < 1:
            raise ValueError("max_queue must be at least 1 (or None: no limit)")
        self.connection = connection
        self.loop = connection.loop
        transport = connection._transport
        if isinstance(transport, AsyncioTransport):
            self._transport = transport
            # Messages are parsed one at a time while this coroutine keeps up with them:
            # what it sends in answer to one leaves before anything the protocol answers
            # to what came after it (a pong, a close, a violation's close frame).
            self._transport.one_message_at_a_time = True
        self.max_queue = -1 if max_queue is None else max_queue
        self._resume_at = self.max_queue // 4
        self._messages = collections.deque()
        self._pings = collections.OrderedDict()
        self.close_reason = ""
        self._closed_future = self.loop.create_future()

    # ---------------------------------------------------------------- about the connection

    @property
    def request(self):
        """The opening handshake's request (the client's, on both sides)."""
        return self.connection.request

    @property
    def response(self):
        """The opening handshake's 101 response."""
        return self.connection.response

    @property
    def subprotocol(self):
        return self.connection.subprotocol

    @property
    def remote_address(self):
        return self.connection.peername

    @property
    def closed(self):
        """True once the connection is closed (close_code is set)."""
        return self._closed

    @property
    def queued(self):
        """Messages received and not yet taken by recv()."""
        return len(self._messages)

    # ---------------------------------------------------------------- topics (a server's)

    def subscribe(self, topic):
        """Receive what is published to `topic` (fastws.topics); False when subscribed
        already. A server's WebSockets only."""
        return self.connection.subscribe(topic)

    def unsubscribe(self, topic):
        """Stop receiving `topic`; False when not subscribed."""
        return self.connection.unsubscribe(topic)

    def publish(self, topic, message):
        """Send `message` to every other subscriber of `topic` (not to this WebSocket),
        on this server and, with serve(pubsub=...), on every linked server."""
        self.connection.publish(topic, message)

    @property
    def topics(self):
        """The topics this WebSocket subscribes to."""
        return self.connection.topics

    @property
    def messages_dropped(self):
        """Published messages skipped for it while it was a slow consumer ("drop")."""
        return self.connection.messages_dropped

    # ---------------------------------------------------------------- handler callbacks

    def on_frame(self, conn, Frame frame not None):
        cdef int opcode = frame._opcode
        if opcode == OP_PONG:
            self._pong(frame.data)
            return
        if (opcode != OP_TEXT and opcode != OP_BINARY) or self._closing:
            return
        messages = self._messages
        messages.append(frame)
        if self._transport is not None:
            self._transport.message_delivered = True
        if 0 <= self.max_queue <= len(messages) and not self._reading_paused:
            self._reading_paused = True
            conn.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
            # The woken coroutine runs in the loop's next round; what it sends then
            # leaves with the replies of this read.
            if self._transport is not None:
                self._transport.hold_writes()

    def on_pause_writing(self, conn):
        self._writing_paused = True

    def on_resume_writing(self, conn):
        self._writing_paused = False
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def on_closed(self, conn, code, reason):
        self.close_code = code
        self.close_reason = reason
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.on_resume_writing(conn)
        pings, self._pings = self._pings, collections.OrderedDict()
        for future, _ in pings.values():
            if not future.done():
                future.set_exception(closed_exception(code, reason))
        if not self._closed_future.done():
            self._closed_future.set_result(None)
        # The connection no longer needs us: no reference cycle between the two is left
        # for the garbage collector (the application keeps us, we keep the connection).
        conn.handler = _NO_CALLBACKS

    # ---------------------------------------------------------------- receiving

    cdef object _take(self):
        cdef Frame frame = self._messages.popleft()
        if self._reading_paused and len(self._messages) <= self._resume_at:
            self._reading_paused = False
            if not self._closed:
                self.connection.resume_reading()
        data = frame.data
        if frame._opcode == OP_TEXT:
            if type(data) is bytes:
                # The protocol checked it as UTF-8 already.
                return PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                                            NULL)
            return bytes(data).decode("utf-8")
        return data if type(data) is bytes else bytes(data)

    async def recv(self, timeout=None):
        """The next message: a str (text) or bytes (binary).

        Waits for it for at most `timeout` seconds (None: no limit; TimeoutError after it).
        Raises ConnectionClosed once the connection is closed and every message received
        before was taken. Cancelling the waiting coroutine loses nothing.
        """
        if self._messages or self._next():
            return self._take()
        return await self._wait(timeout)

    cdef bint _next(self) except -1:
        """Have the transport parse up to the next message already read; True if one came."""
        if self._transport is not None:
            self._transport.feed_next()
        return len(self._messages) > 0

    async def _wait(self, timeout):
        while not self._messages:
            if self._closed or self._closing:
                raise self._closed_error()
            if self._waiter is not None:
                raise RuntimeError("another coroutine is already waiting for a message "
                                   "on this WebSocket")
            waiter = self.loop.create_future()
            self._waiter = waiter
            timer = None if timeout is None else self.loop.call_later(timeout, _time_out,
                                                                      waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        return self._take()

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._messages or self._next():
            return self._take()
        try:
            return await self._wait(None)
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    # ---------------------------------------------------------------- sending

    async def send(self, message):
        """Send a message: a str as text, any bytes-like object as binary, or an iterable
        of str (or of bytes-like) as one fragmented message.

        Returns at once unless more than the write high-water mark is waiting to be sent;
        then waits until it drained below the low-water mark. Raises ConnectionClosed once
        the closing handshake started.
        """
        conn = self.connection
        try:
            if type(message) is str:
                conn.send_text(message)
            elif isinstance(message, (bytes, bytearray, memoryview)):
                conn.send_binary(message)
            elif isinstance(message, str):
                conn.send_text(str(message))
            else:
                self._send_fragments(message)
        except ConnectionError:
            raise self._closed_error() from None
        if self._writing_paused:
            await self._drain()

    cdef int _send_fragments(self, message) except -1:
        try:
            chunks = iter(message)
        except TypeError:
            raise TypeError("send() takes a str, a bytes-like object or an iterable of "
                            f"either, not {type(message).__name__}") from None
        conn = self.connection
        opcode = None
        pending = None
        cdef bint first = True
        for chunk in chunks:
            kind = OpCode.TEXT if isinstance(chunk, str) else OpCode.BINARY
            if opcode is None:
                opcode = kind
            elif kind != opcode:
                raise TypeError("the fragments of one message are all str or all bytes-like")
            if pending is not None:
                conn.send(PyFrame(fin=False, opcode=opcode if first else OpCode.CONTINUATION,
                                  data=pending))
                first = False
            pending = chunk
        if pending is None:
            raise ValueError("send() got an empty iterable: a message needs a fragment")
        conn.send(PyFrame(fin=True, opcode=opcode if first else OpCode.CONTINUATION,
                          data=pending))
        return 0

    async def _drain(self):
        while self._writing_paused and not self._closed:
            if self._drained is None:
                self._drained = self.loop.create_future()
            await self._drained
        if self._closed:
            raise self._closed_error()

    async def ping(self, data=None):
        """Send a ping and return the round-trip time in seconds once its pong arrives.

        `data`: the payload (at most 125 bytes; default: a fresh 8-byte counter). A pong
        also answers every earlier ping. Raises ConnectionClosed if the connection closes
        first.
        """
        if data is None:
            self._ping_count += 1
            payload = struct.pack("!Q", self._ping_count)
        else:
            payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if payload in self._pings:
            raise ValueError("a ping with this payload is already waiting for its pong")
        future = self.loop.create_future()
        try:
            self.connection.ping(payload)
        except ConnectionError:
            raise self._closed_error() from None
        self._pings[payload] = (future, time.monotonic())
        return await future

    cdef int _pong(self, data) except -1:
        payload = bytes(data)
        if payload not in self._pings:
            return 0                      # unsolicited, or a ping already given up
        now = time.monotonic()
        pings = self._pings
        while pings:
            key, (future, sent) = pings.popitem(last=False)
            if not future.done():
                future.set_result(now - sent)
            if key == payload:
                self.latency = now - sent
                break
        return 0

    # ---------------------------------------------------------------- closing

    async def close(self, code=1000, reason=""):
        """Start the closing handshake (unless it started) and wait until the connection
        is closed: the peer's close frame, or `close_timeout` at most. Messages received
        from then on are dropped."""
        self.begin_close(code, reason)
        await self.wait_closed()

    def begin_close(self, code=1000, reason=""):
        """close() without waiting: send the close frame; recv() raises from now on."""
        if self._closed:
            return
        conn = self.connection
        conn.close(code, reason)          # ValueError for a code that may not be sent
        self._closing = True
        if self._transport is not None:
            self._transport.feed_all()    # see what the peer sent up to its close
        # The peer's close frame must be read, whatever the receive queue holds.
        if self._reading_paused:
            self._reading_paused = False
            conn.resume_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait_closed(self):
        """Wait until the connection is closed."""
        if not self._closed_future.done():
            await _shield(self._closed_future)

    cdef object _closed_error(self):
        if self._closed:
            return closed_exception(self.close_code, self.close_reason)
        protocol = self.connection.protocol
        code = protocol.close_code if protocol is not None else None
        return closed_exception(code, protocol.close_reason if protocol is not None else "")

    def __repr__(self):
        side = "client" if self.connection.is_client else "server"
        state = (f"closed {self.close_code}" if self._closed
                 else "closing" if self._closing else "open")
        return f"<fastws.asyncio.WebSocket {side} {state} peer={self.remote_address}>"


async def _shield(future):
    # Cancelling a coroutine that waits for the close must not cancel the close itself.
    await asyncio.shield(future)
