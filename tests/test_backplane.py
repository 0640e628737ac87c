"""The Redis backplane against a real redis-server (Debian's package; .ci/run installs it).

Each test starts redis-server on a free 127.0.0.1 port with no persistence and stops it.
The fan-out tests run `python -m fastws chat` processes, as users run them: with
`--workers 2`, and with a second server process standing in for a second machine; the
other tests serve in-process on the test's loop.
"""

from __future__ import annotations

import json
import resource

import pytest
from conftest import run_until
from redis_helpers import REDIS, ChatServer, RedisCluster, RedisServer, serving_pid

import fastws
from fastws import OpCode

pytestmark = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server; "
                          ".ci/run does)")

ROOMS = ["alpha", "beta", "gamma"]


@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


class Member:
    """A chat client: keeps every message's bytes (checked at the end)."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.received: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def on_frame(self, conn, frame):
        self.received.append(frame.data)

    def on_closed(self, conn, code, reason):
        self.closed = (code, reason)


def join(loop, port: int, room: str) -> tuple[fastws.Connection, Member]:
    member = Member(room)
    # No compression: the test process decodes millions of messages.
    conn = fastws.connect(f"ws://127.0.0.1:{port}/chat/{room}", member, loop=loop,
                          compression=False)
    return conn, member


def wait_subscribed(loop, redis: RedisServer, servers: list[ChatServer],
                    members: list[tuple[fastws.Connection, Member]]) -> dict[int, int]:
    """Where each member landed (pid -> count), once Redis shows every worker that serves
    a room subscribed to it."""
    served: dict[int, int] = {}
    rooms_of: dict[str, set[int]] = {room: set() for room in ROOMS}
    for conn, member in members:
        for server in servers:
            pid = serving_pid(conn.socket.getsockname()[1], server.port, server.pids)
            if pid is not None:
                served[pid] = served.get(pid, 0) + 1
                rooms_of[member.room].add(pid)
                break
        else:
            raise AssertionError("a member's connection is served by no server process")
    run_until(loop, lambda: all(redis.numsub(f"fastws:{room}") == len(pids)
                                for room, pids in rooms_of.items()), timeout=20)
    return served


def publish_in_rounds(loop, publishers, total: int, window: int = 200) -> dict[str, list[bytes]]:
    """Send `total` sequence-numbered messages round-robin over the rooms, each publisher
    keeping at most `window` of its own in flight (it is in its room: it hears them)."""
    expected: dict[str, list[bytes]] = {room: [] for room in ROOMS}
    sent = 0
    while sent < total:
        for conn, member in publishers:
            if sent >= total:
                break
            mine = expected[member.room]
            if len(mine) - len(member.received) >= window:
                continue
            message = f"{member.room}:{len(mine)}".encode()
            mine.append(message)
            conn.send_text(message.decode())
            sent += 1
        loop.run_once(0)
    return expected


@pytest.mark.parametrize("layout", ["2 workers", "2 machines"])
def test_every_subscriber_gets_every_message_once_in_order(redis, loop, tmp_path, layout):
    raise_fd_limit(3000)
    servers = [ChatServer(tmp_path / "a.log", "--redis", redis.url, workers=2)]
    if layout == "2 machines":
        servers.append(ChatServer(tmp_path / "b.log", "--redis", redis.url, workers=1))
    try:
        subscribers = [join(loop, servers[i % len(servers)].port, ROOMS[i % 3])
                       for i in range(1000)]
        publishers = [join(loop, servers[i % len(servers)].port, room)
                      for i, room in enumerate(ROOMS)]
        everyone = subscribers + publishers
        run_until(loop, lambda: all(conn.is_open for conn, _ in everyone), timeout=60)
        served = wait_subscribed(loop, redis, servers, everyone)
        workers = [pid for server in servers for pid in server.pids]
        assert sorted(served) == sorted(workers), f"a worker serves nobody: {served}"
        assert all(count >= 50 for count in served.values()), served

        expected = publish_in_rounds(loop, publishers, 10_000)
        want = {room: len(messages) for room, messages in expected.items()}
        run_until(loop, lambda: all(len(m.received) >= want[m.room] for _, m in everyone),
                  timeout=180)
        for _ in range(20):
            loop.run_once(0.01)       # anything extra (a duplicate) would arrive now
        for _, member in everyone:
            assert member.received == expected[member.room], difference(
                member.received, expected[member.room])
        assert all(server.alive() for server in servers)
        for conn, _ in everyone:
            conn.close()
        run_until(loop, lambda: all(conn.closed for conn, _ in everyone), timeout=30)
        # After the last member left, no worker stays subscribed.
        run_until(loop, lambda: all(redis.numsub(f"fastws:{room}") == 0 for room in ROOMS))
        assert all("Traceback" not in server.output() for server in servers)
    finally:
        for server in servers:
            server.stop()


def difference(got: list[bytes], want: list[bytes]) -> str:
    for index, (a, b) in enumerate(zip(got, want, strict=False)):
        if a != b:
            return f"message {index}: got {a!r}, expected {b!r}"
    return f"got {len(got)} messages, expected {len(want)}"


def parse(member: Member) -> list[object]:
    """A member's stream: ints (its room's sequence numbers) and system notices (dicts)."""
    items: list[object] = []
    for data in member.received:
        if data.startswith(b"{"):
            items.append(json.loads(data))
        else:
            room, _, seq = data.decode().partition(":")
            assert room == member.room, data
            items.append(int(seq))
    return items


def test_redis_killed_and_restarted_mid_stream(redis, loop, tmp_path):
    server = ChatServer(tmp_path / "chat.log", "--redis", redis.url, workers=2)
    try:
        members = [join(loop, server.port, ROOMS[i % 3]) for i in range(60)]
        publishers = [join(loop, server.port, room) for room in ROOMS]
        everyone = members + publishers
        run_until(loop, lambda: all(conn.is_open for conn, _ in everyone), timeout=30)
        served = wait_subscribed(loop, redis, [server], everyone)
        assert len(served) == 2, served
        fds_before = server.fds()

        # A steady stream, one message per millisecond or so, round-robin over the rooms;
        # Redis is killed after 900 and started again after 1,500.
        per_room = 1000
        for i in range(per_room * 3):
            conn, member = publishers[i % 3]
            conn.send_text(f"{member.room}:{i // 3}")
            if i == 900:
                redis.kill()
            elif i == 1500:
                redis.start()
            loop.run_once(0.001)

        # Each worker reconnects on its own back-off (jittered, doubling), so one may come
        # back after the stream ended: what was published before it re-subscribed never
        # reaches its members (they are told). Once every member heard its worker is back,
        # one more message per room must reach everyone.
        def system_notices(member: Member) -> list[str]:
            return [item["system"] for item in parse(member) if isinstance(item, dict)]
        run_until(loop, lambda: all("backplane restored" in system_notices(m)
                                    for _, m in everyone),
                  timeout=30)
        last = per_room
        for conn, member in publishers:
            conn.send_text(f"{member.room}:{last}")

        def got_last(member: Member) -> bool:
            return any(item == last for item in parse(member)[-3:])
        run_until(loop, lambda: all(got_last(m) for _, m in everyone), timeout=30)
        for _ in range(20):
            loop.run_once(0.01)

        delivered_late = missing = 0
        for _, member in everyone:
            items = parse(member)
            notices = system_notices(member)
            # Every worker was told, once each way.
            assert notices.count("backplane lost") == 1, notices
            assert notices.count("backplane restored") == 1, notices
            previous, lost_since = -1, False
            for item in items:
                if isinstance(item, dict):
                    lost_since = lost_since or item["system"] in ("backplane lost",
                                                                  "messages lost")
                    continue
                assert item > previous, f"out of order or duplicated: {item} after {previous}"
                if item != previous + 1:
                    # A gap is only allowed where this member's server told it about a loss.
                    # The notice may precede the last messages before the gap: a worker
                    # can see its publisher connection drop before it has read what its
                    # subscriber connection got from Redis before the kill.
                    assert lost_since, f"silent gap {previous} -> {item} in {member.room}"
                    missing += item - previous - 1
                    lost_since = False
                previous = item
            assert previous == last
            received = [item for item in items if isinstance(item, int)]
            delivered_late += sum(1 for seq in received if 300 <= seq <= 500)
        print(f"after the restart: {missing} messages missing (reported), {delivered_late} "
              "of those published around the outage delivered")
        # Nothing crashed or leaked: both workers are up with as many descriptors as before.
        assert server.alive()
        assert server.fds() == fds_before
        assert "Traceback" not in server.output()
    finally:
        server.stop()


# ---------------------------------------------------------------------- in-process

class Room:
    """Subscribes every connection to topic "t"; records the backplane's events."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def on_upgraded(self, conn):
        conn.subscribe("t")

    def on_backplane_lost(self, server, reason):
        self.events.append(("lost", reason))

    def on_backplane_restored(self, server, down):
        self.events.append(("restored", down))

    def on_backplane_dropped(self, server, count):
        self.events.append(("dropped", count))


