# cython: language_level=3
"""The hot half of a Connection, in C: frames from the protocol to the handler, and messages
from the application to the protocol.

A message costs one Python call on the way in (the handler's `on_frame`) and one on the way
out (`conn.send...`, which lands here): everything between the socket and those calls is C.
With stages in the chain, frames travel it instead (Python). fastws.connection.Connection
subclasses this class and sets `_protocol`, `_stages` and `_on_frame`; nothing here calls
back into the subclass.
"""

cimport cython

from fastws._codec cimport OP_BINARY, OP_TEXT, Frame
from fastws._protocol cimport STATE_OPEN, Protocol, Receiver


cdef object _not_a_frame(object value):
    hint = ("send_text() sends a str" if isinstance(value, str)
            else "send_binary() sends bytes" if isinstance(value, (bytes, bytearray, memoryview))
            else "build one with fastws.Frame(opcode, data)")
    return TypeError(f"send() takes a fastws.Frame, not {type(value).__name__}: {hint}")


@cython.auto_pickle(False)
cdef class ConnectionBase(Receiver):
    """The receiving end of a Protocol and the sending methods of a Connection."""

    cdef public Protocol _protocol    # None until the WebSocket handshake completes
    cdef public list _stages          # the stage chain, wire first; empty: the fast path
    cdef public object _on_frame      # the handler's on_frame, or None

    def __cinit__(self, *args, **kwargs):
        self._stages = []

    @property
    def is_open(self):
        """True while WebSocket messages can be sent (upgraded, no close frame sent)."""
        return self._protocol is not None and self._protocol._status == STATE_OPEN

    # -- outbound

    def send(self, frame):
        """Send a frame through the stage chain; raises ConnectionError once closing."""
        if not isinstance(frame, Frame):
            raise _not_a_frame(frame)
        if self._stages:
            self._stages[len(self._stages) - 1].on_frame_out(frame)
        else:
            self._sending().send_c((<Frame>frame)._opcode, (<Frame>frame).data,
                                   (<Frame>frame).fin, (<Frame>frame).rsv)

    def send_text(self, text):
        """Send a text message (a str)."""
        if not isinstance(text, str):
            raise TypeError(f"send_text() takes a str, not {type(text).__name__}; "
                            "send_binary() sends bytes")
        if self._stages:
            self.send(Frame(opcode=OP_TEXT, data=text))
        else:
            self._sending().send_c(OP_TEXT, (<str>text).encode("utf-8"), True, 0)

    def send_binary(self, data):
        """Send a binary message (any bytes-like object)."""
        if isinstance(data, str):
            raise TypeError("send_binary() takes a bytes-like object; send_text() sends a str")
        if self._stages:
            self.send(Frame(opcode=OP_BINARY, data=data))
        else:
            self._sending().send_c(OP_BINARY, data, True, 0)

    cdef Protocol _sending(self):
        if self._protocol is None:
            raise ConnectionError("cannot send: the WebSocket handshake has not completed")
        return self._protocol

    def _send_from_chain(self, Frame frame not None):
        """The wire end of the stage chain. A control frame a stage sends once the closing
        handshake started is dropped (nothing may follow a close frame); data raises."""
        protocol = self._sending()
        if protocol._status != STATE_OPEN and frame._opcode >= 8:
            return
        protocol.send_c(frame._opcode, frame.data, frame.fin, frame.rsv)

    # -- inbound (Receiver)

    cdef int frame_received(self, Frame frame) except -1:
        if self._stages:
            self._stages[0].on_frame_in(frame)
        elif self._on_frame is not None:
            self._on_frame(self, frame)
        return 0

    cdef int close_received(self, object close) except -1:
        return 0         # the connection learns of it when the transport closes

    def _deliver(self, Frame frame not None):
        """The handler end of the stage chain."""
        if self._on_frame is not None:
            self._on_frame(self, frame)
