"""Redis pub/sub for the backplane, sans I/O: commands out, replies and messages in.

RESP is encoded with hiredis' `pack_command` and decoded with its `Reader`; nothing here
touches a socket or a loop, so any transport can drive it (fastws.backplane drives it on
a fastws Loop). Two sessions make a backplane, as Redis needs: a connection in subscribe
mode cannot publish.

* `SubscriberSession` holds the channels we want. On every (re)connection `hello()`
  authenticates, subscribes to all of them and ends with a PING: its answer comes after
  every subscription was confirmed, which is when the session is `ready`. Messages
  (`message`, or `smessage` in sharded mode) come out of `receive()`.
* `PublisherSession` authenticates, answers `ready` to its PING, and sends PUBLISH (or
  SPUBLISH) commands; it counts the ones Redis has not acknowledged yet, which a lost
  connection may have lost.
* `TopologySession` asks a Redis Cluster node which primary serves which hash slots
  (CLUSTER SLOTS); `ClusterSlots.node_for(channel)` routes a sharded channel by its slot
  (`key_slot`: CRC16 of the channel, or of its {hash tag}, modulo 16384).

`RedisURL` parses redis://[user:password@]host[:port][/db] and rediss:// (TLS). The db
number is accepted for familiarity: Redis pub/sub channels are not per database.

The envelope of a published message: a version byte (1), the opcode, the length of the
excluded-connection id and the id (empty, or 16 bytes: a node and a connection), then the
payload as it is.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["ClusterSlots", "Message", "PublisherSession", "RedisError", "RedisURL",
           "SubscriberSession", "TopologySession", "key_slot", "pack_envelope",
           "unpack_envelope"]

ENVELOPE_VERSION = 1


class RedisError(Exception):
    """Redis answered with an error, or spoke something we do not understand."""


@dataclass(frozen=True)
class RedisURL:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisURL:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"{url!r} is not a Redis URL (redis:// or rediss://)")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{url!r}: {exc}") from None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"{url!r}: the path is a database number, not {path!r}")
        return cls(host=parts.hostname or "127.0.0.1", port=port or 6379,
                   db=int(path) if path else 0,
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password is not None else None,
                   tls=parts.scheme == "rediss")

    def redacted(self) -> str:
        """The URL without its password, for logs."""
        scheme = "rediss" if self.tls else "redis"
        user = f"{self.username or ''}:***@" if self.password is not None else ""
        return f"{scheme}://{user}{self.host}:{self.port}/{self.db}"


def pack_envelope(opcode: int, exclude: bytes, data: bytes) -> bytes:
    return bytes((ENVELOPE_VERSION, opcode, len(exclude))) + exclude + data


def unpack_envelope(raw: bytes) -> tuple[int, bytes, bytes]:
    """(opcode, exclude, data); RedisError for a message we did not write."""
    if len(raw) < 3 or raw[0] != ENVELOPE_VERSION or raw[1] not in (1, 2):
        raise RedisError("a message on the channel is not a fastws envelope")
    end = 3 + raw[2]
    return raw[1], raw[3:end], raw[end:]


@dataclass(frozen=True)
class Message:
    channel: bytes
    payload: bytes


def _pack(*args: str | bytes) -> bytes:
    import hiredis
    packed: bytes = hiredis.pack_command(args)   # type: ignore[arg-type]
    return packed


class _Session:
    """What both sessions share: the RESP reader, authentication, the PING that says
    'everything before me is done'."""

    def __init__(self, url: RedisURL, *, sharded: bool) -> None:
        self.url = url
        self.sharded = sharded
        self.ready = False
        self._reader: Any = None
        self._pings = 0                  # PINGs sent and not answered

    def _auth(self) -> list[bytes]:
        url = self.url
        if url.password is None:
            return []
        if url.username:
            return [_pack("AUTH", url.username, url.password)]
        return [_pack("AUTH", url.password)]

    def _start(self) -> None:
        import hiredis
        self._reader = hiredis.Reader(replyError=RedisError, protocolError=RedisError)
        self.ready = False
        self._pings = 0

    def ping(self) -> bytes:
        """A PING (health check); `unanswered_pings` counts until its PONG."""
        self._pings += 1
        return _pack("PING")

    @property
    def unanswered_pings(self) -> int:
        return self._pings

    def _replies(self, data: bytes) -> list[Any]:
        reader = self._reader
        if reader is None:
            raise RedisError("the session was not started (hello())")
        reader.feed(data)
        replies: list[Any] = []
        while True:
            reply = reader.gets()
            if reply is False:
                return replies
            if isinstance(reply, RedisError):
                raise reply                  # AUTH refused, NOPERM, MOVED, ...
            replies.append(reply)


class SubscriberSession(_Session):
    """A connection in subscribe mode: the channels we want, and the messages they bring.

    `revoked` collects channels Redis unsubscribed us from by itself (a sharded channel's
    slot moved to another shard): the caller must find the new owner.
    """

    def __init__(self, url: RedisURL, *, sharded: bool = False) -> None:
        super().__init__(url, sharded=sharded)
        self.channels: set[bytes] = set()
        self.revoked: list[bytes] = []
        self._subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"
        self._kind = b"smessage" if sharded else b"message"

    def hello(self) -> bytes:
        """A connection was made: authenticate, subscribe to every channel, then PING."""
        self._start()
        commands = self._auth()
        # One channel per command: sharded channels of different slots may not share one.
        commands += [_pack(self._subscribe, channel) for channel in sorted(self.channels)]
        commands.append(self.ping())
        return b"".join(commands)

    def subscribe(self, channel: bytes) -> bytes:
        """Want `channel`; the command to send now (empty while not connected)."""
        if channel in self.channels:
            return b""
        self.channels.add(channel)
        return _pack(self._subscribe, channel) if self._reader is not None else b""

    def unsubscribe(self, channel: bytes) -> bytes:
        if channel not in self.channels:
            return b""
        self.channels.discard(channel)
        return _pack(self._unsubscribe, channel) if self._reader is not None else b""

    def lost(self) -> None:
        self._reader = None
        self.ready = False

    def resync(self) -> bytes:
        """A PING after new subscriptions on a live connection: `ready` again at its PONG,
        once they are all confirmed."""
        if self._reader is None:
            return b""
        self.ready = False
        return self.ping()

    def receive(self, data: bytes) -> list[Message]:
        """Received bytes; the messages they complete. Sets `ready` at the first PONG."""
        messages = []
        for reply in self._replies(data):
            if isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == self._kind and len(reply) == 3:
                    messages.append(Message(reply[1], reply[2]))
                elif kind in (b"pong", b"PONG"):
                    self._pong()
                elif kind == b"sunsubscribe" and len(reply) == 3 and reply[1] in self.channels:
                    self.channels.discard(reply[1])
                    self.revoked.append(reply[1])
                # other confirmations need nothing: the PING orders them
            elif reply in (b"PONG", "PONG"):
                self._pong()
            elif reply != b"OK":
                raise RedisError(f"unexpected reply in subscribe mode: {reply!r}")
        return messages

    def _pong(self) -> None:
        self._pings = max(0, self._pings - 1)
        self.ready = True


class PublisherSession(_Session):
    """A connection that publishes; `unacknowledged` counts publishes without a reply."""

    def __init__(self, url: RedisURL, *, sharded: bool = False) -> None:
        super().__init__(url, sharded=sharded)
        self._publish = "SPUBLISH" if sharded else "PUBLISH"
        # What each reply answers, in order: True for a PUBLISH, False for a PING/AUTH.
        self._awaiting: deque[bool] = deque()
        self.unacknowledged = 0

    def hello(self) -> bytes:
        self._start()
        self._awaiting.clear()
        self.unacknowledged = 0
        commands = self._auth()
        self._awaiting.extend(False for _ in commands)
        commands.append(self.ping())
        return b"".join(commands)

    def ping(self) -> bytes:
        self._awaiting.append(False)
        return super().ping()

    def publish(self, channel: bytes, payload: bytes) -> bytes:
        self._awaiting.append(True)
        self.unacknowledged += 1
        return _pack(self._publish, channel, payload)

    def lost(self) -> int:
        """The connection dropped: how many publishes may have been lost with it."""
        lost, self.unacknowledged = self.unacknowledged, 0
        self._awaiting.clear()
        self._reader = None
        self.ready = False
        return lost

    def receive(self, data: bytes) -> None:
        for reply in self._replies(data):
            if not self._awaiting:
                raise RedisError(f"a reply to nothing: {reply!r}")
            if self._awaiting.popleft():
                self.unacknowledged -= 1       # PUBLISH answers how many received it
            elif reply in (b"PONG", "PONG"):
                self._pings = max(0, self._pings - 1)
                self.ready = True


# ---------------------------------------------------------------------- Redis Cluster

def _crc16_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC16 = _crc16_table()
SLOTS = 16384


def key_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of a key or sharded channel (CRC16/XMODEM mod 16384,
    of the part between the first { and the next } when that part is not empty)."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    crc = 0
    for byte in key:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[((crc >> 8) ^ byte) & 0xFF]
    return crc % SLOTS


class ClusterSlots:
    """Which primary serves which slots, from CLUSTER SLOTS."""

    def __init__(self, ranges: list[tuple[int, int, tuple[str, int]]]) -> None:
        self.ranges = sorted(ranges)
        self._owner: list[tuple[str, int] | None] = [None] * SLOTS
        for start, end, address in self.ranges:
            for slot in range(start, end + 1):
                self._owner[slot] = address

    @classmethod
    def parse(cls, reply: Any, default_host: str) -> ClusterSlots:
        ranges = []
        try:
            for entry in reply:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                host = primary[0].decode() if isinstance(primary[0], bytes) else primary[0]
                ranges.append((start, end, (host or default_host, int(primary[1]))))
        except (TypeError, ValueError, IndexError):
            raise RedisError(f"a CLUSTER SLOTS answer we cannot read: {reply!r}") from None
        return cls(ranges)

    @property
    def primaries(self) -> list[tuple[str, int]]:
        return sorted({address for _, _, address in self.ranges})

    def node_for(self, channel: bytes) -> tuple[str, int] | None:
        return self._owner[key_slot(channel)]


class TopologySession(_Session):
    """A short-lived connection that asks a cluster node for the slot map."""

    def hello(self) -> bytes:
        self._start()
        self._answers = len(self._auth())
        return b"".join(self._auth()) + _pack("CLUSTER", "SLOTS")

    def receive(self, data: bytes) -> ClusterSlots | None:
        for reply in self._replies(data):
            if self._answers:
                self._answers -= 1             # AUTH's OK
                continue
            self.ready = True
            return ClusterSlots.parse(reply, self.url.host)
        return None

    def lost(self) -> None:
        self._reader = None
        self.ready = False
