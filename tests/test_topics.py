"""Topics and broadcast in one process (fastws.topics, fastws._fanout, Protocol.send_encoded).

Servers run in a thread (ThreadedServer); clients are fastws clients on the test's loop
or raw sockets. Every WebSocket test runs in the clear and over TLS.
"""

from __future__ import annotations

import base64
import os
import socket

import pytest
from conftest import TIMEOUT, Recorder, run_until, wait_for

import fastws
from fastws import CloseCode, Frame, OpCode


class Rooms:
    """Subscribes each connection to the topic named by its path; relays what it hears."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.dropped: list[tuple[object, int]] = []

    def on_request(self, conn, request):
        if request.upgrade:
            if conn.upgrade(fastws.accept(request)) and request.path != "/":
                conn.subscribe(request.path.strip("/"))
        else:
            conn.respond(fastws.Response.text(200, "plain\n"))

    def on_upgraded(self, conn):
        self.recorder.on_upgraded(conn)

    def on_frame(self, conn, frame):
        text = frame.string_data
        if text.startswith("others:"):
            topic, _, message = text[len("others:"):].partition(" ")
            conn.publish(topic, message)
        else:
            self.recorder.on_frame(conn, frame)

    def on_closed(self, conn, code, reason):
        self.recorder.on_closed(conn, code, reason)

    def on_messages_dropped(self, conn, count):
        self.dropped.append((conn, count))


class Client:
    """A fastws client that keeps what it receives."""

    def __init__(self) -> None:
        self.messages: list[Frame] = []
        self.closed: list[tuple[int, str]] = []

    def on_frame(self, conn, frame):
        self.messages.append(frame)

    def on_closed(self, conn, code, reason):
        self.closed.append((code, reason))

    @property
    def texts(self) -> list[str]:
        return [m.string_data for m in self.messages if m.opcode == OpCode.TEXT]


_connected: list[fastws.Connection] = []      # what connect_many made in the current test


@pytest.fixture(autouse=True)
def _drop_client_connections(loop):
    """Close the test's client sockets when it ends (up to a thousand of them; before its
    loop closes), so that the next test in this process does not start with their
    descriptors still open."""
    yield
    for conn in _connected:
        conn.abort()
    _connected.clear()


def connect_many(loop, server, transport, paths, **kwargs):
    clients = [Client() for _ in paths]
    conns = [fastws.connect(f"{transport.scheme}://127.0.0.1:{server.port}{path}", client,
                            loop=loop, ssl=transport.client_ssl, **kwargs)
             for client, path in zip(clients, paths, strict=True)]
    _connected.extend(conns)
    run_until(loop, lambda: all(c.is_open for c in conns), timeout=60)
    # The server side upgrades (and subscribes) before its 101 leaves: all are in by now.
    return clients, conns


def settle(loop, server, seconds: float = 0.05) -> None:
    """Run the client loop a little while the server's thread works."""
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        loop.run_once(0.01)


# ---------------------------------------------------------------------- server.connections

