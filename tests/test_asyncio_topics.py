"""Topics, broadcast, slow consumers and the Redis backplane on fastws.asyncio.

The same Topics (fastws.topics) as on the fastws Loop, driven by an asyncio server: on the
stdlib loop and on uvloop (the `aio` fixture), with the callback and the awaitable form.
The backplane tests start a real redis-server on a free 127.0.0.1 port (no persistence)
and link two asyncio servers, or an asyncio server and a `python -m fastws chat` process
(the fastws Loop), through it.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket

import pytest
from redis_helpers import REDIS, ChatServer, RedisServer

import fastws
import fastws.asyncio as fa
from fastws import CloseCode, OpCode
from fastws.topics import fanout_for

TIMEOUT = 10.0

needs_redis = pytest.mark.skipif(
    REDIS is None, reason="redis-server is not installed (apt-get install -y redis-server; "
                          ".ci/run does)")


@pytest.fixture(params=["asyncio", "uvloop"])
def aio(request):
    """Runs a coroutine to completion on the stdlib loop or on uvloop (bounded)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run(coro):
            return uvloop.run(asyncio.wait_for(coro, TIMEOUT * 3))
    else:
        def run(coro):
            return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 3))
    return run


async def until(predicate, timeout=TIMEOUT):
    """Yield to the loop until predicate() holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def room_of(request) -> str:
    return request.path.rsplit("/", 1)[-1]


# ------------------------------------------------------------------ the two server forms

class Rooms:
    """The callback form: a client joins the room named by its path; a text message
    "move R" moves it to room R (answered "moved"), any other is published to the others
    in its room (conn.publish: not back to the sender)."""

    def __init__(self):
        self.closed = []
        self.dropped = []

    def on_upgraded(self, conn):
        conn.subscribe(room_of(conn.request))

    def on_frame(self, conn, frame):
        if frame.opcode not in (OpCode.TEXT, OpCode.BINARY):
            return
        text = frame.data.decode()
        room, = conn.topics
        if text.startswith("move "):
            assert conn.unsubscribe(room) and not conn.unsubscribe(room)
            assert conn.subscribe(text[5:]) and not conn.subscribe(text[5:])
            conn.send_text("moved")
        else:
            conn.publish(room, text)

    def on_messages_dropped(self, conn, count):
        self.dropped.append(count)

    def on_closed(self, conn, code, reason):
        self.closed.append((code, reason))


async def rooms_coroutine(ws):
    """The awaitable form of Rooms, with the WebSocket's own topic methods."""
    ws.subscribe(room_of(ws.request))
    async for message in ws:
        room, = ws.topics
        if message.startswith("move "):
            assert ws.unsubscribe(room) and not ws.unsubscribe(room)
            assert ws.subscribe(message[5:])
            await ws.send("moved")
        else:
            ws.publish(room, message)


class AwaitableRooms:
    """rooms_coroutine as an object, which also hears about dropped messages."""

    def __init__(self):
        self.closed = []
        self.dropped = []

    async def __call__(self, ws):
        try:
            await rooms_coroutine(ws)
        finally:
            self.closed.append((ws.close_code, ws.close_reason))

    def on_messages_dropped(self, ws, count):
        assert isinstance(ws, fa.WebSocket)
        self.dropped.append(count)


def rooms_handler(form):
    return Rooms() if form == "callback" else rooms_coroutine


FORMS = ["callback", "awaitable"]


