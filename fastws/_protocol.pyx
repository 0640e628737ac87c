# cython: language_level=3
"""The WebSocket protocol (RFC 6455), sans I/O: received bytes in, frames and bytes to send out.

`Protocol` owns every rule of a WebSocket connection once it is open, and nothing else: it
holds no socket, no loop and no handler, so every transport (fastws' own loop, asyncio,
a blocking client) drives the same object. The rules, in the order a frame meets them:

* framing, masking expectations, frame size, reserved bits and opcodes: the frame parser
  it extends (fastws._codec), configured for the role (a server expects masked frames);
* fragment order (a continuation needs a message to continue; no new message inside one);
* the extension (permessage-deflate): decodes messages whose first frame has its RSV bits,
  encodes outgoing data frames;
* the message size limit, counted after decoding, as the message grows (a decompression
  bomb fails as soon as it passes the limit, never holding more);
* UTF-8 of text messages: checked by the parser as the bytes arrive, or here after decoding;
* reassembly of fragments (optional) and auto-pong (optional);
* the closing handshake: a close frame is echoed, nothing is sent after a close frame, and
  input stops after the peer's close or a violation. `state` is one of State's values;
  `close_sent` and `close_rcvd` are the (code, reason) of the close frames.

Output goes to `sink` (a Sink: the base class keeps it for `data_to_send()`; a transport
subclasses it), frames for the application to `receiver` (the base keeps them for
`events_received()`). Violations never raise: the connection fails with the RFC's close
code, a close frame is queued and the sink is told to end once it is sent.
"""

import enum
import os

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t

from fastws._codec cimport (
    FASTWS_UTF8_ACCEPT,
    FASTWS_UTF8_REJECT,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Frame,
    FrameParser,
    encode_frame_c,
    encode_header,
    fastws_utf8_feed,
)

from fastws._codec import CloseCode, ProtocolError, close_payload, parse_close

from collections import namedtuple


class State(enum.IntEnum):
    """The state of a WebSocket connection (RFC 6455 4 and 7)."""
    CONNECTING = STATE_CONNECTING     # the opening handshake is not complete
    OPEN = STATE_OPEN                 # messages flow both ways
    CLOSING = STATE_CLOSING           # a close frame was sent or received
    CLOSED = STATE_CLOSED             # the transport is gone


Close = namedtuple("Close", ["code", "reason"])
Close.__doc__ = "The code and reason of a close frame (code 1005 when it carried none)."

_STATE_NAMES = ("connecting", "open", "closing", "closed")


# ---------------------------------------------------------------- masking keys

cdef bytes _key_pool = b""
cdef Py_ssize_t _key_pos = 0


cdef uint32_t next_masking_key() except? 0:
    """A fresh masking key from the OS's random source, drawn 4 KiB at a time."""
    global _key_pool, _key_pos
    if _key_pos + 4 > PyBytes_GET_SIZE(_key_pool):
        _key_pool = os.urandom(4096)
        _key_pos = 0
    cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(_key_pool) + _key_pos
    _key_pos += 4
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline Py_ssize_t _size_of(object data) except -1:
    # Bytes, not items: len() of a buffer of wider items counts items.
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    return memoryview(data).nbytes


# ---------------------------------------------------------------- output and events

@cython.auto_pickle(False)
cdef class Sink:
    """Where a protocol's bytes go. This one keeps them until `data_to_send()`.

    `ended` becomes True when the protocol has nothing more to send and the connection
    should be closed once the bytes are out. Transports subclass it in Cython.
    """

    cdef int write(self, object data) except -1:
        if self._chunks is None:
            self._chunks = []
        self._chunks.append(data)
        return 0

    cdef int write_frame(self, bytes header, object payload, bint masked,
                         uint32_t key) except -1:
        self.write(header)
        if masked:
            from fastws._codec import mask
            self.write(mask(payload, key))
        else:
            self.write(payload)
        return 0

    cdef int end(self) except -1:
        self.ended = True
        return 0

    cdef int hold(self) except -1:
        return 0          # this sink keeps everything until data_to_send() anyway

    cdef int release(self) except -1:
        return 0

    cdef Py_ssize_t unsent(self):
        cdef Py_ssize_t size = 0
        if self._chunks is not None:
            for chunk in self._chunks:
                size += len(chunk)
        return size

    def data_to_send(self):
        """Everything written since the last call, as one bytes object."""
        chunks, self._chunks = self._chunks, None
        return b"".join(chunks) if chunks else b""