def test_server_connections_holds_the_websockets_only(start_server, loop, transport, raw_client):
    server = start_server(Rooms())
    http = raw_client(server.port, handshake=False)
    http.send_raw(b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.read_head().startswith(b"HTTP/1.1 200")        # a keep-alive HTTP connection
    _clients, conns = connect_many(loop, server, transport, ["/", "/"])
    counts = server.call(lambda: (len(server.server.connections),
                                  len(server.server.all_connections)))
    assert counts == (2, 3)
    conns[0].close()
    run_until(loop, lambda: conns[0].closed)
    wait_for(lambda: server.call(lambda: len(server.server.connections)) == 1)


# ---------------------------------------------------------------------- broadcast

def test_broadcast_sends_to_every_open_connection(start_server, loop, transport):
    server = start_server(Rooms())
    clients, _conns = connect_many(loop, server, transport, ["/"] * 5)
    count = server.call(lambda: fastws.broadcast(server.server.connections, "to all"))
    assert count == 5
    assert server.call(lambda: fastws.broadcast(server.server.connections, b"\x00\x01")) == 5
    run_until(loop, lambda: all(len(c.messages) == 2 for c in clients))
    for client in clients:
        assert [(m.opcode, m.data) for m in client.messages] == [
            (OpCode.TEXT, b"to all"), (OpCode.BINARY, b"\x00\x01")]

    # A connection in its closing handshake is skipped.
    def close_one_then_broadcast():
        first = next(iter(server.server.connections))
        first.close(1000)
        return fastws.broadcast(server.server.connections, "after")
    assert server.call(close_one_then_broadcast) == 4
    run_until(loop, lambda: sum("after" in c.texts for c in clients) == 4)


def test_broadcast_checks_its_message(start_server):
    server = start_server(Rooms())
    with pytest.raises(TypeError, match="a message is a str"):
        server.call(lambda: fastws.broadcast(server.server.connections, 42))
    assert server.call(lambda: fastws.broadcast([], "nobody")) == 0


def test_broadcast_to_client_connections_masks_for_each(start_server, loop, transport):
    server = start_server(Rooms())
    _clients, conns = connect_many(loop, server, transport, ["/", "/"])
    assert fastws.broadcast(conns, "from the clients") == 2
    # The writes leave at the end of the client loop's iteration: run it.
    run_until(loop, lambda: len(server.call(lambda: server.server.handler.recorder.frames)) == 2)
    frames = server.call(lambda: server.server.handler.recorder.frames)
    assert [f.string_data for f in frames] == ["from the clients"] * 2   # masked: accepted


# ---------------------------------------------------------------------- topics

def test_publish_reaches_the_subscribers_of_a_topic(start_server, loop, transport):
    server = start_server(Rooms())
    clients, conns = connect_many(loop, server, transport, ["/red", "/red", "/blue", "/"])
    assert server.call(lambda: (server.server.topics.count("red"),
                                server.server.topics.count("blue"))) == (2, 1)
    server.call(lambda: server.server.publish("red", "r1"))
    server.call(lambda: server.server.publish("blue", b"b1"))
    run_until(loop, lambda: clients[0].messages and clients[1].messages and clients[2].messages)
    settle(loop, server)
    assert [c.texts for c in clients] == [["r1"], ["r1"], [], []]
    assert clients[2].messages[0].data == b"b1" and clients[2].messages[0].opcode == OpCode.BINARY
    assert clients[3].messages == []

    # conn.publish: the other subscribers, not the sender
    conns[0].send_text("others:red hello")
    run_until(loop, lambda: "hello" in clients[1].texts)
    settle(loop, server)
    assert "hello" not in clients[0].texts

    # unsubscribe, and leaving on close. The server's side of the second client is found by
    # its address: handshakes (TLS ones above all) may finish, and subscribe, in any order.
    second = conns[1].socket.getsockname()

    def unsubscribe_second():
        (conn,) = [c for c in server.server.topics.subscribers("red") if c.peername == second]
        return conn.unsubscribe("red"), conn.unsubscribe("red"), conn.topics
    assert server.call(unsubscribe_second) == (True, False, frozenset())
    conns[0].close()
    run_until(loop, lambda: conns[0].closed)
    wait_for(lambda: server.call(lambda: server.server.topics.names) == ["blue"])


def test_membership_changes_during_a_delivery_copy_the_topic(loop):
    """A delivery iterates a topic's dict in C: a connection that closes on a write error,
    or a handler that subscribes, must not change that dict under it."""
    server = fastws.serve(Rooms(), "127.0.0.1", 0, loop=loop)
    try:
        clients = [Client() for _ in range(2)]
        conns = [fastws.connect(f"ws://127.0.0.1:{server.port}/t", c, loop=loop)
                 for c in clients]
        run_until(loop, lambda: all(c.is_open for c in conns) and server.topics.count("t") == 2)
        topics = server.topics
        first, second = topics.subscribers("t")
        iterated = topics._subscribers["t"]
        topics._delivering = 1                     # as inside Fanout.deliver
        try:
            assert first.unsubscribe("t") and second.subscribe("u")
            assert first.subscribe("t")
        finally:
            topics._delivering = 0
        assert list(iterated) == [first, second]   # the dict being iterated is untouched
        assert topics.subscribers("t") == [second, first]
    finally:
        server.close()


def test_subscribe_checks_its_arguments(start_server, loop, transport):
    server = start_server(Rooms())
    _clients, conns = connect_many(loop, server, transport, ["/"])

    def misuse():
        conn = next(iter(server.server.connections))
        errors = []
        for topic in ("", None, 3):
            try:
                conn.subscribe(topic)
            except TypeError as exc:
                errors.append(str(exc))
        return errors
    assert len(server.call(misuse)) == 3
    with pytest.raises(RuntimeError, match="topics belong to a server"):
        conns[0].subscribe("x")


def test_sends_and_publishes_keep_their_order_and_leave_together(start_server, loop, transport):
    server = start_server(Rooms())
    clients, _conns = connect_many(loop, server, transport, ["/t", "/t"])
    fanout = server.call(lambda: server.server.topics._fanout)

    def interleave():
        first = server.server.topics.subscribers("t")[0]
        releases = fanout.releases
        first.send_text("direct 1")
        for i in range(100):
            server.server.publish("t", f"published {i}")
            if i == 50:
                first.send_text("direct 2")
        return releases
    before = server.call(interleave)
    run_until(loop, lambda: all(len(c.messages) >= 100 for c in clients))
    settle(loop, server)
    published = [f"published {i}" for i in range(100)]
    texts = sorted((c.texts for c in clients), key=len)
    assert texts[0] == published
    assert texts[1] == ["direct 1"] + published[:51] + ["direct 2"] + published[51:]
    # One release for the whole callback: every socket got one write for its 100 frames.
    assert server.call(lambda: fanout.releases) == before + 1


def test_a_publish_waits_behind_a_fragmented_message(start_server, raw_client):
    class Fragments(Rooms):
        def on_frame(self, conn, frame):
            conn.send(Frame(opcode=OpCode.TEXT, data=b"frag", fin=False))
            conn.server.publish("t", "published")
            conn.send(Frame(opcode=OpCode.CONTINUATION, data=b"ment", fin=True))

    server = start_server(Fragments())
    client = raw_client(server.port, path="/t")
    client.send(OpCode.TEXT, b"go")
    frames = [client.recv_frame() for _ in range(3)]
    assert [(f.opcode, f.fin, f.data) for f in frames] == [
        (OpCode.TEXT, False, b"frag"), (OpCode.CONTINUATION, True, b"ment"),
        (OpCode.TEXT, True, b"published")]


# ---------------------------------------------------------------------- Protocol.send_encoded

def test_send_encoded_checks_the_frame_and_the_state():
    protocol = fastws.Protocol(False)
    frame = fastws.encode_frame(OpCode.TEXT, b"once")
    assert protocol.send_encoded(frame) is True
    assert protocol.data_to_send() == frame
    for bad in (fastws.encode_frame(OpCode.TEXT, b"x", fin=False),
                fastws.encode_frame(OpCode.PING, b""),
                fastws.encode_frame(OpCode.TEXT, b"x", masking_key=0x01020304),
                fastws.encode_frame(OpCode.TEXT, b"x", rsv=4), b"\x81"):
        with pytest.raises(ValueError):
            protocol.send_encoded(bad)
    with pytest.raises(ValueError, match="client masks"):
        fastws.Protocol(True).send_encoded(frame)
    protocol.close(1000)
    protocol.data_to_send()
    assert protocol.send_encoded(frame) is False
    assert protocol.data_to_send() == b""


def test_send_encoded_compressed_needs_the_extension():
    deflate = fastws.Deflate(local_no_context_takeover=True)
    protocol = fastws.Protocol(False, extension=deflate)
    compressed = fastws.encode_frame(OpCode.TEXT, b"\x01\x00", rsv=4)
    assert protocol.send_encoded(compressed) is True
    assert deflate.shared_window_bits == 15
    assert fastws.Deflate().shared_window_bits is None      # context takeover: not shared


# ---------------------------------------------------------------------- compression

def raise_fd_limit(need: int) -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.parametrize("shared", [True, False], ids=["shared-compressor", "per-connection"])
def test_compression_once_per_publish_for_every_subscriber(start_server, loop, transport,
                                                           shared):
    count = (1000 if transport.name == "clear" else 200) if shared else 50
    raise_fd_limit(2 * count + 256)
    compression = {"server_no_context_takeover": True} if shared else True
    server = start_server(Rooms(), compression=compression)
    clients, conns = connect_many(loop, server, transport, ["/news"] * count)
    message = "breaking news: " + "all work and no play " * 200
    server.call(lambda: server.server.publish("news", message))
    run_until(loop, lambda: all(c.messages for c in clients), timeout=60)
    assert all(c.texts == [message] for c in clients)
    assert all(conn.find_stage(fastws.Deflate).decompressed == 1 for conn in conns)

    def counts():
        topics = server.server.topics
        per_connection = [c.find_stage(fastws.Deflate).compressed
                          for c in server.server.connections]
        return topics.shared.compressed, sum(per_connection)
    if shared:
        assert server.call(counts) == (1, 0)       # compressed once, for everyone
    else:
        assert server.call(counts) == (0, count)   # context takeover: once per connection


# ---------------------------------------------------------------------- slow consumers

def silent_subscriber(server, transport, path: str) -> socket.socket:
    """A client that completes the handshake and then never reads (a small receive
    buffer, set before connecting, so the kernel holds little for it)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", server.port))
    if transport.client_ssl is not None:
        sock = transport.client_ssl.wrap_socket(sock, server_hostname="127.0.0.1")
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)                 # byte by byte: nothing after the head is read
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def test_drop_policy_skips_a_slow_subscriber_and_tells_the_handler(start_server, loop,
                                                                   transport):
    rooms = Rooms()
    server = start_server(rooms, slow_consumers=fastws.SlowConsumers("drop", 64 * 1024))
    silent = silent_subscriber(server, transport, "/feed")
    clients, _conns = connect_many(loop, server, transport, ["/feed"])
    wait_for(lambda: server.call(lambda: server.server.topics.count("feed")) == 2)
    payload = b"x" * 1024
    sent = 0
    for _ in range(200):                     # 10,000 x 1 KiB; the reader keeps up
        server.call(lambda: [server.server.publish("feed", payload) for _ in range(50)])
        sent += 50
        run_until(loop, lambda sent=sent: len(clients[0].messages) == sent)
    def slow_state():
        slow = [c for c in server.server.connections if c.messages_dropped]
        return [(c.messages_dropped, c.is_open, c.write_buffer_size) for c in slow]
    (dropped, is_open, backlog), = server.call(slow_state)
    assert is_open and dropped > 1000
    assert backlog <= 64 * 1024 + len(payload) + 16
    wait_for(lambda: sum(n for _, n in server.call(lambda: list(rooms.dropped))) == dropped)
    silent.close()


def test_close_policy_closes_a_slow_subscriber_with_1008(start_server, loop, transport):
    rooms = Rooms()
    server = start_server(rooms, slow_consumers=fastws.SlowConsumers("close", 64 * 1024),
                          close_timeout=0.5)
    silent = silent_subscriber(server, transport, "/feed")
    clients, _conns = connect_many(loop, server, transport, ["/feed"])
    wait_for(lambda: server.call(lambda: server.server.topics.count("feed")) == 2)
    sent = 0
    for _ in range(200):
        server.call(lambda: [server.server.publish("feed", b"y" * 1024) for _ in range(50)])
        sent += 50
        run_until(loop, lambda sent=sent: len(clients[0].messages) == sent)
    wait_for(lambda: rooms.recorder.closed)
    assert rooms.recorder.closed[0][0] == CloseCode.POLICY_VIOLATION
    assert server.call(lambda: server.server.topics.count("feed")) == 1
    assert not clients[0].closed
    silent.close()


def test_slow_consumer_settings_are_checked():
    with pytest.raises(ValueError, match="close"):
        fastws.SlowConsumers("block")
    with pytest.raises(TypeError, match="slow_consumers"):
        fastws.serve(Rooms(), "127.0.0.1", 0, slow_consumers="ignore", loop=fastws.Loop())


def test_topics_default_is_close_at_one_mib(loop):
    server = fastws.serve(Rooms(), "127.0.0.1", 0, loop=loop)
    try:
        assert server.slow_consumers == fastws.SlowConsumers("close", 1024 * 1024)
        assert fastws.Limits().max_write_buffer == 8 * 1024 * 1024
    finally:
        server.close()


__all__ = ["TIMEOUT"]