@pytest.mark.parametrize("form", FORMS)
def test_subscribe_publish_unsubscribe_across_clients(aio, transport, form):
    async def main():
        async with fa.serve(rooms_handler(form), "127.0.0.1", 0,
                            ssl=transport.server_ssl) as server:
            base = f"{transport.scheme}://127.0.0.1:{server.port}/room/"
            clients = [await fa.connect(base + room, ssl=transport.client_ssl)
                       for room in ("a", "a", "a", "b")]
            await until(lambda: server.topics.count("a") == 3 and server.topics.count("b") == 1)
            assert sorted(server.topics.names) == ["a", "b"]
            assert all(conn.topics == {"a"} for conn in server.topics.subscribers("a"))

            server.publish("a", "to a")
            server.publish("b", b"to b")
            assert [await ws.recv() for ws in clients] == ["to a"] * 3 + [b"to b"]

            # A client's message is published to the others of its room, not back to it:
            # its own next message is the one published after.
            await clients[0].send("from 0")
            assert [await clients[1].recv(), await clients[2].recv()] == ["from 0"] * 2
            server.publish("a", "after")
            assert [await ws.recv() for ws in clients[:3]] == ["after"] * 3

            # Unsubscribed from a, subscribed to b: it gets b's publish, not a's.
            await clients[2].send("move b")
            assert await clients[2].recv() == "moved"
            assert server.topics.count("a") == 2 and server.topics.count("b") == 2
            server.publish("a", "only a")
            server.publish("b", "only b")
            assert await clients[2].recv() == "only b"
            assert [await clients[0].recv(), await clients[3].recv()] == ["only a", "only b"]

            # A closed connection leaves its topics.
            await clients[3].close()
            await until(lambda: server.topics.count("b") == 1)
            for ws in clients[:3]:
                await ws.close()
            await until(lambda: not server.topics.names)
        assert server.topics.published == 6

    aio(main())


@pytest.mark.parametrize("form", FORMS)
def test_broadcast_to_every_open_websocket(aio, form):
    websockets = set()

    async def keep(ws):
        websockets.add(ws)
        await ws.send("hello")
        async for _ in ws:
            pass
        websockets.discard(ws)

    handler = fastws.Handler() if form == "callback" else keep

    async def main():
        async with fa.serve(handler, "127.0.0.1", 0) as server:
            clients = [await fa.connect(f"ws://127.0.0.1:{server.port}/") for _ in range(5)]
            await until(lambda: len(server.connections) == 5)
            targets = server.connections if form == "callback" else websockets
            if form == "awaitable":
                await until(lambda: len(websockets) == 5)
                assert [await ws.recv() for ws in clients] == ["hello"] * 5
            fanout = fanout_for(server.loop)
            releases = fanout.releases
            for i in range(10):
                assert fastws.broadcast(targets, f"all {i}") == 5
            assert fastws.broadcast(list(targets), b"\x00bytes") == 5
            # Held: the eleven messages leave together, released once, after this step.
            assert fanout.held == 5
            await until(lambda: fanout.held == 0)
            assert fanout.releases == releases + 1
            expected = [f"all {i}" for i in range(10)] + [b"\x00bytes"]
            for ws in clients:
                assert [await ws.recv() for _ in expected] == expected
            # A direct send and a broadcast to one connection keep their order.
            conn = next(iter(server.connections))
            conn.send_text("direct")
            fastws.broadcast([conn], "broadcast")
            conn.send_text("direct again")
            peer = next(ws for ws in clients
                        if ws.connection.socket.getsockname() == conn.peername)
            assert [await peer.recv() for _ in range(3)] == ["direct", "broadcast",
                                                             "direct again"]
            if form == "awaitable":
                # A list that mixes connections and WebSockets: each reached once.
                mixed = [conn] + [ws for ws in websockets if ws.connection is not conn]
                assert fastws.broadcast(mixed, "mixed") == 5
                for ws in clients:
                    assert await ws.recv() == "mixed"
            with pytest.raises(TypeError, match="broadcast"):
                fastws.broadcast([object()], "x")
            with pytest.raises(TypeError, match="broadcast"):
                fastws.broadcast([conn, object()], "x")
            for ws in clients:
                await ws.close()

    aio(main())


