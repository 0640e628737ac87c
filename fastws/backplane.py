"""The Redis backplane: a server's topics linked to every worker and machine through Redis.

`serve(..., pubsub="redis://host:6379/0")` (or a `RedisPubSub` for more settings) gives
each server process two connections to Redis, non-blocking sockets on its fastws Loop (no
thread, no blocking client; the RESP and subscription logic is fastws.redis_session, sans
I/O):

* a subscriber: a topic is subscribed on Redis (channel `prefix + topic`) when the first
  local connection subscribes to it and unsubscribed after the last leaves; every message
  it brings is delivered to the local subscribers exactly like a local publish;
* a publisher: `server.publish` / `conn.publish` go to Redis, and reach the local
  subscribers when they come back, so every server sees one order per topic, and the
  messages of one publisher keep the order it sent them in.

`sharded=True` uses Redis 7's sharded pub/sub (SSUBSCRIBE / SPUBLISH), whose traffic stays
on the shard that owns the channel's slot; this client talks to one endpoint (a Redis, or
the shard behind it), it does not follow a Redis Cluster's redirections.

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

import errno
import logging
import random
import socket
import ssl as ssl_module
from collections import deque
from typing import TYPE_CHECKING, Any

from .redis_session import (
    PublisherSession,
    RedisError,
    RedisURL,
    SubscriberSession,
    pack_envelope,
    unpack_envelope,
)

if TYPE_CHECKING:
    from .loop import Loop, Timer
    from .server import Server

__all__ = ["PubSubSetting", "RedisPubSub", "pubsub_settings"]

logger = logging.getLogger("fastws")

_READ_SIZE = 256 * 1024
_TRY_AGAIN = (BlockingIOError, InterruptedError, ssl_module.SSLWantReadError,
              ssl_module.SSLWantWriteError)


class _Link:
    """One connection to Redis on a fastws Loop: connecting (and TLS), the bytes waiting
    to be sent, reading, and reconnecting with back-off when it drops."""

    def __init__(self, owner: RedisPubSub, name: str,
                 session: SubscriberSession | PublisherSession) -> None:
        self.owner = owner
        self.name = name
        self.session = session
        self.sock: socket.socket | None = None
        self.open = False                       # connected (and TLS done): bytes flow
        self._out: deque[bytes | memoryview] = deque()
        self.unsent = 0
        self._writing = False
        self._attempt = 0
        self._timer: Timer | None = None        # reconnect, or the connect deadline
        self.closed = False

    @property
    def loop(self) -> Loop:
        return self.owner.loop

    # -- connecting

    def connect(self) -> None:
        self._timer = None
        if self.closed:
            return
        url = self.owner.url
        try:
            # Name resolution blocks (as in fastws.connect); use an address or /etc/hosts
            # names where that matters.
            family, kind, proto, _, address = socket.getaddrinfo(
                url.host, url.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self._failed(f"cannot resolve {url.host}: {exc}")
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        err = sock.connect_ex(address)
        if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
            self._failed(f"cannot connect: {errno.errorcode.get(err, err)}")
            return
        self._timer = self.loop.call_later(self.owner.connect_timeout, self._timed_out)
        self.loop.add_writer(sock, self._connected)

    def _timed_out(self) -> None:
        self._timer = None
        self._failed("connection timed out")

    def _connected(self) -> None:
        sock = self.sock
        assert sock is not None
        self.loop.remove_writer(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._failed(f"cannot connect: {errno.errorcode.get(err, err)}")
            return
        if self.owner.url.tls:
            try:
                self.sock = self.owner.ssl_context().wrap_socket(
                    sock, server_hostname=self.owner.url.host, do_handshake_on_connect=False)
            except (OSError, ValueError) as exc:
                self._failed(f"TLS: {exc}")
                return
            self._tls_handshake()
            return
        self._start()

    def _tls_handshake(self) -> None:
        sock = self.sock
        assert sock is not None
        loop = self.loop
        try:
            sock.do_handshake()          # type: ignore[attr-defined]
        except ssl_module.SSLWantReadError:
            loop.remove_writer(sock)
            loop.add_reader(sock, self._tls_handshake)
            return
        except ssl_module.SSLWantWriteError:
            loop.remove_reader(sock)
            loop.add_writer(sock, self._tls_handshake)
            return
        except OSError as exc:
            self._failed(f"TLS handshake failed: {exc}")
            return
        loop.remove_reader(sock)
        loop.remove_writer(sock)
        self._start()

    def _start(self) -> None:
        sock = self.sock
        assert sock is not None
        self.open = True
        self.loop.add_reader(sock, self._on_readable)
        self.send(self.session.hello())

    # -- bytes

    def send(self, data: bytes) -> None:
        if not data or not self.open:
            return
        self._out.append(data)
        self.unsent += len(data)
        if not self._writing:
            self._write()

    def _write(self) -> None:
        sock = self.sock
        out = self._out
        assert sock is not None
        while out:
            if len(out) > 1:
                joined = b"".join(out)        # one send for everything queued
                out.clear()
                out.append(joined)
            try:
                sent = sock.send(out[0])
            except _TRY_AGAIN:
                break
            except OSError as exc:
                self._failed(f"write failed: {exc}")
                return
            self.unsent -= sent
            if sent < len(out[0]):
                out[0] = memoryview(out[0])[sent:]
                break
            out.popleft()
        if out and not self._writing:
            self._writing = True
            self.loop.add_writer(sock, self._write)
        elif not out and self._writing:
            self._writing = False
            self.loop.remove_writer(sock)

    def _on_readable(self) -> None:
        sock = self.sock
        while sock is not None and self.open:
            try:
                data = sock.recv(_READ_SIZE)
            except _TRY_AGAIN:
                return
            except OSError as exc:
                self._failed(f"read failed: {exc}")
                return
            if not data:
                self._failed("Redis closed the connection")
                return
            try:
                self.owner._received(self, data)
            except RedisError as exc:
                self._failed(f"Redis: {exc}")
                return
            if not isinstance(sock, ssl_module.SSLSocket) or not sock.pending():
                return

    # -- ending

    def _failed(self, reason: str) -> None:
        """Drop the connection, tell the owner, and try again after a back-off."""
        self._drop()
        if self.closed:
            return
        self.owner._link_lost(self, reason)
        owner = self.owner
        delay = min(owner.reconnect_max, owner.reconnect_min * (2 ** self._attempt))
        self._attempt = min(self._attempt + 1, 30)
        delay *= random.uniform(0.5, 1.0)      # jitter: workers do not reconnect in step
        self._timer = self.loop.call_later(delay, self.connect)

    def _drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sock, self.sock = self.sock, None
        self.open = False
        self._writing = False
        self._out.clear()
        self.unsent = 0
        if sock is not None:
            loop = self.loop
            if not loop.is_closed:
                loop.remove_reader(sock)
                loop.remove_writer(sock)
            sock.close()

    def ready(self) -> None:
        """The session answered its first PING: the connection is usable."""
        self._attempt = 0
        if self._timer is not None:         # the connect deadline
            self._timer.cancel()
            self._timer = None

    def close(self) -> None:
        self.closed = True
        self._drop()


class RedisPubSub:
    """A Redis pub/sub backplane for a server's topics (see the module doc).

    RedisPubSub(url="redis://127.0.0.1:6379/0", *, sharded=False, prefix="fastws:",
                max_queue=8 MiB, ssl=None, reconnect_min=0.05, reconnect_max=5.0,
                ping_interval=5.0, connect_timeout=5.0)

    `url`: redis://[user:password@]host[:port][/db], or rediss:// for TLS (with `ssl`, an
    ssl.SSLContext, or the system's default context). `prefix` is put before every topic
    to make its channel name, so several applications can share a Redis. `max_queue`:
    bytes of publishes kept while Redis is away (or slow). Reconnection waits
    `reconnect_min` seconds, doubling to `reconnect_max`. A connection that does not
    answer a PING within `ping_interval` seconds is taken as lost.

    Passed to `serve(pubsub=...)`, which starts it in every worker process after the fork;
    `start(server)` does it by hand.
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *, sharded: bool = False,
                 prefix: str = "fastws:", max_queue: int = 8 * 1024 * 1024,
                 ssl: ssl_module.SSLContext | None = None, reconnect_min: float = 0.05,
                 reconnect_max: float = 5.0, ping_interval: float = 5.0,
                 connect_timeout: float = 5.0) -> None:
        import hiredis  # noqa: F401  (fail now, not in every worker, when it is missing)
        self.url = RedisURL.parse(url)
        self.sharded = sharded
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
        self.server: Server | None = None
        self._loop: Loop | None = None
        self._sub_session = SubscriberSession(self.url, sharded=sharded)
        self._pub_session = PublisherSession(self.url, sharded=sharded)
        self._subscriber = _Link(self, "subscriber", self._sub_session)
        self._publisher = _Link(self, "publisher", self._pub_session)
        self._queue: deque[tuple[bytes, bytes]] = deque()   # (channel, envelope) while away
        self._queued = 0                                     # their bytes
        self._up: bool | None = None      # None: never connected yet
        self._down_since = 0.0
        self._dropping = 0                # dropped in this loop iteration, to report
        self._ping_timer: Timer | None = None
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
    def loop(self) -> Loop:
        if self._loop is None:
            raise RuntimeError("the backplane is not started (serve(pubsub=...) starts it)")
        return self._loop

    @property
    def connected(self) -> bool:
        """Both connections are up: publishes go out at once and subscriptions are live."""
        return self._up is True

    @property
    def queued(self) -> int:
        """Publishes waiting for Redis."""
        return len(self._queue)

    def ssl_context(self) -> ssl_module.SSLContext:
        if self._ssl is None:
            self._ssl = ssl_module.create_default_context()
        return self._ssl

    # -- lifecycle

    def start(self, server: Server) -> None:
        """Link `server`'s topics to Redis (serve(pubsub=...) calls it in every process)."""
        if self.server is not None:
            raise RuntimeError("this RedisPubSub already serves a server")
        self.server = server
        self._loop = server.loop
        server.pubsub = self
        topics = server.topics
        topics.backplane = self
        for topic in topics.names:
            self._sub_session.subscribe(self._channel(topic))
        self._subscriber.connect()
        self._publisher.connect()
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    def close(self) -> None:
        """Disconnect for good (server.close() does it)."""
        if self._ping_timer is not None:
            self._ping_timer.cancel()
            self._ping_timer = None
        self._subscriber.close()
        self._publisher.close()
        if self._queue:
            self._drop(len(self._queue))
            self._queue.clear()
            self._queued = 0

    def _ping(self) -> None:
        self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)
        for link in (self._subscriber, self._publisher):
            if not link.open:
                continue
            if link.session.unanswered_pings:
                link._failed(f"no answer to PING within {self.ping_interval} s")
            else:
                link.send(link.session.ping())

    # -- the Backplane interface (fastws.topics)

    def _channel(self, topic: str) -> bytes:
        return self.prefix + topic.encode("utf-8")

    def subscribe(self, topic: str) -> None:
        self._subscriber.send(self._sub_session.subscribe(self._channel(topic)))

    def unsubscribe(self, topic: str) -> None:
        self._subscriber.send(self._sub_session.unsubscribe(self._channel(topic)))

    def publish(self, topic: str, opcode: int, data: bytes, exclude: bytes) -> None:
        channel = self._channel(topic)
        envelope = pack_envelope(opcode, exclude, data)
        link = self._publisher
        if self._up and not self._queue and link.unsent + len(envelope) <= self.max_queue:
            self.published += 1
            link.send(self._pub_session.publish(channel, envelope))
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
        link = self._publisher
        session = self._pub_session
        queue = self._queue
        while queue and link.open and link.unsent <= self.max_queue // 2:
            channel, envelope = queue.popleft()
            self._queued -= len(envelope)
            self.published += 1
            link.send(session.publish(channel, envelope))
        if queue and link.open:
            self.loop.call_later(0.001, self._flush_if_up)

    def _flush_if_up(self) -> None:
        if self._up:
            self._flush()

    def _drop(self, count: int) -> None:
        self.dropped += count
        if not self._dropping and self._loop is not None and not self._loop.is_closed:
            self.loop.call_soon(self._report_dropped)
        self._dropping += count

    def _report_dropped(self) -> None:
        count, self._dropping = self._dropping, 0
        logger.warning("backplane %s: %d publish(es) lost", self.url.redacted(), count)
        if self.server is not None:
            self.server._backplane_event("on_backplane_dropped", count)

    # -- events from the links

    def _received(self, link: _Link, data: bytes) -> None:
        session = link.session
        if isinstance(session, PublisherSession):
            session.receive(data)
        else:
            self._deliver(session.receive(data))
        if session.ready and link._timer is not None:
            link.ready()
        if session.ready and not self._up and self._sub_session.ready \
                and self._pub_session.ready:
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

    def _link_lost(self, link: _Link, reason: str) -> None:
        session = link.session
        if isinstance(session, PublisherSession):
            lost = session.lost()
            if lost:
                self._drop(lost)
        else:
            session.lost()
        if self._up is not False:
            self._up = False
            self.losses += 1
            self._down_since = self.loop.time()
            message = f"{link.name} connection to {self.url.redacted()}: {reason}"
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
