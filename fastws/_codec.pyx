# cython: language_level=3
"""The RFC 6455 frame codec: frames, masking, UTF-8 validation, parsing, encoding.

Everything here works on raw buffers (bytes, bytearray, memoryview, or a C pointer
for Cython callers): the parser reads headers in place, copies each payload exactly
once (unmasking as it copies, into the bytes object handed to the callback) and
reports frames and protocol violations through callbacks. The hot loops are the C
headers in include/fastws/; this module is the glue that keeps them free of
Python objects until a frame is complete.
"""

import enum

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, _PyBytes_Resize
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


class OpCode(enum.IntEnum):
    CONTINUATION = OP_CONTINUATION
    TEXT = OP_TEXT
    BINARY = OP_BINARY
    CLOSE = OP_CLOSE
    PING = OP_PING
    PONG = OP_PONG


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005              # never sent: "the close frame had no code"
    ABNORMAL = 1006               # never sent: "the connection dropped without a close frame"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015          # never sent


class ProtocolError(Exception):
    """A violation of RFC 6455; `code` is the close code the connection fails with."""

    def __init__(self, code, reason):
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self):
        return f"{self.reason} (close code {self.code})"


# Opcode number -> OpCode member (or the bare int for reserved opcodes), so that
# reading frame.opcode is a tuple index rather than an enum lookup.
cdef tuple _OPCODES = tuple(OpCode(i) if i in OpCode._value2member_map_ else i
                            for i in range(16))
cdef bytes _EMPTY = b""

# Received frames up to this size get their bytes object allocated whole from the
# header; a larger one grows as its data actually arrives, so that a forged length
# field cannot make us reserve memory the peer never sends.
cdef Py_ssize_t _EAGER_ALLOC_LIMIT = 16 * 1024 * 1024

cdef enum:
    ST_HEADER = 0
    ST_PAYLOAD = 1
    ST_FAILED = 2


cdef inline bint _is_control(int opcode) noexcept nogil:
    return opcode >= 8


cdef inline void _key_bytes(uint32_t key, uint8_t *out) noexcept nogil:
    out[0] = (key >> 24) & 0xFF
    out[1] = (key >> 16) & 0xFF
    out[2] = (key >> 8) & 0xFF
    out[3] = key & 0xFF


cdef int _parse_key(object masking_key, uint32_t *out) except -1:
    """None -> 0 (unmasked); an int (wire byte order) or 4 bytes -> 1 and the key."""
    cdef const uint8_t[:] raw
    cdef const uint8_t *p
    if masking_key is None:
        return 0
    if type(masking_key) is bytes and len(<bytes>masking_key) == 4:
        p = <const uint8_t *>PyBytes_AS_STRING(masking_key)
        out[0] = (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]
        return 1
    if isinstance(masking_key, int):
        if not 0 <= masking_key <= 0xFFFFFFFF:
            raise ValueError(f"masking key must fit in 32 bits, got {masking_key!r}")
        out[0] = <uint32_t>masking_key
        return 1
    try:
        raw = masking_key
    except (TypeError, ValueError):
        raise TypeError(
            f"masking key must be None, an int or 4 bytes, not {type(masking_key).__name__}")
    if raw.shape[0] != 4:
        raise ValueError(f"masking key must be 4 bytes, got {raw.shape[0]}")
    out[0] = (<uint32_t>raw[0] << 24) | (<uint32_t>raw[1] << 16) | (<uint32_t>raw[2] << 8) | raw[3]
    return 1


cdef inline object _as_buffer_source(object data):
    if isinstance(data, str):
        return (<str>data).encode("utf-8")
    return data


