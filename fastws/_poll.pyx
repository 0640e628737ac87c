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

`LoopCore`, the base of `Loop`, runs the loop itself in C: each iteration (due timers,
the wait, the queued callbacks), the busy poll, and the timers (`Timer`, `call_at`). In
Python they cost about 1.4 us per iteration, more than the wait itself, and a ping-pong
peer wakes the loop once per message. The rest of `Loop` (the selectors fallback, the
wakeup fd, closing, fork) stays in fastws/loop.py.
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.errno cimport EEXIST, EINTR, ENOENT, errno
from libc.math cimport ceil
from libc.stdint cimport uint32_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

import os
import selectors
from heapq import heapify, heappop, heappush

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

cdef class LoopCore


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
    cdef LoopCore _loop              # its `_busy` says whether several fds were ready
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


# -- the loop itself ---------------------------------------------------------------------------

# epoll takes its timeout in milliseconds as a C int; an unbounded float would overflow it, and
# waking once a day to recompute costs nothing.
cdef double MAX_SELECT_TIMEOUT = 24 * 3600.0
# The shortest spin of the adaptive busy poll (see LoopCore._poll_then_sleep).
cdef double MIN_SPIN_S = 2e-6
MIN_SPIN = MIN_SPIN_S
# Compacting the timer heap is O(n); below this many cancelled entries the garbage is too small
# to be worth it, above it we compact once they outnumber the live timers, which keeps the cost
# amortised O(1) per cancel and the heap at most about twice the number of live timers.
cdef Py_ssize_t MIN_CANCELLED = 100
MIN_CANCELLED_TO_COMPACT = MIN_CANCELLED


