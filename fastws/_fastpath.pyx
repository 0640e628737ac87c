# cython: language_level=3
"""The connection's hot paths in C: inbound (the default chain fused into the parser),
outbound (ConnectionCore: send, encode, queue and batch) and, for an upgraded plain-TCP
connection, the socket calls themselves (ConnectionCore._on_readable and _send_c).

Most connections run the default chain, AutoPong then Consolidate. Running those as
Python stages costs several Python calls per frame; `FusedReader` does the same work
in C, inside the parser's frame callback, so a message costs one Python call: the
handler's `on_frame`. When the chain is anything else (a user stage, AutoPing, a
different Consolidate), the connection turns fusion off and every frame goes through
the Python chain unchanged. Pings (answered with a pong), close frames and protocol
failures go back to the connection's Python methods: they are rare.
"""

cimport cython
from cpython.buffer cimport PyBuffer_IsContiguous
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memset, strerror
from posix.uio cimport iovec

from fastws._codec cimport Frame, FrameParser, encode_frame

import os

from fastws._codec import CloseCode

cdef extern from "Python.h":
    Py_buffer *PyMemoryView_GET_BUFFER(object mview)

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    static int fastws_would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
    """
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    enum: MSG_NOSIGNAL
    bint fastws_would_block(int err) nogil
    ssize_t c_recv "recv" (int fd, void *buf, size_t n, int flags) nogil
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags) nogil
    ssize_t c_sendmsg "sendmsg" (int fd, const msghdr *msg, int flags) nogil

cdef enum:
    OP_CONTINUATION = 0
    OP_TEXT = 1
    OP_BINARY = 2
    OP_CLOSE = 8
    OP_PING = 9
    OP_PONG = 10


@cython.auto_pickle(False)
cdef class FusedReader(FrameParser):
    """FrameParser + AutoPong + Consolidate for one connection (see the module doc)."""

    cdef object conn
    cdef public bint fused
    cdef public object handler_on_frame     # handler.on_frame, or None
    cdef object frame_parsed                # conn._frame_parsed: the Python chain
    cdef object close_received              # conn._close_frame_received
    cdef object answer_ping                 # conn._answer_ping
    cdef object fail_connection             # conn.fail
    cdef Py_ssize_t _limit                  # max message size, -1 for none
    # the fragmented message in progress
    cdef int _msg_opcode                    # -1 when none
    cdef int _msg_rsv
    cdef Py_ssize_t _msg_size
    cdef list _parts

    def __init__(self, conn, *, bint expect_mask, max_frame_size, max_message_size,
                 bint validate_utf8=True):
        super().__init__(expect_mask=expect_mask, max_frame_size=max_frame_size,
                         validate_utf8=validate_utf8)
        self.conn = conn
        self.fused = False
        self.frame_parsed = conn._frame_parsed
        self.close_received = conn._close_frame_received
        self.answer_ping = conn._answer_ping
        self.fail_connection = conn.fail
        self.max_message_size = max_message_size
        self._msg_opcode = -1
        self._parts = []

    @property
    def max_message_size(self):
        return None if self._limit < 0 else self._limit

    @max_message_size.setter
    def max_message_size(self, value):
        self._limit = -1 if value is None else value

    def take_partial_message(self):
        """Hand over a fragmented message in progress (when fusion is turned off)."""
        if self._msg_opcode < 0:
            return None
        state = (self._msg_opcode, self._msg_rsv, self._parts, self._msg_size)
        self._reset_message()
        return state

    cdef inline void _reset_message(self):
        self._msg_opcode = -1
        self._msg_size = 0
        self._parts = []

    cdef inline int _deliver(self, Frame frame) except -1:
        if self.handler_on_frame is not None:
            self.handler_on_frame(self.conn, frame)
        return 0

    cdef int handle_error(self, int code, str reason) except -1:
        self.fail_connection(CloseCode(code), reason)
        return 0

    cdef int handle_frame(self, bint fin, int rsv, int opcode, bint masked,
                          uint32_t key, bytes payload) except -1:
        cdef Py_ssize_t size = len(payload)
        if not self.fused:
            self.frame_parsed(Frame.new(fin, rsv, opcode, masked, key, payload))
            return 0
        if opcode >= 8:
            if opcode == OP_PING:
                self.answer_ping(payload)
            elif opcode == OP_PONG:
                self._deliver(Frame.new(fin, rsv, opcode, masked, key, payload))
            else:
                self.close_received(Frame.new(fin, rsv, opcode, masked, key, payload))
            return 0
        if opcode == OP_CONTINUATION:
            if self._msg_opcode < 0:
                self.fail_connection(CloseCode.PROTOCOL_ERROR,
                                     "continuation frame with no message to continue")
                return 0
            self._msg_size += size
        else:
            if self._msg_opcode >= 0:
                self.fail_connection(CloseCode.PROTOCOL_ERROR,
                                     "new message started inside a fragmented one")
                return 0
            if fin:
                # The common case: a whole message in one frame.
                if self._limit >= 0 and size > self._limit:
                    self.fail_connection(CloseCode.MESSAGE_TOO_BIG,
                                         f"message of {size} bytes exceeds "
                                         f"max_message_size={self._limit}")
                    return 0
                return self._deliver(Frame.new(True, rsv, opcode, masked, key, payload))
            self._msg_opcode = opcode
            self._msg_rsv = rsv
            self._msg_size = size
        if self._limit >= 0 and self._msg_size > self._limit:
            self._reset_message()
            self.fail_connection(CloseCode.MESSAGE_TOO_BIG,
                                 f"fragmented message passed max_message_size={self._limit}")
            return 0
        self._parts.append(payload)
        if fin:
            message = Frame.new(True, self._msg_rsv, self._msg_opcode, False, 0,
                                b"".join(self._parts))
            self._reset_message()
            return self._deliver(message)
        return 0


# ---------------------------------------------------------------- the outbound path

# Connection modes (fastws.connection uses these very objects).
MODE_TLS_HANDSHAKE = "tls-handshake"
MODE_HTTP = "http"
MODE_CLIENT_HANDSHAKE = "client-handshake"
MODE_WEBSOCKET = "websocket"
MODE_CLOSED = "closed"

# Payloads from this size on leave beside their header (server) or are masked into a
# reused buffer (client): see Connection._write_large.
cdef enum:
    SEPARATE_PAYLOAD = 64 * 1024
    # Pieces per sendmsg from the C path; a longer queue goes through the Python path.
    IOV_BATCH = 64
SEPARATE_PAYLOAD_SIZE = SEPARATE_PAYLOAD

cdef bytes _key_pool = b""
cdef Py_ssize_t _key_pos = 0


cdef uint32_t _next_key() except? 0:
    """A fresh masking key from the OS's random source, drawn 4 KiB at a time."""
    global _key_pool, _key_pos
    if _key_pos + 4 > len(_key_pool):
        _key_pool = os.urandom(4096)
        _key_pos = 0
    cdef const unsigned char *p = _key_pool
    cdef uint32_t key = ((<uint32_t>p[_key_pos] << 24) | (<uint32_t>p[_key_pos + 1] << 16)
                         | (<uint32_t>p[_key_pos + 2] << 8) | p[_key_pos + 3])
    _key_pos += 4
    return key


