# cython: language_level=3
"""The loop's wait and dispatch in C, on the selector's own epoll object.

`Loop` (fastws/loop.py) registers file descriptors with a `selectors` selector and keeps, for
each, an `FdCallbacks` (what to call when it is readable or writable). Waking up costs the
loop more than the work of a small message: selectors' `select()` builds a list of
(key, events) pairs in Python, and the loop then walks it in Python. `EpollDispatcher` wraps
an `EpollSelector`: registrations still go through it (it stays the registry), but
`dispatch()` calls `epoll_wait` itself, with the GIL released, and calls each ready fd's
reader and writer straight from C, with no list, tuple or key object per event. Other
selectors (other systems) keep the Python path.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.errno cimport EINTR, errno
from libc.math cimport ceil
from libc.stdint cimport uint32_t

import selectors

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT

cdef enum:
    MAX_EVENTS = 512
    EVENT_READ = 1          # selectors.EVENT_READ
    EVENT_WRITE = 2         # selectors.EVENT_WRITE


@cython.final
@cython.freelist(64)
@cython.auto_pickle(False)
cdef class FdCallbacks:
    """What to call for one registered fd. Mutated in place when a reader or writer is added
    or removed, so a dispatch sees a removal made by an earlier callback of the same round."""

    cdef public object reader
    cdef public tuple reader_args
    cdef public object writer
    cdef public tuple writer_args

    def __cinit__(self):
        self.reader_args = ()
        self.writer_args = ()


@cython.final
@cython.auto_pickle(False)
cdef class EpollDispatcher:
    """An EpollSelector whose `dispatch()` waits and calls the ready fds' callbacks in C.

    It offers the part of the selectors API the loop uses (register, modify, unregister,
    get_key, select, close) and keeps an fd-indexed list of the registered FdCallbacks.
    Before calling anything it sets `loop._busy` (several fds ready). `report(kind,
    callback)` is called (inside the except clause) for an exception from a callback;
    KeyboardInterrupt and SystemExit propagate.
    """

    cdef object _selector
    cdef int _epfd
    cdef list _by_fd                 # fd -> FdCallbacks or None
    cdef object _report
    cdef object _loop                # its `_busy` says whether several fds were ready
    cdef epoll_event _events[MAX_EVENTS]

    def __init__(self, selector, loop, report):
        if not isinstance(selector, selectors.EpollSelector):
            raise TypeError("EpollDispatcher needs an EpollSelector")
        self._selector = selector
        self._loop = loop
        self._epfd = selector.fileno()
        self._by_fd = []
        self._report = report

    def register(self, fileobj, int events, FdCallbacks data):
        key = self._selector.register(fileobj, events, data)
        self._set(key.fd, data)
        return key

    def modify(self, fileobj, int events, FdCallbacks data):
        try:
            key = self._selector.modify(fileobj, events, data)
        except BaseException:
            # selectors unregisters a descriptor it fails to modify
            self._forget_missing(fileobj)
            raise
        self._set(key.fd, data)
        return key

    def unregister(self, fileobj):
        key = self._selector.unregister(fileobj)
        self._set(key.fd, None)
        return key

    def get_key(self, fileobj):
        return self._selector.get_key(fileobj)

    def select(self, timeout=None):
        return self._selector.select(timeout)

    def close(self):
        self._by_fd = []
        self._loop = None
        self._selector.close()

    cdef int _set(self, int fd, object data) except -1:
        cdef list by_fd = self._by_fd
        if fd >= len(by_fd):
            if data is None:
                return 0
            by_fd.extend([None] * (fd + 1 - len(by_fd) + 64))
        by_fd[fd] = data
        return 0

    cdef int _forget_missing(self, fileobj) except -1:
        try:
            self._selector.get_key(fileobj)
        except (KeyError, ValueError):
            fd = fileobj if isinstance(fileobj, int) else -1
            if fd < 0:
                try:
                    fd = fileobj.fileno()
                except (OSError, ValueError):
                    return 0
            if 0 <= fd < len(self._by_fd):
                self._by_fd[fd] = None
        return 0

    cpdef int dispatch(self, double timeout) except -1:
        """Wait up to `timeout` seconds (< 0: until something happens; 0: not at all) and
        call the readers, then the writers, of the ready fds; returns how many were ready."""
        cdef int ms = -1 if timeout < 0 else <int>ceil(timeout * 1e3)
        cdef int n, i, fd
        cdef uint32_t events
        cdef FdCallbacks callbacks
        cdef PyObject *item
        with nogil:
            n = epoll_wait(self._epfd, self._events, MAX_EVENTS, ms)
        if n < 0:
            if errno == EINTR:
                PyErr_CheckSignals()      # a signal handler may raise, as in select()
                return 0
            raise OSError(errno, "epoll_wait failed")
        if n:
            # Connections batch their replies fully when several peers are ready.
            self._loop._busy = n > 1
        for i in range(n):
            fd = self._events[i].data.fd
            events = self._events[i].events
            # Read afresh each time: an earlier callback may have unregistered this fd.
            if fd >= PyList_GET_SIZE(self._by_fd):
                continue
            item = PyList_GET_ITEM(self._by_fd, fd)
            if <object>item is None:
                continue
            callbacks = <FdCallbacks>item
            # As selectors does it: a hang-up or an error wakes the reader and the writer.
            if events & ~(<uint32_t>EPOLLOUT) and callbacks.reader is not None:
                self._call(callbacks.reader, callbacks.reader_args, "reader")
            if events & ~(<uint32_t>EPOLLIN) and callbacks.writer is not None:
                self._call(callbacks.writer, callbacks.writer_args, "writer")
        return n

    cdef int _call(self, object callback, tuple args, str kind) except -1:
        try:
            if args:
                callback(*args)
            else:
                callback()
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            self._report(kind, callback)
        return 0
