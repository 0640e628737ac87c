"""Tests for fastws.loop: fd readiness, timers, call_soon(_threadsafe), errors, lifecycle.

Every loop run is bounded by a timeout or an iteration count, so a broken loop fails a test
instead of hanging the suite; nothing sleeps to make a test pass.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastws._poll
import fastws.loop as loop_module
import fastws.wakeup as wakeup_module
from fastws.loop import Loop, default_loop


@pytest.fixture(params=["eventfd", "socketpair", "selectors"])
def loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Loop]:
    if request.param == "eventfd":
        if not wakeup_module._HAVE_EVENTFD:
            pytest.skip("os.eventfd is not available")
    elif request.param == "socketpair":
        monkeypatch.setattr(wakeup_module, "_HAVE_EVENTFD", False)
    else:
        # What the loop does where epoll is missing: the selectors path in Python, the
        # iterations still in LoopCore.
        monkeypatch.setattr(loop_module.selectors, "DefaultSelector", selectors.PollSelector)
    with Loop() as lp:
        yield lp


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def run_until(loop: Loop, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Iterate until condition() holds; fail (rather than hang) after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        assert remaining > 0, "condition not reached before the deadline"
        loop.run_once(min(remaining, 0.1))


# -- readers and writers -----------------------------------------------------------------------


def test_reader_called_when_data_arrives(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    received: list[bytes] = []
    loop.add_reader(a, lambda tag: received.append(tag + a.recv(100)), b"got:")
    loop.run_once(0)
    assert received == []  # nothing to read yet
    b.send(b"hello")
    run_until(loop, lambda: bool(received))
    assert received == [b"got:hello"]


def test_reader_accepts_int_fd(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    received: list[bytes] = []
    loop.add_reader(a.fileno(), lambda: received.append(a.recv(100)))
    b.send(b"x")
    run_until(loop, lambda: bool(received))
    assert loop.remove_reader(a.fileno()) is True


def test_remove_reader_stops_calls(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    calls: list[int] = []
    loop.add_reader(a, lambda: calls.append(1))
    assert loop.remove_reader(a) is True
    assert loop.remove_reader(a) is False
    b.send(b"data")  # left unread: a registered reader would fire on every iteration
    for _ in range(5):
        loop.run_once(0)
    assert calls == []


def test_readding_reader_replaces_callback(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    calls: list[str] = []
    loop.add_reader(a, calls.append, "old")
    loop.add_reader(a, calls.append, "new")
    b.send(b"x")
    loop.run_once(1.0)
    assert calls == ["new"]


def test_writer_fires_when_writable_and_remove_stops_it(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    calls: list[int] = []
    loop.add_writer(a, lambda: calls.append(1))
    loop.run_once(1.0)  # an empty socket buffer is writable at once
    assert calls == [1]
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False
    for _ in range(5):
        loop.run_once(0)
    assert calls == [1]


def test_reader_and_writer_on_one_fd(loop: Loop, pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    events: list[str] = []
    loop.add_reader(a, lambda: events.append("read:" + a.recv(100).decode()))
    loop.add_writer(a, lambda: events.append("write"))
    b.send(b"hi")
    loop.run_once(1.0)
    assert events == ["read:hi", "write"]

    # Removing the writer keeps the reader, and the other way round.
    events.clear()
    assert loop.remove_writer(a) is True
    b.send(b"yo")
    loop.run_once(1.0)
    assert events == ["read:yo"]

    events.clear()
    loop.add_writer(a, lambda: events.append("write"))
    assert loop.remove_reader(a) is True
    b.send(b"unread")
    loop.run_once(1.0)
    assert events == ["write"]
    assert loop.remove_writer(a) is True
    for _ in range(3):
        loop.run_once(0)
    assert events == ["write"]


def test_reader_removing_writer_in_same_iteration(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    events: list[str] = []

    def on_read() -> None:
        a.recv(100)
        events.append("read")
        loop.remove_writer(a)

    loop.add_reader(a, on_read)
    loop.add_writer(a, lambda: events.append("write"))
    b.send(b"x")
    loop.run_once(1.0)
    assert events == ["read"]  # the writer removed by the reader must not run afterwards


def test_remove_after_socket_closed_does_not_raise(loop: Loop) -> None:
    a, b = socket.socketpair()
    try:
        loop.add_reader(a, lambda: None)
        loop.add_writer(a, lambda: None)
        fd = a.fileno()
        a.close()
        assert loop.remove_reader(a) is True  # modify on a closed fd: tolerated
        loop.remove_writer(a)
        assert loop.remove_reader(a) is False
        assert loop.remove_writer(fd) is False
        loop.run_once(0)
    finally:
        b.close()

    # Registered by number: unregistering a closed fd (EBADF from epoll) is tolerated too.
    c, d = socket.socketpair()
    try:
        fd = c.fileno()
        loop.add_reader(fd, lambda: None)
        c.close()
        assert loop.remove_reader(fd) is True
        assert loop.remove_reader(fd) is False
        assert loop.remove_writer(c) is False  # fileno() is -1 now and c was never registered
    finally:
        d.close()


def test_new_socket_reusing_closed_fd_number(loop: Loop) -> None:
    a, b = socket.socketpair()
    loop.add_reader(a, lambda: None)
    a.close()  # closed without remove_reader: a bug in the caller, but it must not poison the fd
    b.close()
    c, d = socket.socketpair()
    try:
        c.setblocking(False)
        got: list[bytes] = []
        loop.add_reader(c, lambda: got.append(c.recv(10)))
        d.send(b"z")
        run_until(loop, lambda: bool(got))
        assert got == [b"z"]
    finally:
        c.close()
        d.close()


# -- timers ------------------------------------------------------------------------------------


def test_call_later_fires_in_deadline_order(loop: Loop) -> None:
    fired: list[str] = []
    loop.call_later(0.03, fired.append, "c")
    loop.call_later(0.01, fired.append, "a")
    loop.call_later(0.02, fired.append, "b")
    for name in ("same1", "same2", "same3"):  # equal delays: scheduling order
        loop.call_later(0.015, fired.append, name)
    run_until(loop, lambda: len(fired) == 6)
    assert fired == ["a", "same1", "same2", "same3", "b", "c"]


def test_call_at_equal_deadlines_run_in_scheduling_order(loop: Loop) -> None:
    fired: list[str] = []
    base = loop.time()
    loop.call_at(base + 0.02, fired.append, "late")
    for name in ("same1", "same2", "same3"):
        loop.call_at(base + 0.01, fired.append, name)
    loop.call_at(base + 0.01 - 1e-6, fired.append, "early")
    run_until(loop, lambda: len(fired) == 5)
    assert fired == ["early", "same1", "same2", "same3", "late"]


def test_timer_does_not_fire_early(loop: Loop) -> None:
    fired: list[float] = []
    start = loop.time()
    timer = loop.call_later(0.05, lambda: fired.append(loop.time()))
    assert timer.when == pytest.approx(start + 0.05, abs=0.01)
    run_until(loop, lambda: bool(fired))
    assert fired[0] >= timer.when - 0.002


def test_cancel_prevents_firing(loop: Loop) -> None:
    fired: list[str] = []
    keep = loop.call_later(0.01, fired.append, "keep")
    drop = loop.call_later(0.005, fired.append, "drop")
    soon = loop.call_soon(fired.append, "soon-dropped")
    drop.cancel()
    drop.cancel()  # idempotent
    soon.cancel()
    assert drop.cancelled and soon.cancelled and not keep.cancelled
    run_until(loop, lambda: bool(fired))
    loop.run_once(0)
    assert fired == ["keep"]
    keep.cancel()  # after firing: harmless
    assert loop._cancelled_count == 0


def test_cancel_from_callback_of_timer_due_same_iteration(loop: Loop) -> None:
    fired: list[str] = []
    when = loop.time() - 1
    second: list[loop_module.Timer] = []

    def first() -> None:
        fired.append("first")
        second[0].cancel()

    loop.call_at(when, first)
    second.append(loop.call_at(when, fired.append, "second"))
    loop.run_once(0)
    loop.run_once(0)
    assert fired == ["first"]


def test_cancelling_many_timers_keeps_heap_bounded(loop: Loop) -> None:
    fired: list[int] = []
    live = [loop.call_later(0.001 * i, fired.append, i) for i in range(10)]
    timers = [loop.call_later(3600 + i, fired.append, -1) for i in range(10_000)]
    assert len(loop._timers) == 10_010
    for timer in timers:
        timer.cancel()
    # Compaction keeps garbage below max(minimum, live count).
    bound = 2 * (fastws._poll.MIN_CANCELLED_TO_COMPACT + len(live))
    assert len(loop._timers) <= bound
    # Interleaved schedule/cancel (an idle timeout reset per message) stays bounded too.
    for _i in range(10_000):
        loop.call_later(60, fired.append, -2).cancel()
        assert len(loop._timers) <= bound
    run_until(loop, lambda: len(fired) == 10)
    assert fired == list(range(10))


def test_cancelled_head_does_not_shorten_wait(loop: Loop) -> None:
    timer = loop.call_later(0.0, lambda: None)
    timer.cancel()
    start = time.monotonic()
    loop.run_once(0.05)  # no live timer: the wait is the full timeout, not zero
    assert time.monotonic() - start >= 0.04


@settings(max_examples=50, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=40),
    cancel=st.lists(st.booleans(), max_size=40),
)
def test_due_timers_run_sorted_and_stable(offsets: list[int], cancel: list[bool]) -> None:
    with Loop() as lp:
        base = lp.time() - 10  # all in the past: due on the first iteration, no waiting
        fired: list[int] = []
        timers = [lp.call_at(base + off, fired.append, i) for i, off in enumerate(offsets)]
        for timer, c in zip(timers, cancel, strict=False):
            if c:
                timer.cancel()
        lp.run_once(0)
        expected = sorted(
            (i for i in range(len(offsets)) if not (i < len(cancel) and cancel[i])),
            key=lambda i: offsets[i],
        )
        assert fired == expected
        assert lp._timers == []


# -- call_soon ---------------------------------------------------------------------------------


def test_call_soon_fifo(loop: Loop) -> None:
    order: list[int] = []
    for i in range(100):
        loop.call_soon(order.append, i)
    loop.run_once(0)
    assert order == list(range(100))


def test_call_soon_during_iteration_runs_next_iteration(loop: Loop) -> None:
    order: list[str] = []

    def first() -> None:
        order.append("first")
        loop.call_soon(order.append, "scheduled-in-first")

    loop.call_soon(first)
    loop.call_soon(order.append, "second")
    loop.run_once(0)
    assert order == ["first", "second"]
    loop.run_once(0)
    assert order == ["first", "second", "scheduled-in-first"]


def test_self_rescheduling_callback_does_not_block_io(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    got: list[bytes] = []
    loop.add_reader(a, lambda: got.append(a.recv(10)))

    def spin() -> None:
        loop.call_soon(spin)

    loop.call_soon(spin)
    b.send(b"x")
    for _ in range(10):
        loop.run_once()  # ready callbacks make select non-blocking
        if got:
            break
    assert got == [b"x"]


def test_pending_call_soon_makes_select_nonblocking(loop: Loop) -> None:
    loop.call_soon(lambda: None)
    start = time.monotonic()
    loop.run_once(10.0)
    assert time.monotonic() - start < 1.0


# -- threads -----------------------------------------------------------------------------------


def test_call_soon_threadsafe_wakes_blocked_run(loop: Loop) -> None:
    # The loop runs in a daemon thread so that a broken wakeup fails the join instead of hanging.
    started = threading.Event()
    errors: list[BaseException] = []

    def runner() -> None:
        loop.call_soon(started.set)
        try:
            loop.run()  # no timers, no fds: blocks in select until woken
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    assert started.wait(5.0)
    assert loop.is_running

    def stopper() -> None:
        loop.call_soon_threadsafe(loop.stop)

    other = threading.Thread(target=stopper)
    start = time.monotonic()
    other.start()
    other.join(5.0)
    thread.join(5.0)
    assert not thread.is_alive(), "run() was not woken by call_soon_threadsafe"
    assert time.monotonic() - start < 2.0
    assert errors == []
    assert not loop.is_running


def test_call_soon_threadsafe_many_calls_do_not_fill_wakeup(loop: Loop) -> None:
    count = [0]

    def bump() -> None:
        count[0] += 1

    def producer() -> None:
        for _ in range(50_000):
            loop.call_soon_threadsafe(bump)

    threads = [threading.Thread(target=producer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30.0)
    assert not any(t.is_alive() for t in threads)
    run_until(loop, lambda: count[0] == 100_000)
    # Drained and re-armed: one more call from another thread still wakes a blocking iteration.
    t = threading.Thread(target=loop.call_soon_threadsafe, args=(bump,))
    t.start()
    t.join(5.0)
    start = time.monotonic()
    loop.run_once(10.0)
    loop.run_once(0)
    assert count[0] == 100_001
    assert time.monotonic() - start < 2.0


def test_default_loop_is_per_thread() -> None:
    main = default_loop()
    assert default_loop() is main
    seen: list[Loop] = []

    def worker() -> None:
        seen.append(default_loop())
        seen.append(default_loop())

    t = threading.Thread(target=worker)
    t.start()
    t.join(5.0)
    assert seen[0] is seen[1]
    assert seen[0] is not main
    seen[0].close()

    main.close()
    replacement = default_loop()
    assert replacement is not main and not replacement.is_closed
    replacement.close()


# -- errors ------------------------------------------------------------------------------------


def test_exception_in_callback_is_logged_and_loop_continues(
    loop: Loop, pair: tuple[socket.socket, socket.socket], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = pair
    ran: list[str] = []

    def broken_soon() -> None:
        raise ValueError("soon boom")

    def broken_timer() -> None:
        raise KeyError("timer boom")

    def broken_reader() -> None:
        a.recv(10)
        raise RuntimeError("reader boom")

    def broken_threadsafe() -> None:
        raise ZeroDivisionError("threadsafe boom")

    loop.call_soon(broken_soon)
    loop.call_soon(ran.append, "after-soon")
    loop.call_at(loop.time() - 1, broken_timer)
    loop.call_at(loop.time() - 1, ran.append, "after-timer")
    loop.call_soon_threadsafe(broken_threadsafe)
    loop.add_reader(a, broken_reader)
    loop.add_writer(a, ran.append, "writer")
    b.send(b"x")
    with caplog.at_level(logging.ERROR, logger="fastws"):
        loop.run_once(1.0)
    assert ran == ["writer", "after-soon", "after-timer"]
    messages = [r.getMessage() for r in caplog.records if r.name == "fastws"]
    for name in ("broken_soon", "broken_timer", "broken_reader", "broken_threadsafe"):
        assert any(name in m for m in messages), (name, messages)
    assert all(r.exc_info is not None for r in caplog.records if r.name == "fastws")
    assert "reader boom" in caplog.text and "threadsafe boom" in caplog.text


def test_keyboard_interrupt_propagates(loop: Loop) -> None:
    ran: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    loop.call_soon(interrupt)
    loop.call_soon(ran.append, "later")
    with pytest.raises(KeyboardInterrupt):
        loop.run_once(0)
    loop.run_once(0)  # the loop is still usable; the rest of the queue runs next time
    assert ran == ["later"]


def test_system_exit_propagates_out_of_run(loop: Loop) -> None:
    loop.call_soon(lambda: (_ for _ in ()).throw(SystemExit(3)))
    with pytest.raises(SystemExit):
        loop.run()
    assert not loop.is_running


# -- lifecycle ---------------------------------------------------------------------------------


def test_run_reentrancy_raises(loop: Loop) -> None:
    errors: list[BaseException] = []

    def nested() -> None:
        for method in (loop.run, lambda: loop.run_once(0)):
            try:
                method()
            except RuntimeError as exc:
                errors.append(exc)
        loop.stop()

    loop.call_soon(nested)
    loop.run()
    assert len(errors) == 2
    assert "already running" in str(errors[0])
    assert not loop.is_running


def test_stop_returns_after_current_iteration(loop: Loop) -> None:
    ran: list[str] = []

    def stopper() -> None:
        loop.stop()
        loop.call_soon(ran.append, "next-iteration")

    loop.call_soon(stopper)
    loop.call_soon(ran.append, "same-iteration")
    loop.run()
    assert ran == ["same-iteration"]
    # The loop can be run again.
    loop.call_soon(loop.stop)
    loop.run()
    assert ran == ["same-iteration", "next-iteration"]


def test_run_stops_from_timer(loop: Loop) -> None:
    loop.call_later(0.01, loop.stop)
    start = time.monotonic()
    loop.run()
    assert time.monotonic() - start < 2.0


def test_close_is_idempotent_and_use_after_close_raises(
    loop: Loop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    loop.call_later(10, lambda: None)
    loop.close()
    loop.close()
    assert loop.is_closed
    uses: list[Callable[[], object]] = [
        lambda: loop.run(),
        lambda: loop.run_once(0),
        lambda: loop.call_soon(print),
        lambda: loop.call_later(1, print),
        lambda: loop.call_at(1, print),
        lambda: loop.call_soon_threadsafe(print),
        lambda: loop.add_reader(a, print),
        lambda: loop.add_writer(a, print),
        lambda: loop.remove_reader(a),
        lambda: loop.remove_writer(a),
    ]
    for use in uses:
        with pytest.raises(RuntimeError, match="closed"):
            use()


def test_close_while_running_raises(loop: Loop) -> None:
    errors: list[RuntimeError] = []

    def try_close() -> None:
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(try_close)
    loop.run()
    assert len(errors) == 1 and not loop.is_closed


def test_context_manager_closes() -> None:
    with Loop() as lp:
        assert not lp.is_closed
    assert lp.is_closed


# -- busy polling ------------------------------------------------------------------------------


def test_busy_poll_must_be_a_non_negative_number() -> None:
    for bad in (-1e-6, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="busy_poll"):
            Loop(busy_poll=bad)
    with Loop(busy_poll=0) as lp:
        assert lp.busy_poll == 0
    with Loop() as lp:
        assert lp.busy_poll == Loop.DEFAULT_BUSY_POLL > 0


def test_busy_poll_stops_when_the_loop_is_idle() -> None:
    # Every wake-up here comes from a timer well after busy_poll: polling would only burn
    # CPU, so the poll window shrinks to nothing after a few of them.
    with Loop(busy_poll=50e-6) as lp:
        ticks: list[int] = []
        for i in range(8):
            lp.call_later(0.002 * (i + 1), ticks.append, i)
        run_until(lp, lambda: len(ticks) == 8)
        assert ticks == list(range(8))
        assert lp._spin == 0


def test_busy_poll_grows_back_when_events_come_quickly(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    # A peer that answers within microseconds: every event ends a poll or a short sleep,
    # so the loop polls for the next one again.
    a, b = pair
    with Loop(busy_poll=10e-3) as lp:
        lp._spin = 0.0
        received: list[bytes] = []

        def on_readable() -> None:
            received.append(a.recv(100))
            if len(received) < 20:
                threading.Timer(0.0005, b.send, (b"x",)).start()

        lp.add_reader(a, on_readable)
        b.send(b"x")
        run_until(lp, lambda: len(received) == 20)
        assert lp._spin > 0


class _Interrupted(Exception):
    pass


def test_a_signal_handler_runs_while_only_c_callbacks_keep_the_loop_busy(
        pair: tuple[socket.socket, socket.socket]) -> None:
    # The reader is a C builtin and the socket stays readable: no Python bytecode runs in the
    # loop, where the interpreter would otherwise run signal handlers. run() must still end
    # with the handler's exception (as it ends with KeyboardInterrupt on Ctrl-C).
    a, b = pair
    b.send(b"x")

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    with Loop(busy_poll=0) as lp:
        lp.add_reader(a, int)
        signaller = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1))
        gave_up: list[bool] = []

        def give_up() -> None:
            # The signal was not seen within 5 s: wake the loop (its wakeup runs Python,
            # and so the handler) so that the test fails instead of hanging.
            gave_up.append(True)
            lp.call_soon_threadsafe(lp.stop)

        safety = threading.Timer(5.0, give_up)
        signaller.start()
        safety.start()
        try:
            with pytest.raises(_Interrupted):
                lp.run()
        finally:
            signal.signal(signal.SIGUSR1, previous)
            safety.cancel()
            signaller.join()
        assert not lp.is_running
        assert not gave_up, "the handler ran only once the loop ran Python code"


def test_busy_poll_keeps_timers_and_threadsafe_wakeups_on_time(loop: Loop) -> None:
    # While the loop polls, a due timer still runs and another thread's call still
    # wakes it: polling never waits past the select timeout. (Their order is not checked:
    # on a loaded machine both may fall due in one iteration.)
    fired: list[str] = []
    loop.call_later(0.001, fired.append, "timer")
    threading.Timer(0.003, loop.call_soon_threadsafe, (fired.append, "thread")).start()
    run_until(loop, lambda: len(fired) == 2)
    assert sorted(fired) == ["thread", "timer"]


def test_transport_on_an_asyncio_loop_closes_its_socket() -> None:
    # The Loop transport only asks its loop for add_reader/add_writer/call_later/call_soon,
    # which asyncio loops have too (bench/echo/servers/fastws_fd_uvloop_echo.py runs it on
    # uvloop). Their is_closed is a method, not the fastws Loop's property: a peer's EOF must
    # still unregister the socket, or uvloop keeps it open (its reader holds the socket) and
    # spins on its EOF.
    import asyncio

    import uvloop

    import fastws
    from fastws.connection import Connection

    async def main() -> None:
        ours, peer = socket.socketpair()
        peer.close()                                   # EOF before any byte
        conn = Connection(asyncio.get_running_loop(), ours, fastws.Handler(), is_client=False,
                          limits=fastws.Limits(), peername=("peer", 1))
        conn.start()
        for _ in range(100):
            if ours.fileno() == -1:
                break
            await asyncio.sleep(0.01)
        assert conn.closed and ours.fileno() == -1

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
