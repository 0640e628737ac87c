"""Topics and broadcast: one message to many WebSocket connections, encoded once.

`broadcast(connections, message)` sends a message to every open connection of a collection
(`server.connections`, say). Topics name groups that connections join and leave:
`conn.subscribe("room")`, `conn.unsubscribe("room")`, `server.publish("room", message)`
(every subscriber) and `conn.publish("room", message)` (every subscriber but `conn`).
A server's `Topics` keeps who subscribes to what; with a backplane (fastws.backplane:
Redis) a publish reaches the subscribers of every worker and machine, and what comes back
from it is delivered here exactly like a local publish.

How a message is sent (the hot loop is fastws._fanout, in C):

* it is framed once: server frames are unmasked, so every subscriber gets the same bytes;
* with permessage-deflate it is compressed once per window size for the connections
  whose negotiation lets a compressor be shared (our side resets its context after every
  message: `serve(compression={"server_no_context_takeover": True})`), and per connection
  for the others;
* writes are batched: one send() per socket per loop iteration, for all the messages
  published to it in that iteration;
* messages to one connection leave in the order `send` and `publish` were called; a
  published message waits behind a fragmented message the application is sending.
  Published messages do not go through the connections' stage chains (they are encoded
  once for everyone).

Slow consumers: a subscriber whose unsent data passes `SlowConsumers.max_backlog` bytes
does not get more: by default ("close") it is closed with 1008, so a client can reconnect
and catch up rather than silently missing messages; with "drop" the messages are skipped
for it, counted in `conn.messages_dropped`, and the handler's
`on_messages_dropped(conn, count)` is told once per loop iteration (in fastws.asyncio's
awaitable form, the application object's `on_messages_dropped(ws, count)`, given the
WebSocket). Nobody else waits.
"""

from __future__ import annotations

import itertools
import logging
import os
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ._codec import CloseCode, OpCode, encode_frame
from ._connection import ConnectionBase
from ._fanout import Fanout
from .deflate import Deflate, DeflateOptions

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from ._asyncio_websocket import WebSocket
    from .connection import Connection
    from .eventloop import EventLoop, IOEventLoop

__all__ = ["Backplane", "SlowConsumers", "Subscriber", "TopicServer", "Topics", "broadcast"]

logger = logging.getLogger("fastws")

_TEXT = int(OpCode.TEXT)
_BINARY = int(OpCode.BINARY)


@dataclass(frozen=True)
class SlowConsumers:
    """What a server does with a subscriber that does not keep up with its publishes.

    `max_backlog`: bytes accepted for a connection but not yet sent (the kernel's socket
    buffer is full); above it the connection is slow. `action`: "close" (the default)
    fails it with 1008 (Policy Violation); "drop" skips the messages published to it
    while it is slow, counting them (`conn.messages_dropped`) and telling the handler
    (`on_messages_dropped`).

    The default, "close" at 1 MiB: a chat client that is a megabyte behind (a thousand
    messages of 1 KiB) is stuck or gone; closing tells it plainly, and a client that
    reconnects can fetch what it missed, where dropped messages would leave gaps nobody
    notices. Choose "drop" for data where only the latest value matters (prices, game
    state). Memory per slow subscriber stays under max_backlog plus one message.
    """

    action: Literal["close", "drop"] = "close"
    max_backlog: int = 1024 * 1024

    def __post_init__(self) -> None:
        if self.action not in ("close", "drop"):
            raise ValueError(f'slow consumer action must be "close" or "drop", not '
                             f"{self.action!r}")
        if self.max_backlog < 0:
            raise ValueError("max_backlog must be >= 0")


SlowConsumerSetting = SlowConsumers | Literal["close", "drop"]


def slow_consumers(setting: SlowConsumerSetting) -> SlowConsumers:
    """The policy meant by a `slow_consumers=` argument."""
    if isinstance(setting, SlowConsumers):
        return setting
    if setting in ("close", "drop"):
        return SlowConsumers(setting)
    raise TypeError(f'slow_consumers must be a SlowConsumers, "close" or "drop", not '
                    f"{setting!r}")


