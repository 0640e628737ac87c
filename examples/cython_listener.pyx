# cython: language_level=3
"""A Cython listener: a cdef subclass of fastws' FrameParser.

Frames reach handle_frame() through the C vtable: no Frame object and no Python call per
frame. This one counts frames and bytes and keeps the last text message; `mask()` below
calls fastws_mask_copy() from fastws/mask.h directly, to show the C helpers are there too.

Build and run:  python examples/build_cython_listener.py
"""

from libc.stdint cimport uint8_t, uint32_t

from fastws._codec cimport FrameParser, fastws_mask_copy, fastws_utf8_valid


cdef class FrameStats(FrameParser):
    cdef public Py_ssize_t frames
    cdef public Py_ssize_t data_frames
    cdef public Py_ssize_t control_frames
    cdef public Py_ssize_t payload_bytes
    cdef public Py_ssize_t invalid_text
    cdef public object last_text
    cdef public object error

    def __init__(self, *, bint expect_mask=True, max_frame_size=None):
        super().__init__(expect_mask=expect_mask, max_frame_size=max_frame_size)
        self.last_text = None
        self.error = None

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        # `payload` is already unmasked; `key` is the masking key in wire byte order.
        cdef const uint8_t *data = <const uint8_t *><char *>payload
        self.frames += 1
        self.payload_bytes += len(payload)
        if opcode >= 8:
            self.control_frames += 1
        else:
            self.data_frames += 1
            if opcode == 1:
                if fastws_utf8_valid(data, len(payload)):
                    self.last_text = payload
                else:
                    self.invalid_text += 1
        return 0

    cdef int handle_error(self, int code, str reason) except -1:
        self.error = (code, reason)
        return 0


def mask(bytes data, bytes key):
    """XOR `data` with a 4-byte key using fastws/mask.h (what a client does to its frames)."""
    if len(key) != 4:
        raise ValueError("the key is 4 bytes")
    out = bytearray(len(data))
    fastws_mask_copy(<uint8_t *><char *>out, <const uint8_t *><char *>data, len(data),
                     <const uint8_t *><char *>key, 0)
    return bytes(out)
