"""Interoperability with an independent implementation: the `websockets` library (sync API).

Its client talks to our server, and our client talks to its server, in the clear and
under TLS (the `transport` fixture). Compression is off on their side: fastws does not
offer or accept permessage-deflate by default.
"""

from __future__ import annotations

import os
import queue
import threading

import pytest
import websockets.sync.client
import websockets.sync.server
from conftest import TIMEOUT, Recorder, run_until, wait_for
from websockets.exceptions import ConnectionClosed

import fastws
from fastws import Frame, OpCode

# Every test here runs over both chains (see conftest.chain): the fast path and a user stage.
pytestmark = pytest.mark.usefixtures("chain")

ONE_MIB = 1024 * 1024
THEIR_MAX_SIZE = 4 * ONE_MIB


@pytest.fixture(autouse=True)
def no_session_tickets(transport):
    """websockets' sync client reads its TLS socket in one thread (SSL_read) while another
    writes (SSL_write), and OpenSSL does not allow two threads in one TLS connection. A TLS
    1.3 server sends session tickets right after the handshake: their reader wakes up for
    them while their writer sends the opening request, and now and then (a few times in
    thousands of runs, under load) the request or the answer is lost and their client waits
    out its 10 s for our 101. Without tickets their reader sleeps until our answer comes.
    The same race is reported against other threaded clients (python-socketio #1568,
    python-engineio #461); it is theirs, not ours."""
    if transport.server_ssl is not None:
        transport.server_ssl.num_tickets = 0


# --------------------------------------------------------------------------- their client, our server


def their_client(server, transport):
    return websockets.sync.client.connect(
        server.url, ssl=transport.client_ssl, compression=None, proxy=None,
        max_size=THEIR_MAX_SIZE, open_timeout=TIMEOUT, close_timeout=TIMEOUT,
        ping_interval=None)


def test_their_client_text_and_binary(start_server, transport):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    with their_client(server, transport) as ws:
        ws.send("héllo wörld")
        assert ws.recv(timeout=TIMEOUT) == "héllo wörld"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\x01\xfe\xff"
        ws.send(b"")
        assert ws.recv(timeout=TIMEOUT) == b""
    wait_for(lambda: recorder.closed)
    assert [f.opcode for f in recorder.frames] == [OpCode.TEXT, OpCode.BINARY, OpCode.BINARY]
    assert recorder.frames[0].string_data == "héllo wörld"
    assert recorder.upgraded == 1


def test_their_client_one_mib_message(start_server, transport):
    server = start_server(Recorder(echo=True))
    payload = os.urandom(ONE_MIB)
    text = "x" * ONE_MIB
    with their_client(server, transport) as ws:
        ws.send(payload)
        assert ws.recv(timeout=TIMEOUT) == payload
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


def test_their_client_fragmented_message(start_server, transport):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    with their_client(server, transport) as ws:
        # An iterable makes websockets send one fragment per item.
        ws.send(["frag", "mented ", "tëxt"])
        assert ws.recv(timeout=TIMEOUT) == "fragmented tëxt"
        ws.send([b"\x01\x02", b"", b"\x03"])
        assert ws.recv(timeout=TIMEOUT) == b"\x01\x02\x03"
    wait_for(lambda: recorder.closed)
    # Our handler sees whole messages only (the server consolidates by default).
    assert len(recorder.frames) == 2
    assert all(frame.fin for frame in recorder.frames)
    assert recorder.frames[0].opcode == OpCode.TEXT
    assert recorder.frames[0].string_data == "fragmented tëxt"
    assert recorder.frames[1].opcode == OpCode.BINARY
    assert bytes(recorder.frames[1].data) == b"\x01\x02\x03"


