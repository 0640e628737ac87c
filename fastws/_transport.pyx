# cython: language_level=3
"""One socket on a fastws Loop (or on an asyncio loop's add_reader, for fastws.asyncio):
reading, the write queue, batching, back-pressure and TLS.

`Transport` moves bytes between a socket and the rest of a connection, and nothing else.
Before the upgrade it hands what it reads to its listener (the Connection: HTTP, the
client's handshake); after it, a WebSocket over plain TCP is read here in C, one `recv()`
into the thread's read buffer, and the bytes go straight to the Protocol, which parses
them in place. The Protocol writes back through the Sink interface this class implements.

Writes made while a read is being handled are batched: they leave together, with one
`send()`/`sendmsg()` (small frames copied side by side into one piece first), when the
read is done (on a fastws Loop, a server whose only ready peer is this one sends its first
reply at once, so that the peer can go on while we work).
Outside a read, every write is sent at once, unless a broadcast holds the transport
(Sink.hold, from fastws._fanout): then writes wait for its release at the end of the loop
iteration. What the kernel does not take waits in the queue for the socket to become
writable; past the high-water mark the listener is told to pause
(`pause_writing`). A write that finds more than `max_write_buffer` bytes waiting besides
the largest message queued (after the kernel took what it would) means the peer is not
reading: the frames it has not started to receive are dropped and the listener told
(`write_overflow`). One message, however large, never trips it on its own.

A client's large frames are masked late, as they are sent, a chunk at a time into a
buffer the thread reuses: masking a megabyte into fresh memory for every message costs
page faults, not just a copy.

The listener gets: connection_made(), data_received(view) (no protocol attached; the view
is only valid during the call), eof_received(), connection_lost(exc), pause_writing(),
resume_writing(), write_overflow() and internal_error(exc) (a callback raised while
received data was handled). `connection_lost` comes exactly once, after which the
transport holds no reference to the listener or the protocol.
"""

import collections
import socket
import ssl
import threading

from .eventloop import loop_is_closed

cimport cython
from cpython.buffer cimport PyBuffer_IsContiguous
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy, memset, strerror
from posix.uio cimport iovec

from fastws._codec cimport SPARE_MIN, fastws_mask_copy, keep_spare
from fastws._protocol cimport Protocol, Sink

cdef extern from "Python.h":
    Py_buffer *PyMemoryView_GET_BUFFER(object mview)

cdef extern from *:
    """
    #include <errno.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <unistd.h>
    #include <arpa/inet.h>
    #include <netinet/in.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    #ifdef SOCK_NONBLOCK
    #define FASTWS_HAVE_ACCEPT4 1
    #else
    #define FASTWS_HAVE_ACCEPT4 0
    #define SOCK_NONBLOCK 0
    #define SOCK_CLOEXEC 0
    #define accept4(fd, addr, len, flags) (errno = ENOSYS, -1)
    #endif
    static int fastws_would_block(int err) { return err == EAGAIN || err == EWOULDBLOCK; }
    """
    enum: FASTWS_HAVE_ACCEPT4, SOCK_NONBLOCK, SOCK_CLOEXEC, SHUT_WR, AF_INET, AF_INET6
    enum: INET6_ADDRSTRLEN
    ctypedef unsigned int socklen_t
    struct sockaddr:
        unsigned short sa_family
    struct sockaddr_storage:
        unsigned short ss_family
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    int c_accept4 "accept4" (int fd, sockaddr *addr, socklen_t *size, int flags) nogil
    int c_shutdown "shutdown" (int fd, int how) nogil
    int c_close "close" (int fd) nogil
    const char *inet_ntop(int family, const void *src, char *dst, socklen_t size) nogil
    unsigned short ntohs(unsigned short) nogil
    unsigned int ntohl(unsigned int) nogil
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
    ssize_t c_readv "readv" (int fd, const iovec *iov, int iovcnt) nogil