async def silent_subscriber(port: int, path: str) -> socket.socket:
    """A WebSocket client that completes its handshake and then never reads; its receive
    buffer is small so that the server's writes back up soon."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await loop.sock_sendall(sock, (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await loop.sock_recv(sock, 1)        # the response head, not a byte more
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("action", ["drop", "close"])
def test_slow_consumer_policy(aio, action, form):
    """10,000 messages of 1 KiB to a reader that keeps up and one that never reads: the
    reader gets every one, the silent one is handled by the policy with bounded memory."""
    rooms = Rooms() if form == "callback" else AwaitableRooms()
    payload = b"x" * 1024
    limit = 64 * 1024

    async def main():
        async with fa.serve(rooms, "127.0.0.1", 0, close_timeout=0.5, compression=False,
                            slow_consumers=fastws.SlowConsumers(action, limit)) as server:
            silent = await silent_subscriber(server.port, "/room/feed")
            reader = await fa.connect(f"ws://127.0.0.1:{server.port}/room/feed",
                                      compression=False)
            await until(lambda: server.topics.count("feed") == 2)
            slow_conn = next(c for c in server.connections
                             if c.peername == silent.getsockname())
            received = 0
            largest_backlog = 0
            for _ in range(200):
                for _ in range(50):
                    server.publish("feed", payload)
                if not slow_conn.closed:
                    largest_backlog = max(largest_backlog, slow_conn.write_buffer_size)
                for _ in range(50):
                    assert await reader.recv() == payload
                    received += 1
            assert received == 10_000
            # Never more than the limit plus one message (and a frame header) for it.
            assert largest_backlog <= limit + len(payload) + 16
            if action == "drop":
                assert slow_conn.is_open and slow_conn.messages_dropped > 1000
                await until(lambda: sum(rooms.dropped) == slow_conn.messages_dropped)
            else:
                await until(lambda: rooms.closed)
                assert rooms.closed[0][0] == CloseCode.POLICY_VIOLATION
                assert server.topics.count("feed") == 1
            assert not reader.closed
            silent.close()
            await reader.close()

    aio(main())


def test_slow_consumer_setting_is_checked(aio):
    async def main():
        with pytest.raises(TypeError, match="slow_consumers"):
            fa.serve(Rooms(), "127.0.0.1", 0, slow_consumers="ignore")
        with pytest.raises(TypeError, match="pubsub"):
            fa.serve(Rooms(), "127.0.0.1", 0, pubsub=6379)
        async with fa.serve(Rooms(), "127.0.0.1", 0) as server:
            assert server.slow_consumers == fastws.SlowConsumers("close", 1024 * 1024)
            assert server.pubsub is None

    aio(main())


def test_compression_once_per_publish_with_a_shared_compressor(aio):
    async def main():
        options = {"server_no_context_takeover": True}
        async with fa.serve(Rooms(), "127.0.0.1", 0, compression=options) as server:
            clients = [await fa.connect(f"ws://127.0.0.1:{server.port}/room/z")
                       for _ in range(20)]
            await until(lambda: server.topics.count("z") == 20)
            message = "compressible " * 500
            server.publish("z", message)
            server.publish("z", message[::-1])
            for ws in clients:
                assert [await ws.recv(), await ws.recv()] == [message, message[::-1]]
            assert server.topics.shared.compressed == 2
            for ws in clients:
                await ws.close()

    aio(main())


# ------------------------------------------------------------------ Redis

@pytest.fixture
def redis(tmp_path):
    server = RedisServer(tmp_path)
    yield server
    server.stop()


class Relay:
    """A chat room in the awaitable form, as `python -m fastws chat` relays: every text
    message to everyone in the room, the sender included (server.publish). As an object
    with `async def __call__`, it also hears the backplane's events."""

    def __init__(self):
        self.events = []

    async def __call__(self, ws):
        room = room_of(ws.request)
        ws.subscribe(room)
        async for message in ws:
            ws.connection.server.publish(room, message)

    def on_backplane_lost(self, server, reason):
        self.events.append(("lost", reason))

    def on_backplane_restored(self, server, seconds):
        self.events.append(("restored", seconds))

    def on_backplane_dropped(self, server, count):
        self.events.append(("dropped", count))


async def talk(ws, name: str, count: int, total: int):
    """Send `count` numbered messages, then return the `total` messages the room relays."""
    for i in range(count):
        await ws.send(f"{name}:{i}")
    return [await ws.recv() for _ in range(total)]


def check_order(received, names, count):
    """Every sender's messages, each once, in the order it sent them."""
    for name in names:
        mine = [m for m in received if m.startswith(name + ":")]
        assert mine == [f"{name}:{i}" for i in range(count)]