class Backplane(Protocol):
    """What Topics needs from a backplane that links servers (fastws.backplane.RedisPubSub).

    The backplane calls `topics.deliver(topic, opcode, data, exclude)` for every message
    published anywhere to a topic it subscribed to (ours included: a publish is delivered
    once, when it comes back, so every server sees one order per topic).
    """

    def subscribe(self, topic: str) -> None: ...
    def unsubscribe(self, topic: str) -> None: ...
    def publish(self, topic: str, opcode: int, data: bytes, exclude: bytes) -> None: ...


# ---------------------------------------------------------------------- messages

def _message(message: object) -> tuple[int, bytes]:
    """(opcode, payload) of a message: a str is text, a bytes-like object binary."""
    if isinstance(message, str):
        return _TEXT, message.encode("utf-8")
    if isinstance(message, bytes):
        return _BINARY, message
    try:
        return _BINARY, bytes(memoryview(message))      # type: ignore[arg-type]
    except TypeError:
        raise TypeError("a message is a str (text) or a bytes-like object (binary), not "
                        f"{type(message).__name__}") from None


_fanouts: weakref.WeakKeyDictionary[EventLoop, Fanout] = weakref.WeakKeyDictionary()


def fanout_for(loop: EventLoop) -> Fanout:
    """The loop's Fanout: one per loop, so that every broadcast on it batches together."""
    fanout = _fanouts.get(loop)
    if fanout is None:
        # Given a weak proxy of the loop: a value that held its key would keep every loop
        # (each asyncio.run() makes one) and its Fanout alive for ever.
        fanout = _fanouts[loop] = Fanout(weakref.proxy(loop))
    return fanout


class _SharedCompressors:
    """Compressors shared by every connection that may carry their output, one per window
    size, with the server's permessage-deflate settings. `compressed` counts messages."""

    def __init__(self, options: DeflateOptions) -> None:
        self.options = options
        self.by_window: dict[int, Deflate] = {}

    def frame(self, opcode: int, data: bytes, window_bits: int) -> bytes:
        deflate = self.by_window.get(window_bits)
        if deflate is None:
            options = self.options
            deflate = self.by_window[window_bits] = Deflate(
                level=options.level, mem_level=options.mem_level, min_size=options.min_size,
                local_no_context_takeover=True, local_max_window_bits=window_bits)
        payload, rsv = deflate.encode(data, True, True)
        return encode_frame(opcode, payload, True, rsv)

    @property
    def compressed(self) -> int:
        return sum(deflate.compressed for deflate in self.by_window.values())


class _SlowPolicy:
    """Applies a SlowConsumers policy to the slow subscribers a delivery found."""

    def __init__(self, policy: SlowConsumers, loop: EventLoop) -> None:
        self.policy = policy
        self.loop = loop
        self._dropped: dict[Connection, int] = {}     # this iteration's, to report

    def apply(self, slow: list[Connection]) -> None:
        if self.policy.action == "close":
            for conn in slow:
                logger.warning("%r: more than %d bytes unsent; closing it as a slow consumer "
                               "(1008)", conn, self.policy.max_backlog)
                conn.fail(CloseCode.POLICY_VIOLATION, "slow consumer: too far behind")
            return
        if not self._dropped:
            self.loop.call_soon(self._report)
        for conn in slow:
            conn.messages_dropped += 1
            self._dropped[conn] = self._dropped.get(conn, 0) + 1

    def _report(self) -> None:
        dropped, self._dropped = self._dropped, {}
        for conn, count in dropped.items():
            server = conn.server
            listener, about = (server._dropped_listener(conn) if isinstance(server, TopicServer)
                               else (conn.handler, conn))
            callback = getattr(listener, "on_messages_dropped", None)
            if callback is not None and not conn.closed:
                try:
                    callback(about, count)
                except Exception as exc:
                    conn.internal_error(exc)


