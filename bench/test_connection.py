"""The server's per-message cost in-process: a Connection on a socketpair echoing frames.

One call sends a batch of masked 32-byte (or 4 KiB) messages in one write and runs the
loop until every echo is back, so the figure is the server's read -> parse -> stages ->
handler -> encode -> write path plus a little client-side reading. Compare runs with
`pytest bench/test_connection.py --benchmark-only --benchmark-autosave` and
`--benchmark-compare`.
"""

import socket

import pytest

import fastws
from fastws import Frame, FrameParser, OpCode, encode_frame
from fastws.connection import Connection, Limits

BATCH = 1000


class Echo:
    def on_request(self, conn, request):
        conn.upgrade(fastws.accept(request))

    def on_frame(self, conn, frame):
        conn.send(Frame(opcode=frame.opcode, data=frame.data))


UPGRADE = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def make_pair(loop):
    """A server Connection on one end of a socketpair, upgraded by a real handshake from
    the other end (returned non-blocking, the 101 read)."""
    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    conn = Connection(loop, server_sock, Echo(), is_client=False,
                      limits=Limits(handshake_timeout=None))
    conn.start()
    client_sock.sendall(UPGRADE)
    client_sock.setblocking(False)
    head = b""
    for _ in range(10_000):
        if b"\r\n\r\n" in head:
            break
        loop.run_once(0.01)
        try:
            head += client_sock.recv(4096)
        except BlockingIOError:
            pass
    assert head.startswith(b"HTTP/1.1 101 ") and conn.upgraded, head
    return conn, client_sock


@pytest.mark.parametrize("size", [32, 4096])
def test_server_echo_path(benchmark, size):
    loop = fastws.Loop()
    conn, client = make_pair(loop)
    batch = b"".join(encode_frame(OpCode.BINARY, b"x" * size, masking_key=0x1234567)
                     for _ in range(BATCH))
    received = []
    parser = FrameParser(received.append, expect_mask=False)

    def round_trip():
        received.clear()
        view = memoryview(batch)
        while view:
            try:
                view = view[client.send(view):]
            except BlockingIOError:
                pass
            loop.run_once(0)
        while len(received) < BATCH:
            loop.run_once(0)
            try:
                parser.feed(client.recv(1 << 20))
            except BlockingIOError:
                pass

    benchmark.extra_info["messages_per_call"] = BATCH
    benchmark(round_trip)
    assert len(received) == BATCH and received[-1].data == b"x" * size
    conn.abort()
    client.close()
    loop.close()
