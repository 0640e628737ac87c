"""The stage chain: per-connection links between the frame parser and the handler.

A connection's stages form a list ordered from the wire to the handler. A frame read
from the peer enters the first stage's `on_frame_in` and travels towards the handler
(`pass_in`); a frame the application sends enters the last stage's `on_frame_out` and
travels towards the encoder (`pass_out`). A stage may pass a frame on, change it,
swallow it, or produce new frames in either direction (AutoPong answers a ping by
passing a pong out). Built-ins: `Consolidate` (fragment reassembly, message size limit,
UTF-8 validation), `AutoPong`, `AutoPing`. Users subclass `Stage`.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._codec import CloseCode, Frame, OpCode

if TYPE_CHECKING:
    from .connection import Connection
    from .loop import Timer

__all__ = ["AutoPing", "AutoPong", "Consolidate", "Stage"]

FrameSink = Callable[[Frame], None]


class Stage:
    """Base class of a stage: override `on_frame_in` / `on_frame_out` (both pass by default).

    `self.conn` is the connection while the stage is in its chain; `on_attached` and
    `on_detached` bracket that time (start and cancel timers there). `call_later` runs a
    callback on the connection's loop, guarded like any connection callback and cancelled
    when the stage is detached.
    """

    conn: Connection | None = None
    _pass_in: FrameSink
    _pass_out: FrameSink

    def on_attached(self) -> None:
        """The stage was put into a connection's chain; `self.conn` is set."""

    def on_detached(self) -> None:
        """The stage left its chain, or the connection closed."""

    def on_frame_in(self, frame: Frame) -> None:
        """A frame coming from the peer; pass it on towards the handler with `pass_in`."""
        self._pass_in(frame)

    def on_frame_out(self, frame: Frame) -> None:
        """A frame going to the peer; pass it on towards the wire with `pass_out`."""
        self._pass_out(frame)

    def pass_in(self, frame: Frame) -> None:
        self._pass_in(frame)

    def pass_out(self, frame: Frame) -> None:
        self._pass_out(frame)

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Timer:
        if self.conn is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a connection")
        timer = self.conn.call_later(delay, callback, *args)
        self._timers().append(timer)
        return timer

    def _timers(self) -> list[Timer]:
        timers: list[Timer] | None = self.__dict__.get("_stage_timers")
        if timers is None:
            timers = self.__dict__["_stage_timers"] = []
        # Drop timers that already ran or were cancelled, so the list stays short.
        timers[:] = [t for t in timers if not t.cancelled and t._loop is not None]
        return timers

    def _detach(self) -> None:
        for timer in self.__dict__.pop("_stage_timers", ()):
            timer.cancel()
        try:
            self.on_detached()
        finally:
            self.conn = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class Consolidate(Stage):
    """Reassembles fragmented messages and enforces the message size limit.

    Fragments are delivered as one FIN frame with the first fragment's opcode and RSV.
    Control frames between fragments pass straight through. A continuation with no
    message to continue, or a new message inside a fragmented one, fails the connection
    with 1002; a message growing past `max_message_size` fails with 1009 as soon as the
    running total passes it. `max_message_size=None` uses the connection's limit.
    (UTF-8 of text messages is checked earlier, by the connection's frame parser, as the
    bytes arrive: 1007 at the first invalid byte, even inside a frame.)
    """

    def __init__(self, max_message_size: int | None = None) -> None:
        self.max_message_size = max_message_size
        self._parts: list[bytes] = []
        self._opcode = -1              # opcode of the message in progress; -1 when none
        self._rsv = 0
        self._size = 0

    def _limit(self) -> int | None:
        if self.max_message_size is not None:
            return self.max_message_size
        return self.conn.max_message_size if self.conn is not None else None

    def on_frame_in(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode >= 8:
            self._pass_in(frame)
            return
        conn = self.conn
        assert conn is not None
        data = frame.data
        limit = self._limit()
        if opcode == OpCode.CONTINUATION:
            if self._opcode < 0:
                conn.fail(CloseCode.PROTOCOL_ERROR,
                          "continuation frame with no message to continue")
                return
            self._size += len(data)
        else:
            if self._opcode >= 0:
                conn.fail(CloseCode.PROTOCOL_ERROR, "new message started inside a fragmented one")
                return
            if frame.fin:
                # The common case: a whole message in one frame.
                if limit is not None and len(data) > limit:
                    conn.fail(CloseCode.MESSAGE_TOO_BIG,
                              f"message of {len(data)} bytes exceeds max_message_size={limit}")
                else:
                    self._pass_in(frame)
                return
            self._opcode = opcode
            self._rsv = frame.rsv
            self._size = len(data)
        if limit is not None and self._size > limit:
            self._reset()
            conn.fail(CloseCode.MESSAGE_TOO_BIG,
                      f"fragmented message passed max_message_size={limit}")
            return
        self._parts.append(data)
        if frame.fin:
            message = Frame(fin=True, rsv=self._rsv, opcode=self._opcode,
                            data=b"".join(self._parts))
            self._reset()
            self._pass_in(message)

    def _reset(self) -> None:
        self._parts = []
        self._opcode = -1
        self._size = 0

    def on_detached(self) -> None:
        self._reset()


class AutoPong(Stage):
    """Answers every ping with a pong carrying the same payload; the handler never sees pings."""

    def on_frame_in(self, frame: Frame) -> None:
        if frame.opcode == OpCode.PING:
            self._pass_out(Frame(opcode=OpCode.PONG, data=frame.data))
        else:
            self._pass_in(frame)


class AutoPing(Stage):
    """Pings the peer every `interval` seconds and reports round-trip times.

    Payloads come from `ping_generator()` (default: an 8-byte counter). The last
    `remember` pings are kept; a pong whose payload matches one of them is swallowed and
    `handler.on_rtt(conn, seconds)` is called with the time since that ping. With
    `timeout` set, a connection whose oldest unanswered ping is older than `timeout`
    seconds is closed with 1011.
    """

    def __init__(self, interval: float, ping_generator: Callable[[], bytes] | None = None,
                 *, timeout: float | None = None, remember: int = 16) -> None:
        if interval <= 0:
            raise ValueError("AutoPing interval must be positive")
        self.interval = interval
        self.timeout = timeout
        self.ping_generator = ping_generator
        self.last_rtt: float | None = None
        self._sent: collections.OrderedDict[bytes, float] = collections.OrderedDict()
        self._remember = remember
        self._counter = 0

    def on_attached(self) -> None:
        self.call_later(self.interval, self._tick)

    def _next_payload(self) -> bytes:
        if self.ping_generator is not None:
            return bytes(self.ping_generator())
        self._counter += 1
        return struct.pack(">Q", self._counter)

    def _tick(self) -> None:
        conn = self.conn
        if conn is None or not conn.is_open:
            return
        payload = self._next_payload()
        if len(payload) > 125:
            raise ValueError("AutoPing payloads must be at most 125 bytes")
        now = conn.loop.time()
        self._sent.pop(payload, None)
        self._sent[payload] = now
        while len(self._sent) > self._remember:
            self._sent.popitem(last=False)
        self._pass_out(Frame(opcode=OpCode.PING, data=payload))
        conn.flush()
        if self.timeout is not None:
            self.call_later(self.timeout, self._check_timeout, payload)
        self.call_later(self.interval, self._tick)

    def _check_timeout(self, payload: bytes) -> None:
        conn = self.conn
        if conn is not None and payload in self._sent:
            conn.fail(CloseCode.INTERNAL_ERROR, f"no pong within {self.timeout} s")

    def on_frame_in(self, frame: Frame) -> None:
        if frame.opcode == OpCode.PONG:
            sent = self._sent.get(bytes(frame.data))
            if sent is not None and self.conn is not None:
                rtt = self.conn.loop.time() - sent
                # This pong answers that ping and every older one.
                while self._sent:
                    payload, _ = self._sent.popitem(last=False)
                    if payload == frame.data:
                        break
                self.last_rtt = rtt
                self.conn._notify("on_rtt", rtt)
                return
        self._pass_in(frame)
