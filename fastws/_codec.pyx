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
from cpython.bytes cimport (PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE,
                            _PyBytes_Resize)
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_REFCNT
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
# Close code number -> CloseCode member: a dict lookup, not an enum call (about 1 us),
# for every close frame received.
cdef dict _CLOSE_CODES = dict(CloseCode._value2member_map_)

# Received frames up to this size get their bytes object allocated whole from the
# header; a larger one grows as its data actually arrives, so that a forged length
# field cannot make us reserve memory the peer never sends.
cdef Py_ssize_t _EAGER_ALLOC_LIMIT = 16 * 1024 * 1024
# A payload is read straight into its bytes object when at least this much of it is missing
# (a smaller rest is not worth the two-part read).
cdef Py_ssize_t _DIRECT_READ_MIN = 64 * 1024

# Spare payloads. A large received payload that nobody kept once its frame was handled (an
# echo, once sent; a handler that reads and forgets) is kept here for the next large payload
# instead of going back to malloc. glibc serves such sizes from the top of its heap and trims
# the heap when they are freed, so that each message of a few connections exchanging 1 MiB
# messages grew the heap again and faulted in fresh zeroed pages, one per 4 KiB: about 40% of
# the server's time (bench/echo, 4 connections x 1 MiB). Bounded: at most SPARE_BYTES in all,
# of payloads from SPARE_MIN (_codec.pxd) to SPARE_MAX bytes, each reused only for a payload
# at least half its size. Only a bytes object that nothing else references is kept; its
# size, cached hash and terminating NUL are set again as for a new one.
cdef enum:
    SPARE_MAX = 4 * 1024 * 1024
cdef Py_ssize_t _spare_limit = 16 * 1024 * 1024     # SPARE_BYTES; 0 keeps none
cdef Py_ssize_t _spare_bytes = 0
cdef list _spare_payloads = []

cdef extern from *:
    """
    static inline void fastws_bytes_reuse(PyObject *b, Py_ssize_t size) {
        Py_SET_SIZE(b, size);
    #if defined(__GNUC__)
    #pragma GCC diagnostic push
    #pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    #endif
        ((PyBytesObject *)b)->ob_shash = -1;
    #if defined(__GNUC__)
    #pragma GCC diagnostic pop
    #endif
        ((PyBytesObject *)b)->ob_sval[size] = 0;
    }
    """
    void fastws_bytes_reuse(object b, Py_ssize_t size)


cdef bytes _new_payload(Py_ssize_t size):
    """An uninitialised bytes object of `size` bytes: a spare one if one fits."""
    global _spare_bytes
    cdef Py_ssize_t i, capacity
    cdef bytes spare
    if size >= SPARE_MIN:
        for i in range(len(_spare_payloads) - 1, -1, -1):     # the newest is warmest
            spare = <bytes>_spare_payloads[i]
            capacity = PyBytes_GET_SIZE(spare)
            if size <= capacity <= 2 * size:
                del _spare_payloads[i]
                _spare_bytes -= capacity
                fastws_bytes_reuse(spare, size)
                return spare
    return PyBytes_FromStringAndSize(NULL, size)


cdef int keep_spare(object payload, Py_ssize_t refs) except -1:
    """`payload`'s frame was handled: keep it as a spare if only the caller's `refs`
    references to it are left (the parser's once its frame was delivered; the transport's
    once an echo of it was sent)."""
    global _spare_bytes
    cdef Py_ssize_t size
    if type(payload) is not bytes or Py_REFCNT(payload) != refs:
        return 0
    size = PyBytes_GET_SIZE(payload)
    if SPARE_MIN <= size <= SPARE_MAX and _spare_bytes + size <= _spare_limit:
        _spare_payloads.append(payload)
        _spare_bytes += size
    return 0


cdef inline int _keep_if_spare(bytes payload) except -1:
    # The parser's check after each frame: a size test first, so that small frames (the
    # hot path) pay nothing more.
    if PyBytes_GET_SIZE(payload) >= SPARE_MIN:
        return keep_spare(payload, 1)
    return 0


def _spare_payloads_kept(limit=None):
    """(count, bytes) of the spare payloads kept; with `limit`, set the bound first (and
    drop them all) -- for the tests."""
    global _spare_bytes, _spare_limit
    if limit is not None:
        _spare_limit = limit
        _spare_payloads.clear()
        _spare_bytes = 0
    return len(_spare_payloads), _spare_bytes


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
    return _CLOSE_CODES.get(code, code), payload[2:].decode("utf-8")


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

# FrameParser: one class with one job, in a file of its own; part of this module.
include "_parser.pxi"