def serve_linked(loop, pubsub_a, pubsub_b):
    rooms = Room(), Room()
    servers = [fastws.serve(rooms[0], "127.0.0.1", 0, loop=loop, pubsub=pubsub_a),
               fastws.serve(rooms[1], "127.0.0.1", 0, loop=loop, pubsub=pubsub_b)]
    return servers, rooms


def members_of(loop, servers) -> list[Member]:
    members = []
    for server in servers:
        conn, member = join(loop, server.port, "x")   # the path does not matter to Room
        member.conn = conn
        members.append(member)
    run_until(loop, lambda: all(m.conn.is_open for m in members))
    return members


def close_all(loop, servers):
    for server in servers:
        server.close()
    run_until(loop, lambda: not any(s.all_connections for s in servers))


def texts(member: Member) -> list[str]:
    return [data.decode() for data in member.received]


@pytest.mark.parametrize("sharded", [False, True], ids=["pubsub", "sharded"])
def test_two_servers_linked_by_redis(redis, loop, sharded):
    servers, rooms = serve_linked(loop, fastws.RedisPubSub(redis.url, sharded=sharded),
                                  fastws.RedisPubSub(redis.url, sharded=sharded))
    try:
        run_until(loop, lambda: all(s.pubsub.connected for s in servers))
        members = members_of(loop, servers)
        run_until(loop, lambda: redis.numsub("fastws:t", sharded=sharded) == 2)
        servers[0].publish("t", "one")
        servers[1].publish("t", b"two")
        run_until(loop, lambda: all(len(m.received) == 2 for m in members))
        assert all(texts(m) == ["one", "two"] for m in members)
        assert rooms[0].events == rooms[1].events == []
    finally:
        close_all(loop, servers)
    assert redis.numsub("fastws:t", sharded=sharded) == 0


