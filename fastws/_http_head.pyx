# cython: freethreading_compatible = False
"""One C pass over the request head almost every client sends: a complete `GET target HTTP/1.1`
head in one read, every header line plain, one Host and no body.

`RequestParser` tries it at a message boundary before llhttp. It only ever accepts: anything
else (another method or version, a head cut across reads, Content-Length or Transfer-Encoding,
a byte outside visible ASCII, a bare LF, a Host missing or repeated, a limit reached) returns
None and the same bytes go to llhttp, which owns every error answer. What it accepts parses as
llhttp parses it (tests/test_http.py feeds both the same requests): values lose their leading
spaces and tabs and keep their trailing ones, names keep their case.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.unicode cimport PyUnicode_DecodeLatin1

# RFC 9110 5.6.2 tchar: what a header name may be made of
cdef bint TCHAR[256]
for _c in bytearray(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"):
    TCHAR[_c] = True

# a value byte we take as it is: visible ASCII, space, tab
cdef bint PLAIN[256]
for _c in range(0x20, 0x7F):
    PLAIN[_c] = True
PLAIN[9] = True


# Headers whose reading decides where the request ends or what follows it in llhttp's own way:
# a request with one of them goes to llhttp, as does an odd Connection or an empty Upgrade.
_LLHTTP_DECIDES = frozenset(("content-length", "transfer-encoding", "proxy-connection"))
_CONNECTION_TOKENS = frozenset(("upgrade", "keep-alive", "close"))


cdef bint _plain_connection(str value):
    # The tokens both llhttp and fastws.http read alike, so that both agree on keep-alive
    # and upgrade (RequestParser refuses a request they disagree on).
    for token in value.lower().split(","):
        if token.strip(" \t") not in _CONNECTION_TOKENS:
            return False
    return True


cdef inline str _latin1(const unsigned char *at, Py_ssize_t size):
    return PyUnicode_DecodeLatin1(<const char *>at, size, NULL)


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
    cdef Py_ssize_t target_at, target_size, name_at, name_end, value_at, value_end
    cdef Py_ssize_t size, count = 0, hosts = 0
    cdef unsigned char c
    if n - p < 16 or buf[p] != b'G' or buf[p + 1] != b'E' or buf[p + 2] != b'T' \
            or buf[p + 3] != b' ':
        return None
    p += 4
    if buf[p] != b'/':
        return None     # the origin form only: llhttp has its own rules for the others
    target_at = p
    while p < n and 0x21 <= buf[p] <= 0x7E:
        p += 1
    target_size = p - target_at
    # "GET" SP target SP "HTTP/1.1" CRLF, counted as RequestParser counts it
    if target_size == 0 or target_size + 15 > max_request_line or n - p < 11:
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
        while p < n and TCHAR[buf[p]]:
            p += 1
        name_end = p
        if name_end == name_at or p >= n or buf[p] != b':':
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
        size += name_end - name_at + value_end - value_at + 4
        if count > max_headers:
            return None
        name = _latin1(buf + name_at, name_end - name_at)
        value = _latin1(buf + value_at, value_end - value_at)
        key = name.lower()
        if key == "host":
            hosts += 1
        elif key == "connection":
            if not _plain_connection(value):
                return None
        elif key == "upgrade":
            if value_end == value_at:
                return None
        elif key in _LLHTTP_DECIDES:
            return None
        pairs.append((name, value))
        values = index.get(key)
        if values is None:
            index[key] = [value]
        else:
            values.append(value)
