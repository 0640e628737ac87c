# cython: language_level=3
"""A connection's transport on an asyncio loop (asyncio's own or uvloop): the adapter between
an asyncio transport and a fastws Connection and its Protocol.

`AsyncioTransport` is two things at once, as `fastws._transport.Transport` is on the fastws
Loop: the asyncio (buffered) protocol that asyncio's transport feeds, and the `Sink` the
WebSocket Protocol writes to. It tells its listener (the Connection) the same small set of
events the Loop transport does: connection_made(), data_received(view) (before the upgrade;
the view is valid only during the call), eof_received(), connection_lost(exc) (exactly once),
pause_writing(), resume_writing(), write_overflow() and internal_error(exc).

Reading: asyncio reads into a buffer this thread's transports share (`get_buffer`), and
after the upgrade the bytes go from it straight to the Protocol's parser in C
(`buffer_updated`): no bytes object per read and no Python call per frame. For the
awaitable WebSocket (`one_message_at_a_time`), the parser is fed frame by frame until a
message is delivered; the rest of the read is kept (one copy), the socket is not read
meanwhile, and the WebSocket asks for the next message (`feed_next`) when its coroutine
wants one, so that its answers precede what the protocol writes for later input. What is
still kept in the loop's next round is parsed then (`feed_all`). Writing: the
writes made while one read is handled are batched and leave together, with one
`transport.write()`/`writelines()`, when the read is done; a coroutine woken by that read
can join the batch (`hold_writes`), and a broadcast holds the transport until the end of the
loop's iteration (Sink.hold/release, from fastws._fanout: one `writelines()` for every frame
published to it in that iteration); every other write goes to the asyncio transport at once.
Back-pressure comes from the asyncio transport's own write buffer (its high and low water
marks are the connection's limits); a write that finds more than `max_write_buffer` bytes
unsent besides the largest write waiting tells the listener the peer does not read (one
message, however large, never does on its own).

TLS is asyncio's: the handshake is done before `connection_made`, and TLS errors never
reach the connection. Closing follows the Loop transport: `end()` sends what is written,
then a server half-closes and waits for the peer's EOF (TLS: closes), a client waits for
the server to close, bounded by `close_timeout`; `close()` drops the connection at once.
"""

import threading

try:
    from asyncio.selector_events import _SelectorSocketTransport
except ImportError:                  # not in every Python: then nothing to work around
    _SelectorSocketTransport = None

cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from fastws._codec cimport fastws_mask_copy
from fastws._codec cimport FrameParser
from fastws._protocol cimport Protocol, Sink

cdef enum:
    READ_SIZE = 256 * 1024

cdef object _per_thread = threading.local()


cdef bytearray _read_buffer():
    """This thread's read buffer: asyncio fills it and hands it back within one call, and
    every byte is used (parsed or copied) before that call returns."""
    buffer = getattr(_per_thread, "buffer", None)
    if buffer is None:
        buffer = bytearray(READ_SIZE)
        _per_thread.buffer = buffer
        # get_buffer() hands out a memoryview: asyncio's TLS reader slices what it gets
        # (buf[offset:]) and reads into the slice, which must not be a copy.
        _per_thread.view = memoryview(buffer)
    return buffer


cdef inline Py_ssize_t _frame_end(FrameParser parser, const uint8_t *data,
                                  Py_ssize_t n) noexcept:
    """How many of these `n` bytes complete the frame the parser is in (its header and
    payload; `n` when they do not). Only the length fields are read: every check is the
    parser's, which is fed these bytes."""
    cdef Py_ssize_t held, size, i
    cdef uint64_t length, need
    cdef uint8_t b1
    if parser._payload is not None:                   # inside a frame's payload
        need = parser._length - <uint64_t>parser._filled
        return <Py_ssize_t>need if need < <uint64_t>n else n
    held = parser._header_len                         # header bytes the parser holds
    if held + n < 2:
        return n
    b1 = parser._header[1] if held >= 2 else data[1 - held]
    size = 2 + (2 if (b1 & 0x7F) == 126 else 8 if (b1 & 0x7F) == 127 else 0)
    size += 4 if b1 & 0x80 else 0
    if held + n < size:
        return n
    length = b1 & 0x7F
    if length >= 126:
        length = 0
        for i in range(2, 4 if (b1 & 0x7F) == 126 else 10):
            length = (length << 8) | (parser._header[i] if i < held else data[i - held])
    need = <uint64_t>(size - held) + length
    return <Py_ssize_t>need if need < <uint64_t>n else n


