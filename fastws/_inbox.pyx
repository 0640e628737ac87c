# cython: language_level=3
"""The blocking client's receiving end of a Protocol, in C: whole messages straight into a queue.

A blocking client (fastws.sync) hands the bytes it reads to the protocol's parser; the
protocol calls this Receiver through the C vtable for every message, which appends it to the
client's deque as the `str` or `bytes` that `recv()` returns. No Python code runs per
message between the socket and the queue. Pongs are kept apart for the ping waiters, and the
peer's close frame for the closing handshake.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8

from fastws._codec cimport OP_BINARY, OP_PONG, OP_TEXT, Frame
from fastws._protocol cimport Receiver


@cython.final
@cython.auto_pickle(False)
cdef class Inbox(Receiver):
    """Inbox(messages): text messages go to `messages` (a deque) as str, binary ones as
    bytes; pong payloads to `pongs`; the peer's Close to `close`."""

    cdef readonly object messages
    cdef object _append
    cdef readonly list pongs
    cdef public object close

    def __init__(self, messages):
        self.messages = messages
        self._append = messages.append
        self.pongs = []
        self.close = None

    cdef int frame_received(self, Frame frame) except -1:
        cdef int opcode = frame._opcode
        data = frame.data
        if opcode == OP_BINARY:
            self._append(data if type(data) is bytes else bytes(data))
        elif opcode == OP_TEXT:
            if type(data) is not bytes:
                data = bytes(data)
            # The protocol checked the UTF-8 already: decoding cannot fail.
            self._append(PyUnicode_DecodeUTF8(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data),
                                              NULL))
        elif opcode == OP_PONG:
            self.pongs.append(data)
        return 0

    cdef int close_received(self, object close) except -1:
        self.close = close
        return 0