@cython.freelist(256)
@cython.no_gc
@cython.auto_pickle(False)
cdef class Frame:
    """One WebSocket frame: Frame(fin=True, rsv=0, opcode=OpCode.TEXT, masking_key=None, data=b"").

    `data` is the unmasked payload (str is encoded as UTF-8); `masking_key` is None
    or a 32-bit int in wire byte order. A received frame carries the key it came
    with, so `frame.encode()` reproduces the bytes on the wire.
    """

    # Not tracked by the cyclic GC: a frame holds only its payload, so it cannot be part
    # of a reference cycle that plain reference counting would miss (as long as `data`
    # is a bytes-like object, which is what it is for).
    def __init__(self, fin=True, int rsv=0, opcode=OpCode.TEXT, masking_key=None, data=b""):
        if not 0 <= rsv <= 7:
            raise ValueError(f"rsv is a 3-bit field (0-7), got {rsv}")
        self.fin = fin
        self.rsv = rsv
        self.opcode = opcode
        self.masking_key = masking_key
        self.data = _as_buffer_source(data)

    @staticmethod
    cdef Frame new(bint fin, int rsv, int opcode, bint masked, uint32_t key, object data):
        cdef Frame frame = Frame.__new__(Frame)
        frame.fin = fin
        frame.rsv = rsv
        frame._opcode = opcode
        frame._masked = masked
        frame._key = key
        frame.data = data
        return frame

    @property
    def opcode(self):
        return _OPCODES[self._opcode]

    @opcode.setter
    def opcode(self, value):
        cdef int op = value
        if not 0 <= op <= 15:
            raise ValueError(f"opcode must be 0-15, got {op}")
        self._opcode = op

    @property
    def masking_key(self):
        return self._key if self._masked else None

    @masking_key.setter
    def masking_key(self, value):
        self._masked = _parse_key(value, &self._key)

    @property
    def string_data(self):
        """The payload decoded as UTF-8 (raises UnicodeDecodeError if it is not)."""
        if type(self.data) is bytes:
            return (<bytes>self.data).decode("utf-8")
        return bytes(self.data).decode("utf-8")

    @property
    def is_control(self):
        return _is_control(self._opcode)

    def encode(self):
        """The frame's wire bytes, masked with masking_key when it is set."""
        return encode_frame(self._opcode, self.data, self.fin, self.rsv, self.masking_key)

    def __eq__(self, other):
        if not isinstance(other, Frame):
            return NotImplemented
        cdef Frame o = other
        return (self.fin == o.fin and self.rsv == o.rsv and self._opcode == o._opcode
                and self.masking_key == o.masking_key and bytes(self.data) == bytes(o.data))

    __hash__ = None

    def __repr__(self):
        data = bytes(self.data)
        shown = repr(data[:60]) + ("..." if len(data) > 60 else "")
        key = "None" if not self._masked else f"0x{self._key:08x}"
        return (f"Frame(fin={bool(self.fin)}, rsv={self.rsv}, opcode={self.opcode!r}, "
                f"masking_key={key}, data={shown} ({len(data)} bytes))")


# ---------------------------------------------------------------- masking

def mask(data, key):
    """XOR data with a 4-byte masking key (an int in wire byte order, or 4 bytes).

    Masking is its own inverse, so this also unmasks. Returns new bytes.
    """
    cdef uint32_t key32
    cdef uint8_t kb[4]
    cdef Py_buffer view
    if _parse_key(key, &key32) == 0:
        raise TypeError("mask() needs a key, not None")
    _key_bytes(key32, kb)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        out = PyBytes_FromStringAndSize(NULL, view.len)
        fastws_mask_copy(<uint8_t *>PyBytes_AS_STRING(out), <const uint8_t *>view.buf,
                         <size_t>view.len, kb, 0)
    finally:
        PyBuffer_Release(&view)
    return out


# ---------------------------------------------------------------- UTF-8