def next_masking_key():
    """The next masking key (an int, the first wire byte on top); for the Python paths."""
    return _next_key()


cdef inline Py_ssize_t _size_of(object data) except -1:
    # Bytes, not items: len() of a buffer of wider items counts items.
    if type(data) is bytes:
        return PyBytes_GET_SIZE(data)
    return memoryview(data).nbytes


cdef class ConnectionCore:
    """The state and hot methods of a Connection's write side, in C.

    fastws.connection.Connection subclasses it. A message sent from a handler costs one
    call into C here (frame checks, encoding, queueing, the batching decision) instead of
    a few Python calls; what is rare (large payloads, stages, sending, pausing) goes back
    to the connection's Python methods.
    """

    cdef public object _mode
    cdef public bint _close_sent
    cdef public bint is_client
    cdef public bint _fused             # the default chain runs fused in the parser
    cdef public list _stages
    cdef public object _write_queue     # collections.deque of bytes / memoryview
    cdef public Py_ssize_t _write_size
    cdef public long long _write_cap
    cdef public Py_ssize_t _high_water
    cdef public bint _corked            # inside a read: replies are batched
    cdef public bint _eager             # the next reply leaves at once
    cdef public bint _writing_paused
    # The read side and the socket, for the C paths; the Python subclass sets them.
    cdef public object loop
    cdef public object _sock
    cdef public int _fd                 # _sock's descriptor; -1 once closed
    cdef public bint _tls               # TLS goes through the Python paths
    cdef public bint _writer_registered
    cdef public bint _shutdown_after_flush
    cdef public bint _input_closed
    cdef public FusedReader _parser     # None until the upgrade
    cdef public bytearray _read_buffer  # the thread's read buffer

    @property
    def is_open(self):
        """True while WebSocket messages can be sent (upgraded, no close frame sent)."""
        return self._mode == MODE_WEBSOCKET and not self._close_sent

    def send(self, Frame frame not None):
        """Send a frame through the stage chain (outbound). Raises if the connection is closing."""
        if self._mode != MODE_WEBSOCKET or self._close_sent:
            raise ConnectionError(
                f"cannot send: the WebSocket connection is {self._state_name()}")
        cdef int opcode = frame._opcode
        cdef object data = frame.data
        cdef Py_ssize_t size = _size_of(data)
        if opcode >= 8 and (size > 125 or not frame.fin):
            raise ValueError("control frames must be FIN and carry at most 125 bytes")
        if self._fused or not self._stages:
            # The default chain passes frames out as they are: straight to the encoder.
            self._write_data_c(opcode, data, size, frame.fin, frame.rsv)
        else:
            self._stages[len(self._stages) - 1].on_frame_out(frame)

    def send_text(self, str text not None):
        cdef bytes data = text.encode("utf-8")
        if self._fused and self._mode == MODE_WEBSOCKET and not self._close_sent:
            self._write_data_c(OP_TEXT, data, len(data), True, 0)
        else:
            self.send(Frame(opcode=OP_TEXT, data=data))

    def send_binary(self, data):
        if isinstance(data, str):
            raise TypeError("send_binary() takes a bytes-like object; send_text() sends a str")
        if self._fused and self._mode == MODE_WEBSOCKET and not self._close_sent:
            self._write_data_c(OP_BINARY, data, _size_of(data), True, 0)
        else:
            self.send(Frame(opcode=OP_BINARY, data=data))

    def _write_data(self, int opcode, data, bint fin=True, int rsv=0):
        """The end of the outbound chain: encode (masking on a client) and queue."""
        self._write_data_c(opcode, data, _size_of(data), fin, rsv)

    cdef int _write_data_c(self, int opcode, object data, Py_ssize_t size, bint fin,
                           int rsv) except -1:
        if size >= SEPARATE_PAYLOAD:
            self._write_large(opcode, data, fin, rsv)
        elif self.is_client:
            self._queue(encode_frame(opcode, data, fin, rsv, _next_key()), False)
        else:
            self._queue(encode_frame(opcode, data, fin, rsv), False)
        return 0

    def _write(self, data, bint corked=False):
        """Queue bytes for the peer and send what the batching rules allow now.

        Outside a read everything is sent at once (unless `corked`: more of the same frame
        follows). During a read, the first reply leaves at once when `_eager`, the others
        after the read. Over `max_write_buffer`, the
        kernel is tried at once and the connection fails if it will not take enough.
        """
        self._queue(data, corked)

    cdef int _queue(self, object data, bint corked) except -1:
        if not data or self._mode == MODE_CLOSED:
            return 0
        queue = self._write_queue
        queue.append(data)
        self._write_size += len(data)
        cdef bint over_cap = self._write_size > self._write_cap
        if self._corked:
            if self._eager or over_cap:
                self._eager = False
                self._send_c()
        elif over_cap:
            self._send_c()
        elif not corked:
            self._flush_c()
        if (self._write_size > self._high_water and not self._writing_paused
                and self._mode != MODE_CLOSED):
            self._writing_paused = True
            self._notify("on_pause_writing")
        return 0

    # -- reading and sending, in C for a WebSocket over plain TCP

    def _on_readable(self):
        """The socket is readable: read once and feed the parser.

        An upgraded connection over plain TCP is read here, with one recv() into the
        thread's read buffer and the bytes parsed in place; everything else (HTTP, the
        client's handshake, TLS, a closing input) goes to the Python path.
        """
        cdef FusedReader parser = self._parser
        if (self._mode is not MODE_WEBSOCKET or self._tls or self._fd < 0 or parser is None
                or self._input_closed):
            self._on_readable_py()
            return
        cdef bytearray buffer = self._read_buffer
        cdef char *data = PyByteArray_AS_STRING(buffer)
        cdef ssize_t n
        cdef int err
        while True:
            n = c_recv(self._fd, data, <size_t>PyByteArray_GET_SIZE(buffer), 0)
            if n >= 0:
                break
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()    # a signal handler may raise, as in socket.recv
                continue
            if fastws_would_block(err):
                return
            self._read_failed(OSError(err, strerror(err).decode("utf-8", "replace")))
            return
        if n == 0:
            self._on_eof()
            return
        self._cork_c()
        try:
            parser.feed_c(<const uint8_t *>data, n)
        except Exception as exc:
            self._internal_error(exc)
        finally:
            self._corked = False
        if self._mode is not MODE_CLOSED:
            self._flush_c()

    def _cork(self):
        """A read is about to be handled: batch the replies it makes (see _cork_c)."""
        self._cork_c()

    cdef inline int _cork_c(self) except -1:
        # Replies made while handling this read leave together after it, with one send.
        # A server whose only ready peer is this one sends its first reply at once: the
        # peer can go on while we work through the rest. A client drives: what it sends
        # are new messages, and one burst per read keeps the server's reads large
        # (pipelined 32 B against picows: 275k msg/s with the eager reply, 316k without).
        self._corked = True
        self._eager = not self.is_client and not self.loop._busy and not self._write_queue
        return 0

    def flush(self):
        """Send what is queued now (writes made during a read are flushed after it)."""
        self._flush_c()

    cdef int _flush_c(self) except -1:
        if self._write_queue:
            if not self._writer_registered and self._mode is not MODE_TLS_HANDSHAKE:
                self._send_c()
        elif self._shutdown_after_flush and not self._corked:
            self._shutdown_output()
        return 0

    cdef int _send_c(self) except -1:
        """Send the queue with one send()/sendmsg() over plain TCP; else the Python path.

        What the kernel does not take stays queued, and the Python path's `_after_send`
        registers the writer, enforces max_write_buffer and resumes writing; errors (and
        EINTR) go to `_send_queued`, which retries and reports them.
        """
        queue = self._write_queue
        cdef Py_ssize_t count = len(queue)
        if self._tls or self._fd < 0 or count > IOV_BATCH or self._mode is MODE_CLOSED:
            self._send_queued()
            return 0
        cdef iovec iov[IOV_BATCH]
        cdef Py_buffer *view
        cdef Py_ssize_t i = 0, total = 0
        for item in queue:
            if type(item) is bytes:
                iov[i].iov_base = PyBytes_AS_STRING(item)
                iov[i].iov_len = <size_t>PyBytes_GET_SIZE(item)
            elif type(item) is memoryview:
                view = PyMemoryView_GET_BUFFER(item)
                if view.itemsize != 1 or not PyBuffer_IsContiguous(view, b'C'):
                    self._send_queued()
                    return 0
                iov[i].iov_base = view.buf
                iov[i].iov_len = <size_t>view.len
            else:
                self._send_queued()
                return 0
            total += <Py_ssize_t>iov[i].iov_len
            i += 1
        cdef msghdr msg
        cdef ssize_t sent
        if count == 1:
            sent = c_send(self._fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
        else:
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = iov
            msg.msg_iovlen = <size_t>count
            sent = c_sendmsg(self._fd, &msg, MSG_NOSIGNAL)
        if sent < 0:
            if not fastws_would_block(errno):
                self._send_queued()
                return 0
            sent = 0
        self._write_size -= sent
        if sent == total:
            queue.clear()
        else:
            i = 0
            while sent >= <ssize_t>iov[i].iov_len:
                sent -= iov[i].iov_len
                queue.popleft()
                i += 1
            if sent:
                queue[0] = memoryview(queue[0])[sent:]
        if (queue or self._writer_registered or self._shutdown_after_flush
                or self._writing_paused):
            self._after_send()
        return 0
