"""The stage chain: per-connection links between the protocol and the handler.

A connection's stages form a list ordered from the wire to the handler, above the
protocol (fastws._protocol), which has applied every WebSocket rule by then. A frame from
the peer enters the first stage's `on_frame_in` and travels towards the handler
(`pass_in`); a frame the application sends enters the last stage's `on_frame_out` and
travels towards the protocol (`pass_out`). A stage may pass a frame on, change it,
swallow it, or produce new frames in either direction. Users subclass `Stage`;
`AutoPing` is the built-in one. An empty chain is the fast path: frames go straight
between the protocol and the handler.

`AutoPong` and `Consolidate` are switches of the protocol's own rules (answering pings,
reassembling fragments), kept as Stage classes so that chains written for earlier fastws
versions keep their meaning. `StageChain` sorts a chain into the two.
"""

from __future__ import annotations

import collections
import logging
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._codec import CloseCode, Frame, OpCode
from .eventloop import TimerHandle

if TYPE_CHECKING:
    from ._protocol import Protocol
    from .connection import Connection

__all__ = ["AutoPing", "AutoPong", "Consolidate", "Stage", "StageChain"]

FrameSink = Callable[[Frame], None]

logger = logging.getLogger("fastws")


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

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Any:
        if self.conn is None:
            raise RuntimeError(f"{type(self).__name__} is not attached to a connection")
        timers = self._timers()
        if len(timers) > 64:
            # Timers the stage cancelled itself never run: drop them now and then.
            for old in [k for k, t in timers.items() if _is_cancelled(t)]:
                del timers[old]
        key = object()
        # The timer forgets itself when it runs: the dict holds only pending timers, on any
        # loop (a fastws Loop or asyncio's, whose handles do not say whether they ran).
        timer = self.conn.call_later(delay, self._run_timer, key, callback, args)
        timers[key] = timer
        return timer

    def _run_timer(self, key: object, callback: Callable[..., object],
                   args: tuple[object, ...]) -> None:
        self._timers().pop(key, None)
        callback(*args)

    def _timers(self) -> dict[object, TimerHandle]:
        timers: dict[object, TimerHandle] | None = self.__dict__.get("_stage_timers")
        if timers is None:
            timers = self.__dict__["_stage_timers"] = {}
        return timers

    def _detach(self) -> None:
        for timer in self.__dict__.pop("_stage_timers", {}).values():
            timer.cancel()
        try:
            self.on_detached()
        finally:
            self.conn = None
            # The links are bound methods of neighbours and of the connection: dropping
            # them leaves no reference cycle behind.
            self.__dict__.pop("_pass_in", None)
            self.__dict__.pop("_pass_out", None)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


def _is_cancelled(timer: TimerHandle) -> bool:
    cancelled = getattr(timer, "cancelled", False)   # a property on fastws.Timer, a method
    return bool(cancelled() if callable(cancelled) else cancelled)   # on asyncio's handles


class Consolidate(Stage):
    """The switch for reassembly, which the connection's protocol does (fastws._protocol).

    In a chain given to `upgrade(stages=...)` (the default chain has it), the handler and
    the stages get whole messages: fragments are joined into one FIN frame with the first
    fragment's opcode. Without it (or after `remove_stage(Consolidate)`) they get each
    frame as it arrives, still checked: fragment order, UTF-8 and the message size limit
    apply either way. `max_message_size` overrides the connection's limit. It is not a
    link of the chain: `conn.stages` does not list it, `conn.find_stage(Consolidate)` finds
    it.
    """

    def __init__(self, max_message_size: int | None = None) -> None:
        self.max_message_size = max_message_size


class AutoPong(Stage):
    """The switch for answering pings, which the connection's protocol does.

    On (the default chain has it), every ping is answered with a pong carrying its payload,
    at once, and nobody above the protocol sees pings. Off (a chain without it, or after
    `remove_stage(AutoPong)`), pings travel the chain to the handler unanswered: answering
    them is then up to a stage or the handler. Not a link of the chain: `conn.stages` does
    not list it, `conn.find_stage(AutoPong)` finds it.
    """


SWITCHES = (AutoPong, Consolidate)


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
        now = time.monotonic()
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
                rtt = time.monotonic() - sent
                # This pong answers that ping and every older one.
                while self._sent:
                    payload, _ = self._sent.popitem(last=False)
                    if payload == frame.data:
                        break
                self.last_rtt = rtt
                self.conn._notify("on_rtt", rtt)
                return
        self._pass_in(frame)