@cython.auto_pickle(False)
cdef class Utf8Validator:
    """Incremental UTF-8 validation across chunks (one text message at a time).

    feed() returns False from the first invalid byte on; finish() is False when the
    input stops inside a character; reset() starts a new message.
    """

    def __cinit__(self):
        self.state = FASTWS_UTF8_ACCEPT

    cdef bint feed_c(self, const uint8_t *data, size_t length) noexcept:
        if self.state != FASTWS_UTF8_REJECT:
            self.state = fastws_utf8_feed(self.state, data, length)
        return self.state != FASTWS_UTF8_REJECT

    def feed(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return self.feed_c(<const uint8_t *>view.buf, <size_t>view.len)
        finally:
            PyBuffer_Release(&view)

    def finish(self):
        return self.state == FASTWS_UTF8_ACCEPT

    def reset(self):
        self.state = FASTWS_UTF8_ACCEPT

    @property
    def valid(self):
        """True while no invalid byte has been seen (a character may still be open)."""
        return self.state != FASTWS_UTF8_REJECT


def is_valid_utf8(data):
    """True when data (bytes-like) is complete, valid UTF-8."""
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return bool(fastws_utf8_valid(<const uint8_t *>view.buf, <size_t>view.len))
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------- close frames

cdef inline bint _close_code_receivable(int code) noexcept:
    # RFC 6455 7.4: 1004-1006 and 1015 are reserved and never appear on the wire;
    # 1012-1014 are registered with IANA; 3000-4999 belong to libraries and apps.
    if 1000 <= code <= 1003 or 1007 <= code <= 1014:
        return True
    return 3000 <= code <= 4999


def parse_close(data):
    """(code, reason) of a close frame payload; (1005, "") when it carries no code.

    Raises ProtocolError with 1002 for a bad length or code and 1007 for a reason
    that is not UTF-8.
    """
    cdef bytes payload = bytes(data)
    cdef Py_ssize_t n = len(payload)
    if n == 0:
        return CloseCode.NO_STATUS, ""
    if n == 1:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    if n > 125:
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, "close frame payload over 125 bytes")
    code = (payload[0] << 8) | payload[1]
    if not _close_code_receivable(code):
        raise ProtocolError(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
    if not fastws_utf8_valid(<const uint8_t *>PyBytes_AS_STRING(payload) + 2, n - 2):
        raise ProtocolError(CloseCode.INVALID_DATA, "close reason is not valid UTF-8")
    try:
        code = CloseCode(code)
    except ValueError:
        pass
    return code, payload[2:].decode("utf-8")


def close_payload(code, reason=""):
    """The payload of a close frame with this code and reason (ValueError if unsendable)."""
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    cdef int c = code
    if not _close_code_receivable(c):
        raise ValueError(f"close code {c} may not be sent (use 1000-1003, 1007-1014 or 3000-4999)")
    cdef bytes encoded = reason.encode("utf-8")
    if len(encoded) > 123:
        raise ValueError(f"close reason is {len(encoded)} bytes in UTF-8; at most 123 fit")
    return bytes(((c >> 8) & 0xFF, c & 0xFF)) + encoded


# ---------------------------------------------------------------- encoding

cdef Py_ssize_t encode_header(uint8_t *out, bint fin, int rsv, int opcode,
                              uint64_t length, bint masked, uint32_t key) noexcept nogil:
    """Write a frame header (2 to 14 bytes) to out; returns its length."""
    cdef Py_ssize_t n
    cdef int i
    cdef uint8_t mask_bit = 0x80 if masked else 0
    out[0] = (0x80 if fin else 0) | ((rsv & 7) << 4) | (opcode & 0x0F)
    if length < 126:
        out[1] = mask_bit | <uint8_t>length
        n = 2
    elif length <= 0xFFFF:
        out[1] = mask_bit | 126
        out[2] = (length >> 8) & 0xFF
        out[3] = length & 0xFF
        n = 4
    else:
        out[1] = mask_bit | 127
        for i in range(8):
            out[2 + i] = (length >> (56 - 8 * i)) & 0xFF
        n = 10
    if masked:
        _key_bytes(key, out + n)
        n += 4
    return n


cdef inline void _write_frame(uint8_t *out, Py_ssize_t header_len, const uint8_t *header,
                              const uint8_t *payload, Py_ssize_t length,
                              bint masked, uint32_t key) noexcept nogil:
    cdef uint8_t kb[4]
    memcpy(out, header, header_len)
    if masked:
        _key_bytes(key, kb)
        fastws_mask_copy(out + header_len, payload, <size_t>length, kb, 0)
    elif length:
        memcpy(out + header_len, payload, length)


cpdef bytes encode_frame(int opcode, object data, bint fin=True, int rsv=0,
                         object masking_key=None):
    """Wire bytes of one frame: header and (masked) payload in a single bytes object."""
    cdef uint32_t key = 0
    cdef bint masked = _parse_key(masking_key, &key)
    return encode_frame_c(opcode, data, fin, rsv, masked, key)


cdef bytes encode_frame_c(int opcode, object data, bint fin, int rsv, bint masked,
                          uint32_t key):
    cdef uint8_t header[14]
    cdef Py_ssize_t header_len
    cdef Py_buffer view
    cdef bytes out
    data = _as_buffer_source(data)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        header_len = encode_header(header, fin, rsv, opcode, <uint64_t>view.len, masked, key)
        out = PyBytes_FromStringAndSize(NULL, header_len + view.len)
        _write_frame(<uint8_t *>PyBytes_AS_STRING(out), header_len, header,
                     <const uint8_t *>view.buf, view.len, masked, key)
    finally:
        PyBuffer_Release(&view)
    return out


def frame_header(int opcode, Py_ssize_t length, bint fin=True, int rsv=0, masking_key=None):
    """Just the header of a frame whose payload (length bytes) is sent separately.

    For large unmasked payloads: header and payload go out in one sendmsg() without
    joining them. (A masked payload must be masked, so encode_frame() is the way then.)
    """
    cdef uint32_t key = 0
    cdef bint masked = _parse_key(masking_key, &key)
    cdef uint8_t header[14]
    if length < 0:
        raise ValueError("length must be >= 0")
    return PyBytes_FromStringAndSize(
        <char *>header, encode_header(header, fin, rsv, opcode, <uint64_t>length, masked, key))


cpdef Py_ssize_t encode_into(bytearray out, int opcode, object data, bint fin=True,
                             int rsv=0, object masking_key=None, Py_ssize_t at=-1) except -1:
    """Write one frame into `out`: appended (the default), or at offset `at`.

    Appending batches many frames into one write. Writing at an offset reuses a scratch
    buffer (a client masking large messages allocates nothing per send): `out` grows
    when the frame does not fit and never shrinks. Returns the frame's size in bytes.
    """
    cdef uint32_t key = 0
    cdef bint masked = _parse_key(masking_key, &key)
    cdef uint8_t header[14]
    cdef Py_ssize_t header_len, start, end
    cdef Py_buffer view
    if at > PyByteArray_GET_SIZE(out):
        raise ValueError(f"offset {at} is past the end of the buffer ({len(out)} bytes)")
    data = _as_buffer_source(data)
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        header_len = encode_header(header, fin, rsv, opcode, <uint64_t>view.len, masked, key)
        start = PyByteArray_GET_SIZE(out) if at < 0 else at
        end = start + header_len + view.len
        if end > PyByteArray_GET_SIZE(out):
            PyByteArray_Resize(out, end)
        _write_frame(<uint8_t *>PyByteArray_AS_STRING(out) + start, header_len, header,
                     <const uint8_t *>view.buf, view.len, masked, key)
    finally:
        PyBuffer_Release(&view)
    return header_len + view.len


# ---------------------------------------------------------------- parsing

cdef inline Py_ssize_t _header_size(uint8_t b1) noexcept nogil:
    cdef uint8_t len7 = b1 & 0x7F
    cdef Py_ssize_t size = 2
    if len7 == 126:
        size = 4
    elif len7 == 127:
        size = 10
    if b1 & 0x80:
        size += 4
    return size


@cython.auto_pickle(False)
cdef class FrameParser:
    """Incremental RFC 6455 frame parser.

    FrameParser(on_frame, on_error=None, *, expect_mask=True, max_frame_size=None)

    feed(data) accepts any bytes-like object in any chunking and calls
    on_frame(Frame) once per complete frame, in order. On the first protocol
    violation it calls on_error(close_code, reason) once (or raises ProtocolError
    from feed() when on_error is None) and ignores all later input. If on_frame
    raises, the exception leaves feed() and the unparsed rest of that chunk is kept
    for the next feed() call: no input is lost.

    expect_mask: True on a server (clients must mask), False on a client (servers
    must not). max_frame_size: payloads above it fail with 1009 as soon as the
    header arrives. allowed_rsv: RSV bits an extension permits on the first frame
    of a message (permessage-deflate: 4, the RSV1 bit). validate_utf8: check text
    messages (not compressed ones) as their bytes arrive and fail with 1007 at the first
    invalid byte, even in the middle of a frame.
    """

    def __init__(self, on_frame=None, on_error=None, *, bint expect_mask=True,
                 max_frame_size=None, bint validate_utf8=False):
        if on_frame is None and type(self) is FrameParser:
            raise TypeError("FrameParser needs an on_frame callback")
        if on_frame is not None and not callable(on_frame):
            raise TypeError("on_frame must be callable")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be callable")
        self.on_frame = on_frame
        self.on_error = on_error
        self.expect_mask = expect_mask
        self.max_frame_size = max_frame_size
        self.validate_utf8 = validate_utf8

    @property
    def max_frame_size(self):
        return None if self._max_frame_size < 0 else self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value):
        if value is None:
            self._max_frame_size = -1
        elif value < 0:
            raise ValueError("max_frame_size must be >= 0 or None")
        else:
            self._max_frame_size = value

    @property
    def allowed_rsv(self):
        return self._allowed_rsv

    @allowed_rsv.setter
    def allowed_rsv(self, int value):
        if not 0 <= value <= 7:
            raise ValueError("allowed_rsv is a 3-bit mask (0-7)")
        self._allowed_rsv = value

    @property
    def failed(self):
        """True once a protocol violation was reported."""
        return self._state == ST_FAILED

    @property
    def buffered(self):
        """Bytes of an incomplete frame held by the parser."""
        return self._header_len + self._filled + (len(self._backlog) if self._backlog else 0)

    def feed(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.feed_c(<const uint8_t *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cdef int feed_c(self, const uint8_t *data, Py_ssize_t length) except -1:
        cdef bytes backlog
        if self._backlog is not None:
            backlog = self._backlog
            self._backlog = None
            try:
                self._parse(<const uint8_t *>PyBytes_AS_STRING(backlog), len(backlog))
            except BaseException:
                if length:
                    pending = PyBytes_FromStringAndSize(<const char *>data, length)
                    self._backlog = pending if self._backlog is None else self._backlog + pending
                raise
        return self._parse(data, length)

    cdef int _parse(self, const uint8_t *data, Py_ssize_t n) except -1:
        cdef Py_ssize_t pos = 0, take, size
        cdef const uint8_t *header
        cdef bytes payload
        cdef uint8_t *dst
        cdef PyObject *raw
        while pos < n:
            if self._state == ST_PAYLOAD:
                take = <Py_ssize_t>min(<uint64_t>(n - pos), self._length - <uint64_t>self._filled)
                if self._filled + take > self._capacity:
                    # A huge frame: grow its bytes object as its data arrives.
                    size = <Py_ssize_t>min(<uint64_t>max(self._capacity * 2, self._filled + take),
                                           self._length)
                    raw = <PyObject *>self._payload
                    Py_INCREF(<object>raw)
                    self._payload = None
                    _PyBytes_Resize(&raw, size)
                    self._payload = <object>raw
                    Py_DECREF(<object>raw)
                    self._capacity = size
                dst = <uint8_t *>PyBytes_AS_STRING(self._payload) + self._filled
                if self._masked:
                    fastws_mask_copy(dst, data + pos, <size_t>take, self._key, <size_t>self._filled)
                else:
                    memcpy(dst, data + pos, take)
                if self._frame_text and self._check_text(
                        dst, take, <uint64_t>(self._filled + take) == self._length):
                    return 0
                self._filled += take
                pos += take
                if <uint64_t>self._filled == self._length:
                    payload = self._payload
                    self._payload = None
                    self._filled = self._capacity = 0
                    self._state = ST_HEADER
                    self._emit(payload, data, pos, n)
                continue
            if self._state == ST_FAILED:
                return 0

            # ST_HEADER: take the header in place when it is whole in this chunk.
            if self._header_len == 0 and n - pos >= 2 and n - pos >= _header_size(data[pos + 1]):
                header = data + pos
                pos += _header_size(data[pos + 1])
            else:
                if self._header_len < 2:
                    take = min(2 - self._header_len, n - pos)
                    memcpy(self._header + self._header_len, data + pos, take)
                    self._header_len += take
                    pos += take
                    if self._header_len < 2:
                        break
                size = _header_size(self._header[1])
                take = min(size - self._header_len, n - pos)
                memcpy(self._header + self._header_len, data + pos, take)
                self._header_len += take
                pos += take
                if self._header_len < size:
                    break
                header = self._header
                self._header_len = 0
            if self._start_frame(header):
                return 0

            # The payload: whole in this chunk (the common case), empty, or split.
            if self._length == 0:
                if self._frame_text and self._check_text(data, 0, True):
                    return 0
                self._emit(_EMPTY, data, pos, n)
            elif <uint64_t>(n - pos) >= self._length:
                size = <Py_ssize_t>self._length
                if self._masked:
                    payload = PyBytes_FromStringAndSize(NULL, size)
                    fastws_mask_copy(<uint8_t *>PyBytes_AS_STRING(payload), data + pos,
                                     <size_t>size, self._key, 0)
                else:
                    payload = PyBytes_FromStringAndSize(<const char *>data + pos, size)
                if self._frame_text and self._check_text(
                        <const uint8_t *>PyBytes_AS_STRING(payload), size, True):
                    return 0
                pos += size
                self._emit(payload, data, pos, n)
            else:
                size = <Py_ssize_t>min(self._length, <uint64_t>max(_EAGER_ALLOC_LIMIT, n - pos))
                self._payload = PyBytes_FromStringAndSize(NULL, size)
                self._capacity = size
                self._filled = 0
                self._state = ST_PAYLOAD
        return 0

    cdef int _start_frame(self, const uint8_t *h) except -1:
        """Decode and check a complete header; 1 after reporting a violation."""
        cdef uint8_t b0 = h[0], b1 = h[1]
        cdef int opcode = b0 & 0x0F
        cdef int rsv = (b0 >> 4) & 7
        cdef uint64_t length = b1 & 0x7F
        cdef Py_ssize_t offset = 2
        cdef int i
        if (opcode >= 3 and opcode <= 7) or opcode >= 11:
            self.report_violation(CloseCode.PROTOCOL_ERROR, f"reserved opcode {opcode}")
            return 1
        if rsv and (opcode == 0 or _is_control(opcode) or rsv & ~self._allowed_rsv):
            self.report_violation(CloseCode.PROTOCOL_ERROR, f"reserved bits set (RSV={rsv:03b}) on opcode {opcode}")
            return 1
        if _is_control(opcode):
            if not (b0 & 0x80):
                self.report_violation(CloseCode.PROTOCOL_ERROR, "fragmented control frame")
                return 1
            if length > 125:
                self.report_violation(CloseCode.PROTOCOL_ERROR, "control frame payload over 125 bytes")
                return 1
        if ((b1 & 0x80) != 0) != self.expect_mask:
            self.report_violation(CloseCode.PROTOCOL_ERROR,
                      "unmasked frame from a client" if self.expect_mask
                      else "masked frame from a server")
            return 1
        if length == 126:
            length = (<uint64_t>h[2] << 8) | h[3]
            offset = 4
        elif length == 127:
            length = 0
            for i in range(8):
                length = (length << 8) | h[2 + i]
            offset = 10
            if length >> 63:
                self.report_violation(CloseCode.PROTOCOL_ERROR, "64-bit payload length with the top bit set")
                return 1
        if self._max_frame_size >= 0 and length > <uint64_t>self._max_frame_size:
            self.report_violation(CloseCode.MESSAGE_TOO_BIG,
                      f"frame of {length} bytes exceeds max_frame_size={self._max_frame_size}")
            return 1
        self._fin = (b0 & 0x80) != 0
        self._rsv = rsv
        self._opcode = opcode
        self._length = length
        self._masked = (b1 & 0x80) != 0
        if self._masked:
            memcpy(self._key, h + offset, 4)
        self._frame_text = False
        if self.validate_utf8 and not _is_control(opcode):
            if opcode == 1:
                # A compressed message (RSV1) is validated after inflating, not here.
                self._in_text = not (rsv & 4)
                self._utf8_state = FASTWS_UTF8_ACCEPT
            elif opcode == 2:
                self._in_text = False
            self._frame_text = self._in_text
            if self._fin:
                self._in_text = False
        return 0

    cdef int _check_text(self, const uint8_t *data, Py_ssize_t length, bint last) except -1:
        """Validate payload bytes of a text message; 1 after failing with 1007."""
        self._utf8_state = fastws_utf8_feed(self._utf8_state, data, <size_t>length)
        if self._utf8_state == FASTWS_UTF8_REJECT:
            self.report_violation(CloseCode.INVALID_DATA, "text message is not valid UTF-8")
            return 1
        if last and self._fin and self._utf8_state != FASTWS_UTF8_ACCEPT:
            self.report_violation(CloseCode.INVALID_DATA, "text message ends inside a UTF-8 sequence")
            return 1
        return 0

    cdef int _emit(self, bytes payload, const uint8_t *data, Py_ssize_t pos,
                   Py_ssize_t n) except -1:
        cdef uint32_t key = ((<uint32_t>self._key[0] << 24) | (<uint32_t>self._key[1] << 16)
                             | (<uint32_t>self._key[2] << 8) | self._key[3])
        try:
            self.handle_frame(self._fin, self._rsv, self._opcode, self._masked, key, payload)
        except BaseException:
            if pos < n and self._state != ST_FAILED:
                self._backlog = PyBytes_FromStringAndSize(<const char *>data + pos, n - pos)
            raise
        return 0

    def stop(self):
        """Ignore all further input (the connection is closing), reporting nothing."""
        self._state = ST_FAILED
        self._payload = None
        self._backlog = None
        self._header_len = self._filled = self._capacity = 0

    cdef int report_violation(self, int code, str reason) except -1:
        """Report a violation once; all later input is ignored."""
        if self._state == ST_FAILED:
            return 0
        self.stop()
        return self.handle_error(code, reason)

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        self.on_frame(Frame.new(fin, rsv, opcode, masked, key, payload))
        return 0

    cdef int handle_error(self, int code, str reason) except -1:
        close_code = CloseCode(code)
        if self.on_error is None:
            raise ProtocolError(close_code, reason)
        self.on_error(close_code, reason)
        return 0
