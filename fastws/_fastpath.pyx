# cython: language_level=3
"""The connection's inbound path with the default stage chain fused into the parser.

Most connections run the default chain, AutoPong then Consolidate. Running those as
Python stages costs several Python calls per frame; `FusedReader` does the same work
in C, inside the parser's frame callback, so a message costs one Python call: the
handler's `on_frame`. When the chain is anything else (a user stage, AutoPing, a
different Consolidate), the connection turns fusion off and every frame goes through
the Python chain unchanged. Pings (answered with a pong), close frames and protocol
failures go back to the connection's Python methods: they are rare.
"""

cimport cython
from libc.stdint cimport uint32_t

from fastws._codec cimport Frame, FrameParser

from fastws._codec import CloseCode

cdef enum:
    OP_CONTINUATION = 0
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10


@cython.auto_pickle(False)
cdef class FusedReader(FrameParser):
    """FrameParser + AutoPong + Consolidate for one connection (see the module doc)."""

    cdef object conn
    cdef public bint fused
    cdef public object handler_on_frame     # handler.on_frame, or None
    cdef object frame_parsed                # conn._frame_parsed: the Python chain
    cdef object close_received              # conn._close_frame_received
    cdef object answer_ping                 # conn._answer_ping
    cdef object fail_connection             # conn.fail
    cdef Py_ssize_t _limit                  # max message size, -1 for none
    # the fragmented message in progress
    cdef int _msg_opcode                    # -1 when none
    cdef int _msg_rsv
    cdef Py_ssize_t _msg_size
    cdef list _parts

    def __init__(self, conn, *, bint expect_mask, max_frame_size, max_message_size,
                 bint validate_utf8=True):
        super().__init__(expect_mask=expect_mask, max_frame_size=max_frame_size,
                         validate_utf8=validate_utf8)
        self.conn = conn
        self.fused = False
        self.frame_parsed = conn._frame_parsed
        self.close_received = conn._close_frame_received
        self.answer_ping = conn._answer_ping
        self.fail_connection = conn.fail
        self.max_message_size = max_message_size
        self._msg_opcode = -1
        self._parts = []

    @property
    def max_message_size(self):
        return None if self._limit < 0 else self._limit

    @max_message_size.setter
    def max_message_size(self, value):
        self._limit = -1 if value is None else value

    def take_partial_message(self):
        """Hand over a fragmented message in progress (when fusion is turned off)."""
        if self._msg_opcode < 0:
            return None
        state = (self._msg_opcode, self._msg_rsv, self._parts, self._msg_size)
        self._reset_message()
        return state

    cdef inline void _reset_message(self):
        self._msg_opcode = -1
        self._msg_size = 0
        self._parts = []

    cdef inline int _deliver(self, Frame frame) except -1:
        if self.handler_on_frame is not None:
            self.handler_on_frame(self.conn, frame)
        return 0

    cdef int handle_error(self, int code, str reason) except -1:
        self.fail_connection(CloseCode(code), reason)
        return 0

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        cdef Py_ssize_t size = len(payload)
        if not self.fused:
            self.frame_parsed(Frame.new(fin, rsv, opcode, masked, key, payload))
            return 0
        if opcode >= 8:
            if opcode == OP_PING:
                self.answer_ping(payload)
            elif opcode == OP_PONG:
                self._deliver(Frame.new(fin, rsv, opcode, masked, key, payload))
            else:
                self.close_received(Frame.new(fin, rsv, opcode, masked, key, payload))
            return 0
        if opcode == OP_CONTINUATION:
            if self._msg_opcode < 0:
                self.fail_connection(CloseCode.PROTOCOL_ERROR,
                                     "continuation frame with no message to continue")
                return 0
            self._msg_size += size
        else:
            if self._msg_opcode >= 0:
                self.fail_connection(CloseCode.PROTOCOL_ERROR,
                                     "new message started inside a fragmented one")
                return 0
            if fin:
                # The common case: a whole message in one frame.
                if self._limit >= 0 and size > self._limit:
                    self.fail_connection(CloseCode.MESSAGE_TOO_BIG,
                                         f"message of {size} bytes exceeds "
                                         f"max_message_size={self._limit}")
                    return 0
                return self._deliver(Frame.new(True, rsv, opcode, masked, key, payload))
            self._msg_opcode = opcode
            self._msg_rsv = rsv
            self._msg_size = size
        if self._limit >= 0 and self._msg_size > self._limit:
            self._reset_message()
            self.fail_connection(CloseCode.MESSAGE_TOO_BIG,
                                 f"fragmented message passed max_message_size={self._limit}")
            return 0
        self._parts.append(payload)
        if fin:
            message = Frame.new(True, self._msg_rsv, self._msg_opcode, False, 0,
                                b"".join(self._parts))
            self._reset_message()
            return self._deliver(message)
        return 0
