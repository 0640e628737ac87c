"""The fastws event loop: one thread, one ``Loop``, no asyncio underneath.

``Loop`` waits on a ``selectors.DefaultSelector`` (epoll on Linux) and calls plain callbacks when a
file descriptor becomes readable or writable, when a timer falls due (``call_later``/``call_at``,
kept on a heap with lazy deletion), or when a callback was queued with ``call_soon`` or, from
another thread, ``call_soon_threadsafe`` (which wakes a blocked ``select``: fastws.wakeup).
It runs every server and client connection, their timeouts and TLS handshakes, so the
per-event dispatch is kept to one attribute read and a direct call. A callback that raises is
logged on the ``fastws`` logger and the loop carries on; ``KeyboardInterrupt`` and ``SystemExit``
propagate. ``default_loop()`` gives each thread its own loop for ``serve()`` and ``connect()``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import selectors
import threading
import time as _time
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Protocol

from ._poll import EpollDispatcher, FdCallbacks
from .wakeup import Waker

__all__ = ["HasFileno", "Loop", "Timer", "default_loop"]

logger = logging.getLogger("fastws")

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE

# epoll takes its timeout in milliseconds as a C int; an unbounded float would overflow it, and
# waking once a day to recompute costs nothing.
_MAX_SELECT_TIMEOUT = 24 * 3600.0
# Busy polling: after I/O the loop polls for up to this long before it sleeps (see Loop).
DEFAULT_BUSY_POLL = 25e-6
_MIN_SPIN = 2e-6

# Compacting the heap is O(n); below this many cancelled entries the garbage is too small to be
# worth it, above it we compact once they outnumber the live timers, which keeps the cost amortised
# O(1) per cancel and the heap at most about twice the number of live timers.
_MIN_CANCELLED_TO_COMPACT = 100



class HasFileno(Protocol):
    """Anything with a ``fileno()``: sockets, pipes, files, SSL sockets."""

    def fileno(self) -> int: ...


FileDescriptorLike = int | HasFileno
Callback = Callable[..., object]


def _noop(*args: object) -> None:
    """Stands in for the callback of a cancelled timer, so the real one can be freed."""


def _describe(callback: Callback) -> str:
    name = getattr(callback, "__qualname__", None)
    return name if isinstance(name, str) else repr(callback)


def _registered(selector: Selector, fileobj: FileDescriptorLike) -> selectors.SelectorKey | None:
    """The selector's key for this object's fd, or None.

    Looked up by the fd number: for an object it does not know, selectors raises a KeyError
    whose message holds the object's repr, and a socket's repr costs several system calls.
    A closed object (fileno() == -1) is looked up by identity, as selectors does it.
    """
    try:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return selector.get_key(fd if fd >= 0 else fileobj)
    except (KeyError, ValueError, OSError):
        return None


def _is_dead(fileobj: FileDescriptorLike) -> bool:
    """True for a closed or detached object (its fd number may since have been reused)."""
    if isinstance(fileobj, int):
        return False
    try:
        return fileobj.fileno() < 0
    except (OSError, ValueError):
        return True


class Timer:
    """A scheduled callback; ``cancel()`` stops it from running if it has not run yet.

    Returned by ``call_later``, ``call_at`` and ``call_soon``. ``when`` is on the ``Loop.time()``
    clock (for ``call_soon`` it is the time of scheduling).
    """

    __slots__ = ("_when", "_callback", "_args", "_cancelled", "_loop")

    def __init__(
        self, when: float, callback: Callback, args: tuple[object, ...], loop: Loop | None
    ) -> None:
        self._when = when
        self._callback = callback
        self._args = args
        self._cancelled = False
        # Set while the timer sits on the loop's heap, so that cancelling it can be counted towards
        # compaction; cleared when it leaves the heap (due, or dropped by compaction).
        self._loop = loop

    @property
    def when(self) -> float:
        return self._when

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
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

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<Timer when={self._when:.6f} {_describe(self._callback)}{state}>"


Selector = selectors.BaseSelector | EpollDispatcher


def _new_selector(loop: Loop) -> Selector:
    """The default selector; on epoll, wrapped so that waiting and dispatching run in C."""
    selector = selectors.DefaultSelector()
    if isinstance(selector, selectors.EpollSelector):
        return EpollDispatcher(selector, loop, loop._report_callback_error)
    return selector


class Loop:
    """A single-threaded event loop on ``selectors.DefaultSelector``.

    Only ``call_soon_threadsafe`` may be called from another thread; every other method belongs to
    the thread that runs the loop. After ``close()`` every method except ``close()``, ``time()``
    and ``is_running`` raises ``RuntimeError``.

    ``busy_poll`` (seconds, default 25 us): after I/O, poll this long for the next event before
    sleeping, adapting to the traffic; ``0`` always sleeps at once (see docs/performance.md).
    """

    DEFAULT_BUSY_POLL: ClassVar[float] = DEFAULT_BUSY_POLL

    __slots__ = (
        "_selector",
        "_ready",
        "_timers",
        "_cancelled_count",
        "_sequence",
        "_running",
        "_in_iteration",
        "_stopping",
        "_busy",
        "_busy_poll",
        "_spin",
        "_clock_resolution",
        "_waker",
        "_wakeup_pending",
        "__weakref__",
    )

    def __init__(self, *, busy_poll: float = DEFAULT_BUSY_POLL) -> None:
        if not 0.0 <= busy_poll < float("inf"):
            raise ValueError(f"busy_poll must be finite seconds >= 0, not {busy_poll!r}")
        self._selector: Selector | None = _new_selector(self)
        self._ready: collections.deque[Timer] = collections.deque()
        # Entries are (when, sequence, timer): tuples compare in C, and the sequence number both
        # breaks ties in scheduling order and keeps the comparison from ever reaching the Timer.
        self._timers: list[tuple[float, int, Timer]] = []
        self._cancelled_count = 0
        self._sequence = itertools.count()
        self._running = False
        self._in_iteration = False
        self._stopping = False
        # More than one descriptor ready in this iteration: the process is busy serving
        # several peers, and connections batch their replies fully (see Connection).
        self._busy = False
        # Going to sleep and being woken costs a process more CPU time than polling for a
        # few microseconds (15-20 us on a VM), and it adds that much latency to every reply.
        # So when the next event tends to come within `busy_poll` of the last one (a peer
        # that streams or answers quickly), the loop polls for it instead of sleeping: spin
        # then block, with the spin adapted as in Linux's haltpoll. `_spin` doubles when an
        # event ended a sleep after less than 2 * busy_poll (the measure includes the
        # wake-up itself) and halves otherwise, so an idle or sparse loop stops spinning
        # after a few wake-ups.
        self._busy_poll = float(busy_poll)
        self._spin = self._busy_poll
        self._clock_resolution = _time.get_clock_info("monotonic").resolution
        self._wakeup_pending = False
        self._waker: Waker | None = None
        try:
            self._open_wakeup()
        except BaseException:
            self._selector.close()
            self._selector = None
            raise

    @property
    def busy_poll(self) -> float:
        """Longest poll for the next event before sleeping, in seconds (0: off)."""
        return self._busy_poll

    # -- wakeup --------------------------------------------------------------------------------

    def _open_wakeup(self) -> None:
        assert self._selector is not None
        waker = self._waker = Waker()
        callbacks = FdCallbacks()
        callbacks.reader = self._drain_wakeup
        self._selector.register(waker.fileobj, _EVENT_READ, callbacks)

    def _drain_wakeup(self) -> None:
        assert self._waker is not None
        self._waker.drain()
        # Cleared only after reading: a writer that saw the flag set just before this point skipped
        # its write, but its callback is already queued and the ready queue is checked after fd
        # dispatch. Clearing before the read could swallow a fresh write and leave the flag stuck.
        self._wakeup_pending = False

    # -- file descriptors ----------------------------------------------------------------------

    def _check_open(self) -> Selector:
        selector = self._selector
        if selector is None:
            raise RuntimeError("fastws Loop is closed")
        return selector

    def _add(
        self,
        fd: FileDescriptorLike,
        event: int,
        callback: Callback,
        args: tuple[object, ...],
    ) -> None:
        """add_reader/add_writer on a selector other than EpollDispatcher (its add())."""
        selector = self._check_open()
        assert not isinstance(selector, EpollDispatcher)
        key = _registered(selector, fd)
        if key is not None and key.fileobj is not fd and _is_dead(key.fileobj):
            # The registered object was closed (or detached) without being removed and the kernel
            # handed its fd number to ``fd``: its callbacks are stale and must not carry over.
            self._forget(selector, key.fileobj)
            key = None
        if key is not None:
            callbacks: FdCallbacks = key.data
            self._set(callbacks, event, callback, args)
            if not key.events & event:
                try:
                    selector.modify(fd, key.events | event, callbacks)
                except OSError:
                    # The fd was closed and reopened behind our back; the selector has already
                    # dropped the registration, so start afresh with only the new callback.
                    callbacks = FdCallbacks()
                    self._set(callbacks, event, callback, args)
                    selector.register(fd, event, callbacks)
            return
        callbacks = FdCallbacks()
        self._set(callbacks, event, callback, args)
        selector.register(fd, event, callbacks)

    @staticmethod
    def _set(
        callbacks: FdCallbacks, event: int, callback: Callback, args: tuple[object, ...]
    ) -> None:
        if event == _EVENT_READ:
            callbacks.reader = callback
            callbacks.reader_args = args
        else:
            callbacks.writer = callback
            callbacks.writer_args = args

    @staticmethod
    def _forget(selector: selectors.BaseSelector, fd: FileDescriptorLike) -> None:
        try:
            key = selector.unregister(fd)
        except (KeyError, ValueError, OSError):
            return
        callbacks: FdCallbacks = key.data
        callbacks.reader = callbacks.writer = None
        callbacks.reader_args = callbacks.writer_args = ()

    def _remove(self, fd: FileDescriptorLike, event: int) -> bool:
        """remove_reader/remove_writer on a selector other than EpollDispatcher (its remove())."""
        selector = self._check_open()
        assert not isinstance(selector, EpollDispatcher)
        key = _registered(selector, fd)
        if key is None:
            return False
        callbacks: FdCallbacks = key.data
        if event == _EVENT_READ:
            if callbacks.reader is None:
                return False
            callbacks.reader = None
            callbacks.reader_args = ()
        else:
            if callbacks.writer is None:
                return False
            callbacks.writer = None
            callbacks.writer_args = ()
        remaining = key.events & ~event
        if remaining:
            try:
                selector.modify(key.fileobj, remaining, callbacks)
            except (KeyError, ValueError, OSError):
                # The fd is already closed; the selector unregistered it while failing, which is
                # what the caller wants anyway once the socket is gone.
                pass
        else:
            try:
                selector.unregister(key.fileobj)
            except (KeyError, ValueError, OSError):
                pass
        return True

    def add_reader(self, fd: FileDescriptorLike, callback: Callback, *args: object) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is readable; replaces an earlier reader."""
        selector = self._selector
        if type(selector) is EpollDispatcher:
            selector.add(fd, _EVENT_READ, callback, args)
        else:
            self._add(fd, _EVENT_READ, callback, args)

    def remove_reader(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for reading; ``False`` if it had no reader. Safe after close."""
        selector = self._selector
        if type(selector) is EpollDispatcher:
            return selector.remove(fd, _EVENT_READ)
        return self._remove(fd, _EVENT_READ)

    def add_writer(self, fd: FileDescriptorLike, callback: Callback, *args: object) -> None:
        """Call ``callback(*args)`` whenever ``fd`` is writable; replaces an earlier writer."""
        selector = self._selector
        if type(selector) is EpollDispatcher:
            selector.add(fd, _EVENT_WRITE, callback, args)
        else:
            self._add(fd, _EVENT_WRITE, callback, args)

    def remove_writer(self, fd: FileDescriptorLike) -> bool:
        """Stop watching ``fd`` for writing; ``False`` if it had no writer. Safe after close."""
        selector = self._selector
        if type(selector) is EpollDispatcher:
            return selector.remove(fd, _EVENT_WRITE)
        return self._remove(fd, _EVENT_WRITE)

    # -- timers and callbacks ------------------------------------------------------------------

    def time(self) -> float:
        """The loop's clock: ``time.monotonic()`` in seconds."""
        return _time.monotonic()

    def call_at(self, when: float, callback: Callback, *args: object) -> Timer:
        """Run ``callback(*args)`` once ``time()`` reaches ``when``."""
        self._check_open()
        timer = Timer(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_later(self, delay: float, callback: Callback, *args: object) -> Timer:
        """Run ``callback(*args)`` after ``delay`` seconds."""
        return self.call_at(_time.monotonic() + delay, callback, *args)

    def call_soon(self, callback: Callback, *args: object) -> Timer:
        """Run ``callback(*args)`` on the next iteration, after those already queued."""
        self._check_open()
        timer = Timer(_time.monotonic(), callback, args, None)
        self._ready.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callback, *args: object) -> None:
        """Like ``call_soon``, from any thread; wakes the loop if it is waiting in ``select``."""
        self._check_open()
        # deque.append is atomic, and the callback must be queued before the flag is read (see
        # _drain_wakeup) so that a skipped write never loses it.
        self._ready.append(Timer(0.0, callback, args, None))
        if not self._wakeup_pending:
            self._wakeup_pending = True
            waker = self._waker
            try:
                if waker is not None:
                    waker.wake()
            except OSError:
                # Only when close() raced with us from the loop thread; nothing left to wake.
                pass

    def _timer_cancelled(self) -> None:
        self._cancelled_count += 1
        heap = self._timers
        if self._cancelled_count > _MIN_CANCELLED_TO_COMPACT and (
            2 * self._cancelled_count > len(heap)
        ):
            # In place: run_once never holds on to the list across a callback, so this is safe
            # even when the cancel comes from a callback.
            heap[:] = [entry for entry in heap if not entry[2]._cancelled]
            heapq.heapify(heap)
            self._cancelled_count = 0

    # -- running -------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._running

    def stop(self) -> None:
        """Make ``run()`` return after the current iteration.

        Called before ``run()``, it makes the next ``run()`` do one iteration and return. From
        another thread use ``call_soon_threadsafe(loop.stop)``.
        """
        self._stopping = True

    def run(self) -> None:
        """Run iterations until ``stop()`` is called."""
        self._check_open()
        if self._running:
            raise RuntimeError("fastws Loop is already running")
        self._running = True
        try:
            while True:
                self.run_once()
                if self._stopping:
                    break
        finally:
            self._stopping = False
            self._running = False

    def run_once(self, timeout: float | None = None) -> None:
        """One iteration: wait for I/O at most ``timeout`` seconds (``None``: until something is
        due), dispatch ready fds, then run due timers and queued callbacks.

        Callbacks queued while this runs wait for the next iteration, so a callback that keeps
        rescheduling itself cannot starve I/O.
        """
        selector = self._check_open()
        if self._in_iteration:
            raise RuntimeError("fastws Loop.run_once() called from inside a callback")
        self._in_iteration = True
        try:
            self._iterate(selector, timeout)
        finally:
            self._in_iteration = False

    def _iterate(self, selector: Selector, timeout: float | None) -> None:
        heap = self._timers
        ready = self._ready
        # Cancelled timers at the top would otherwise wake select for nothing.
        while heap and heap[0][2]._cancelled:
            heapq.heappop(heap)
            self._cancelled_count -= 1
        if ready:
            timeout = 0.0
        elif heap:
            until_timer = heap[0][0] - _time.monotonic()
            if timeout is None or until_timer < timeout:
                timeout = until_timer
        if timeout is not None:
            if timeout < 0.0:
                timeout = 0.0
            elif timeout > _MAX_SELECT_TIMEOUT:
                timeout = _MAX_SELECT_TIMEOUT

        poll = selector.dispatch if type(selector) is EpollDispatcher else self._select_and_dispatch
        if self._busy_poll and timeout != 0.0:
            self._poll_then_sleep(poll, timeout)
        else:
            poll(-1.0 if timeout is None else timeout)

        if heap:
            # Within one clock tick counts as due: select may return a hair early, and spinning
            # on a zero timeout until the clock catches up would waste an iteration.
            end = _time.monotonic() + self._clock_resolution
            while heap and heap[0][0] <= end:
                timer = heapq.heappop(heap)[2]
                if timer._cancelled:
                    self._cancelled_count -= 1
                    continue
                timer._loop = None
                ready.append(timer)

        # Only what is queued now runs; anything queued by these callbacks waits for the next
        # iteration. Cancelled entries (cancelled after being queued) are skipped.
        for _ in range(len(ready)):
            timer = ready.popleft()
            if timer._cancelled:
                continue
            callback = timer._callback
            try:
                callback(*timer._args)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:
                logger.exception("exception in callback %s", _describe(callback))

    def _select_and_dispatch(self, timeout: float) -> int:
        """Wait with the selector (timeout < 0: forever) and run the ready fds' callbacks;
        the number that were ready. (On epoll, EpollDispatcher.dispatch does this in C.)"""
        selector = self._selector
        assert selector is not None and not isinstance(selector, EpollDispatcher)
        ready_fds = selector.select(None if timeout < 0 else timeout)
        self._busy = len(ready_fds) > 1
        for key, events in ready_fds:
            callbacks: FdCallbacks = key.data
            if events & _EVENT_READ:
                callback = callbacks.reader
                if callback is not None:
                    try:
                        callback(*callbacks.reader_args)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:
                        self._report_callback_error("reader", callback)
            if events & _EVENT_WRITE:
                # Read afresh: the reader above may have removed or replaced the writer.
                callback = callbacks.writer
                if callback is not None:
                    try:
                        callback(*callbacks.writer_args)
                    except (KeyboardInterrupt, SystemExit):
                        raise
                    except BaseException:
                        self._report_callback_error("writer", callback)
        return len(ready_fds)

    @staticmethod
    def _report_callback_error(kind: str, callback: Callback) -> None:
        logger.exception("exception in %s %s", kind, _describe(callback))

    def _poll_then_sleep(self, poll: Callable[[float], int], timeout: float | None) -> None:
        """Poll for up to the adaptive spin, then sleep until `timeout` (see __init__)."""
        if poll(0.0):
            return
        monotonic = _time.monotonic
        start = now = monotonic()
        spin = self._spin if timeout is None else min(self._spin, timeout)
        if spin:
            end = start + spin
            while now < end:
                if poll(0.0):
                    return
                now = monotonic()
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        ready = poll(-1.0 if timeout is None else timeout)
        slept = monotonic() - now
        if ready and slept < 2.0 * self._busy_poll:
            self._spin = min(max(self._spin * 2.0, _MIN_SPIN), self._busy_poll)
        elif self._spin:
            self._spin = 0.0 if self._spin < 2.0 * _MIN_SPIN else self._spin / 2.0

    # -- closing -------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        return self._selector is None

    def close(self) -> None:
        """Close the selector and the wakeup fd and drop every pending callback; idempotent."""
        selector = self._selector
        if selector is None:
            return
        if self._running or self._in_iteration:
            raise RuntimeError("cannot close a running fastws Loop; stop() it first")
        self._selector = None
        selector.close()
        if self._waker is not None:
            self._waker.close()
            self._waker = None
        for _, _, timer in self._timers:
            timer._loop = None
        self._timers.clear()
        self._ready.clear()
        self._cancelled_count = 0

    def _reset_after_fork(self) -> None:
        """In a forked child: a fresh selector and wakeup fd, no inherited callbacks.

        The parent's registrations, timers and queued callbacks belong to the parent's
        sockets and connections; the child drops them (its copies of those descriptors
        stay open but unwatched) and starts clean.
        """
        self._check_open()
        if self._running or self._in_iteration:
            raise RuntimeError("cannot fork-reset a running fastws Loop")
        self.close()
        self._selector = _new_selector(self)
        self._sequence = itertools.count()
        self._wakeup_pending = False
        self._spin = self._busy_poll
        self._open_wakeup()

    def __enter__(self) -> Loop:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._selector is None else "running" if self._running else "idle"
        return f"<fastws.Loop {state} timers={len(self._timers)} ready={len(self._ready)}>"


_thread_local = threading.local()


def default_loop() -> Loop:
    """This thread's default loop, created on first use and replaced once it has been closed."""
    loop: Loop | None = getattr(_thread_local, "loop", None)
    if loop is None or loop.is_closed:
        loop = Loop()
        _thread_local.loop = loop
    return loop