cdef enum:
    READ_SIZE = 256 * 1024
    # Pieces per sendmsg(); a longer queue is sent in several calls.
    IOV_BATCH = 64
    # A client masks at most this much of a large payload per send (see _Masked).
    MASK_CHUNK = 256 * 1024
    # Pieces up to JOIN_PIECE bytes are copied into one buffer of JOIN_SIZE (_send_plain).
    JOIN_PIECE = 2 * 1024
    JOIN_SIZE = 64 * 1024
    # TLS: pieces up to this size are joined into one record; larger ones go alone.
    TLS_JOIN = 16 * 1024

cdef long long NO_CAP = 1LL << 62
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)

cdef object _per_thread = threading.local()


HAVE_ACCEPT4 = bool(FASTWS_HAVE_ACCEPT4)


def accept_fd(int listener):
    """One connection from the listening socket `listener`, with accept4(): (fd, peername),
    the fd non-blocking and close-on-exec, for a Transport to take as it is (no socket object:
    a connection storm pays for every one). `peername` as socket.accept() gives it for IPv4
    and IPv6; None otherwise (a scoped IPv6 address, another family: start() asks the socket).
    Raises OSError as socket.accept() does (BlockingIOError when none is waiting)."""
    cdef sockaddr_storage address
    cdef socklen_t size
    cdef int fd, err
    cdef char host[INET6_ADDRSTRLEN]
    cdef sockaddr_in *ipv4
    cdef sockaddr_in6 *ipv6
    while True:
        size = sizeof(address)
        fd = c_accept4(listener, <sockaddr *>&address, &size, SOCK_NONBLOCK | SOCK_CLOEXEC)
        if fd >= 0:
            break
        err = errno
        if err != EINTR:
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        PyErr_CheckSignals()
    if address.ss_family == AF_INET:
        ipv4 = <sockaddr_in *>&address
        inet_ntop(AF_INET, &ipv4.sin_addr, host, sizeof(host))
        return fd, (host.decode("ascii"), ntohs(ipv4.sin_port))
    if address.ss_family == AF_INET6:
        ipv6 = <sockaddr_in6 *>&address
        if ipv6.sin6_scope_id == 0:       # with one, Python's form appends %interface
            inet_ntop(AF_INET6, &ipv6.sin6_addr, host, sizeof(host))
            return fd, (host.decode("ascii"), ntohs(ipv6.sin6_port),
                        ntohl(ipv6.sin6_flowinfo), 0)
    return fd, None


cdef bytearray _thread_buffer(str name, Py_ssize_t size):
    """A buffer this thread's transports share: everything put in it is used before the
    callback that filled it returns, so one per thread is enough and an idle connection
    costs none."""
    buffer = getattr(_per_thread, name, None)
    if buffer is None:
        buffer = bytearray(size)
        setattr(_per_thread, name, buffer)
    return buffer


cdef int _offer_spare(object item) except -1:
    """`item` was sent and leaves the queue: if it is a view of a large payload (an echo of
    a received one, or what is left of it), release the view and let the codec keep the
    payload as a spare."""
    if type(item) is not memoryview:
        return 0
    payload = <object>PyMemoryView_GET_BUFFER(item).obj
    if type(payload) is not bytes or PyBytes_GET_SIZE(payload) < SPARE_MIN:
        return 0
    try:
        item.release()                    # the view's reference to the payload goes
    except BufferError:                   # still exported somewhere: leave it
        return 0
    return keep_spare(payload, 1)


@cython.final
@cython.freelist(8)
@cython.auto_pickle(False)
cdef class _Masked:
    """A client frame's payload in the write queue, masked as it is sent.

    Masking depends only on the key and the offset in the payload, so what the kernel
    does not take is masked again from `offset` on the next try: nothing is copied out.
    """
    cdef object payload          # a contiguous bytes-like of 1-byte items
    cdef Py_ssize_t size
    cdef Py_ssize_t offset
    cdef uint8_t key[4]

    def __len__(self):
        return self.size - self.offset