@needs_redis
def test_two_asyncio_servers_linked_by_redis(aio, redis):
    relays = [Relay(), Relay()]

    async def main():
        servers = [await fa.serve(relay, "127.0.0.1", 0, pubsub=redis.url)
                   for relay in relays]
        try:
            assert all(isinstance(s.pubsub, fastws.RedisPubSub) for s in servers)
            await until(lambda: all(s.pubsub.connected for s in servers))
            urls = [f"ws://127.0.0.1:{s.port}/chat/lobby" for s in servers]
            # Two members on each server; nobody sends before Redis knows that both
            # servers subscribe.
            members = [await fa.connect(urls[i % 2], compression=False) for i in range(4)]
            await until(lambda: all(s.topics.count("lobby") == 2 for s in servers))
            await until(lambda: redis.numsub("fastws:lobby") == 2)
            count = 300
            names = [f"m{i}" for i in range(4)]
            results = await asyncio.gather(*(
                talk(ws, name, count, 4 * count) for ws, name in zip(members, names, strict=True)))
            for received in results:
                check_order(received, names, count)
            for ws in members:
                await ws.close()
            assert all(s.pubsub.received >= 4 * count for s in servers)
            assert relays[0].events == relays[1].events == []
        finally:
            for server in servers:
                server.close()
                await server.wait_closed()
        assert redis.numsub("fastws:lobby") == 0

    aio(main())


@needs_redis
def test_a_loop_server_and_an_asyncio_server_share_a_room(aio, redis, tmp_path):
    """`python -m fastws chat` (the fastws Loop, another process) and an asyncio server
    in this one, linked by one redis-server: each side gets the other's messages in order."""
    chat = ChatServer(tmp_path / "chat.log", "--redis", redis.url)

    async def main():
        async with fa.serve(Relay(), "127.0.0.1", 0, pubsub=redis.url) as server:
            await until(lambda: server.pubsub.connected)
            loop_url = f"ws://127.0.0.1:{chat.port}/chat/mixed"
            asyncio_url = f"ws://127.0.0.1:{server.port}/chat/mixed"
            members = [await fa.connect(url, compression=False)
                       for url in (loop_url, asyncio_url)]
            await until(lambda: server.topics.count("mixed") == 1)
            await until(lambda: redis.numsub("fastws:mixed") == 2)
            count = 300
            results = await asyncio.gather(talk(members[0], "loop", count, 2 * count),
                                           talk(members[1], "aio", count, 2 * count))
            for received in results:
                check_order(received, ["loop", "aio"], count)
            for ws in members:
                await ws.close()

    try:
        aio(main())
    finally:
        chat.stop()


@needs_redis
def test_redis_restarted_under_an_asyncio_server(aio, redis):
    """Redis killed: the application is told, the link reconnects on the asyncio loop,
    re-subscribes, and delivery resumes."""
    relay = Relay()

    async def main():
        async with fa.serve(relay, "127.0.0.1", 0,
                            pubsub=fastws.RedisPubSub(redis.url, reconnect_max=0.2)) as server:
            await until(lambda: server.pubsub.connected)
            async with fa.connect(f"ws://127.0.0.1:{server.port}/chat/r",
                                  compression=False) as ws:
                await until(lambda: redis.numsub("fastws:r") == 1)
                await ws.send("before")
                assert await ws.recv() == "before"
                redis.kill()
                await until(lambda: [e for e, _ in relay.events] == ["lost"])
                assert not server.pubsub.connected
                redis.start()
                await until(lambda: server.pubsub.connected)
                assert [e for e, _ in relay.events] == ["lost", "restored"]
                await until(lambda: redis.numsub("fastws:r") == 1)
                await ws.send("after")
                assert await ws.recv() == "after"
            assert server.pubsub.losses == 1

    aio(main())


