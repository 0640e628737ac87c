"""The fastws event loop: one thread, one ``Loop``, no asyncio underneath.

``Loop`` waits on a ``selectors.DefaultSelector`` (epoll on Linux) and calls plain callbacks when a
file descriptor becomes readable or writable, when a timer falls due (``call_later``/``call_at``,
kept on a heap with lazy deletion), or when a callback was queued with ``call_soon`` or, from
another thread, ``call_soon_threadsafe`` (which wakes a blocked ``select``: fastws.wakeup).
It runs every server and client connection, their timeouts and TLS handshakes, so the
per-event dispatch is kept to one attribute read and a direct call. A callback that raises is
logged on the ``fastws`` logger and the loop carries on; ``KeyboardInterrupt`` and ``SystemExit``
propagate. ``default_loop()`` gives each thread its own loop for ``serve()`` and ``connect()``.
The iterations, the busy poll and the timers run in C (``LoopCore`` and ``Timer`` in
fastws._poll); this module keeps the rest: the selectors fallback, the wakeup, closing, fork.
"""

from __future__ import annotations

import collections
import logging
import selectors
import threading
import time as _time
from collections.abc import Callable
from types import TracebackType
from typing import ClassVar, Protocol

from ._poll import MIN_SPIN, EpollDispatcher, FdCallbacks, LoopCore, Timer, _describe
from .wakeup import Waker

__all__ = ["HasFileno", "Loop", "Timer", "default_loop"]

logger = logging.getLogger("fastws")

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE

# Busy polling: after I/O the loop polls for up to this long before it sleeps (see Loop).
DEFAULT_BUSY_POLL = 25e-6
_MIN_SPIN = MIN_SPIN



class HasFileno(Protocol):
    """Anything with a ``fileno()``: sockets, pipes, files, SSL sockets."""

    def fileno(self) -> int: ...


FileDescriptorLike = int | HasFileno
Callback = Callable[..., object]


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


Selector = selectors.BaseSelector | EpollDispatcher


def _new_selector(loop: Loop) -> Selector:
    """The default selector; on epoll, wrapped so that waiting and dispatching run in C."""
    selector = selectors.DefaultSelector()
    if isinstance(selector, selectors.EpollSelector):
        return EpollDispatcher(selector, loop, loop._report_callback_error)
    return selector


class Loop(LoopCore):
    """A single-threaded event loop on ``selectors.DefaultSelector``.

    Only ``call_soon_threadsafe`` may be called from another thread; every other method belongs to
    the thread that runs the loop. After ``close()`` every method except ``close()``, ``time()``
    and ``is_running`` raises ``RuntimeError``.

    ``busy_poll`` (seconds, default 25 us): after I/O, poll this long for the next event before
    sleeping, adapting to the traffic; ``0`` always sleeps at once (see docs/performance.md).
    """

    DEFAULT_BUSY_POLL: ClassVar[float] = DEFAULT_BUSY_POLL

    # The rest of the state is LoopCore's (fastws._poll), which runs the iterations in C.
    __slots__ = ("_waker", "_wakeup_pending", "__weakref__")

    def __init__(self, *, busy_poll: float = DEFAULT_BUSY_POLL) -> None:
        if not 0.0 <= busy_poll < float("inf"):
            raise ValueError(f"busy_poll must be finite seconds >= 0, not {busy_poll!r}")
        self._selector = _new_selector(self)
        self._ready = collections.deque()
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

    # -- timers and callbacks ------------------------------------------------------------------

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

    # -- running -------------------------------------------------------------------------------

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
        self._drop_timers()

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