def test_their_client_ping_is_answered(start_server, transport):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    with their_client(server, transport) as ws:
        pong = ws.ping(b"are you there")
        assert pong.wait(TIMEOUT), "no pong for the ping"
        empty = ws.ping()
        assert empty.wait(TIMEOUT), "no pong for the empty ping"
        # The connection still carries messages afterwards.
        ws.send("after ping")
        assert ws.recv(timeout=TIMEOUT) == "after ping"
    wait_for(lambda: recorder.closed)
    # AutoPong answered: our handler never saw the pings.
    assert all(f.opcode not in (OpCode.PING, OpCode.PONG) for f in recorder.frames)


def test_their_client_clean_close_with_code_and_reason(start_server, transport):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    with their_client(server, transport) as ws:
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
        ws.close(4000, "bye")
        # We echoed their code: the closing handshake completed on both ends.
        assert ws.close_code == 4000
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.sent.code == 4000 and info.value.sent.reason == "bye"
        assert info.value.rcvd.code == 4000
        assert info.value.rcvd_then_sent is False
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(4000, "bye")]


class Closer(Recorder):
    """Closes the connection with 4002 when it receives the text "close please"."""

    def on_frame(self, conn, frame):
        super().on_frame(conn, frame)
        if frame.opcode == OpCode.TEXT and frame.string_data == "close please":
            conn.close(4002, "as you wish")


def test_their_client_sees_our_close(start_server, transport):
    recorder = Closer()
    # A short close_timeout keeps this test fast whatever the server does after the
    # closing handshake (test_server_drops_tcp_promptly_after_its_close checks that).
    server = start_server(recorder, close_timeout=0.5)
    with their_client(server, transport) as ws:
        ws.send("close please")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.rcvd.code == 4002
        assert info.value.rcvd.reason == "as you wish"
        # They answered our close with the same code: a clean closing handshake.
        assert info.value.sent.code == 4002
        assert info.value.rcvd_then_sent is True
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(4002, "as you wish")]


def test_server_drops_tcp_promptly_after_its_close(start_server, transport):
    recorder = Closer()
    server = start_server(recorder, close_timeout=30)
    with websockets.sync.client.connect(
            server.url, ssl=transport.client_ssl, compression=None, proxy=None,
            ping_interval=None, close_timeout=1) as ws:
        ws.send("close please")
        # recv() returns only once the connection is closed, and RFC 6455 7.1.1 has the
        # server close TCP first. Loopback round trips take milliseconds: 1.5 s is ample.
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=1.5)
        assert info.value.rcvd.code == 4002
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(4002, "as you wish")]


# --------------------------------------------------------------------------- our client, their server


class TheirServer:
    """A websockets sync server running serve_forever in a thread; `handler(ws)` per connection."""

    def __init__(self, handler, transport) -> None:
        self.errors: list[BaseException] = []

        def guarded(ws):
            try:
                handler(ws)
            except ConnectionClosed:
                pass
            except BaseException as exc:  # reported to the test
                self.errors.append(exc)
                raise

        self.server = websockets.sync.server.serve(
            guarded, "127.0.0.1", 0, ssl=transport.server_ssl, compression=None,
            max_size=THEIR_MAX_SIZE, ping_interval=None, close_timeout=TIMEOUT)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"{transport.scheme}://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()


@pytest.fixture
def their_server(transport):
    servers = []

    def start(handler) -> TheirServer:
        server = TheirServer(handler, transport)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
    for server in servers:
        assert not server.errors, server.errors


def echo(ws):
    for message in ws:
        ws.send(message)


def our_client(loop, server, transport, handler):
    return fastws.connect(server.url, handler, ssl=transport.client_ssl, loop=loop)


def messages(recorder):
    return [f for f in recorder.frames if f.opcode in (OpCode.TEXT, OpCode.BINARY)]


def test_our_client_text_and_binary(loop, their_server, transport):
    server = their_server(echo)
    recorder = Recorder()
    conn = our_client(loop, server, transport, recorder)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    assert conn.subprotocol is None
    conn.send_text("héllo wörld")
    conn.send_binary(b"\x00\x01\xfe\xff")
    run_until(loop, lambda: len(recorder.frames) >= 2)
    assert recorder.frames[0].opcode == OpCode.TEXT
    assert recorder.frames[0].string_data == "héllo wörld"
    assert recorder.frames[1].opcode == OpCode.BINARY
    assert bytes(recorder.frames[1].data) == b"\x00\x01\xfe\xff"
    conn.close()
    run_until(loop, lambda: recorder.closed)
    assert recorder.closed == [(1000, "")]