@needs_redis
def test_tls_to_redis_from_an_asyncio_server(aio, tmp_path, ca):
    """rediss://: the backplane's TLS handshake runs on the asyncio loop's readiness
    callbacks too."""
    import ssl

    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    redis = RedisServer(tmp_path, "--tls-cert-file", str(tmp_path / "cert.pem"),
                        "--tls-key-file", str(tmp_path / "key.pem"),
                        "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                        "--tls-auth-clients", "no", tls=True)
    context = ssl.create_default_context()
    ca.configure_trust(context)

    def numsub(channel: str) -> int:
        """PUBSUB NUMSUB over TLS (the test's own client)."""
        import hiredis
        reader = hiredis.Reader()
        with context.wrap_socket(socket.create_connection(("127.0.0.1", redis.port),
                                                          timeout=5),
                                 server_hostname="127.0.0.1") as sock:
            sock.sendall(hiredis.pack_command(("PUBSUB", "NUMSUB", channel)))
            while (reply := reader.gets()) is False:
                data = sock.recv(65536)
                assert data, "redis closed the connection"
                reader.feed(data)
        return int(reply[1])

    async def main():
        async with fa.serve(Relay(), "127.0.0.1", 0,
                            pubsub=fastws.RedisPubSub(redis.url, ssl=context)) as server:
            await until(lambda: server.pubsub.connected)
            async with fa.connect(f"ws://127.0.0.1:{server.port}/chat/secure",
                                  compression=False) as ws:
                await until(lambda: numsub("fastws:secure") == 1)
                await ws.send("over TLS")
                assert await ws.recv() == "over TLS"
        # Without our CA the certificate is refused, and the application is told.
        relay = Relay()
        async with fa.serve(relay, "127.0.0.1", 0,
                            pubsub=fastws.RedisPubSub(redis.url, reconnect_max=0.2)):
            await until(lambda: relay.events)
            assert relay.events[0][0] == "lost"
            assert "CERTIFICATE_VERIFY_FAILED" in relay.events[0][1]

    try:
        aio(main())
    finally:
        redis.stop()


# ------------------------------------------------------------------ embedded elsewhere

def test_topics_under_uvicorn_raise_a_clear_error():
    """Under fastws.uvicorn the connection's server is uvicorn's protocol object, which
    keeps no topics: subscribing says so."""
    uvicorn = pytest.importorskip("uvicorn")
    from fastws.uvicorn import WebSocketProtocol

    errors = []
    accepted = asyncio.Event()

    async def app(scope, receive, send):
        assert scope["type"] == "websocket"
        await receive()
        await send({"type": "websocket.accept"})
        accepted.set()
        while (await receive())["type"] != "websocket.disconnect":
            pass

    async def main():
        config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=WebSocketProtocol,
                                lifespan="off", log_level="warning")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        try:
            await until(lambda: server.started)
            port = server.servers[0].sockets[0].getsockname()[1]
            async with fa.connect(f"ws://127.0.0.1:{port}/") as ws:
                await asyncio.wait_for(accepted.wait(), TIMEOUT)
                protocol, = [p for p in server.server_state.connections
                             if isinstance(p, WebSocketProtocol)]
                for call in (lambda: protocol.conn.subscribe("t"),
                             lambda: protocol.ws.subscribe("t"),
                             lambda: protocol.conn.publish("t", "x")):
                    with pytest.raises(RuntimeError, match="topics belong to fastws servers"):
                        call()
                    errors.append(call)
                await ws.send("still open")
                assert not ws.closed
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, TIMEOUT)

    asyncio.run(asyncio.wait_for(main(), TIMEOUT * 3))
    assert len(errors) == 3


def test_a_finished_loop_is_freed():
    """Each asyncio.run() makes a loop: the broadcast machinery kept for it (its Fanout,
    its slow-consumer policies) must not keep it alive once it is gone."""
    import gc
    import weakref

    loops = []

    async def main():
        async with (fa.serve(Rooms(), "127.0.0.1", 0) as server,
                    fa.connect(f"ws://127.0.0.1:{server.port}/room/x") as ws):
            await until(lambda: server.topics.count("x") == 1)
            server.publish("x", "published")
            assert fastws.broadcast(server.connections, "broadcast") == 1
            assert [await ws.recv(), await ws.recv()] == ["published", "broadcast"]
        loops.append(weakref.ref(asyncio.get_running_loop()))

    for _ in range(2):
        asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    gc.collect()
    assert [ref() for ref in loops] == [None, None]
