# cython: language_level=3
"""picows' parser at the C level: a cdef subclass of WSListener.

WSProtocol calls on_ws_frame() on a listener typed WSListener, so a cpdef override in a
cdef class is reached through the C vtable with no Python call per frame. It keeps each
payload as bytes (a WSFrame points into picows' receive buffer and is valid only during
the call), as the Python-listener benchmark does.
"""

from picows.picows cimport WSFrame, WSListener, WSTransport


cdef class PayloadCollector(WSListener):
    cdef public list payloads

    def __init__(self):
        self.payloads = []

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        self.payloads.append(frame.get_payload_as_bytes())