_DEFAULT_POLICY = SlowConsumers()


def _connection_of(item: Any) -> Any:
    if isinstance(item, ConnectionBase):
        return item
    conn = getattr(item, "connection", None)
    if not isinstance(conn, ConnectionBase):
        raise TypeError("broadcast() sends to fastws connections (or fastws.asyncio "
                        f"WebSockets), not {type(item).__name__}")
    return conn


def broadcast(connections: Iterable[Connection] | Iterable[WebSocket],
              message: str | Buffer, *,
              slow_consumers: SlowConsumerSetting = _DEFAULT_POLICY) -> int:
    """Send `message` to every open WebSocket connection in `connections`; return how many.

    A str goes as a text message, a bytes-like object as binary. The frame is encoded once
    (per connection only for client connections, which mask, and for permessage-deflate
    connections), and sends are batched: one write per socket per loop iteration.
    Connections that are not open (not upgraded, closing, closed) are skipped, and so are
    slow ones, by the `slow_consumers` policy (default: close at 1 MiB unsent; see
    SlowConsumers). The connections belong to the calling thread's loop (a fastws Loop or
    an asyncio loop); fastws.asyncio's WebSocket objects can be given instead of
    connections.
    """
    opcode, data = _message(message)
    # A snapshot: a connection that closes while we send (a write error) leaves sets such
    # as server.connections, which must not change under the loop.
    items: list[Any] | tuple[Any, ...] = (
        connections if isinstance(connections, (list, tuple)) else list(connections))
    if not items:
        return 0
    if not all(isinstance(item, ConnectionBase) for item in items):
        # fastws.asyncio's WebSocket objects (the awaitable form): their connections.
        items = [_connection_of(item) for item in items]
    first: Any = items[0]
    policy = _policy_for(first.loop, slow_consumers)
    slow: list[Connection] = []
    frame = encode_frame(opcode, data)
    count = fanout_for(first.loop).deliver(items, opcode, data, frame, None,
                                           policy.policy.max_backlog, slow, None)
    if slow:
        policy.apply(slow)
    return count


_policies: weakref.WeakKeyDictionary[EventLoop, dict[SlowConsumers, _SlowPolicy]] = (
    weakref.WeakKeyDictionary())


def _policy_for(loop: EventLoop, setting: SlowConsumerSetting) -> _SlowPolicy:
    policy = slow_consumers(setting)
    per_loop = _policies.setdefault(loop, {})
    found = per_loop.get(policy)
    if found is None:
        found = per_loop[policy] = _SlowPolicy(policy, weakref.proxy(loop))  # as fanout_for
    return found


# ---------------------------------------------------------------------- topics

