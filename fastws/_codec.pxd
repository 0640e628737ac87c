# fastws/_codec.pxd: the C-level contract of the RFC 6455 codec.
#
# Cython code can `cimport fastws._codec` (compile with fastws.get_include() on
# the include path) and subclass FrameParser as a cdef class, overriding
# handle_frame() and handle_error(): frames then reach it through the C vtable,
# with no Frame object and no Python call per frame.

from libc.stdint cimport uint8_t, uint32_t, uint64_t

# Opcodes (RFC 6455 5.2), for C-level code; fastws.OpCode is the Python enum of the same values.
cdef enum:
    OP_CONTINUATION = 0
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10

cdef extern from "fastws/mask.h":
    size_t fastws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n,
                            const uint8_t *key, size_t offset) nogil

cdef extern from "fastws/utf8.h":
    enum:
        FASTWS_UTF8_ACCEPT
        FASTWS_UTF8_REJECT
    uint32_t fastws_utf8_feed(uint32_t state, const uint8_t *s, size_t n) nogil
    int fastws_utf8_valid(const uint8_t *s, size_t n) nogil


# Large received payloads are reused once nothing references them (see _codec.pyx):
# `refs` is how many references the caller itself still holds; smaller ones are not kept.
cdef enum:
    SPARE_MIN = 128 * 1024
cdef int keep_spare(object payload, Py_ssize_t refs) except -1


cdef class Frame:
    cdef public bint fin
    cdef public int rsv
    cdef int _opcode
    cdef bint _masked
    cdef uint32_t _key            # wire byte order: the first key byte is the top byte
    cdef public object data

    @staticmethod
    cdef Frame new(bint fin, int rsv, int opcode, bint masked, uint32_t key, object data)


cdef class Utf8Validator:
    cdef uint32_t state
    cdef bint feed_c(self, const uint8_t *data, size_t length) noexcept


cdef class FrameParser:
    cdef readonly object on_frame
    cdef readonly object on_error
    cdef public bint expect_mask
    cdef Py_ssize_t _max_frame_size     # -1: unlimited
    cdef int _allowed_rsv               # RSV bits an extension allows on text/binary frames
    cdef int _state
    # header bytes when a header is split across chunks
    cdef uint8_t _header[14]
    cdef Py_ssize_t _header_len
    # the frame being received
    cdef bint _fin
    cdef int _rsv
    cdef int _opcode
    cdef bint _masked
    cdef uint8_t _key[4]
    cdef uint64_t _length
    cdef object _payload                # bytes being filled in place
    cdef Py_ssize_t _filled
    cdef Py_ssize_t _capacity           # allocated size of _payload (grows for huge frames)
    cdef bytes _backlog                 # input left over when a callback raised
    # UTF-8 of text messages, checked as payload bytes arrive (fail fast, RFC 6455 8.1)
    cdef public bint validate_utf8
    cdef bint _in_text                  # inside an uncompressed text message
    cdef bint _frame_text               # the current frame's payload is validated
    cdef uint32_t _utf8_state

    cdef int feed_c(self, const uint8_t *data, Py_ssize_t length) except -1
    # A large payload read straight into its bytes object (see payload_room)
    cdef Py_ssize_t payload_room(self, uint8_t **dst) noexcept
    cdef int payload_filled(self, Py_ssize_t length, const uint8_t *rest,
                            Py_ssize_t rest_length) except -1
    cdef int _parse(self, const uint8_t *data, Py_ssize_t length) except -1
    cdef int _start_frame(self, const uint8_t *header) except -1
    cdef int _check_text(self, const uint8_t *data, Py_ssize_t length, bint last) except -1
    cdef int _emit(self, bytes payload, const uint8_t *data, Py_ssize_t pos,
                   Py_ssize_t length) except -1
    cdef int report_violation(self, int code, str reason) except -1
    # Override points for Cython subclasses; the defaults call on_frame / on_error.
    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1
    cdef int handle_error(self, int code, str reason) except -1


cdef Py_ssize_t encode_header(uint8_t *out, bint fin, int rsv, int opcode,
                              uint64_t length, bint masked, uint32_t key) noexcept nogil
cdef bytes encode_frame_c(int opcode, object data, bint fin, int rsv, bint masked,
                          uint32_t key)
cpdef bytes encode_frame(int opcode, object data, bint fin=*, int rsv=*, object masking_key=*)
cpdef Py_ssize_t encode_into(bytearray out, int opcode, object data, bint fin=*, int rsv=*,
                             object masking_key=*, Py_ssize_t at=*) except -1
