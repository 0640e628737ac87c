"""The Redis backplane: a server's topics linked to every worker and machine through Redis.

`serve(..., pubsub="redis://host:6379/0")` (or a `RedisPubSub` for more settings) gives
each server process two connections to Redis, non-blocking sockets on the server's loop
(the fastws Loop; asyncio's or uvloop for fastws.asyncio.serve), with no thread and no
blocking client (the RESP and subscription logic is fastws.redis_session, sans I/O):

* a subscriber: a topic is subscribed on Redis (channel `prefix + topic`) when the first
  local connection subscribes to it and unsubscribed after the last leaves; every message
  it brings is delivered to the local subscribers exactly like a local publish;
* a publisher: `server.publish` / `conn.publish` go to Redis, and reach the local
  subscribers when they come back, so every server sees one order per topic, and the
  messages of one publisher keep the order it sent them in.

`sharded=True` uses Redis 7's sharded pub/sub (SSUBSCRIBE / SPUBLISH), whose traffic stays
on the shard that owns the channel's slot. `cluster=True` (which implies it) treats the
URL as a seed node of a Redis Cluster: the backplane asks it for the slot map (CLUSTER
SLOTS), keeps a pair of connections to every primary, and sends each topic's SSUBSCRIBE
and SPUBLISH to the primary that owns its slot. A MOVED answer or a channel the cluster
unsubscribed us from (its slot moved) makes it fetch the map again and re-route; the
publishes caught in the move are reported like any loss.

When a connection drops (or stops answering PINGs), the server's handler is told
(`on_backplane_lost(server, reason)`), and the backplane reconnects with exponential
back-off (plus jitter), re-subscribes to every topic, and reports
`on_backplane_restored(server, seconds_down)`. Meanwhile publishes wait in a queue
bounded by `max_queue` bytes and are sent, in order, once both connections are back;
what does not fit, and publishes sent but not acknowledged when a connection dropped
(Redis may or may not have delivered them), are reported with
`on_backplane_dropped(server, count)`. Nothing is lost silently, but messages published
elsewhere while this server was away from Redis are not delivered here: the handler
knows when that was, and can tell its clients.
"""

from __future__ import annotations

import logging
import ssl as ssl_module
from collections import deque
from typing import TYPE_CHECKING, Any

from .eventloop import loop_is_closed
from .redis_link import Link
from .redis_session import (
    ClusterSlots,
    PublisherSession,
    RedisError,
    RedisURL,
    SubscriberSession,
    TopologySession,
    pack_envelope,
    unpack_envelope,
)

if TYPE_CHECKING:
    from .eventloop import IOEventLoop, TimerHandle
    from .topics import TopicServer

__all__ = ["PubSubSetting", "RedisPubSub", "pubsub_settings"]

logger = logging.getLogger("fastws")

Address = tuple[str, int]


class _Node:
    """The two connections to one Redis server (a shard's primary, in a cluster)."""

    def __init__(self, owner: RedisPubSub, address: Address) -> None:
        self.address = address
        self.sub_session = SubscriberSession(owner.url, sharded=owner.sharded)
        self.pub_session = PublisherSession(owner.url, sharded=owner.sharded)
        self.subscriber = Link(owner, "subscriber", address, self.sub_session)
        self.publisher = Link(owner, "publisher", address, self.pub_session)

    @property
    def ready(self) -> bool:
        return self.sub_session.ready and self.pub_session.ready

    @property
    def links(self) -> tuple[Link, Link]:
        return self.subscriber, self.publisher

    def connect(self) -> None:
        self.subscriber.connect()
        self.publisher.connect()

    def close(self) -> int:
        """Disconnect for good; the publishes that may have been lost with it."""
        self.subscriber.close()
        self.publisher.close()
        return self.pub_session.lost()