cdef inline double _monotonic() noexcept nogil:
    """time.monotonic(), computed as CPython computes it (the same clock, the same float)."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>(<long long>ts.tv_sec * 1000000000LL + ts.tv_nsec) / 1e9


def _noop(*args):
    """Stands in for the callback of a cancelled timer, so the real one can be freed."""


def _describe(callback):
    name = getattr(callback, "__qualname__", None)
    return name if isinstance(name, str) else repr(callback)


@cython.final
@cython.freelist(64)
@cython.auto_pickle(False)
cdef class Timer:
    """A scheduled callback; `cancel()` stops it from running if it has not run yet.

    Returned by `call_later`, `call_at` and `call_soon`. `when` is on the `Loop.time()` clock
    (for `call_soon` it is the time of scheduling).
    """

    cdef double _when
    cdef object _callback
    cdef tuple _args
    cdef bint _cancelled
    # Set while the timer sits on the loop's heap, so that cancelling it can be counted towards
    # compaction; cleared when it leaves the heap (due, or dropped by compaction).
    cdef LoopCore _loop

    def __init__(self, double when, callback, tuple args, LoopCore loop):
        self._when = when
        self._callback = callback
        self._args = args
        self._loop = loop

    @property
    def when(self):
        return self._when

    @property
    def cancelled(self):
        return self._cancelled

    def cancel(self):
        if self._cancelled:
            return
        self._cancelled = True
        # Drop the references now: a cancelled idle timeout would otherwise keep its connection
        # alive until the deadline passes.
        self._callback = _noop
        self._args = ()
        loop = self._loop
        if loop is not None:
            self._loop = None
            loop._timer_cancelled()

    def __repr__(self):
        state = " cancelled" if self._cancelled else ""
        return f"<Timer when={self._when:.6f} {_describe(self._callback)}{state}>"


cdef class LoopCore:
    """What fastws.Loop does on every iteration, in C (see the module doc). Loop's methods are
    documented on Loop; the attributes are Loop's private state."""

    cdef public object _selector     # an EpollDispatcher, or a selectors selector; None: closed
    cdef public object _ready        # a deque of Timers: call_soon and due timers
    # Entries are (when, sequence, timer): tuples compare in C, and the sequence number both
    # breaks ties in scheduling order and keeps the comparison from ever reaching the Timer.
    cdef public list _timers
    cdef public Py_ssize_t _cancelled_count
    cdef unsigned long long _sequence
    cdef public bint _running
    cdef public bint _in_iteration
    cdef public bint _stopping
    # More than one descriptor ready in this iteration: the process is busy serving
    # several peers, and connections batch their replies fully (see Connection).
    cdef public bint _busy
    cdef public double _busy_poll
    cdef public double _spin
    cdef public double _clock_resolution

    def __cinit__(self):
        self._timers = []

    cdef inline object _open_selector(self):
        selector = self._selector
        if selector is None:
            raise RuntimeError("fastws Loop is closed")
        return selector

    def _check_open(self):
        return self._open_selector()

    # -- file descriptors: EpollDispatcher's registry, or Loop._add/_remove elsewhere

    def add_reader(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is readable; replaces an earlier reader."""
        self._watch(fd, EVENT_READ, callback, args)

    def remove_reader(self, fd):
        """Stop watching ``fd`` for reading; ``False`` if it had no reader. Safe after close."""
        return self._unwatch(fd, EVENT_READ)

    def add_writer(self, fd, callback, *args):
        """Call ``callback(*args)`` whenever ``fd`` is writable; replaces an earlier writer."""
        self._watch(fd, EVENT_WRITE, callback, args)

    def remove_writer(self, fd):
        """Stop watching ``fd`` for writing; ``False`` if it had no writer. Safe after close."""
        return self._unwatch(fd, EVENT_WRITE)

    cdef int _watch(self, fd, int event, callback, tuple args) except -1:
        selector = self._selector
        if type(selector) is EpollDispatcher:
            (<EpollDispatcher>selector).add(fd, event, callback, args)
        else:
            self._add(fd, event, callback, args)
        return 0

    cdef object _unwatch(self, fd, int event):
        selector = self._selector
        if type(selector) is EpollDispatcher:
            return (<EpollDispatcher>selector).remove(fd, event)
        return self._remove(fd, event)

    # -- timers and callbacks

    def time(self):
        """The loop's clock: ``time.monotonic()`` in seconds."""
        return _monotonic()

    def call_at(self, double when, callback, *args):
        """Run ``callback(*args)`` once ``time()`` reaches ``when``."""
        self._open_selector()
        timer = Timer(when, callback, args, self)
        self._sequence += 1
        heappush(self._timers, (when, self._sequence, timer))
        return timer

    def call_later(self, double delay, callback, *args):
        """Run ``callback(*args)`` after ``delay`` seconds."""
        self._open_selector()
        cdef double when = _monotonic() + delay
        timer = Timer(when, callback, args, self)
        self._sequence += 1
        heappush(self._timers, (when, self._sequence, timer))
        return timer

    def call_soon(self, callback, *args):
        """Run ``callback(*args)`` on the next iteration, after those already queued."""
        self._open_selector()
        timer = Timer(_monotonic(), callback, args, None)
        self._ready.append(timer)
        return timer

    cdef int _timer_cancelled(self) except -1:
        self._cancelled_count += 1
        heap = self._timers
        if (self._cancelled_count > MIN_CANCELLED
                and 2 * self._cancelled_count > len(heap)):
            # In place: an iteration never holds on to the list across a callback, so this is
            # safe even when the cancel comes from a callback.
            heap[:] = [entry for entry in heap if not (<Timer>(<tuple>entry)[2])._cancelled]
            heapify(heap)
            self._cancelled_count = 0
        return 0

    def _drop_timers(self):
        """Forget every timer and queued callback (closing)."""
        for entry in self._timers:
            (<Timer>(<tuple>entry)[2])._loop = None
        self._timers.clear()
        self._ready.clear()
        self._cancelled_count = 0
        self._sequence = 0

    # -- running

    @property
    def is_running(self):
        return self._running

    def stop(self):
        """Make ``run()`` return after the current iteration.

        Called before ``run()``, it makes the next ``run()`` do one iteration and return. From
        another thread use ``call_soon_threadsafe(loop.stop)``.
        """
        self._stopping = True

    def run(self):
        """Run iterations until ``stop()`` is called."""
        self._open_selector()
        if self._running:
            raise RuntimeError("fastws Loop is already running")
        self._running = True
        try:
            while True:
                self._run_once(False, 0.0)
                if self._stopping:
                    break
                # Python runs signal handlers between bytecodes; an iteration whose callbacks
                # are all C runs none, so look here (a SIGINT's KeyboardInterrupt, say).
                PyErr_CheckSignals()
        finally:
            self._stopping = False
            self._running = False

    def run_once(self, timeout=None):
        """One iteration: wait for I/O at most ``timeout`` seconds (``None``: until something is
        due), dispatch ready fds, then run due timers and queued callbacks.

        Callbacks queued while this runs wait for the next iteration, so a callback that keeps
        rescheduling itself cannot starve I/O.
        """
        if timeout is None:
            self._run_once(False, 0.0)
        else:
            self._run_once(True, timeout)

    cdef int _run_once(self, bint bounded, double timeout) except -1:
        self._open_selector()
        if self._in_iteration:
            raise RuntimeError("fastws Loop.run_once() called from inside a callback")
        self._in_iteration = True
        try:
            self._iterate(bounded, timeout)
        finally:
            self._in_iteration = False
        return 0

    cdef int _iterate(self, bint bounded, double timeout) except -1:
        cdef list heap = self._timers
        cdef Timer timer
        cdef double end
        cdef Py_ssize_t i, n
        ready = self._ready
        # Cancelled timers at the top would otherwise wake the wait for nothing.
        while heap and (<Timer>(<tuple>heap[0])[2])._cancelled:
            heappop(heap)
            self._cancelled_count -= 1
        if ready:
            bounded, timeout = True, 0.0
        elif heap:
            end = <double>(<tuple>heap[0])[0] - _monotonic()
            if not bounded or end < timeout:
                bounded, timeout = True, end
        if bounded:
            if timeout < 0.0:
                timeout = 0.0
            elif timeout > MAX_SELECT_TIMEOUT:
                timeout = MAX_SELECT_TIMEOUT

        if self._busy_poll and not (bounded and timeout == 0.0):
            self._poll_then_sleep(bounded, timeout)
        else:
            self._poll(timeout if bounded else -1.0)

        if heap:
            # Within one clock tick counts as due: the wait may end a hair early, and spinning
            # on a zero timeout until the clock catches up would waste an iteration.
            end = _monotonic() + self._clock_resolution
            while heap and <double>(<tuple>heap[0])[0] <= end:
                timer = <Timer>(<tuple>heappop(heap))[2]
                if timer._cancelled:
                    self._cancelled_count -= 1
                    continue
                timer._loop = None
                ready.append(timer)

        # Only what is queued now runs; anything queued by these callbacks waits for the next
        # iteration. Cancelled entries (cancelled after being queued) are skipped.
        n = len(ready)
        for i in range(n):
            timer = <Timer?>ready.popleft()
            if timer._cancelled:
                continue
            callback = timer._callback
            try:
                callback(*timer._args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                self._report_callback_error("callback", callback)
        return 0

    cdef int _poll(self, double timeout) except -1:
        """Wait (timeout < 0: until something happens) and dispatch; how many fds were ready."""
        selector = self._selector
        if type(selector) is EpollDispatcher:
            return (<EpollDispatcher>selector).dispatch(timeout)
        return self._select_and_dispatch(timeout)

    cdef int _poll_then_sleep(self, bint bounded, double timeout) except -1:
        """Poll for up to the adaptive spin, then sleep until `timeout`.

        Going to sleep and being woken costs a process more CPU time than polling for a few
        microseconds, and it adds that much latency to every reply. `_spin` doubles when an
        event ended a sleep after less than 2 * busy_poll (the measure includes the wake-up
        itself) and halves otherwise, so an idle or sparse loop stops spinning after a few
        wake-ups (as Linux's haltpoll adapts).
        """
        cdef double start, now, end, spin, slept
        cdef int ready
        if self._poll(0.0):
            return 0
        start = now = _monotonic()
        spin = self._spin if not bounded else min(self._spin, timeout)
        if spin:
            end = start + spin
            while now < end:
                if self._poll(0.0):
                    return 0
                now = _monotonic()
            if bounded:
                timeout = max(0.0, timeout - (now - start))
        ready = self._poll(timeout if bounded else -1.0)
        slept = _monotonic() - now
        if ready and slept < 2.0 * self._busy_poll:
            self._spin = min(max(self._spin * 2.0, MIN_SPIN_S), self._busy_poll)
        elif self._spin:
            self._spin = 0.0 if self._spin < 2.0 * MIN_SPIN_S else self._spin / 2.0
        return 0