@cython.auto_pickle(False)
cdef class Receiver:
    """Where a protocol's frames go. This one keeps them until `events_received()`."""

    cdef int frame_received(self, Frame frame) except -1:
        if self._events is None:
            self._events = []
        self._events.append(frame)
        return 0

    cdef int close_received(self, object close) except -1:
        if self._events is None:
            self._events = []
        self._events.append(close)
        return 0

    def events_received(self):
        """The frames (and the peer's Close) received since the last call, in order."""
        events, self._events = self._events, None
        return events if events is not None else []


# ---------------------------------------------------------------- the protocol

@cython.auto_pickle(False)
cdef class Protocol(FrameParser):
    """The WebSocket protocol for one connection, as server or client (see the module doc).

    Protocol(is_client, *, max_frame_size=None, max_message_size=None, extension=None,
             reassemble=True, auto_pong=True, state=State.OPEN)

    Feed received bytes to `receive_data()`; send with `send()`, `send_text()`,
    `send_binary()`, `ping()`, `pong()`; start the closing handshake with `close()`. Without
    a sink or receiver of your own, take the results with `data_to_send()` and
    `events_received()`. `extension` is an object with `rsv` (the RSV bits it owns),
    `decode(data, first, fin, max_size)` and `encode(data, first, fin) -> (data, rsv)`
    (see fastws.deflate.Deflate); its errors are ProtocolErrors.
    """

    def __cinit__(self, *args, **kwargs):
        self._msg_opcode = -1
        self._out_opcode = -1

    def __init__(self, bint is_client, *, max_frame_size=None, max_message_size=None,
                 extension=None, bint reassemble=True, bint auto_pong=True,
                 state=STATE_OPEN):
        # FrameParser's fields set here, not through its __init__: a call with keywords
        # through super() cost more than the rest of this method (~1.3 us per connection).
        self.expect_mask = not is_client
        self.max_frame_size = max_frame_size
        self.validate_utf8 = True
        self.is_client = is_client
        self._status = state
        self.sink = Sink()
        self.receiver = Receiver()
        self.max_message_size = max_message_size
        self.extension = extension
        self.reassemble = reassemble
        self.auto_pong = auto_pong

    # -- configuration

    @property
    def state(self):
        return State(self._status)

    @property
    def state_name(self):
        return _STATE_NAMES[self._status]

    def open(self):
        """The opening handshake completed (for a protocol made in State.CONNECTING)."""
        if self._status != STATE_CONNECTING:
            raise RuntimeError(f"the connection is already {self.state_name}")
        self._status = STATE_OPEN

    @property
    def max_message_size(self):
        return None if self._max_message < 0 else self._max_message

    @max_message_size.setter
    def max_message_size(self, value):
        if value is not None and value < 0:
            raise ValueError("max_message_size must be >= 0 or None")
        self._max_message = -1 if value is None else value

    @property
    def extension(self):
        return self._extension

    @extension.setter
    def extension(self, extension):
        if self._msg_opcode >= 0 or self._out_opcode >= 0:
            raise RuntimeError("the extension cannot change inside a message")
        rsv = 0 if extension is None else extension.rsv
        if not 0 <= rsv <= 7:
            raise ValueError(f"an extension's rsv is a 3-bit mask, not {rsv}")
        self._extension = extension
        self._extension_rsv = rsv
        self.allowed_rsv = rsv

    @property
    def is_open(self):
        """True while messages can be sent: open, and no close frame sent or received."""
        return self._status == STATE_OPEN

    def data_to_send(self):
        """The bytes written since the last call (with the default Sink)."""
        return self.sink.data_to_send()

    def events_received(self):
        """The frames and Close events received since the last call (default Receiver)."""
        return self.receiver.events_received()

    # -- input

    def receive_data(self, data):
        """Parse received bytes (any bytes-like, any chunking)."""
        self.feed(data)

    def receive_eof(self):
        """The transport is gone (end of stream or error): the state becomes CLOSED.

        `close_code` is then the first close frame's code, or 1006 when neither side
        sent one.
        """
        self._status = STATE_CLOSED
        self.stop()

    cdef int handle_error(self, int code, str reason) except -1:
        # A framing violation found by the parser (it has stopped already).
        return self.fail_c(code, reason)

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        if opcode >= 8:
            return self._control_frame(opcode, masked, key, payload)
        return self._data_frame(fin, rsv, opcode, masked, key, payload)

    cdef int _data_frame(self, bint fin, int rsv, int opcode, bint masked, uint32_t key,
                         bytes payload) except -1:
        cdef bint first = opcode != OP_CONTINUATION
        cdef Py_ssize_t size
        cdef object data = payload
        if first:
            if self._msg_opcode >= 0:
                return self.fail_c(CloseCode.PROTOCOL_ERROR,
                                   "new message started inside a fragmented one")
            if fin and not (rsv & self._extension_rsv):
                # The common case: a whole message in one frame, not encoded.
                size = PyBytes_GET_SIZE(payload)
                if 0 <= self._max_message < size:
                    return self.fail_c(CloseCode.MESSAGE_TOO_BIG,
                                       f"message of {size} bytes exceeds "
                                       f"max_message_size={self._max_message}")
                return self._deliver(Frame.new(True, rsv, opcode, masked, key, payload))
            self._msg_opcode = opcode
            self._msg_rsv = rsv
            self._msg_decoded = (rsv & self._extension_rsv) != 0
            self._msg_size = 0
            self._utf8 = FASTWS_UTF8_ACCEPT
        elif self._msg_opcode < 0:
            return self.fail_c(CloseCode.PROTOCOL_ERROR,
                               "continuation frame with no message to continue")
        if self._msg_decoded:
            data = self._decode(payload, first, fin)
            if data is None:
                return 0
        self._msg_size += _size_of(data)
        if 0 <= self._max_message < self._msg_size:
            return self.fail_c(CloseCode.MESSAGE_TOO_BIG,
                               f"message passed max_message_size={self._max_message}")
        if fin:
            opcode = self._msg_opcode
            self._msg_opcode = -1
        if not self.reassemble:
            return self._deliver(Frame.new(fin, rsv & ~self._extension_rsv,
                                           OP_CONTINUATION if not first else opcode,
                                           masked, key, data))
        if not fin:
            if self._parts is None:
                self._parts = []
            self._parts.append(data)
            return 0
        if self._parts:
            self._parts.append(data)
            data = b"".join(self._parts)
            self._parts = None
        return self._deliver(Frame.new(True, self._msg_rsv & ~self._extension_rsv, opcode,
                                       False, 0, data))

    cdef object _decode(self, bytes payload, bint first, bint fin):
        """One fragment through the extension; None after failing the connection."""
        cdef Py_ssize_t room = -1
        cdef bytes data
        if self._max_message >= 0:
            room = self._max_message - self._msg_size
        try:
            data = bytes(self._extension.decode(payload, first, fin, room))
        except ProtocolError as exc:
            self.fail_c(exc.code, exc.reason)
            return None
        if self._msg_opcode == OP_TEXT:
            # The parser skips encoded text: its UTF-8 is checked here, once decoded.
            self._utf8 = fastws_utf8_feed(self._utf8, <const uint8_t *>PyBytes_AS_STRING(data),
                                          <size_t>PyBytes_GET_SIZE(data))
            if self._utf8 == FASTWS_UTF8_REJECT or (fin and self._utf8 != FASTWS_UTF8_ACCEPT):
                self.fail_c(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
                return None
        return data

    cdef int _control_frame(self, int opcode, bint masked, uint32_t key,
                            bytes payload) except -1:
        if opcode == OP_PING:
            if not self.auto_pong:
                return self._deliver(Frame.new(True, 0, opcode, masked, key, payload))
            if self._status == STATE_OPEN:
                self._write_frame(OP_PONG, payload, PyBytes_GET_SIZE(payload), True, 0)
            return 0
        if opcode == OP_PONG:
            return self._deliver(Frame.new(True, 0, opcode, masked, key, payload))
        # OP_CLOSE
        try:
            code, reason = parse_close(payload)
        except ProtocolError as exc:
            return self.fail_c(exc.code, exc.reason)
        self.close_rcvd = Close(code, reason)
        if self._first_close is None:
            self._first_close = self.close_rcvd
        self.stop()                           # nothing may follow a close frame
        self._parts = None
        if self.close_sent is None:
            # Echo the code (RFC 6455 5.5.1); a close without a code gets one without.
            self._send_close(code if code != CloseCode.NO_STATUS else None, "")
        self._status = STATE_CLOSING
        # Both close frames are out: the closing handshake is done.
        self._end_output()
        if self.receiver is None:
            return 0
        return self.receiver.close_received(self.close_rcvd)

    cdef int _deliver(self, Frame frame) except -1:
        if self.receiver is None:         # detached by its host: the connection is over
            return 0
        return self.receiver.frame_received(frame)

    # -- output

    def send(self, Frame frame not None):
        """Send one frame; the protocol masks it as the role requires (its key is ignored).

        Raises ConnectionError once a close frame was sent or received, ValueError for a
        control frame over 125 bytes or fragmented, or fragments out of order.
        """
        self.send_c(frame._opcode, frame.data, frame.fin, frame.rsv)

    def send_text(self, text):
        if not isinstance(text, str):
            raise TypeError(f"send_text() takes a str, not {type(text).__name__}; "
                            "send_binary() sends bytes")
        self.send_c(OP_TEXT, (<str>text).encode("utf-8"), True, 0)

    def send_binary(self, data):
        if isinstance(data, str):
            raise TypeError("send_binary() takes a bytes-like object; send_text() sends a str")
        self.send_c(OP_BINARY, data, True, 0)

    def ping(self, data=b""):
        self.send_c(OP_PING, data, True, 0)

    def pong(self, data=b""):
        self.send_c(OP_PONG, data, True, 0)

    def send_encoded(self, bytes frame not None):
        """Send a frame encoded once for many connections (a server's broadcast).

        `frame` is a whole (FIN), unmasked text or binary frame, as `encode_frame()` makes
        it; its RSV bits must be the extension's (permessage-deflate: compressed once by a
        compressor the connection's negotiation allows sharing, see Deflate.shared_window_bits).
        Only a server may send it: a client masks every frame with a fresh key. Inside an
        outgoing fragmented message it waits, in order, until the message's last frame is
        sent. Returns False (and sends nothing) when the connection is not open.
        """
        return self.send_encoded_c(frame) == 1

    cdef int send_encoded_c(self, bytes frame) except -1:
        cdef Py_ssize_t size = PyBytes_GET_SIZE(frame)
        cdef const uint8_t *head = <const uint8_t *>PyBytes_AS_STRING(frame)
        cdef int rsv
        if self._status != STATE_OPEN:
            return 0
        if self.is_client:
            raise ValueError("a client masks every frame with a fresh key: "
                             "a frame encoded for many connections is a server's")
        if size < 2 or (head[0] & 0x8F) not in (0x80 | OP_TEXT, 0x80 | OP_BINARY) \
                or head[1] & 0x80:
            raise ValueError("a pre-encoded frame is a whole (FIN), unmasked text or binary "
                             "message")
        rsv = (head[0] >> 4) & 7
        if rsv & ~self._extension_rsv:
            raise ValueError(f"the frame's RSV bits {rsv} are not negotiated on this connection")
        if self._out_opcode >= 0:
            # A new message may not start inside a fragmented one: it waits for the end.
            if self._deferred is None:
                self._deferred = []
            self._deferred.append(frame)
            return 1
        if self.sink is not None:
            self.sink.write(frame)
        return 1

    cdef int _write_deferred(self) except -1:
        deferred, self._deferred = self._deferred, None
        if self.sink is not None:
            for frame in deferred:
                self.sink.write(frame)
        return 0

    cdef int send_c(self, int opcode, object data, bint fin, int rsv) except -1:
        cdef Py_ssize_t size
        cdef bint ends_fragmented
        if self._status != STATE_OPEN:
            if self._status == STATE_CONNECTING:
                raise ConnectionError("cannot send: the WebSocket handshake has not completed")
            raise ConnectionError(f"cannot send: the WebSocket connection is {self.state_name}")
        if type(data) is str:
            data = (<str>data).encode("utf-8")
        size = _size_of(data)
        if opcode >= 8:
            if size > 125 or not fin:
                raise ValueError("control frames must be FIN and carry at most 125 bytes")
            if opcode == OP_CLOSE:
                raise ValueError("use close() to send a close frame")
            if opcode != OP_PING and opcode != OP_PONG:
                raise ValueError(f"reserved opcode {opcode}")
            return self._write_frame(opcode, data, size, True, rsv)
        if opcode == OP_CONTINUATION:
            if self._out_opcode < 0:
                raise ValueError("a continuation frame needs a message to continue "
                                 "(send its first frame with fin=False)")
        elif opcode == OP_TEXT or opcode == OP_BINARY:
            if self._out_opcode >= 0:
                raise ValueError("a new message cannot start inside a fragmented one")
        else:
            raise ValueError(f"reserved opcode {opcode}")
        if self._extension is not None:
            data, extension_rsv = self._extension.encode(data, opcode != OP_CONTINUATION, fin)
            rsv |= extension_rsv
            size = _size_of(data)
        ends_fragmented = fin and self._out_opcode >= 0
        if fin:
            self._out_opcode = -1
        elif opcode != OP_CONTINUATION:
            self._out_opcode = opcode
        self._write_frame(opcode, data, size, fin, rsv)
        if ends_fragmented and self._deferred is not None:
            self._write_deferred()
        return 0

    cdef int _write_frame(self, int opcode, object data, Py_ssize_t size, bint fin,
                          int rsv) except -1:
        cdef uint32_t key = next_masking_key() if self.is_client else 0
        cdef uint8_t header[14]
        cdef Py_ssize_t length
        if self.sink is None:             # detached by its host: the connection is over
            return 0
        if size < LARGE_PAYLOAD:
            return self.sink.write(encode_frame_c(opcode, data, fin, rsv, self.is_client, key))
        length = encode_header(header, fin, rsv, opcode, size, self.is_client, key)
        if type(data) is not bytes and memoryview(data).itemsize != 1:
            data = memoryview(data).cast("B")
        return self.sink.write_frame(header[:length], data, self.is_client, key)

    # -- closing

    def close(self, code=CloseCode.NORMAL, reason=""):
        """Start the closing handshake (or answer the peer's close): send a close frame.

        Does nothing once a close frame was sent. ValueError for a code that may not be
        sent, or a reason over 123 bytes.
        """
        if self._status == STATE_CONNECTING:
            raise ConnectionError("cannot close: the WebSocket handshake has not completed")
        if self.close_sent is not None or self._status == STATE_CLOSED:
            return
        payload = close_payload(code, reason)      # validates before anything changes
        if len(payload) > 125:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        self._send_close(code, reason)
        self._status = STATE_CLOSING
        if self.close_rcvd is not None:
            self._end_output()

    def fail(self, code, reason=""):
        """Fail the connection (RFC 6455 7.1.7): send a close frame with `code` unless one
        was sent, ignore all further input, and end the sink."""
        self.fail_c(code, reason)

    cdef int fail_c(self, int code, str reason) except -1:
        if self._status == STATE_CLOSED:
            return 0
        self.stop()
        self._parts = None
        self._msg_opcode = -1
        if not self.failed:
            self.failed = True
            self.failure = Close(_close_code(code), reason)
        if self.close_sent is None:
            if self._status != STATE_CONNECTING:
                # A reason is at most 123 bytes on the wire; cut on a character boundary.
                self._send_close(code, reason.encode("utf-8")[:123].decode("utf-8", "ignore"))
        self._status = STATE_CLOSING
        return self._end_output()

    cdef int _end_output(self) except -1:
        if self.sink is not None:
            self.sink.end()
        return 0

    cdef int _send_close(self, object code, str reason) except -1:
        payload = close_payload(code, reason)
        self._deferred = None          # nothing may follow a close frame
        self.close_sent = Close(CloseCode.NO_STATUS if code is None else _close_code(code),
                                reason if code is not None else "")
        if self._first_close is None:
            self._first_close = self.close_sent
        self._write_frame(OP_CLOSE, payload, len(payload), True, 0)
        return 0

    @property
    def close_code(self):
        """The code of the first close frame, sent or received (1005: it had none); 1006
        once the transport is gone without one; None before."""
        if self._first_close is not None:
            return self._first_close.code
        return CloseCode.ABNORMAL if self._status == STATE_CLOSED else None

    @property
    def close_reason(self):
        return self._first_close.reason if self._first_close is not None else ""

    def __repr__(self):
        role = "client" if self.is_client else "server"
        return f"<fastws.Protocol {role} {self.state_name}>"


# Close code number -> CloseCode member: a dict lookup, not an enum call (about 1 us).
cdef dict _CLOSE_CODES = dict(CloseCode._value2member_map_)


cdef object _close_code(object code):
    member = _CLOSE_CODES.get(code)
    return member if member is not None else int(code)
