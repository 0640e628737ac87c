# cython: language_level=3
"""fastws' parser at the C level: a cdef subclass of FrameParser.

handle_frame() is reached through the C vtable: no Frame object and no Python call per
frame. It keeps each payload (bytes, already unmasked), as the Python-callback benchmark does.
"""

from libc.stdint cimport uint32_t

from fastws._codec cimport FrameParser


cdef class PayloadCollector(FrameParser):
    cdef public list payloads

    def __init__(self):
        super().__init__(expect_mask=True, max_frame_size=None)
        self.payloads = []

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        self.payloads.append(payload)
        return 0

    cdef int handle_error(self, int code, str reason) except -1:
        raise AssertionError(f"the benchmark's frames were rejected: {code} {reason}")