class Topics:
    """A server's topics: the subscribers of each topic, and publishing to them.

    `server.topics`; normally used through `conn.subscribe`, `conn.unsubscribe`,
    `conn.publish` and `server.publish`. With a `backplane` (set by
    `serve(pubsub=...)`), a topic is subscribed on it while at least one local connection
    subscribes to it, and publishing goes through it.
    """

    def __init__(self, loop: EventLoop, *, compression: DeflateOptions | None = None,
                 slow_consumers: SlowConsumerSetting = _DEFAULT_POLICY) -> None:
        self.loop = loop
        self._subscribers: dict[str, dict[Connection, Any]] = {}
        self._fanout = fanout_for(loop)
        self._slow = _SlowPolicy(globals()["slow_consumers"](slow_consumers), loop)
        self._max_backlog = self._slow.policy.max_backlog
        self.shared = _SharedCompressors(compression) if compression is not None else None
        self.backplane: Backplane | None = None
        # A publish that excludes its sender names it across the backplane by this
        # process's node id and the connection's number.
        self.node_id = os.urandom(8)
        self._numbers = itertools.count(1)
        self._by_number: dict[int, Connection] = {}
        self.published = 0               # messages published through this server
        self.delivered = 0               # messages delivered to local subscribers (sum)
        # While a delivery iterates a topic's dict, membership changes (a connection that
        # closes on a write error, a handler that subscribes) copy it instead.
        self._delivering = 0

    @property
    def slow_consumers(self) -> SlowConsumers:
        return self._slow.policy

    @property
    def names(self) -> list[str]:
        """The topics with at least one local subscriber."""
        return list(self._subscribers)

    def subscribers(self, topic: str) -> list[Connection]:
        """The local connections subscribed to `topic`."""
        return list(self._subscribers.get(topic, ()))

    def count(self, topic: str) -> int:
        subscribers = self._subscribers.get(topic)
        return len(subscribers) if subscribers is not None else 0

    # -- membership

    def subscribe(self, conn: Connection, topic: str) -> bool:
        """Add `conn` to `topic`; False when it was subscribed already."""
        _check_topic(topic)
        protocol = conn.protocol
        if protocol is None or conn.closed:
            raise RuntimeError("only an open WebSocket connection can subscribe")
        subscribers = self._subscribers.get(topic)
        if subscribers is None:
            subscribers = self._subscribers[topic] = {}
            if self.backplane is not None:
                self.backplane.subscribe(topic)
        elif conn in subscribers:
            return False
        elif self._delivering:
            subscribers = self._subscribers[topic] = dict(subscribers)
        subscribers[conn] = protocol
        conn._topic_names.add(topic)
        return True

    def unsubscribe(self, conn: Connection, topic: str) -> bool:
        """Remove `conn` from `topic`; False when it was not subscribed."""
        subscribers = self._subscribers.get(topic)
        if subscribers is None or conn not in subscribers:
            return False
        if self._delivering:
            subscribers = self._subscribers[topic] = dict(subscribers)
        del subscribers[conn]
        conn._topic_names.discard(topic)
        if not subscribers:
            del self._subscribers[topic]
            if self.backplane is not None:
                self.backplane.unsubscribe(topic)
        return True

    def forget(self, conn: Connection) -> None:
        """`conn` closed: leave every topic."""
        names = conn.__dict__.get("_topics")      # not _topic_names: it makes the set
        if names:
            for topic in list(names):
                self.unsubscribe(conn, topic)
        number = conn._topic_number
        if number:
            self._by_number.pop(number, None)

    # -- publishing

    def publish(self, topic: str, message: str | Buffer, *,
                exclude: Connection | None = None) -> None:
        """Send `message` to every subscriber of `topic` (but `exclude`), here and, with a
        backplane, on every server linked by it."""
        _check_topic(topic)
        opcode, data = _message(message)
        self.published += 1
        backplane = self.backplane
        if backplane is None:
            self.deliver(topic, opcode, data, exclude)
            return
        backplane.publish(topic, opcode, data, self._exclude_id(exclude))

    def deliver(self, topic: str, opcode: int, data: bytes,
                exclude: Connection | bytes | None = None) -> int:
        """Send to the local subscribers of `topic` (what a publish does once it is here;
        the backplane calls it). `exclude` is a connection or an id from the backplane."""
        subscribers = self._subscribers.get(topic)
        if not subscribers:
            return 0
        if type(exclude) is bytes:
            exclude = self._excluded(exclude)
        frame = encode_frame(opcode, data)
        slow: list[Connection] = []
        shared = self.shared
        self._delivering += 1
        try:
            count: int = self._fanout.deliver(subscribers, opcode, data, frame, exclude,
                                              self._max_backlog, slow,
                                              shared.frame if shared is not None else None)
        finally:
            self._delivering -= 1
        self.delivered += count
        if slow:
            self._slow.apply(slow)
        return count

    def _exclude_id(self, conn: Connection | None) -> bytes:
        if conn is None:
            return b""
        number = conn._topic_number
        if not number:
            number = conn._topic_number = next(self._numbers)
            self._by_number[number] = conn
        return self.node_id + number.to_bytes(8, "big")

    def _excluded(self, exclude: bytes) -> Connection | None:
        if len(exclude) != 16 or exclude[:8] != self.node_id:
            return None
        return self._by_number.get(int.from_bytes(exclude[8:], "big"))


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str) or not topic:
        raise TypeError(f"a topic is a non-empty str, not {topic!r}")


