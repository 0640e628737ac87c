# fastws/_protocol.pxd: the C-level contract of the sans-I/O WebSocket protocol.
#
# A Protocol writes the bytes it wants sent to its Sink and hands the frames it received
# to its Receiver. The base classes keep both in lists (data_to_send(), events_received());
# a transport written in Cython subclasses Sink, and a host subclasses Receiver, to get
# them through the C vtable with no Python call per frame.

from libc.stdint cimport uint32_t

from fastws._codec cimport Frame, FrameParser

cdef enum:
    STATE_CONNECTING = 0
    STATE_OPEN = 1
    STATE_CLOSING = 2
    STATE_CLOSED = 3
    # Payloads from this size on leave beside their header (write_frame), not joined to it.
    LARGE_PAYLOAD = 64 * 1024


cdef class Sink:
    cdef list _chunks
    cdef readonly bint ended
    # Bytes to send, in order.
    cdef int write(self, object data) except -1
    # A large frame: its header, then its payload (masked with `key` by the sink when
    # `masked`: the sink may mask late, as it sends, instead of copying the payload now).
    cdef int write_frame(self, bytes header, object payload, bint masked,
                         uint32_t key) except -1
    # Nothing more will be written: close the connection once what was written is sent.
    cdef int end(self) except -1
    # Batching for broadcasts (fastws._fanout): hold() keeps writes until release(), which
    # sends them with one write; hold() returns 1 when the sink was not held (the caller
    # must release it), 0 when it was or cannot be. unsent(): bytes written, not yet sent.
    cdef int hold(self) except -1
    cdef int release(self) except -1
    cdef Py_ssize_t unsent(self)


cdef class Receiver:
    cdef list _events
    # A message (or a fragment, without reassembly), a pong, or an unanswered ping.
    cdef int frame_received(self, Frame frame) except -1
    # The peer's close frame, a Close(code, reason); it was answered and input has stopped.
    cdef int close_received(self, object close) except -1


cdef class Protocol(FrameParser):
    cdef readonly bint is_client
    cdef int _status                    # STATE_*
    cdef public Sink sink
    cdef public Receiver receiver
    cdef object _extension              # permessage-deflate or another Extension; None
    cdef int _extension_rsv             # the RSV bits the extension owns
    cdef Py_ssize_t _max_message        # -1: no limit
    cdef public bint reassemble         # deliver whole messages (else frames as they come)
    cdef public bint auto_pong          # answer pings (else deliver them)
    # the inbound message in progress
    cdef int _msg_opcode                # -1 when none
    cdef int _msg_rsv
    cdef bint _msg_decoded              # its payload goes through the extension
    cdef Py_ssize_t _msg_size           # bytes so far, after decoding
    cdef list _parts
    cdef uint32_t _utf8                 # UTF-8 state of decoded text
    # the outbound message in progress
    cdef int _out_opcode                # -1 when none
    cdef list _deferred                 # pre-encoded frames waiting for it to end
    # the closing handshake: (code, reason) of the close frames sent and received
    cdef readonly object close_sent
    cdef readonly object close_rcvd
    cdef readonly bint failed           # we failed the connection (RFC 6455 7.1.7)
    cdef readonly object failure        # ... with this Close(code, reason)
    cdef object _first_close            # close_sent or close_rcvd, whichever came first

    cdef int send_c(self, int opcode, object data, bint fin, int rsv) except -1
    # A whole unmasked text or binary frame encoded once for many connections (a server's
    # broadcast): 1 when queued (or deferred behind an outgoing fragmented message), 0 when
    # the connection is not open.
    cdef int send_encoded_c(self, bytes frame) except -1
    cdef int _write_deferred(self) except -1
    cdef int _write_frame(self, int opcode, object data, Py_ssize_t size, bint fin,
                          int rsv) except -1
    cdef int _data_frame(self, bint fin, int rsv, int opcode, bint masked, uint32_t key,
                         bytes payload) except -1
    cdef int _control_frame(self, int opcode, bint masked, uint32_t key,
                            bytes payload) except -1
    cdef object _decode(self, bytes payload, bint first, bint fin)
    cdef int _deliver(self, Frame frame) except -1
    cdef int _send_close(self, object code, str reason) except -1
    cdef int fail_c(self, int code, str reason) except -1
    cdef int _end_output(self) except -1
