"""Holding under load, faults and hostile input: limits, flow control, timeouts, shutdown.

Each test runs in the clear and under TLS (the `transport` fixture).
"""

import os
import random
import resource
import socket
import ssl
import time

import pytest
from conftest import TIMEOUT, RawClient, Recorder, run_until, wait_for

import fastws
from fastws import CloseCode, Frame, OpCode
from fastws.__main__ import EchoHandler

# The WebSocket behaviours here run over both chains (see conftest.chain): the fast path
# and a user stage. The HTTP-phase tests and the two long load tests run once.
both_chains = pytest.mark.usefixtures("chain")


@pytest.fixture(autouse=True, scope="module")
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 16384) if hard != resource.RLIM_INFINITY else 16384
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def tcp(port, transport, *, handshake_tls=True):
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if transport.client_ssl is not None and handshake_tls:
        sock = transport.client_ssl.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def closed_by_peer(sock, timeout=TIMEOUT):
    """True once the server has closed this socket (EOF or reset), bounded."""
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, ssl.SSLError, BrokenPipeError):
        pass
    except TimeoutError:
        return False
    return True


def test_idle_keep_alive_connection_is_closed(start_server, transport):
    server = start_server(Recorder(), idle_timeout=0.3)
    sock = tcp(server.port, transport)
    sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 404")
    started = time.monotonic()
    assert closed_by_peer(sock, timeout=5)
    assert 0.2 < time.monotonic() - started < 4


def test_handshake_timeout_drops_silent_and_slowloris_while_serving_others(start_server,
                                                                          transport):
    server = start_server(Recorder(echo=True), handshake_timeout=0.5)
    silent = [tcp(server.port, transport, handshake_tls=False) for _ in range(500)]
    slow = tcp(server.port, transport)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    normal_done = 0
    deadline = time.monotonic() + 1.5
    position = 0
    while time.monotonic() < deadline:       # a byte every 50 ms, never finishing in time
        try:
            slow.sendall(request[position:position + 1])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            break
        position += 1
        if normal_done < 3:                  # meanwhile, normal clients are served
            client = RawClient(server.port, server.transport)
            client.send(OpCode.TEXT, b"served")
            assert client.recv_message().data == b"served"
            client.close()
            normal_done += 1
        time.sleep(0.05)
    assert normal_done == 3
    assert closed_by_peer(slow, timeout=5)
    assert all(closed_by_peer(sock, timeout=5) for sock in silent)
    for sock in silent + [slow]:
        sock.close()
    wait_for(lambda: server.call(lambda: len(server.server.connections)) == 0)


def test_max_connections_pauses_accepting(start_server, transport):
    server = start_server(Recorder(echo=True), max_connections=2)
    first = RawClient(server.port, transport)
    RawClient(server.port, transport)
    # Accepting is paused: a third connection sits in the kernel's backlog, unanswered.
    waiting = socket.create_connection(("127.0.0.1", server.port), timeout=0.5)
    with pytest.raises(TimeoutError):
        if transport.client_ssl is not None:
            waiting = transport.client_ssl.wrap_socket(waiting, server_hostname="127.0.0.1")
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        waiting.recv(1)
    waiting.close()
    first.send(OpCode.CLOSE, fastws.close_payload(1000))
    first.expect_close()
    third = RawClient(server.port, transport)          # accepted again once one closed
    third.send(OpCode.TEXT, b"in")
    assert third.recv_message().data == b"in"


class Flooder:
    """Sends 20 MiB as soon as the connection opens."""

    def __init__(self):
        self.recorder = Recorder()
        self.buffer_sizes = []

    def on_upgraded(self, conn):
        for _ in range(20):
            if conn.is_open:
                conn.send_binary(b"z" * (1 << 20))
            self.buffer_sizes.append(conn.write_buffer_size)

    def on_closed(self, conn, code, reason):
        self.recorder.closed.append((code, reason))