class RedisPubSub:
    """A Redis pub/sub backplane for a server's topics (see the module doc).

    RedisPubSub(url="redis://127.0.0.1:6379/0", *, sharded=False, cluster=False,
                prefix="fastws:", max_queue=8 MiB, ssl=None, reconnect_min=0.05,
                reconnect_max=5.0, ping_interval=5.0, connect_timeout=5.0)

    `url`: redis://[user:password@]host[:port][/db], or rediss:// for TLS (with `ssl`, an
    ssl.SSLContext, or the system's default context). `sharded`: SSUBSCRIBE/SPUBLISH
    (Redis 7); `cluster`: the URL is a seed node of a Redis Cluster, channels are routed
    to the primary owning their slot (implies sharded). `prefix` is put before every topic
    to make its channel name, so several applications can share a Redis. `max_queue`:
    bytes of publishes kept while Redis is away (or slow). Reconnection waits
    `reconnect_min` seconds, doubling to `reconnect_max`. A connection that does not
    answer a PING within `ping_interval` seconds is taken as lost.

    Passed to `serve(pubsub=...)`, which starts it in every worker process after the fork;
    `start(server)` does it by hand.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, sharded: bool = False,
                 cluster: bool = False, prefix: str = "fastws:",
                 max_queue: int = 8 * 1024 * 1024, ssl: ssl_module.SSLContext | None = None,
                 reconnect_min: float = 0.05, reconnect_max: float = 5.0,
                 ping_interval: float = 5.0, connect_timeout: float = 5.0) -> None:
        import hiredis  # noqa: F401  (fail now, not in every worker, when it is missing)
        self.url = RedisURL.parse(url)
        self.tls = self.url.tls
        self.cluster = cluster
        self.sharded = sharded or cluster
        self.prefix = prefix.encode("utf-8")
        if max_queue < 0:
            raise ValueError("max_queue must be >= 0")
        if not 0 < reconnect_min <= reconnect_max:
            raise ValueError("reconnect delays need 0 < reconnect_min <= reconnect_max")
        self.max_queue = max_queue
        self._ssl = ssl
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.server: TopicServer | None = None
        self._loop: IOEventLoop | None = None
        self._channels: set[bytes] = set()                   # what the local topics want
        self._nodes: dict[Address, _Node] = {}
        self._slots: ClusterSlots | None = None              # cluster: the slot map
        self._topology: Link | None = None                   # cluster: asking for it
        self._queue: deque[tuple[bytes, bytes]] = deque()   # (channel, envelope) while away
        self._queued = 0                                     # their bytes
        self._up: bool | None = None      # None: never connected yet
        self._down_since = 0.0
        self._dropping = 0                # dropped in this loop iteration, to report
        self._ping_timer: TimerHandle | None = None
        # counters
        self.published = 0                # publishes handed to Redis
        self.received = 0                 # messages that came from Redis
        self.dropped = 0                  # publishes reported lost
        self.losses = 0                   # times the backplane was lost

    def __repr__(self) -> str:
        state = {None: "connecting", True: "up", False: "down"}[self._up]
        return f"<fastws.RedisPubSub {self.url.redacted()} {state}>"

    # -- state

    @property
    def loop(self) -> IOEventLoop:
        if self._loop is None:
            raise RuntimeError("the backplane is not started (serve(pubsub=...) starts it)")
        return self._loop

    @property
    def connected(self) -> bool:
        """Every connection is up: publishes go out at once and subscriptions are live."""
        return self._up is True

    @property
    def queued(self) -> int:
        """Publishes waiting for Redis."""
        return len(self._queue)

    @property
    def nodes(self) -> list[Address]:
        """The Redis servers this backplane talks to (a cluster's primaries)."""
        return sorted(self._nodes)

    def ssl_context(self) -> ssl_module.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_module.create_default_context()
        return self._ssl

    # -- lifecycle

    def start(self, server: TopicServer) -> None:
        """Link `server`'s topics to Redis (serve(pubsub=...) calls it in every process).

        `server` is a fastws server, on the fastws Loop or on an asyncio loop (asyncio's
        or uvloop): the backplane's sockets are watched by that server's loop."""
        if self.server is not None:
            raise RuntimeError("this RedisPubSub already serves a server")
        self.server = server
        self._loop = server.loop
        server.pubsub = self
        topics = server.topics
        topics.backplane = self
        self._channels.update(self._channel(topic) for topic in topics.names)
        if self.cluster:
            self._ask_topology()
        else:
            node = self._nodes[(self.url.host, self.url.port)] = _Node(
                self, (self.url.host, self.url.port))
            for channel in self._channels:
                node.sub_session.subscribe(channel)
            node.connect()
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    def close(self) -> None:
        """Disconnect for good (server.close() does it)."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        if self._topology is not None:
            self._topology.close()
            self._topology = None
        lost = sum(node.close() for node in self._nodes.values())
        self._nodes.clear()
        lost += len(self._queue)
        self._queue.clear()
        self._queued = 0
        if lost:
            self._drop(lost)

    def _ping(self) -> None:
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)
        for node in list(self._nodes.values()):
            for link in node.links:
                if not link.open:
                    continue
                if link.session.unanswered_pings:
                    link._failed(f"no answer to PING within {self.ping_interval} s")
                else:
                    link.send(link.session.ping())

    # -- routing (a cluster's slots)

    def _node_for(self, channel: bytes) -> _Node | None:
        if not self.cluster:
            return next(iter(self._nodes.values()), None)
        if self._slots is None:
            return None
        address = self._slots.node_for(channel)
        return self._nodes.get(address) if address is not None else None

    def _ask_topology(self) -> None:
        """Fetch the cluster's slot map from the seed node (again)."""
        if self._topology is not None:
            return
        seed = (self.url.host, self.url.port)
        self._topology = Link(self, "cluster topology", seed, TopologySession(self.url,
                                                                           sharded=True))
        self._topology.connect()

    def _new_topology(self, slots: ClusterSlots) -> None:
        """Connect to every primary and move each channel to the one owning its slot."""
        self._slots = slots
        if self._topology is not None:
            self._topology.close()
            self._topology = None
        primaries = set(slots.primaries)
        for address in list(self._nodes):
            if address not in primaries:
                lost = self._nodes.pop(address).close()
                if lost:
                    self._drop(lost)
        for address in primaries:
            if address not in self._nodes:
                self._nodes[address] = _Node(self, address)
                self._nodes[address].connect()
        for address, node in self._nodes.items():
            wanted = {c for c in self._channels if slots.node_for(c) == address}
            for channel in node.sub_session.channels - wanted:
                node.subscriber.send(node.sub_session.unsubscribe(channel))
            added = wanted - node.sub_session.channels
            for channel in added:
                node.subscriber.send(node.sub_session.subscribe(channel))
            if added:
                node.subscriber.send(node.sub_session.resync())
        self._check_ready()

    # -- the Backplane interface (fastws.topics)

    def _channel(self, topic: str) -> bytes:
        return self.prefix + topic.encode("utf-8")

    def subscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        self._channels.add(channel)
        node = self._node_for(channel)
        if node is not None:
            node.subscriber.send(node.sub_session.subscribe(channel))

    def unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        self._channels.discard(channel)
        node = self._node_for(channel)
        if node is not None:
            node.subscriber.send(node.sub_session.unsubscribe(channel))

    def publish(self, topic: str, opcode: int, data: bytes, exclude: bytes) -> None:
        channel = self._channel(topic)
        envelope = pack_envelope(opcode, exclude, data)
        if self._up and not self._queue:
            node = self._node_for(channel)
            if node is not None and node.publisher.unsent + len(envelope) <= self.max_queue:
                self.published += 1
                node.publisher.send(node.pub_session.publish(channel, envelope))
                return
        if self._queued + len(envelope) > self.max_queue:
            self._drop(1)
            return
        self._queue.append((channel, envelope))
        self._queued += len(envelope)
        if self._up:
            self._flush()

    def _flush(self) -> None:
        """Send the queued publishes, in order, while Redis takes them."""
        queue = self._queue
        while queue:
            channel, envelope = queue[0]
            node = self._node_for(channel)
            if node is None or not node.publisher.open:
                return
            if node.publisher.unsent > self.max_queue // 2:
                self.loop.call_later(0.001, self._flush_if_up)
                return
            queue.popleft()
            self._queued -= len(envelope)
            self.published += 1
            node.publisher.send(node.pub_session.publish(channel, envelope))

    def _flush_if_up(self) -> None:
        if self._up:
            self._flush()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._dropping and self._loop is not None and not loop_is_closed(self._loop):
            self.loop.call_soon(self._report_dropped)
        self._dropping += count

    def _report_dropped(self) -> None:
        count, self._dropping = self._dropping, 0
        logger.warning("backplane %s: %d publish(es) lost", self.url.redacted(), count)
        if self.server is not None:
            self.server._backplane_event("on_backplane_dropped", count)

    # -- events from the links

    def _received(self, link: Link, data: bytes) -> None:
        session = link.session
        if isinstance(session, PublisherSession):
            session.receive(data)
        elif isinstance(session, SubscriberSession):
            self._deliver(session.receive(data))
            if session.revoked:
                # The cluster moved these channels' slots: until they are subscribed at
                # their new owners, messages on them are missed. Say so, and re-route.
                self._went_down(f"the cluster moved {len(session.revoked)} channel(s) to "
                                "another shard")
                session.revoked.clear()
                self._ask_topology()
        elif isinstance(session, TopologySession):
            slots = session.receive(data)
            if slots is not None:
                self._new_topology(slots)
                return
        if session.ready and link._timer is not None:
            link.ready()
        self._check_ready()

    def _check_ready(self) -> None:
        if self._up or not self._nodes or (self.cluster and self._slots is None):
            return
        if all(node.ready for node in self._nodes.values()):
            self._restored()

    def _deliver(self, messages: list[Any]) -> None:
        server = self.server
        if server is None:
            return
        topics = server.topics
        prefix = self.prefix
        for message in messages:
            channel: bytes = message.channel
            if not channel.startswith(prefix):
                continue
            try:
                opcode, exclude, data = unpack_envelope(message.payload)
                topic = channel[len(prefix):].decode("utf-8")
            except (RedisError, UnicodeDecodeError) as exc:
                logger.warning("backplane: ignored a message on %r: %s", channel, exc)
                continue
            self.received += 1
            topics.deliver(topic, opcode, data, exclude or None)

    def _link_lost(self, link: Link, reason: str) -> None:
        session = link.session
        if isinstance(session, PublisherSession):
            lost = session.lost()
            if lost:
                self._drop(lost)
        elif isinstance(session, (SubscriberSession, TopologySession)):
            session.lost()
        if self.cluster and link is not self._topology and (
                "MOVED" in reason or "ASK" in reason or "CLUSTERDOWN" in reason):
            self._ask_topology()
        host, port = link.address
        self._went_down(f"{link.name} connection to {host}:{port}: {reason}")

    def _went_down(self, message: str) -> None:
        """Tell the handler, once per outage, that messages may be missed from now on."""
        if self._up is not False:
            self._up = False
            self.losses += 1
            self._down_since = self.loop.time()
            logger.warning("backplane lost: %s", message)
            if self.server is not None:
                self.server._backplane_event("on_backplane_lost", message)

    def _restored(self) -> None:
        was_down = self._up is False
        self._up = True
        self._flush()
        if was_down:
            down = self.loop.time() - self._down_since
            logger.warning("backplane restored after %.2f s: %s", down, self.url.redacted())
            if self.server is not None:
                self.server._backplane_event("on_backplane_restored", down)


PubSubSetting = str | RedisPubSub


def pubsub_settings(pubsub: object) -> RedisPubSub:
    """The backplane meant by `serve(pubsub=...)`: a Redis URL or a RedisPubSub."""
    if isinstance(pubsub, RedisPubSub):
        return pubsub
    if isinstance(pubsub, str):
        return RedisPubSub(pubsub)
    raise TypeError(f"pubsub must be a redis:// URL or a RedisPubSub, not "
                    f"{type(pubsub).__name__}")