def test_authentication_with_a_user_and_password(tmp_path, loop):
    redis = RedisServer(tmp_path, "--user", "default", "off", "--user", "chat", "on",
                        ">s3cret", "~*", "&*", "+@all")
    try:
        url = f"redis://chat:s3cret@127.0.0.1:{redis.port}/0"
        wrong = f"redis://chat:wrong@127.0.0.1:{redis.port}/0"
        servers, rooms = serve_linked(loop, fastws.RedisPubSub(url),
                                      fastws.RedisPubSub(wrong, reconnect_max=0.2))
        try:
            run_until(loop, lambda: servers[0].pubsub.connected and rooms[1].events)
            kind, reason = rooms[1].events[0]
            assert kind == "lost" and "WRONGPASS" in str(reason)
            assert "s3cret" not in repr(servers[0].pubsub) and "wrong" not in str(reason)
            members = members_of(loop, servers[:1])
            run_until(loop, lambda: redis.command("PUBSUB", "NUMSUB", "fastws:t",
                                                  auth=("chat", "s3cret"))[1] == 1)
            servers[0].publish("t", "authenticated")
            run_until(loop, lambda: texts(members[0]) == ["authenticated"])
            assert not servers[1].pubsub.connected          # still refused, still retrying
        finally:
            close_all(loop, servers)
    finally:
        redis.stop()