@both_chains
def test_write_buffer_cap_fails_a_peer_that_does_not_read(start_server, transport):
    flooder = Flooder()
    server = start_server(flooder, max_write_buffer=4 << 20, close_timeout=0.5)
    RawClient(server.port, transport)                    # never reads after the 101
    wait_for(lambda: flooder.recorder.closed, timeout=5)
    assert flooder.recorder.closed[0][0] == CloseCode.POLICY_VIOLATION
    # What the server held for this peer never passed the cap by more than the largest
    # message waiting and the one being written.
    assert max(flooder.buffer_sizes) <= (4 << 20) + 2 * ((1 << 20) + 64)


class BigSender:
    """Sends one message of `size` bytes, then a short one, as soon as the connection opens."""

    def __init__(self, size):
        self.size = size
        self.recorder = Recorder()

    def on_upgraded(self, conn):
        conn.send_binary(b"b" * self.size)
        conn.send_text("after")

    def on_closed(self, conn, code, reason):
        self.recorder.closed.append((code, reason))


@both_chains
def test_one_message_larger_than_the_write_cap_is_sent_whole(start_server, transport):
    # The cap judges the backlog of a peer that does not read, not one message: 24 MiB go
    # out whole under a 1 MiB cap to a peer that reads (more than the kernel buffers).
    sender = BigSender(24 << 20)
    server = start_server(sender, max_write_buffer=1 << 20)
    client = RawClient(server.port, transport)
    big = client.recv_message()
    assert big.opcode == OpCode.BINARY and big.data == b"b" * (24 << 20)
    assert client.recv_message().data == b"after"
    assert sender.recorder.closed == []


@both_chains
def test_client_that_never_reads_is_paused_and_server_memory_bounded(start_server, transport):
    server = start_server(EchoHandler(), max_message_size=1 << 20)
    flood = RawClient(server.port, transport)
    flood.sock.setblocking(False)
    message = fastws.encode_frame(OpCode.BINARY, b"m" * 65536, masking_key=0x01020304)
    sent, offset, stalled_since = 0, 0, None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            n = flood.sock.send(message[offset:])       # partial sends resume mid-frame
            sent += n
            offset = (offset + n) % len(message)
            stalled_since = None
        except (BlockingIOError, ssl.SSLWantWriteError):
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 0.5:
                break                      # the server stopped reading us
            time.sleep(0.01)
    assert stalled_since is not None, "the server never pushed back"
    conns = server.call(lambda: list(server.server.connections))
    held = server.call(lambda: max(c.write_buffer_size for c in conns))
    limits = fastws.Limits()
    # Held: at most the high water mark plus what one read can produce (one read buffer).
    assert held <= limits.write_high_water + 512 * 1024, held
    assert sent < 64 << 20                 # bounded by kernel buffers + high water
    # Everybody else is served as usual.
    other = RawClient(server.port, transport)
    other.send(OpCode.TEXT, b"still fine")
    assert other.recv_message().data == b"still fine"


@both_chains
def test_graceful_shutdown_sends_1001_and_waits_for_replies(start_server, transport):
    recorder = Recorder()
    server = start_server(recorder, close_timeout=2)
    clients = [RawClient(server.port, transport) for _ in range(3)]
    wait_for(lambda: len(recorder.conns) == 3)
    server.call(server.server.close)
    for client in clients:
        frame = client.recv_frame()
        assert frame.opcode == OpCode.CLOSE
        assert fastws.parse_close(frame.data)[0] == CloseCode.GOING_AWAY
        client.send(OpCode.CLOSE, frame.data)           # the polite answer
        assert closed_by_peer(client.sock)
        client.close()
    wait_for(lambda: len(recorder.closed) == 3)
    assert {code for code, _ in recorder.closed} == {CloseCode.GOING_AWAY}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


@pytest.mark.parametrize("origin,allowed", [("https://good.example", True),
                                            ("https://evil.example", False), (None, False)])
