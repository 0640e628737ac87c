# cython: language_level=3
"""The hot loop of a broadcast: one encoded frame queued on many connections, in C.

A published message is encoded once (fastws.topics); `Fanout.deliver` hands the same bytes
object to every subscriber's Protocol (`send_encoded_c`: the protocol checks its state and
the frame, and keeps it behind an outgoing fragmented message). Server frames are
unmasked, so the bytes are the same for everyone; a client connection (which masks every
frame) and a permessage-deflate connection that cannot share a compressor get the
message through the protocol's ordinary send instead, encoded (and compressed) for them.

Writes are batched: the first time a broadcast touches a connection in a loop iteration,
its transport is held (Sink.hold) and remembered; one callback at the end of the
iteration releases them all, so every socket gets one send() for everything published to
it in that iteration, whatever the number of publishes. Direct sends to a held connection
wait in the same queue, so a connection's messages still leave in the order they were
sent or published.

A subscriber with more than `max_backlog` bytes unsent is not sent the message: it is put
in the `slow` list for the caller's policy (drop the message, or close the connection).
"""

import logging

cimport cython
from cpython.dict cimport PyDict_Next
from cpython.object cimport PyObject

from fastws._protocol cimport STATE_OPEN, Protocol, Sink

logger = logging.getLogger("fastws")


@cython.auto_pickle(False)
cdef class Fanout:
    """One loop's broadcast batching: the sinks held in this iteration, and their release."""

    cdef object _loop
    cdef list _held
    cdef bint _scheduled
    cdef dict _compressed              # window bits -> the message compressed once (deliver)
    cdef public object after_release   # called (no argument) after each release, or None
    cdef readonly unsigned long long deliveries      # frames queued by deliver()
    cdef readonly unsigned long long releases        # release callbacks run

    def __init__(self, loop):
        self._loop = loop
        self._held = []

    def deliver(self, object subscribers, int opcode, object data, bytes frame,
                object exclude, Py_ssize_t max_backlog, list slow, object shared_frame):
        """Queue one message for every open subscriber; return how many got it.

        `subscribers` is a dict whose values are the connections' Protocols (a topic's
        subscribers; the keys are the connections) or any iterable of connections.
        `frame` is the message encoded once, unmasked and uncompressed; `data` its payload
        for connections that need their own encoding. `exclude` (a connection or None) is
        skipped. With `max_backlog` >= 0, a subscriber with more unsent bytes than that is
        appended to `slow` instead. `shared_frame(opcode, data, window_bits)` returns
        the message compressed by a shared compressor for connections whose permessage-deflate allows
        it (Deflate.shared_window_bits), or None for per-connection compression.
        """
        cdef Py_ssize_t pos = 0
        cdef PyObject *key
        cdef PyObject *value
        cdef int count = 0
        self._compressed = None
        if type(subscribers) is dict:
            while PyDict_Next(<dict>subscribers, &pos, &key, &value):
                if <object>key is exclude:
                    continue
                count += self._deliver_one(<object>key, <Protocol?>value, opcode, data, frame,
                                           max_backlog, slow, shared_frame)
        else:
            for conn in subscribers:
                if conn is exclude:
                    continue
                protocol = conn._protocol
                if protocol is None:
                    continue
                count += self._deliver_one(conn, <Protocol?>protocol, opcode, data, frame,
                                           max_backlog, slow, shared_frame)
        if self._held and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._release_all)
        return count

    cdef int _deliver_one(self, object conn, Protocol protocol, int opcode, object data,
                          bytes frame, Py_ssize_t max_backlog, list slow,
                          object shared_frame) except -1:
        cdef Sink sink = protocol.sink
        cdef object extension
        cdef object encoded
        if protocol._status != STATE_OPEN or sink is None:
            return 0
        if max_backlog >= 0 and sink.unsent() > max_backlog:
            if slow is not None:
                slow.append(conn)
            return 0
        # Held before the first write: it only queues, and leaves with the rest at the end
        # of the iteration (a write to an unheld transport would be sent at once).
        if sink.hold():
            self._held.append(sink)
        extension = protocol._extension
        if protocol.is_client:
            protocol.send_c(opcode, data, True, 0)          # masked for this connection
        elif extension is None:
            protocol.send_encoded_c(frame)
        else:
            encoded = None
            if shared_frame is not None:
                bits = extension.shared_window_bits
                if bits is not None:
                    if self._compressed is None:
                        self._compressed = {}
                    encoded = self._compressed.get(bits)
                    if encoded is None:
                        encoded = shared_frame(opcode, data, bits)
                        self._compressed[bits] = encoded
            if encoded is None:
                protocol.send_c(opcode, data, True, 0)      # compressed for this connection
            else:
                protocol.send_encoded_c(<bytes>encoded)
        self.deliveries += 1
        return 1

    def hold(self, Sink sink not None):
        """Hold a sink until the end of this iteration (a direct send batched with a
        broadcast's)."""
        if sink.hold():
            self._held.append(sink)
            if not self._scheduled:
                self._scheduled = True
                self._loop.call_soon(self._release_all)

    def _release_all(self):
        held, self._held = self._held, []
        self._scheduled = False
        self.releases += 1
        cdef Sink sink
        for sink in held:
            try:
                sink.release()
            except Exception:
                # One connection's failure must not leave the others held for ever.
                logger.exception("releasing %r after a broadcast", sink)
        if self.after_release is not None:
            self.after_release()

    @property
    def held(self):
        """Sinks waiting for the end of this iteration."""
        return len(self._held)
