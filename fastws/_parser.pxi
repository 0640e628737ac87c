# fastws/_parser.pxi: the incremental frame parser, included by _codec.pyx (one module, one
# .pxd: Cython code cimports FrameParser from fastws._codec).


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

    cdef Py_ssize_t payload_room(self, uint8_t **dst) noexcept:
        """Where the next bytes may be read straight to: inside a large frame's payload, the
        free space of its bytes object from the next byte on (at most the rest of the frame),
        else 0. Reading there and calling payload_filled() saves copying the bytes out of a
        read buffer (for a 1 MiB message, most of it)."""
        if self._state != ST_PAYLOAD or self._backlog is not None:
            return 0
        cdef Py_ssize_t room = <Py_ssize_t>min(self._length - <uint64_t>self._filled,
                                               <uint64_t>(self._capacity - self._filled))
        if room < _DIRECT_READ_MIN:
            return 0
        dst[0] = <uint8_t *>PyBytes_AS_STRING(self._payload) + self._filled
        return room

    cdef int payload_filled(self, Py_ssize_t n, const uint8_t *rest,
                            Py_ssize_t rest_n) except -1:
        """`n` bytes were read into the room payload_room() gave, and `rest_n` more (the
        next frames; the same read filled the room first) to `rest`: unmask the first in
        place and go on as feed_c() would have with all of them."""
        cdef bytes payload
        cdef uint8_t *dst = <uint8_t *>PyBytes_AS_STRING(self._payload) + self._filled
        if self._masked:
            fastws_mask_copy(dst, dst, <size_t>n, self._key, <size_t>self._filled)
        if self._frame_text and self._check_text(
                dst, n, <uint64_t>(self._filled + n) == self._length):
            return 0
        self._filled += n
        if <uint64_t>self._filled == self._length:
            payload = self._payload
            self._payload = None
            self._filled = self._capacity = 0
            self._state = ST_HEADER
            self._emit(payload, rest, 0, rest_n)      # keeps the rest if a callback raises
            _keep_if_spare(payload)
        if rest_n:
            return self._parse(rest, rest_n)
        return 0

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
                    _keep_if_spare(payload)
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
                    payload = _new_payload(size)
                    fastws_mask_copy(<uint8_t *>PyBytes_AS_STRING(payload), data + pos,
                                     <size_t>size, self._key, 0)
                else:
                    payload = PyBytes_FromStringAndSize(<const char *>data + pos, size)
                if self._frame_text and self._check_text(
                        <const uint8_t *>PyBytes_AS_STRING(payload), size, True):
                    return 0
                pos += size
                self._emit(payload, data, pos, n)
                _keep_if_spare(payload)
            else:
                size = <Py_ssize_t>min(self._length, <uint64_t>max(_EAGER_ALLOC_LIMIT, n - pos))
                self._payload = _new_payload(size)
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