def test_origin_check(start_server, transport, origin, allowed):
    server = start_server(Recorder(echo=True), origins=["https://good.example"])
    client = RawClient(server.port, transport, handshake=False)
    extra = f"Origin: {origin}\r\n" if origin else ""
    client.sock.sendall(
        ("GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         f"{extra}\r\n").encode())
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 101" if allowed else b"HTTP/1.1 403"), head


class CountCloses:
    def __init__(self):
        self.closed = 0

    def on_closed(self, conn, code, reason):
        self.closed += 1


def test_connect_close_cycles_release_descriptors_and_memory(start_server, transport):
    counter = CountCloses()
    server = start_server(counter)
    cycles = 10_000 if transport.name == "clear" else 1_000

    def cycle():
        client = RawClient(server.port, transport)
        client.send(OpCode.CLOSE, fastws.close_payload(1000))
        client.expect_close()

    for _ in range(200):                   # warm up caches and allocator pools
        cycle()
    wait_for(lambda: server.call(lambda: len(server.server.connections)) == 0)
    fds, rss = open_fds(), rss_kib()
    for _ in range(cycles):
        cycle()
    wait_for(lambda: server.call(lambda: len(server.server.connections)) == 0)
    assert open_fds() <= fds + 2
    assert rss_kib() - rss < 8 * 1024, "RSS grew by more than 8 MiB"
    assert counter.closed == cycles + 200


class Checker:
    """A client connection sending random messages and checking every echo in order."""

    def __init__(self, rng, rounds):
        self.rng = rng
        self.rounds = rounds
        self.expected = []
        self.done = 0
        self.errors = []
        self.closed = None

    def on_upgraded(self, conn):
        self._send(conn)

    def _send(self, conn):
        size = self.rng.choice((0, 1, 125, 126, 1000, 65535, 65536, self.rng.randint(0, 20000)))
        if self.rng.random() < 0.5:
            data = self.rng.randbytes(size)
            self.expected.append((OpCode.BINARY, data))
            conn.send_binary(data)
        else:
            text = "é" * (size // 2)
            self.expected.append((OpCode.TEXT, text.encode()))
            conn.send_text(text)

    def on_frame(self, conn, frame):
        opcode, data = self.expected.pop(0)
        if frame.opcode != opcode or frame.data != data:
            self.errors.append((opcode, len(data), frame.opcode, len(frame.data)))
        self.done += 1
        if self.done < self.rounds:
            self._send(conn)
        else:
            conn.close()

    def on_closed(self, conn, code, reason):
        self.closed = code


def test_many_connections_echo_random_messages_without_loss(start_server, transport, loop):
    server = start_server(Recorder(echo=True), max_message_size=1 << 20)
    rng = random.Random(7)
    count, rounds = (1000, 100) if transport.name == "clear" else (200, 50)
    checkers = [Checker(random.Random(rng.random()), rounds) for _ in range(count)]
    for checker in checkers:
        fastws.connect(server.url, checker, ssl=transport.client_ssl, loop=loop,
                       compression=False, handshake_timeout=60)
    run_until(loop, lambda: all(c.closed is not None for c in checkers), timeout=240)
    assert [c.errors for c in checkers if c.errors] == []
    assert all(c.done == rounds for c in checkers)
    assert {c.closed for c in checkers} == {CloseCode.NORMAL}


@both_chains
def test_handler_exception_does_not_affect_other_connections(start_server, transport):
    class Picky(Recorder):
        def on_frame(self, conn, frame):
            if frame.data == b"bad":
                raise ValueError("no")
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    server = start_server(Picky())
    clients = [RawClient(server.port, transport) for _ in range(5)]
    clients[2].send(OpCode.TEXT, b"bad")
    assert clients[2].expect_close()[0] == CloseCode.INTERNAL_ERROR
    for i, client in enumerate(clients):
        if i != 2:
            client.send(OpCode.TEXT, b"ok")
            assert client.recv_message().data == b"ok"