def test_our_client_one_mib_message(loop, their_server, transport):
    server = their_server(echo)
    recorder = Recorder()
    conn = our_client(loop, server, transport, recorder)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    payload = os.urandom(ONE_MIB)
    text = "é" * (ONE_MIB // 2)
    conn.send_binary(payload)
    conn.send_text(text)
    run_until(loop, lambda: len(recorder.frames) >= 2)
    assert bytes(recorder.frames[0].data) == payload
    assert recorder.frames[1].string_data == text
    conn.close()
    run_until(loop, lambda: recorder.closed)


def test_our_client_fragmented_message(loop, their_server, transport):
    received = queue.Queue()

    def record_and_echo(ws):
        for message in ws:
            received.put(message)
            ws.send(message)

    server = their_server(record_and_echo)
    recorder = Recorder()
    conn = our_client(loop, server, transport, recorder)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    conn.send(Frame(fin=False, opcode=OpCode.TEXT, data=b"frag"))
    conn.send(Frame(fin=False, opcode=OpCode.CONTINUATION, data=b"mented "))
    conn.ping(b"between fragments")
    conn.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data="tëxt".encode()))
    run_until(loop, lambda: messages(recorder))
    assert received.get(timeout=TIMEOUT) == "fragmented tëxt"
    assert received.empty()
    (echoed,) = messages(recorder)
    assert echoed.opcode == OpCode.TEXT and echoed.string_data == "fragmented tëxt"
    conn.close()
    run_until(loop, lambda: recorder.closed)


def test_our_client_ping_gets_pong(loop, their_server, transport):
    server = their_server(echo)
    recorder = Recorder()
    conn = our_client(loop, server, transport, recorder)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    conn.ping(b"ping-123")
    # AutoPong only answers pings; the pong reaches the handler.
    run_until(loop, lambda: any(f.opcode == OpCode.PONG for f in recorder.frames))
    pongs = [f for f in recorder.frames if f.opcode == OpCode.PONG]
    assert len(pongs) == 1
    assert bytes(pongs[0].data) == b"ping-123"
    conn.send_text("still here")
    run_until(loop, lambda: messages(recorder))
    assert messages(recorder)[0].string_data == "still here"
    conn.close()
    run_until(loop, lambda: recorder.closed)


def test_our_client_closes_with_code_and_reason(loop, their_server, transport):
    seen = queue.Queue()

    def handler(ws):
        try:
            for message in ws:
                ws.send(message)
        except ConnectionClosed as exc:
            seen.put(exc)
            return
        seen.put(ws.protocol.close_exc)

    server = their_server(handler)
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop,
                          close_timeout=TIMEOUT)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    conn.close(4000, "bye")
    run_until(loop, lambda: recorder.closed)
    assert recorder.closed == [(4000, "bye")]
    closed = seen.get(timeout=TIMEOUT)
    assert isinstance(closed, ConnectionClosed)
    assert closed.rcvd is not None and closed.rcvd.code == 4000
    assert closed.rcvd.reason == "bye"
    # They echoed our code: the handshake completed on both ends.
    assert closed.sent.code == 4000


def test_our_client_sees_their_close(loop, their_server, transport):
    def handler(ws):
        for message in ws:
            if message == "close please":
                ws.close(4001, "later")
                return
            ws.send(message)

    server = their_server(handler)
    recorder = Recorder()
    conn = our_client(loop, server, transport, recorder)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    conn.send_text("close please")
    run_until(loop, lambda: recorder.closed)
    assert recorder.closed == [(4001, "later")]
    assert conn.close_code == 4001
    assert conn.error is None
    assert not conn.is_open