@cython.auto_pickle(False)
cdef class AsyncioTransport(Sink):
    """One connection on an asyncio loop; see the module doc."""

    def __init__(self, loop, listener, *, bint is_client, double close_timeout=5.0):
        self.loop = loop
        self.listener = listener
        self.is_client = is_client
        self.close_timeout = close_timeout
        self._pending = []
        self._high_water = 256 * 1024
        self._low_water = 64 * 1024
        self._cap = -1

    # ---------------------------------------------------------------- configuration

    def set_write_limits(self, Py_ssize_t high, Py_ssize_t low, cap):
        """Pause above `high` bytes unsent, resume at `low`; past `cap` (None: no cap) the
        peer is taken as not reading."""
        if not 0 <= low <= high:
            raise ValueError("write limits need 0 <= low <= high")
        self._high_water = high
        self._low_water = low
        self._cap = -1 if cap is None else cap
        if self._transport is not None and not self.closed:
            self._transport.set_write_buffer_limits(high=high, low=low)

    @property
    def transport(self):
        """The asyncio transport (None before it connected)."""
        return self._transport

    @property
    def sock(self):
        return self._transport.get_extra_info("socket") if self._transport is not None else None

    @property
    def handshaking(self):
        return False                  # asyncio completes TLS before connection_made

    @property
    def ending(self):
        return self._ending

    @property
    def write_buffer_size(self):
        """Bytes accepted for sending that have not left yet (ours and asyncio's buffer)."""
        size = self._pending_size
        if self._transport is not None and not self.closed:
            size += self._transport.get_write_buffer_size()
        return size

    @property
    def bytes_sent(self):
        """Bytes handed on to the kernel (TLS: before encryption), as far as asyncio says."""
        if self._transport is not None and not self.closed:
            return self._handed - self._transport.get_write_buffer_size()
        return self._handed

    # ---------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport):
        if self.closed:               # closed (a timeout) while asyncio was connecting
            transport.abort()
            return
        self._transport = transport
        # The stdlib's selector transport did not pause its protocol after writelines()
        # (CPython gh-127655: 3.12 and 3.13 before 3.12.9 / 3.13.2), so a peer that does not
        # read went unnoticed and the buffer grew without bound: we ask it to check after
        # each writelines() (it does nothing when the buffer is below its high-water mark
        # or the protocol is paused already).
        self._pause_check = (transport._maybe_pause_protocol
                             if _SelectorSocketTransport is not None
                             and isinstance(transport, _SelectorSocketTransport) else None)
        self.peername = transport.get_extra_info("peername")
        self.tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=self._high_water, low=self._low_water)
        self._update_reading()
        if self._started:
            self._connection_made()

    def start(self):
        """The connection is ready for connection_made() (now, or once asyncio connects)."""
        self._started = True
        if self._transport is not None and not self.closed:
            self._connection_made()

    cdef int _connection_made(self) except -1:
        self._corked = True
        try:
            self.listener.connection_made()
        finally:
            self._corked = False
        if not self.closed:
            self.flush()
        return 0

    def get_buffer(self, Py_ssize_t sizehint):
        _read_buffer()
        return _per_thread.view

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef bytearray buffer = _read_buffer()
        self._received(buffer, <const uint8_t *>PyByteArray_AS_STRING(buffer), nbytes)

    def data_received(self, data):
        """Bytes from a transport that does not use get_buffer (uvicorn hands the upgrade
        request over this way)."""
        cdef const uint8_t[::1] view = data
        if view.shape[0]:
            self._received(data, &view[0], view.shape[0])

    cdef int _received(self, object owner, const uint8_t *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t consumed
        if self.closed:
            return 0
        self.bytes_received += n
        if self._discarding:
            return 0
        if self._unparsed is not None:
            # A read that was already under way when reading paused: behind the rest.
            rest = self._unparsed[self._unparsed_pos:]
            self._unparsed = rest + PyBytes_FromStringAndSize(<const char *>data, n)
            self._unparsed_pos = 0
            return 0
        self._corked = True
        try:
            if self.protocol is not None and self.one_message_at_a_time:
                consumed = self._feed_messages(data, n)
                if consumed < n and not self.closed and not self._ending:
                    # The application has a message to handle before the protocol sees
                    # what follows it: keep the rest, read no more until it is parsed.
                    self._unparsed = PyBytes_FromStringAndSize(<const char *>data + consumed,
                                                               n - consumed)
                    self._unparsed_pos = 0
                    self._update_reading()
                    self._schedule_round()
            elif self.protocol is not None:
                self.protocol.feed_c(data, n)
            else:
                with memoryview(owner) as view:
                    self.listener.data_received(view[:n])
        except Exception as exc:
            if self.closed:
                raise
            self.listener.internal_error(exc)
        finally:
            self._corked = False
        if not self.closed and not self._held:
            self.flush()
        return 0

    cdef Py_ssize_t _feed_messages(self, const uint8_t *data, Py_ssize_t n) except -1:
        """Feed the protocol frame by frame until a message was delivered (the WebSocket
        sets `message_delivered`); the bytes consumed."""
        cdef Py_ssize_t pos = 0, take
        cdef Protocol protocol = self.protocol
        self.message_delivered = False
        while pos < n:
            take = _frame_end(protocol, data + pos, n - pos)
            protocol.feed_c(data + pos, take)
            pos += take
            if self.message_delivered or self.closed or self._ending or self.protocol is None:
                break
        return pos

    cdef int feed_next(self) except -1:
        """Parse the kept bytes up to the next message (the application asks for one)."""
        cdef bytes chunk = self._unparsed
        cdef Py_ssize_t consumed
        if chunk is None or self.closed or self.protocol is None:
            return 0
        cdef bint corked = self._corked
        self._corked = True
        try:
            consumed = self._feed_messages(<const uint8_t *>PyBytes_AS_STRING(chunk)
                                           + self._unparsed_pos,
                                           PyBytes_GET_SIZE(chunk) - self._unparsed_pos)
            self._unparsed_pos += consumed
        except Exception as exc:
            if self.closed:
                raise
            self.listener.internal_error(exc)
        finally:
            self._corked = corked
        if self._unparsed is chunk:
            if self._unparsed_pos >= PyBytes_GET_SIZE(chunk) or self._ending or self.closed:
                self._unparsed = None
            else:
                # Parsed ahead in the loop's next round unless the coroutine asks first.
                self._schedule_round()
        return self._after_parsing(corked)

    cdef int feed_all(self) except -1:
        """Parse every kept byte now (the application did not come back for them)."""
        cdef bytes chunk = self._unparsed
        if chunk is None or self.closed:
            return 0
        self._unparsed = None
        cdef bint corked = self._corked
        self._corked = True
        try:
            if self.protocol is not None:
                self.protocol.feed_c(<const uint8_t *>PyBytes_AS_STRING(chunk) + self._unparsed_pos,
                                     PyBytes_GET_SIZE(chunk) - self._unparsed_pos)
        except Exception as exc:
            if self.closed:
                raise
            self.listener.internal_error(exc)
        finally:
            self._corked = corked
        return self._after_parsing(corked)

    cdef int _after_parsing(self, bint corked) except -1:
        if self.closed:
            return 0
        self._update_reading()
        if not corked and not self._held:
            self.flush()
        return 0

    cdef int _schedule_round(self) except -1:
        if not self._round_scheduled:
            self._round_scheduled = True
            self.loop.call_soon(self._next_round)
        return 0

    def _next_round(self):
        # The loop's round after a read that woke a coroutine or stopped at a message: the
        # coroutine has run. What it sent leaves now, together; what it did not ask for is
        # parsed now, ahead of it, so that pings, the peer's close and the receive queue's
        # limit work as usual.
        self._round_scheduled = False
        self._held = False
        if not self.closed:
            self.feed_all()
        if not self.closed:
            self.flush()

    def eof_received(self):
        if self.closed:
            return False
        self._discarding = True
        self.listener.eof_received()
        self.close(None)
        return False

    def connection_lost(self, exc):
        self._lost(exc)

    def pause_writing(self):
        if not self._writing_paused:
            self._writing_paused = True
            if not self.closed:
                self.listener.pause_writing()

    def resume_writing(self):
        if self._writing_paused:
            self._writing_paused = False
            if not self.closed:
                self.listener.resume_writing()

    # ---------------------------------------------------------------- reading

    def pause_reading(self):
        self._reading_paused = True
        self._update_reading()

    def resume_reading(self):
        self._reading_paused = False
        self._update_reading()

    cdef int _update_reading(self) except -1:
        """Tell the asyncio transport to read or not: not while the connection paused it
        (unless its output is shut: the peer's EOF must be seen), nor while bytes already
        read wait to be parsed."""
        cdef bint paused = ((self._reading_paused and not self._output_shut)
                            or self._unparsed is not None)
        if self._transport is None or self.closed or paused == self._socket_paused:
            return 0
        self._socket_paused = paused
        if paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()
        return 0

    @property
    def reading_paused(self):
        return self._reading_paused

    # ---------------------------------------------------------------- writing (Sink)

    cdef int write(self, object data) except -1:
        if self.closed or self._output_shut:
            return 0
        cdef Py_ssize_t size = len(data)
        if not size:
            return 0
        if self._corked or self._held or self._transport is None or self._pending:
            self._pending.append(data)
            self._pending_size += size
            if self._transport is None:
                return 0
            if (not (self._corked or self._held)
                    or self._pending_size >= self._high_water):
                # Behind what was batched (order), or a batch past the high-water mark:
                # it leaves now, so that asyncio's water marks (pause_writing) apply.
                self._write_pending()
            return 0
        self._handed += size
        self._transport.write(data)
        if self._writing_paused and self._cap >= 0:
            self._check_cap(size)
        return 0

    cdef int write_frame(self, bytes header, object payload, bint masked,
                         uint32_t key) except -1:
        cdef uint8_t k[4]
        cdef const uint8_t[::1] view
        cdef Py_ssize_t n
        cdef bytes out
        if masked:
            # A client's large frame: masked into a new bytes object, which asyncio may keep
            # in its buffer for as long as the peer takes to read it.
            view = payload
            n = view.shape[0]
            out = PyBytes_FromStringAndSize(NULL, n)
            k[0] = (key >> 24) & 0xFF
            k[1] = (key >> 16) & 0xFF
            k[2] = (key >> 8) & 0xFF
            k[3] = key & 0xFF
            if n:
                fastws_mask_copy(<uint8_t *>PyBytes_AS_STRING(out), &view[0], <size_t>n, k, 0)
            payload = out
        self.write(header)
        return self.write(payload)

    def write_bytes(self, data):
        """Bytes for the peer (HTTP answers, the handshake); sent as batching allows."""
        self.write(data)

    cdef int hold(self) except -1:
        # Sink.hold, for a broadcast (fastws._fanout): writes wait until its release() at
        # the end of the loop's iteration, which hands them to asyncio together. Shares
        # `_held` with hold_writes(): whichever ends the hold first sends the batch.
        if self._held or self.closed:
            return 0
        self._held = True
        return 1

    cdef int release(self) except -1:
        if self._held:
            self._held = False
            if not self.closed:
                self.flush()
        return 0

    cdef Py_ssize_t unsent(self):
        # What a slow consumer policy measures: ours and asyncio's buffer.
        cdef Py_ssize_t size = self._pending_size
        if self._transport is not None and not self.closed:
            size += self._transport.get_write_buffer_size()
        return size

    def hold_writes(self):
        """Keep writes batched until the loop's next round: a coroutine that a read just
        woke will run before then, and its replies can leave with the read's."""
        if not self._held and not self.closed:
            self._held = True
            self._schedule_round()

    def flush(self):
        """Send what is batched now."""
        if not self._corked:
            self._write_pending()
        if self._ending and not self._pending and not self._corked:
            self._shut_output()

    cdef int _write_pending(self) except -1:
        cdef list pending = self._pending
        transport = self._transport
        cdef Py_ssize_t size = self._pending_size
        if pending and transport is not None and not self.closed:
            self._pending = []
            self._handed += size
            self._pending_size = 0
            if len(pending) == 1:
                transport.write(pending[0])
            else:
                transport.writelines(pending)
                if self._pause_check is not None:
                    self._pause_check()
            if self._writing_paused and self._cap >= 0:
                self._check_cap(size)
        return 0

    cdef int _check_cap(self, Py_ssize_t written) except -1:
        # More than the cap waiting besides the largest write (and these `written` bytes)
        # means the peer is not reading; one message, however large, never does on its own.
        if self._overflowed or self.closed or self._transport is None:
            return 0
        cdef Py_ssize_t older = self._transport.get_write_buffer_size() - written
        if older <= 0 or written > self._largest:
            self._largest = written
        if older - self._largest > self._cap:
            # asyncio keeps what it was given: nothing can be dropped from its buffer, so
            # the connection is failed (its close frame is queued behind the rest) and
            # dropped after close_timeout at the latest.
            self._overflowed = True
            self.listener.write_overflow()
        return 0

    # ---------------------------------------------------------------- ending

    cdef int end(self) except -1:
        """Nothing more will be written: close once it is sent (Sink.end; see module doc)."""
        if self._ending or self.closed:
            return 0
        self._ending = True
        self._discarding = True
        self.close_after(self.close_timeout)
        if not self._pending and not self._corked:
            self._shut_output()
        return 0

    def end_output(self):
        """Sink.end() for Python callers (an HTTP answer that closes the connection)."""
        self.end()

    def close_after(self, double timeout):
        """Close the transport after `timeout` seconds unless it closed by then."""
        if self._close_timer is None and not self.closed:
            self._close_timer = self.loop.call_later(timeout, self._close_timed_out)

    def _close_timed_out(self):
        self._close_timer = None
        self.close(None)

    cdef int _shut_output(self) except -1:
        if self._output_shut or self.closed or self._transport is None:
            return 0
        self._output_shut = True
        transport = self._transport
        self._unparsed = None             # the protocol reads nothing more
        self._update_reading()            # the peer's EOF must be seen
        if self.is_client:
            return 0                      # wait for the server to close (RFC 6455 7.1.1)
        if not self.tls and transport.can_write_eof():
            # Half-close once asyncio's buffer is sent, and read until the peer's EOF:
            # closing with unread input would reset the connection and could destroy our
            # last frames before the peer reads them.
            transport.write_eof()
        else:
            transport.close()             # TLS: close_notify once the buffer is sent
        return 0

    def close(self, exc=None):
        """Close now (unsent data is dropped) and report `connection_lost(exc)`."""
        if self.closed:
            return
        if self._transport is not None:
            self._transport.abort()
        self._lost(exc)

    def abort(self):
        self.close(None)

    cdef int _lost(self, exc) except -1:
        if self.closed:
            return 0
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._pending = []
        self._pending_size = 0
        self._unparsed = None
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.receive_eof()
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.connection_lost(exc)
        return 0

    def __repr__(self):
        state = "closed" if self.closed else "open" if self._transport is not None else "new"
        return f"<fastws.AsyncioTransport {state} peer={self.peername}>"
