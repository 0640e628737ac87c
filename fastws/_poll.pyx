# cython: language_level=3
"""The loop's wait and dispatch in C, on the selector's own epoll object.

`Loop` (fastws/loop.py) registers file descriptors with a `selectors` selector and keeps, for
each, an `FdCallbacks` (what to call when it is readable or writable). Waking up costs the
loop more than the work of a small message: selectors' `select()` builds a list of
(key, events) pairs in Python, and the loop then walks it in Python. `EpollDispatcher` wraps
an `EpollSelector` and uses its epoll object: `dispatch()` calls `epoll_wait` itself, with
the GIL released, and calls each ready fd's reader and writer straight from C, with no list,
tuple or key object per event. It is also the registry: `add()` and `remove()` (what the
loop's add_reader/remove_reader/... come down to) keep the fd-indexed FdCallbacks and call
`epoll_ctl` themselves, with no SelectorKey per registration (a connection storm registers
and unregisters every socket). Other selectors (other systems) keep the Python path.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.errno cimport EEXIST, EINTR, ENOENT, errno
from libc.math cimport ceil
from libc.stdint cimport uint32_t

import os
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
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL

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
    cdef object fileobj             # what was registered (EpollDispatcher's registry)
    cdef int events                 # EVENT_READ | EVENT_WRITE as registered

    def __cinit__(self):
        self.reader_args = ()
        self.writer_args = ()


cdef inline int _set_callback(FdCallbacks entry, int event, callback, tuple args) except -1:
    if event == EVENT_READ:
        entry.reader = callback
        entry.reader_args = args
    else:
        entry.writer = callback
        entry.writer_args = args
    return 0


cdef inline uint32_t _epoll_mask(int events):
    return ((<uint32_t>EPOLLIN if events & EVENT_READ else 0)
            | (<uint32_t>EPOLLOUT if events & EVENT_WRITE else 0))


cdef int _fd_of(fileobj) except? -2:
    """The fd of an int or of an object with fileno(); -1 for a closed one."""
    if isinstance(fileobj, int):
        return <int>fileobj
    try:
        fileno = fileobj.fileno
    except AttributeError:
        raise ValueError(f"Invalid file object: {fileobj!r}") from None
    try:
        return <int>fileno()
    except (OSError, ValueError):
        return -1


cdef bint _is_dead(fileobj):
    """True for a closed or detached object (its fd number may since have been reused)."""
    return not isinstance(fileobj, int) and _fd_of(fileobj) < 0


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

    # -- the registry: one FdCallbacks per fd, epoll_ctl called here

    def add(self, fileobj, int event, callback, tuple args):
        """Watch `fileobj` (an object with fileno() or an fd) for `event` (EVENT_READ or
        EVENT_WRITE) and call `callback(*args)`; replaces an earlier callback for it."""
        cdef int fd = _fd_of(fileobj)
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        cdef FdCallbacks entry = self._entry(fd)
        if entry is not None and entry.fileobj is not fileobj and _is_dead(entry.fileobj):
            # The registered object was closed (or detached) without being removed and the
            # kernel handed its fd number to `fileobj`: its callbacks must not carry over.
            self._drop(fd, entry)
            entry = None
        if entry is None:
            entry = FdCallbacks()
            entry.fileobj = fileobj
            _set_callback(entry, event, callback, args)
            self._ctl(EPOLL_CTL_ADD, fd, event, entry)
            return
        _set_callback(entry, event, callback, args)
        if not entry.events & event:
            self._ctl(EPOLL_CTL_MOD, fd, entry.events | event, entry)

    def remove(self, fileobj, int event):
        """Stop calling `fileobj`'s callback for `event`; False if it had none. A closed
        object (fileno() == -1) is found by identity, as selectors does."""
        cdef int fd = _fd_of(fileobj)
        cdef FdCallbacks entry = self._entry(fd) if fd >= 0 else self._find(fileobj)
        if entry is None:
            return False
        if fd < 0:
            fd = self._by_fd.index(entry)
        if event == EVENT_READ:
            if entry.reader is None:
                return False
            entry.reader = None
            entry.reader_args = ()
        else:
            if entry.writer is None:
                return False
            entry.writer = None
            entry.writer_args = ()
        cdef int remaining = entry.events & ~event
        cdef epoll_event ev
        if remaining:
            ev.events = _epoll_mask(remaining)
            ev.data.fd = fd
            if epoll_ctl(self._epfd, EPOLL_CTL_MOD, fd, &ev) == 0:
                entry.events = remaining
                return True
        # Nothing left to watch, or the fd is gone (closed behind our back): unregister.
        self._drop(fd, entry)
        return True

    cdef FdCallbacks _entry(self, int fd):
        if fd >= PyList_GET_SIZE(self._by_fd):
            return None
        item = self._by_fd[fd]
        return None if item is None else <FdCallbacks>item

    cdef FdCallbacks _find(self, fileobj):
        for entry in self._by_fd:
            if entry is not None and (<FdCallbacks>entry).fileobj is fileobj:
                return <FdCallbacks>entry
        return None

    cdef int _ctl(self, int op, int fd, int events, FdCallbacks entry) except -1:
        cdef epoll_event ev
        ev.events = _epoll_mask(events)
        ev.data.fd = fd
        if epoll_ctl(self._epfd, op, fd, &ev) < 0:
            err = errno
            if op == EPOLL_CTL_ADD and err == EEXIST:
                op = EPOLL_CTL_MOD            # registered behind our back (a dup'ed fd)
            elif op == EPOLL_CTL_MOD and err == ENOENT:
                op = EPOLL_CTL_ADD            # the fd was closed and reopened behind our back
            else:
                self._drop(fd, entry)
                raise OSError(err, os.strerror(err))
            if epoll_ctl(self._epfd, op, fd, &ev) < 0:
                err = errno
                self._drop(fd, entry)
                raise OSError(err, os.strerror(err))
        entry.events = events
        self._set(fd, entry)
        return 0

    cdef int _drop(self, int fd, FdCallbacks entry) except -1:
        cdef epoll_event ev
        epoll_ctl(self._epfd, EPOLL_CTL_DEL, fd, &ev)     # fails harmlessly if it is closed
        entry.reader = entry.writer = None
        entry.reader_args = entry.writer_args = ()
        entry.events = 0
        if fd < PyList_GET_SIZE(self._by_fd) and self._by_fd[fd] is entry:
            self._by_fd[fd] = None
        return 0

    # -- the part of the selectors API the loop and its tests use

    def register(self, fileobj, int events, FdCallbacks data):
        cdef int fd = _fd_of(fileobj)
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        if self._entry(fd) is not None:
            raise KeyError(f"{fileobj!r} (FD {fd}) is already registered")
        data.fileobj = fileobj
        self._ctl(EPOLL_CTL_ADD, fd, events, data)
        return selectors.SelectorKey(fileobj, fd, events, data)

    def get_key(self, fileobj):
        cdef int fd = _fd_of(fileobj)
        cdef FdCallbacks entry = self._entry(fd) if fd >= 0 else self._find(fileobj)
        if entry is None:
            raise KeyError(f"{fileobj!r} is not registered")
        if fd < 0:
            fd = self._by_fd.index(entry)
        return selectors.SelectorKey(entry.fileobj, fd, entry.events, entry)

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
