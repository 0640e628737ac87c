# cython: freethreading_compatible = False
"""One C pass over the request head almost every client sends: a complete `GET target HTTP/1.1`
head in one read, every header line plain, one Host and no body.

`RequestParser` tries it at a message boundary before llhttp. It only ever accepts: anything
else (another method or version, a head cut across reads, Content-Length or Transfer-Encoding,
a byte outside visible ASCII, a bare LF, a Host missing or repeated, a limit reached) returns
None and the same bytes go to llhttp, which owns every error answer. What it accepts parses as
llhttp parses it (tests/test_http.py feeds both the same requests): values lose their leading
spaces and tabs and keep their trailing ones, names keep their case.

`encode_head` writes a head (a request or response line and its headers) in one C pass, and
`accept_key` computes the Sec-WebSocket-Accept value: the other per-handshake steps done in C.
"""

import binascii
import hashlib

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeASCII, PyUnicode_DecodeLatin1
from libc.string cimport memcmp, memcpy

cdef extern from "Python.h":
    enum: PyUnicode_1BYTE_KIND
    bint PyUnicode_IS_ASCII(object)
    int PyUnicode_KIND(object)
    void *PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    const char *PyUnicode_AsUTF8AndSize(object, Py_ssize_t *) except NULL

cdef extern from "fastws/accept.h":
    enum:
        FASTWS_ACCEPT_SIZE
        FASTWS_MAX_KEY
    int fastws_ws_accept(const char *key, size_t n, char *out) noexcept

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# RFC 9110 5.6.2 tchar: what a header name may be made of
cdef bint TCHAR[256]
for _c in bytearray(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"):
    TCHAR[_c] = True

# a value byte we take as it is: visible ASCII, space, tab
cdef bint PLAIN[256]
for _c in range(0x20, 0x7F):
    PLAIN[_c] = True
PLAIN[9] = True


# What a header's lower-cased name tells this pass. Content-Length, Transfer-Encoding and
# Proxy-Connection decide in llhttp's own way where the request ends or what follows it: a
# request with one of them goes to llhttp, as does an odd Connection or an empty Upgrade.
cdef enum Kind:
    OTHER, HOST, CONNECTION, UPGRADE, LLHTTP_DECIDES

# Longer names are rare enough to leave to llhttp.
cdef enum:
    MAX_NAME = 64


cdef inline bint _is(const unsigned char *lower, Py_ssize_t size, const char *name,
                     Py_ssize_t name_size) noexcept:
    return size == name_size and memcmp(lower, name, size) == 0


cdef Kind _kind(const unsigned char *lower, Py_ssize_t size) noexcept:
    if _is(lower, size, "host", 4):
        return HOST
    if _is(lower, size, "connection", 10):
        return CONNECTION
    if _is(lower, size, "upgrade", 7):
        return UPGRADE
    if (_is(lower, size, "content-length", 14) or _is(lower, size, "transfer-encoding", 17)
            or _is(lower, size, "proxy-connection", 16)):
        return LLHTTP_DECIDES
    return OTHER


cdef bint _plain_connection(const unsigned char *p, const unsigned char *end) noexcept:
    # Only the tokens llhttp and fastws.http read alike (upgrade, keep-alive, close, any case,
    # comma-separated with optional spaces), so that both agree on keep-alive and upgrade.
    cdef const unsigned char *token
    cdef unsigned char lower[10]
    cdef Py_ssize_t size, i
    while True:
        while p < end and (p[0] == b' ' or p[0] == b'\t'):
            p += 1
        token = p
        while p < end and p[0] != b',' and p[0] != b' ' and p[0] != b'\t':
            p += 1
        size = p - token
        if size > 10:
            return False
        for i in range(size):
            lower[i] = token[i] | 0x20 if b'A' <= token[i] <= b'Z' else token[i]
        if not (_is(lower, size, "upgrade", 7) or _is(lower, size, "keep-alive", 10)
                or _is(lower, size, "close", 5)):
            return False
        while p < end and (p[0] == b' ' or p[0] == b'\t'):
            p += 1
        if p == end:
            return True
        if p[0] != b',':
            return False
        p += 1


cdef inline str _latin1(const unsigned char *at, Py_ssize_t size):
    return PyUnicode_DecodeLatin1(<const char *>at, size, NULL)


def accept_key(str key):
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2 step 5.4):
    base64(SHA-1(key + GUID)), in C (fastws/accept.h) for an ASCII key of a sane length."""
    cdef Py_ssize_t size
    cdef const char *data
    cdef char out[FASTWS_ACCEPT_SIZE]
    if PyUnicode_IS_ASCII(key):
        data = PyUnicode_AsUTF8AndSize(key, &size)     # ASCII: the str's own bytes
        if fastws_ws_accept(data, <size_t>size, out) == 0:
            return PyUnicode_DecodeASCII(out, FASTWS_ACCEPT_SIZE, NULL)
    digest = hashlib.sha1((key + GUID).encode("latin-1")).digest()
    return binascii.b2a_base64(digest, newline=False).decode("ascii")


cdef inline bint _is_token(str name) noexcept:
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(name), i
    cdef const unsigned char *data
    if size == 0 or PyUnicode_KIND(name) != PyUnicode_1BYTE_KIND:
        return False
    data = <const unsigned char *>PyUnicode_DATA(name)
    for i in range(size):
        if not TCHAR[data[i]]:
            return False
    return True


cpdef bint has_unsafe_char(str value):
    """True when `value` has CR or LF (which would start a new header line: header
    injection) or NUL (which breaks C peers)."""
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(value), i
    cdef const unsigned char *data
    cdef unsigned char c
    if PyUnicode_KIND(value) != PyUnicode_1BYTE_KIND:
        return "\r" in value or "\n" in value or "\x00" in value
    data = <const unsigned char *>PyUnicode_DATA(value)
    for i in range(size):
        c = data[i]
        if c == 13 or c == 10 or c == 0:
            return True
    return False


cdef inline char *_put(char *at, str text) noexcept:
    # `text` is latin-1 (1-byte kind): its characters are its bytes
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(text)
    memcpy(at, PyUnicode_DATA(text), size)
    return at + size


def encode_head(str first_line, list pairs):
    """`first_line` (with its CRLF), a "name: value" line per (name, value) of `pairs` and
    the empty line, in latin-1. ValueError for a name that is not a token, CR, LF or NUL in a
    value (header injection), or text that is not latin-1 (checked last, as a whole)."""
    cdef Py_ssize_t size = PyUnicode_GET_LENGTH(first_line) + 2
    cdef bint latin1 = PyUnicode_KIND(first_line) == PyUnicode_1BYTE_KIND
    cdef str name, value
    cdef list texts = []              # ours: what the size was counted on is what is copied
    for name, value in pairs:
        if not _is_token(name):
            raise ValueError(f"invalid header name {name!r}")
        if has_unsafe_char(value):
            raise ValueError(f"header {name!r} has CR, LF or NUL in its value {value!r}")
        latin1 = latin1 and PyUnicode_KIND(value) == PyUnicode_1BYTE_KIND
        size += PyUnicode_GET_LENGTH(name) + PyUnicode_GET_LENGTH(value) + 4
        texts.append(name)
        texts.append(value)
    if not latin1:
        raise ValueError("HTTP heads must be latin-1; encode other text in the value")
    head = PyBytes_FromStringAndSize(NULL, size)
    cdef char *at = _put(PyBytes_AS_STRING(head), first_line)
    cdef Py_ssize_t i
    for i in range(0, len(texts), 2):
        at = _put(at, <str>texts[i])
        memcpy(at, b": ", 2)
        at = _put(at + 2, <str>texts[i + 1])
        memcpy(at, b"\r\n", 2)
        at += 2
    memcpy(at, b"\r\n", 2)
    return head


cdef bint BASE64[256]
for _c in bytearray(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    BASE64[_c] = True


def is_plain_key(str key):
    """True for a Sec-WebSocket-Key in the form every client sends: 16 bytes in base64, 22
    characters of its alphabet and "==". False says only "not this form": the caller then
    decodes the key to decide (fastws.handshake.check_request)."""
    cdef Py_ssize_t size, i
    cdef const unsigned char *data
    if not PyUnicode_IS_ASCII(key):
        return False
    data = <const unsigned char *>PyUnicode_AsUTF8AndSize(key, &size)
    if size != 24 or data[22] != b'=' or data[23] != b'=':
        return False
    for i in range(22):
        if not BASE64[data[i]]:
            return False
    return True


def parse_plain_get(data, Py_ssize_t start, Py_ssize_t max_request_line,
                    Py_ssize_t max_header_size, Py_ssize_t max_headers):
    """The plain GET head at `data[start:]`: (end, target, pairs, index), or None.

    `end` is the offset just past the head's empty line; `pairs` the header lines in order as
    (name, value) strings; `index` maps each lower-cased name to its values (the inside of a
    fastws.http.Headers). The limits are RequestParser's, counted as it counts them; a head
    over one returns None (llhttp then answers 414 or 431).
    """
    cdef Py_buffer view
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return _parse(<const unsigned char *>view.buf, start, view.len, max_request_line,
                      max_header_size, max_headers)
    finally:
        PyBuffer_Release(&view)


cdef object _parse(const unsigned char *buf, Py_ssize_t p, Py_ssize_t n,
                   Py_ssize_t max_request_line, Py_ssize_t max_header_size,
                   Py_ssize_t max_headers):
    cdef Py_ssize_t target_at, target_size, name_at, name_size, value_at, value_end, i
    cdef Py_ssize_t size, count = 0, hosts = 0
    cdef unsigned char c
    cdef unsigned char lower[MAX_NAME]
    cdef bint upper
    cdef Kind kind
    cdef list pairs, values
    cdef dict index
    if n - p < 16 or buf[p] != b'G' or buf[p + 1] != b'E' or buf[p + 2] != b'T' \
            or buf[p + 3] != b' ' or buf[p + 4] != b'/':
        return None     # the origin form only: llhttp has its own rules for the others
    p += 4
    target_at = p
    while p < n and 0x21 <= buf[p] <= 0x7E:
        p += 1
    target_size = p - target_at
    # "GET" SP target SP "HTTP/1.1" CRLF, counted as RequestParser counts it
    if target_size + 15 > max_request_line or n - p < 11:
        return None
    if (buf[p] != b' ' or buf[p + 1] != b'H' or buf[p + 2] != b'T' or buf[p + 3] != b'T'
            or buf[p + 4] != b'P' or buf[p + 5] != b'/' or buf[p + 6] != b'1'
            or buf[p + 7] != b'.' or buf[p + 8] != b'1' or buf[p + 9] != b'\r'
            or buf[p + 10] != b'\n'):
        return None
    p += 11
    size = target_size + 17
    pairs = []
    index = {}
    while True:
        if p >= n:
            return None
        if buf[p] == b'\r':
            if p + 1 < n and buf[p + 1] == b'\n' and hosts == 1 and size <= max_header_size:
                return p + 2, _latin1(buf + target_at, target_size), pairs, index
            return None
        name_at = p
        upper = False
        while p < n and TCHAR[buf[p]] and p - name_at < MAX_NAME:
            c = buf[p]
            if b'A' <= c <= b'Z':
                c |= 0x20
                upper = True
            lower[p - name_at] = c
            p += 1
        name_size = p - name_at
        if name_size == 0 or p >= n or buf[p] != b':':
            return None
        p += 1
        while p < n and (buf[p] == b' ' or buf[p] == b'\t'):
            p += 1
        value_at = p
        while p < n and PLAIN[buf[p]]:
            p += 1
        value_end = p
        if p + 1 >= n or buf[p] != b'\r' or buf[p + 1] != b'\n':
            return None
        p += 2
        count += 1
        size += name_size + value_end - value_at + 4
        if count > max_headers:
            return None
        kind = _kind(lower, name_size)
        if kind == HOST:
            hosts += 1
        elif kind == CONNECTION:
            if not _plain_connection(buf + value_at, buf + value_end):
                return None
        elif kind == UPGRADE:
            if value_end == value_at:
                return None
        elif kind == LLHTTP_DECIDES:
            return None
        name = _latin1(buf + name_at, name_size)
        key = _latin1(lower, name_size) if upper else name
        value = _latin1(buf + value_at, value_end - value_at)
        pairs.append((name, value))
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