def test_tls_to_redis(tmp_path, loop, ca):
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    redis = RedisServer(tmp_path, "--tls-cert-file", str(tmp_path / "cert.pem"),
                        "--tls-key-file", str(tmp_path / "key.pem"),
                        "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                        "--tls-auth-clients", "no", tls=True)
    try:
        import ssl
        context = ssl.create_default_context()
        ca.configure_trust(context)
        servers, _rooms = serve_linked(loop, fastws.RedisPubSub(redis.url, ssl=context),
                                      fastws.RedisPubSub(redis.url, ssl=context))
        try:
            run_until(loop, lambda: all(s.pubsub.connected for s in servers))
            members = members_of(loop, servers)
            servers[1].publish("t", "over TLS")
            run_until(loop, lambda: all(texts(m) == ["over TLS"] for m in members))
        finally:
            close_all(loop, servers)
        # Without our CA the certificate is refused, and the application is told.
        room = Room()
        server = fastws.serve(room, "127.0.0.1", 0, loop=loop,
                              pubsub=fastws.RedisPubSub(redis.url, reconnect_max=0.2))
        try:
            run_until(loop, lambda: room.events)
            assert room.events[0][0] == "lost" and "CERTIFICATE_VERIFY_FAILED" in str(
                room.events[0][1])
        finally:
            server.close()
    finally:
        redis.stop()


def test_publishes_wait_for_redis_in_a_bounded_queue(tmp_path, loop):
    redis = RedisServer(tmp_path)
    redis.kill()                                   # the port is known; nobody listens yet
    try:
        pubsub = fastws.RedisPubSub(redis.url, max_queue=20 * 1024, reconnect_max=0.1)
        room = Room()
        server = fastws.serve(room, "127.0.0.1", 0, loop=loop, pubsub=pubsub)
        try:
            members = members_of(loop, [server])
            run_until(loop, lambda: room.events)
            assert room.events[0][0] == "lost"     # never connected: said so
            for i in range(100):                   # 100 x 1,007 bytes: 20 fit in 20 KiB
                server.publish("t", f"{i:04d}" + "." * 1000)
            assert pubsub.queued == 20
            run_until(loop, lambda: ("dropped", 80) in room.events)
            redis.start()
            run_until(loop, lambda: len(members[0].received) == 20, timeout=20)
            assert [t[:4] for t in texts(members[0])] == [f"{i:04d}" for i in range(20)]
            assert room.events[-1][0] == "restored" and pubsub.queued == 0
            assert pubsub.dropped == 80
        finally:
            server.close()
    finally:
        redis.stop()


def test_a_redis_cluster_with_sharded_pubsub(tmp_path, loop):
    """Channels are routed to the primary that owns their slot; when the cluster gives a
    slot to another primary, the handler is told and the channel follows it."""
    cluster = RedisCluster(tmp_path)
    try:
        servers, rooms = serve_linked(loop, fastws.RedisPubSub(cluster.url, cluster=True),
                                      fastws.RedisPubSub(cluster.url, cluster=True))
        try:
            run_until(loop, lambda: all(s.pubsub.connected for s in servers))
            assert all(len(s.pubsub.nodes) == 3 for s in servers)
            # Several topics, spread over the shards: "t" (Room's) and three more.
            topics = ["t", "red", "green", "blue"]
            owners = {topic: cluster.owner(f"fastws:{topic}") for topic in topics}
            assert len({owner.port for owner in owners.values()}) >= 2
            members = members_of(loop, servers)
            for member in members:
                for topic in topics[1:]:
                    server = servers[members.index(member)]
                    next(iter(server.connections)).subscribe(topic)
            for topic, owner in owners.items():
                run_until(loop, lambda o=owner, t=topic: o.numsub(f"fastws:{t}",
                                                                  sharded=True) == 2)
            for topic in topics:
                servers[topics.index(topic) % 2].publish(topic, f"on {topic}")
            run_until(loop, lambda: all(len(m.received) == 4 for m in members))
            assert all(sorted(texts(m)) == sorted(f"on {t}" for t in topics) for m in members)

            # The cluster gives the slot of "red" to another primary (no keys to move:
            # pub/sub only): its subscribers are unsubscribed by Redis; the backplane
            # tells the handler and subscribes at the new owner.
            old = owners["red"]
            new = next(node for node in cluster.nodes if node is not old)
            slot = int(old.command("CLUSTER", "KEYSLOT", "fastws:red"))
            new_id = cluster.node_id(new)
            for node in (new, old, *[n for n in cluster.nodes if n not in (new, old)]):
                node.command("CLUSTER", "SETSLOT", str(slot), "NODE", new_id)
            run_until(loop, lambda: all(("lost" in [e[0] for e in r.events]) for r in rooms))
            run_until(loop, lambda: new.numsub("fastws:red", sharded=True) == 2, timeout=20)
            run_until(loop, lambda: all(s.pubsub.connected for s in servers))
            assert all(r.events[-1][0] == "restored" for r in rooms)
            servers[1].publish("red", "after the move")
            run_until(loop, lambda: all(texts(m)[-1] == "after the move" for m in members))
        finally:
            close_all(loop, servers)
    finally:
        cluster.stop()


def test_pubsub_settings_are_checked(loop):
    with pytest.raises(ValueError, match="not a Redis URL"):
        fastws.RedisPubSub("http://127.0.0.1/")
    with pytest.raises(ValueError, match="database number"):
        fastws.RedisPubSub("redis://127.0.0.1/zero")
    with pytest.raises(TypeError, match="pubsub must be"):
        fastws.serve(Room(), "127.0.0.1", 0, loop=loop, pubsub=6379)
    url = fastws.backplane.RedisURL.parse("rediss://u%40x:p%3Aw@example:7000/3")
    assert (url.host, url.port, url.db, url.username, url.password, url.tls) == (
        "example", 7000, 3, "u@x", "p:w", True)
    assert "p:w" not in url.redacted()


__all__ = ["OpCode"]