class StageChain:
    """A connection's chain: the switches (protocol settings) and the linked stages.

    `stages` is the connection's own list (`conn._stages`, which its C half reads), kept
    linked: each stage passes in to the next stage (the last to `conn._deliver`) and out
    to the previous one (the first to `conn._send_from_chain`).
    """

    def __init__(self, conn: Connection, protocol: Protocol, extension: object | None) -> None:
        self.conn = conn
        self.protocol = protocol
        self.extension = extension          # permessage-deflate, found by find(Deflate)
        self.stages: list[Stage] = conn._stages
        self._switches: dict[type[Stage], Stage] | None = {}

    @property
    def switches(self) -> dict[type[Stage], Stage]:
        switches = self._switches
        if switches is None:
            # The default chain's switches, made the first time somebody looks for them.
            switches = self._switches = {AutoPong: AutoPong(), Consolidate: Consolidate()}
        return switches

    def setup(self, stages: Sequence[Stage] | None) -> None:
        """Take a chain as `upgrade(stages=...)` gives it: switches on, the rest linked.

        None is the default chain, [AutoPong(), Consolidate()], set up without an object per
        connection (a connection storm makes thousands a second): both switches on, the
        message limit the connection's own."""
        if stages is None:
            self._switches = None
            self._apply_switches()
            return
        protocol = self.protocol
        protocol.auto_pong = protocol.reassemble = False
        for stage in stages:
            self.add(stage, len(self.stages))

    def add(self, stage: Stage, index: int = 0) -> None:
        if stage.conn is not None or stage in self.switches.values():
            raise ValueError(f"{stage!r} is already in a chain")
        switch = _switch_type(stage)
        if switch is not None:
            self.switches[switch] = stage
            self._apply_switches()
            return
        stages = self.stages
        stages.insert(index if index >= 0 else len(stages) + 1 + index, stage)
        stage.conn = self.conn
        self._link()
        stage.on_attached()

    def remove(self, kind: Stage | type[Stage]) -> Stage:
        found = self.find(kind) if isinstance(kind, type) else kind
        switch = _switch_type(found) if found is not None else None
        if found is not None and switch is not None and self.switches.get(switch) is found:
            del self.switches[switch]
            self._apply_switches()
            return found
        if found is None or found not in self.stages:
            raise ValueError(f"{kind!r} is not in this connection's chain")
        self.stages.remove(found)
        self._link()
        found._detach()
        return found

    def replace(self, old: Stage | type[Stage], new: Stage) -> Stage:
        found = self.find(old) if isinstance(old, type) else old
        in_chain = found is not None and found in self.stages
        if found is None or not (in_chain or found in self.switches.values()):
            raise ValueError(f"{old!r} is not in this connection's chain")
        # A switch has no place in the chain: its replacement goes nearest the wire.
        index = self.stages.index(found) if in_chain else 0
        self.remove(found)
        self.add(new, index if _switch_type(new) is None else 0)
        return found

    def find(self, kind: type | object) -> Stage | None:
        for stage in [*self.switches.values(), *self.stages]:
            if stage is kind or (isinstance(kind, type) and isinstance(stage, kind)):
                return stage
        extension = self.extension
        if extension is not None and (extension is kind or (
                isinstance(kind, type) and isinstance(extension, kind))):
            return extension  # type: ignore[return-value]
        return None

    def detach_all(self) -> None:
        stages = list(self.stages)
        self.stages.clear()
        for stage in stages:
            try:
                stage._detach()
            except Exception:
                logger.exception("exception in %r.on_detached", stage)

    def _apply_switches(self) -> None:
        protocol = self.protocol
        switches = self._switches
        if switches is None:        # the default chain, not made yet: both on, no own limit
            protocol.auto_pong = protocol.reassemble = True
            limit = None
        else:
            protocol.auto_pong = AutoPong in switches
            consolidate = switches.get(Consolidate)
            protocol.reassemble = consolidate is not None
            limit = getattr(consolidate, "max_message_size", None)
        protocol.max_message_size = (limit if limit is not None
                                     else self.conn.limits.max_message_size)

    def _link(self) -> None:
        stages = self.stages
        conn = self.conn
        for i, stage in enumerate(stages):
            stage._pass_in = stages[i + 1].on_frame_in if i + 1 < len(stages) else conn._deliver
            stage._pass_out = stages[i - 1].on_frame_out if i > 0 else conn._send_from_chain


def _switch_type(stage: Stage) -> type[Stage] | None:
    for switch in SWITCHES:
        if isinstance(stage, switch):
            return switch
    return None
