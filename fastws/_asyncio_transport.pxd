# fastws/_asyncio_transport.pxd: the asyncio adapter's C-level interface, for
# fastws._asyncio_websocket (which tells it when a message was delivered and asks for the
# next one without a Python call).

from libc.stdint cimport uint8_t

from fastws._protocol cimport Protocol, Sink


cdef class AsyncioTransport(Sink):
    cdef readonly object loop
    cdef readonly bint is_client
    cdef readonly bint closed
    cdef readonly object peername
    cdef readonly bint tls
    cdef object listener
    cdef object _transport            # the asyncio transport, once connected
    cdef object _pause_check          # see connection_made (CPython gh-127655)
    cdef public Protocol protocol     # set at the upgrade: reads are parsed in C
    cdef public double close_timeout
    cdef bint _started                # the connection asked to start (start())
    # reading
    cdef bint _reading_paused         # by the connection (pause_reading)
    cdef bint _socket_paused          # what the asyncio transport was last told
    cdef bint _discarding             # end(): input is read only to see the peer's EOF
    # one message at a time (the awaitable WebSocket): see the module doc
    cdef public bint one_message_at_a_time
    cdef bint message_delivered       # set by the WebSocket: stop feeding the protocol
    cdef bytes _unparsed              # the rest of a read, not yet fed to the protocol
    cdef Py_ssize_t _unparsed_pos
    cdef bint _round_scheduled        # _next_round is queued on the loop
    # writing
    cdef list _pending                # batched writes (during a read, or held)
    cdef Py_ssize_t _pending_size
    cdef bint _corked                 # inside a read
    cdef bint _held                   # writes wait for the loop's next round (hold_writes)
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _low_water
    cdef long long _cap               # -1: no cap
    cdef Py_ssize_t _largest          # the largest write seen since the buffer was empty
    cdef bint _writing_paused
    cdef bint _overflowed
    cdef unsigned long long _handed   # bytes given to the asyncio transport
    cdef readonly unsigned long long bytes_received
    # ending
    cdef bint _ending
    cdef bint _output_shut
    cdef object _close_timer

    cdef int _connection_made(self) except -1
    cdef int _received(self, object owner, const uint8_t *data, Py_ssize_t n) except -1
    cdef Py_ssize_t _feed_messages(self, const uint8_t *data, Py_ssize_t n) except -1
    cdef int feed_next(self) except -1
    cdef int feed_all(self) except -1
    cdef int _after_parsing(self, bint corked) except -1
    cdef int _schedule_round(self) except -1
    cdef int _update_reading(self) except -1
    cdef int _write_pending(self) except -1
    cdef int _check_cap(self, Py_ssize_t written) except -1
    cdef int _shut_output(self) except -1
    cdef int _lost(self, exc) except -1