class Subscriber:
    """The topic methods of a server's Connection (fastws.connection mixes this in)."""

    server: Any
    messages_dropped = 0            # published messages skipped for this slow subscriber
    _topic_number = 0               # its id in publishes that exclude it (0: none yet)

    @property
    def _topic_names(self) -> set[str]:
        names: set[str] | None = self.__dict__.get("_topics")
        if names is None:
            names = self.__dict__["_topics"] = set()
        return names

    @property
    def topics(self) -> frozenset[str]:
        """The topics this connection subscribes to."""
        return frozenset(self.__dict__.get("_topics", ()))

    def subscribe(self, topic: str) -> bool:
        """Receive what is published to `topic` (on this server, and with a backplane on
        every server); False when already subscribed."""
        return self._topics_of_server().subscribe(self, topic)      # type: ignore[arg-type]

    def unsubscribe(self, topic: str) -> bool:
        """Stop receiving `topic`; False when not subscribed."""
        return self._topics_of_server().unsubscribe(self, topic)    # type: ignore[arg-type]

    def publish(self, topic: str, message: str | Buffer) -> None:
        """Send `message` to every other subscriber of `topic` (not to this connection)."""
        self._topics_of_server().publish(topic, message, exclude=self)  # type: ignore[arg-type]

    def _topics_of_server(self) -> Topics:
        server = self.server
        if server is None:
            raise RuntimeError("topics belong to a server: a client connection has none "
                               "(use fastws.broadcast for a collection of connections)")
        topics = getattr(server, "topics", None)
        if not isinstance(topics, Topics):
            # Embedded in another server (fastws.uvicorn): no fastws server keeps topics.
            raise RuntimeError(
                "topics belong to fastws servers (fastws.serve, fastws.asyncio.serve); "
                f"this connection is served by {type(server).__module__}."
                f"{type(server).__qualname__}, which has none (use fastws.broadcast over "
                "connections you keep)")
        return topics


class TopicServer:
    """The topics of a server (mixed into fastws.server.Server and fastws.asyncio's): one
    `Topics`, its backplane (`pubsub`), `publish`, and the backplane's events for the
    application. A server calls `_init_topics` when it is built and `_forget_topics(conn)`
    when a WebSocket closes; `RedisPubSub.start(server)` links it to Redis."""

    loop: IOEventLoop
    handler: Any
    topics: Topics
    pubsub: Any                          # the backplane (serve(pubsub=...)), or None

    def _init_topics(self, compression: DeflateOptions | None,
                     slow_consumers: SlowConsumerSetting) -> None:
        self.topics = Topics(self.loop, compression=compression,
                             slow_consumers=slow_consumers)
        self.pubsub = None

    @property
    def slow_consumers(self) -> SlowConsumers:
        """What happens to a subscriber that does not keep up (fastws.topics)."""
        return self.topics.slow_consumers

    def publish(self, topic: str, message: str | Buffer) -> None:
        """Send `message` (str: text, bytes-like: binary) to every subscriber of `topic`:
        this server's and, with `serve(pubsub=...)`, every linked server's."""
        self.topics.publish(topic, message)

    def _backplane_listener(self) -> Any:
        """The object whose on_backplane_* methods are called: the server's handler."""
        return self.handler

    def _dropped_listener(self, conn: Connection) -> tuple[Any, Any]:
        """Whose `on_messages_dropped(x, count)` hears that `conn` missed messages, and the
        `x` it is given: the connection's handler and the connection."""
        return conn.handler, conn

    def _backplane_event(self, name: str, *args: object) -> None:
        """Tell the handler about the backplane (on_backplane_lost, ...), if it listens."""
        callback = getattr(self._backplane_listener(), name, None)
        if callback is None:
            return
        try:
            callback(self, *args)
        except Exception:
            logger.exception("exception in %s", name)