@cython.auto_pickle(False)
cdef class Transport(Sink):
    """A connected socket on a Loop; see the module doc for what it tells its listener."""

    cdef readonly object loop
    cdef object _sock                 # None for a bare fd until the `sock` property is read
    cdef readonly bint is_client
    cdef readonly bint tls
    cdef readonly bint closed
    cdef readonly object peername
    cdef object listener
    cdef public Protocol protocol     # set at the upgrade: reads are parsed in C
    cdef int _fd                      # -1 once closed
    # A bare fd that no socket object owns yet: this transport alone closes it. A flag, not
    # `_sock is None`: the garbage collector sets _sock to None before __dealloc__ runs.
    cdef bint _owns_fd
    cdef object _ssl_context
    cdef object _server_hostname
    cdef bint _handshaking            # TLS handshake in progress: it owns the fd
    # reading
    cdef bytearray _read_buffer       # the thread's read buffer (shared by its transports)
    cdef bint _reading
    cdef bint _reading_paused
    cdef bint _discarding             # end(): input is read only to see the peer's EOF
    # writing
    cdef object _queue                # deque of bytes / memoryview / _Masked
    cdef object _append               # its bound append (Cython would look it up per call)
    cdef Py_ssize_t _size
    cdef Py_ssize_t _largest          # the largest write since the queue was last empty
    cdef bint _spares_queued          # a large received payload may be queued (an echo)
    cdef bint _tls_closed             # close_notify sent: the rest is read undecrypted
    cdef long long _cap
    cdef Py_ssize_t _high_water
    cdef Py_ssize_t _low_water
    cdef bint _corked                 # inside a read: writes are batched
    cdef bint _loop_polls             # a fastws Loop (it says how many sockets are ready)
    cdef bint _held                   # a broadcast batches writes until release()
    cdef bint _eager                  # the next write leaves at once
    cdef bint _writer_registered
    cdef bint _writing_paused
    cdef bint _overflowed
    cdef Py_ssize_t _attempted        # bytes offered to the last send
    cdef readonly unsigned long long bytes_sent
    cdef readonly unsigned long long bytes_received
    # ending
    cdef bint _ending                 # close once the queue is sent (end())
    cdef bint _output_shut
    cdef public double close_timeout
    cdef object _close_timer

    def __init__(self, loop, sock, listener, *, bint is_client, ssl_context=None,
                 server_hostname=None, close_timeout=5.0, peername=None):
        if type(sock) is int:
            self._fd = sock               # accept_fd()'s: already non-blocking
            self._owns_fd = True
        else:
            sock.setblocking(False)
            self._sock = sock
            self._fd = sock.fileno()
        self.loop = loop
        self._loop_polls = hasattr(loop, "_busy")
        self.listener = listener
        self.is_client = is_client
        self.tls = ssl_context is not None
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self.peername = peername          # accept() told the server; start() asks otherwise
        self._queue = collections.deque()
        self._append = self._queue.append
        self.close_timeout = close_timeout
        self.set_write_limits(256 * 1024, 64 * 1024, None)

    def set_write_limits(self, Py_ssize_t high, Py_ssize_t low, cap):
        """Pause above `high` bytes unsent, resume at `low`; past `cap` (None: no cap) the
        peer is taken as not reading (see the module doc)."""
        if not 0 <= low <= high:
            raise ValueError("write limits need 0 <= low <= high")
        self._high_water = high
        self._low_water = low
        self._cap = NO_CAP if cap is None else cap

    def __dealloc__(self):
        if self._owns_fd and self._fd >= 0:   # a bare fd never closed (close() was not
            c_close(self._fd)                 # reached): no leak. A socket object, once
                                              # made, closes the fd itself.

    @property
    def sock(self):
        """The socket (an SSLSocket once TLS is set up; None once a bare fd is closed). A
        transport given a bare fd makes the object on first use."""
        if self._sock is None and self._fd >= 0:
            sock = socket.socket(fileno=self._fd)
            self._owns_fd = False         # the object closes it from now on
            sock.setblocking(False)       # what the fd already is; the object must know it
            self._sock = sock
        return self._sock

    @property
    def write_buffer_size(self):
        """Bytes accepted for sending that the kernel has not taken yet."""
        return self._size

    # ---------------------------------------------------------------- starting

    def start(self):
        """Begin: the TLS handshake when there is one, then `listener.connection_made()`."""
        if self.closed:
            return
        if self.peername is None:
            try:
                self.peername = self.sock.getpeername()
            except OSError:
                pass
        if not self.tls:
            self._connection_made()
            return
        try:
            self._sock = self._ssl_context.wrap_socket(
                self.sock, server_side=not self.is_client,
                server_hostname=self._server_hostname, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            self.close(exc)
            return
        self._handshaking = True
        self._tls_handshake()

    def _tls_handshake(self):
        sock = self.sock
        loop = self.loop
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            loop.add_reader(sock, self._tls_handshake)
            loop.remove_writer(sock)
            return
        except ssl.SSLWantWriteError:
            loop.add_writer(sock, self._tls_handshake)
            return
        except (OSError, ssl.SSLError) as exc:
            self.close(exc)
            return
        loop.remove_writer(sock)
        loop.remove_reader(sock)
        self._handshaking = False
        self._connection_made()
        # OpenSSL may already hold the peer's first bytes (a TLS 1.3 client sends its request
        # right behind its Finished): the socket will not signal them again, so read once now.
        if self._reading and not self.closed:
            loop.call_soon(self._on_readable)

    cdef int _connection_made(self) except -1:
        self._start_reading()
        self.listener.connection_made()
        if self._queue and not self.closed:
            self._send()
        return 0

    @property
    def handshaking(self):
        """True while the TLS handshake runs."""
        return self._handshaking

    # ---------------------------------------------------------------- reading

    cdef int _start_reading(self) except -1:
        if not self._reading and not self._reading_paused and not self.closed:
            self.loop.add_reader(self._fd, self._on_readable)
            self._reading = True
        return 0

    def pause_reading(self):
        if not self._reading_paused:
            self._reading_paused = True
            if self._reading and not self.closed:
                self.loop.remove_reader(self._fd)
                self._reading = False

    def resume_reading(self):
        if self._reading_paused:
            self._reading_paused = False
            if self.closed or self._handshaking:
                return                    # reading starts when the handshake is done
            self._start_reading()
            if self.tls and self.sock.pending():
                self.loop.call_soon(self._on_readable)

    def _on_readable(self):
        """The socket is readable: read once and hand the bytes on (see the module doc)."""
        if self.closed:
            return
        if self.tls and not self._tls_closed:
            self._read_tls()
            return
        cdef bytearray buffer = self._read_buffer
        if buffer is None:
            buffer = self._read_buffer = _thread_buffer("read", READ_SIZE)
        cdef char *data = PyByteArray_AS_STRING(buffer)
        cdef Protocol protocol = self.protocol
        cdef uint8_t *room = NULL
        cdef Py_ssize_t direct = 0
        cdef iovec parts[2]
        if protocol is not None and not self._discarding:
            direct = protocol.payload_room(&room)
        cdef ssize_t n
        cdef int err
        while True:
            if direct:
                # Inside a large frame: one read fills the rest of its payload where it
                # belongs, then the read buffer with what follows it.
                parts[0].iov_base = room
                parts[0].iov_len = <size_t>direct
                parts[1].iov_base = data
                parts[1].iov_len = <size_t>PyByteArray_GET_SIZE(buffer)
                n = c_readv(self._fd, parts, 2)
            else:
                n = c_recv(self._fd, data, <size_t>PyByteArray_GET_SIZE(buffer), 0)
            if n >= 0:
                break
            err = errno
            if err == EINTR:
                PyErr_CheckSignals()      # a signal handler may raise, as in socket.recv
                continue
            if fastws_would_block(err):
                return
            self.close(OSError(err, strerror(err).decode("utf-8", "replace")))
            return
        if n == 0:
            self._eof()
        else:
            self._received(buffer, <const uint8_t *>data, n, min(n, direct))

    cdef int _read_tls(self) except -1:
        cdef bytearray buffer = self._read_buffer
        if buffer is None:
            buffer = self._read_buffer = _thread_buffer("read", READ_SIZE)
        sock = self.sock
        while True:
            try:
                n = sock.recv_into(buffer)
            except _TRY_AGAIN:
                return 0
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                n = 0
            except OSError as exc:
                self.close(exc)
                return 0
            if n == 0:
                self._eof()
                return 0
            self._received(buffer, <const uint8_t *>PyByteArray_AS_STRING(buffer), n)
            # TLS may hold decrypted bytes that the socket will not signal again.
            if self.closed or self._reading_paused or not sock.pending():
                return 0

    cdef int _received(self, bytearray buffer, const uint8_t *data, Py_ssize_t n,
                       Py_ssize_t direct=0) except -1:
        # The first `direct` of the `n` bytes went to the protocol's payload_room(), the rest
        # to `data`.
        self.bytes_received += n
        if self._discarding:
            return 0
        self._corked = True
        # Eager only on a fastws Loop that saw no other socket ready: an asyncio loop does not
        # say, and there the second send per read cost more than it saved (bench/RESULTS.md).
        self._eager = (not self.is_client and not self._queue
                       and self._loop_polls and not self.loop._busy)
        try:
            if self.protocol is not None:
                if direct:
                    self.protocol.payload_filled(direct, data, n - direct)
                else:
                    self.protocol.feed_c(data, n)
            else:
                with memoryview(buffer) as view:
                    self.listener.data_received(view[:n])
        except Exception as exc:
            if self.closed:
                raise
            self.listener.internal_error(exc)
        finally:
            self._corked = False
        if not self.closed:
            self._flush()
        return 0

    cdef int _eof(self) except -1:
        listener = self.listener
        self._discarding = True
        listener.eof_received()
        self.close(None)
        return 0

    # ---------------------------------------------------------------- writing (Sink)

    cdef int write(self, object data) except -1:
        if self.closed or self._output_shut:
            return 0
        cdef Py_ssize_t size = len(data)
        if not size:
            return 0
        self._append(data)
        return self._queued(size)

    cdef int write_frame(self, bytes header, object payload, bint masked,
                         uint32_t key) except -1:
        cdef _Masked item
        cdef Py_ssize_t size
        if self.closed or self._output_shut:
            return 0
        queue = self._queue
        queue.append(header)
        if masked:
            item = _Masked.__new__(_Masked)
            item.payload = payload
            item.size = len(payload)
            item.key[0] = (key >> 24) & 0xFF
            item.key[1] = (key >> 16) & 0xFF
            item.key[2] = (key >> 8) & 0xFF
            item.key[3] = key & 0xFF
            size = item.size
            queue.append(item)
        else:
            # A memoryview marks the rest of a frame whose header is ahead of it.
            payload = memoryview(payload)
            size = len(payload)
            queue.append(payload)
            if size >= SPARE_MIN:
                self._spares_queued = True
        return self._queued(PyBytes_GET_SIZE(header) + size)

    def write_bytes(self, data):
        """Queue bytes for the peer (HTTP answers, the handshake); sent as batching allows."""
        self.write(data)

    cdef int _queued(self, Py_ssize_t size) except -1:
        cdef Py_ssize_t older = self._size
        self._size += size
        if older == 0 or size > self._largest:
            self._largest = size
        if older - self._largest > self._cap and not self._overflowed:
            # More than the cap waits besides the largest message: send what the kernel
            # takes now, and if it is still so, the peer is not reading. One message, however
            # large, never passes the cap on its own.
            self._send()
            if (self._size - size - self._largest > self._cap
                    and not (self._overflowed or self.closed)):
                self._overflow()
        elif self._corked:
            if self._eager:
                self._eager = False
                self._send()
        elif not (self._writer_registered or self._held):
            self._send()
        if self._size > self._high_water and not self._writing_paused and not self.closed:
            self._writing_paused = True
            self.listener.pause_writing()
        return 0

    cdef int hold(self) except -1:
        # Sink.hold: writes wait for release() (fastws._fanout releases every sink a
        # broadcast held, once per loop iteration: one send per socket for all its frames).
        if self._held or self.closed:
            return 0
        self._held = True
        return 1

    cdef int release(self) except -1:
        if self._held:
            self._held = False
            if not self.closed:
                self.flush()
        return 0

    cdef Py_ssize_t unsent(self):
        return self._size

    def flush(self):
        """Send what is queued now (writes made during a read are flushed after it)."""
        self._flush()

    cdef int _flush(self) except -1:
        if self._queue:
            if not self._writer_registered and not self._handshaking:
                self._send()
        elif self._ending and not self._corked:
            self._shut_output()
        return 0

    cdef int _send(self) except -1:
        """Send as much of the queue as the kernel takes, then settle what is left."""
        if self.closed or self._handshaking:
            return 0
        queue = self._queue
        cdef Py_ssize_t sent
        while queue:
            if self.tls:
                sent = self._send_tls()
            elif len(queue) == 1 and type(queue[0]) is bytes:
                sent = self._send_one(<bytes>queue[0])     # the usual case: one reply
            else:
                sent = self._send_plain()
            if sent < 0:
                return 0                  # failed: the transport closed
            self._consume(sent)
            if sent < self._attempted:
                break                     # the kernel's buffer is full
        return self._after_send()

    cdef Py_ssize_t _send_one(self, bytes data) except -2:
        self._attempted = PyBytes_GET_SIZE(data)
        cdef ssize_t sent
        while True:
            sent = c_send(self._fd, PyBytes_AS_STRING(data), <size_t>self._attempted,
                          MSG_NOSIGNAL)
            if sent >= 0:
                return sent
            if errno != EINTR:
                return self._send_failed(errno)
            PyErr_CheckSignals()

    cdef Py_ssize_t _send_failed(self, int err) except -2:
        """0 when the kernel would block; else close with the error and return -1."""
        if fastws_would_block(err):
            return 0
        self.close(OSError(err, strerror(err).decode("utf-8", "replace")))
        return -1

    cdef Py_ssize_t _send_plain(self) except -2:
        """One send()/sendmsg() of the queue's head (up to IOV_BATCH pieces, or up to a
        masked chunk); the bytes sent, 0 when the kernel would block, -1 after failing.

        Small pieces (a burst of small frames) are copied side by side into the thread's
        join buffer and leave as one piece: the kernel's cost per piece of a sendmsg() is
        more than copying a few hundred bytes (100 connections x 16 x 32 B: 0.84-0.98x the
        server's CPU per message; docs/performance.md)."""
        cdef iovec iov[IOV_BATCH]
        cdef Py_buffer *view
        cdef Py_ssize_t count = 0, total = 0, size, joined_size = 0
        cdef char *base
        cdef char *joined = NULL
        cdef bint small
        cdef bint joining = False         # iov[count - 1] is the join buffer's latest run
        for item in self._queue:
            if type(item) is _Masked:
                if count < IOV_BATCH:
                    iov[count].iov_base = self._mask_chunk(<_Masked>item)
                    iov[count].iov_len = <size_t>min(
                        (<_Masked>item).size - (<_Masked>item).offset, MASK_CHUNK)
                    total += <Py_ssize_t>iov[count].iov_len
                    count += 1
                break                     # the scratch buffer holds one chunk at a time
            if type(item) is bytes:
                base = PyBytes_AS_STRING(item)
                size = PyBytes_GET_SIZE(item)
            else:
                view = PyMemoryView_GET_BUFFER(item)
                base = <char *>view.buf
                size = view.len
            small = size <= JOIN_PIECE
            if small and joined_size + size > JOIN_SIZE:
                break                     # the join buffer is full: the rest goes next time
            if not (small and joining):   # a new piece: a large one, or a new run of small
                if count == IOV_BATCH:
                    break
                if small and joined == NULL:
                    joined = PyByteArray_AS_STRING(_thread_buffer("join", JOIN_SIZE))
                iov[count].iov_base = joined + joined_size if small else base
                iov[count].iov_len = 0
                count += 1
            if small:
                memcpy(joined + joined_size, base, <size_t>size)
                joined_size += size
            iov[count - 1].iov_len += <size_t>size
            total += size
            joining = small
        cdef msghdr msg
        cdef ssize_t sent
        self._attempted = total
        while True:
            if count == 1:
                sent = c_send(self._fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
            else:
                memset(&msg, 0, sizeof(msg))
                msg.msg_iov = iov
                msg.msg_iovlen = <size_t>count
                sent = c_sendmsg(self._fd, &msg, MSG_NOSIGNAL)
            if sent >= 0:
                return sent
            if errno != EINTR:
                return self._send_failed(errno)
            PyErr_CheckSignals()

    cdef void *_mask_chunk(self, _Masked item) except NULL:
        cdef bytearray scratch = _thread_buffer("mask", MASK_CHUNK)
        cdef Py_ssize_t n = min(item.size - item.offset, MASK_CHUNK)
        cdef uint8_t *dst = <uint8_t *>PyByteArray_AS_STRING(scratch)
        if type(item.payload) is bytes:
            fastws_mask_copy(dst, <const uint8_t *>PyBytes_AS_STRING(item.payload) + item.offset,
                             <size_t>n, item.key, <size_t>item.offset)
        else:
            with memoryview(item.payload) as view:
                fastws_mask_copy(dst, <const uint8_t *>PyMemoryView_GET_BUFFER(view).buf
                                 + item.offset, <size_t>n, item.key, <size_t>item.offset)
        return dst

    cdef Py_ssize_t _send_tls(self) except -2:
        """One SSLSocket.send(): small pieces joined into one record, large ones alone; the
        bytes sent, 0 when it would block, -1 after failing (the transport closed)."""
        try:
            return self._send_tls_once()
        except OSError as exc:
            self.close(exc)
            return -1

    cdef Py_ssize_t _send_tls_once(self) except -2:
        queue = self._queue
        head = queue[0]
        cdef bytearray scratch
        cdef Py_ssize_t n
        if type(head) is _Masked:
            self._mask_chunk(<_Masked>head)
            n = min((<_Masked>head).size - (<_Masked>head).offset, MASK_CHUNK)
            scratch = _thread_buffer("mask", MASK_CHUNK)
            self._attempted = n
            with memoryview(scratch) as view:
                data = view[:n]
                try:
                    return self.sock.send(data)
                except _TRY_AGAIN:
                    return 0
                finally:
                    data.release()
        if len(queue) > 1 and len(head) < TLS_JOIN:
            pieces = []
            n = 0
            while queue and type(queue[0]) is not _Masked and len(queue[0]) < TLS_JOIN \
                    and n < 4 * TLS_JOIN:
                n += len(queue[0])
                pieces.append(queue.popleft())
            head = b"".join(pieces)
            queue.appendleft(head)
        self._attempted = len(head)
        try:
            return self.sock.send(head)
        except _TRY_AGAIN:
            return 0

    cdef int _consume(self, Py_ssize_t sent) except -1:
        """Drop `sent` bytes from the head of the queue."""
        queue = self._queue
        cdef Py_ssize_t size
        self.bytes_sent += sent
        if sent == self._size:            # the usual case: everything went
            if self._spares_queued:
                self._spares_queued = False
                for head in queue:
                    _offer_spare(head)
            queue.clear()
            self._size = 0
            return 0
        self._size -= sent
        while sent:
            head = queue[0]
            if type(head) is _Masked:
                size = (<_Masked>head).size - (<_Masked>head).offset
                if sent < size:
                    (<_Masked>head).offset += sent
                    return 0
            else:
                size = len(head)
                if sent < size:
                    queue[0] = memoryview(head)[sent:]
                    return 0
            sent -= size
            queue.popleft()
            if self._spares_queued:
                _offer_spare(head)
                self._spares_queued = len(queue) != 0
        return 0

    cdef int _after_send(self) except -1:
        """Wait for the socket to drain, or stop waiting; resume writing; shut down."""
        if self.closed:
            return 0
        loop = self.loop
        if self._queue:
            if not self._writer_registered:
                self._writer_registered = True
                loop.add_writer(self._fd, self._on_writable)
        else:
            if self._writer_registered:
                self._writer_registered = False
                loop.remove_writer(self._fd)
            if self._ending and not self._corked:
                self._shut_output()
        if self._writing_paused and self._size <= self._low_water and not self.closed:
            self._writing_paused = False
            self.listener.resume_writing()
        return 0

    def _on_writable(self):
        self._send()

    cdef int _overflow(self) except -1:
        """The peer does not read: keep only a frame it started to receive; tell the listener.

        A frame already partly sent stays (cutting it would corrupt the stream): the head
        of the queue is then a memoryview or a _Masked (the rest of a partial send, or a
        payload whose header went out).
        """
        self._overflowed = True
        queue = self._queue
        head = queue[0] if queue else None
        queue.clear()
        self._size = 0
        if head is not None and type(head) is not bytes:
            queue.append(head)
            self._size = len(head)
        self.listener.write_overflow()
        return 0

    # ---------------------------------------------------------------- ending

    cdef int end(self) except -1:
        """Nothing more will be written: close once the queue is sent (Sink.end).

        A server half-closes and reads until the peer closes too (closing outright with
        unread input would make the kernel send a reset that can destroy our last frames
        before the peer reads them); a client waits for the server to close first (RFC 6455
        7.1.1). Either way, for at most `close_timeout` seconds.
        """
        if self._ending or self.closed:
            return 0
        self._ending = True
        self._discarding = True
        self.close_after(self.close_timeout)
        if not self._queue and not self._corked:
            self._shut_output()
        return 0

    def end_output(self):
        """Sink.end() for Python callers (an HTTP answer that closes the connection)."""
        self.end()

    def close_after(self, double timeout):
        """Close the transport after `timeout` seconds unless it closed by then."""
        if self._close_timer is None and not self.closed:
            self._close_timer = self.loop.call_later(timeout, self._close_timed_out)

    def _close_timed_out(self):
        self._close_timer = None
        self.close(None)

    cdef int _shut_output(self) except -1:
        if self._output_shut or self.closed:
            return 0
        self._output_shut = True
        if self.is_client:
            self._start_reading()         # wait for the server's EOF (bounded)
            return 0
        # A server half-closes and reads (and drops) what the peer still sends until it
        # closes too: closing with unread input would make the kernel answer with a reset,
        # which can destroy our last frames before the peer reads them (the close frame of a
        # connection we fail while the peer is still sending). Over TLS, close_notify first.
        if self.tls and not self._send_close_notify():
            self.close(None)
            return 0
        if c_shutdown(self._fd, SHUT_WR) < 0:
            self.close(None)
            return 0
        self._start_reading()
        return 0

    cdef bint _send_close_notify(self) except -1:
        """Send TLS close_notify without waiting for the peer's (1 when sent); what arrives
        after it is read from the socket undecrypted and dropped (_on_readable)."""
        try:
            self.sock.unwrap()
        except ssl.SSLWantReadError:
            pass                          # sent; the peer's own close_notify is not awaited
        except ssl.SSLError as exc:
            # unwrap() sends close_notify, then reads for the peer's: reading the data the
            # peer still sends fails, but only once ours is out.
            if exc.reason != "APPLICATION_DATA_AFTER_CLOSE_NOTIFY":
                return 0
        except (OSError, ValueError):     # ValueError: TLS not yet set up
            return 0
        self._tls_closed = True
        return 1

    def close(self, exc=None):
        """Close the socket now (unsent data is dropped) and report `connection_lost(exc)`."""
        if self.closed:
            return
        self.closed = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        loop = self.loop
        cdef int fd = self._fd
        if not loop_is_closed(loop):     # a property on the fastws Loop, asyncio's a method
            if self._reading or self._handshaking:
                loop.remove_reader(fd)
            if self._writer_registered or self._handshaking:
                loop.remove_writer(fd)
        self._reading = self._writer_registered = False
        self._fd = -1
        if self._owns_fd:
            self._owns_fd = False
            c_close(fd)
        elif self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        self._queue.clear()
        self._size = 0
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            protocol.receive_eof()
        listener, self.listener = self.listener, None
        listener.connection_lost(exc)

    def abort(self):
        """Close at once, without sending what is queued."""
        self.close(None)

    @property
    def ending(self):
        """True once the transport was told to close after sending what is queued."""
        return self._ending

    def __repr__(self):
        state = "closed" if self.closed else "tls-handshake" if self._handshaking else "open"
        return f"<fastws.Transport {state} peer={self.peername}>"
