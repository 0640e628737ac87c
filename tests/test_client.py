"""The client's side of the opening handshake, its masking, and how it reports failures.

A tiny blocking server in a thread (a plain socket, TLS-wrapped under the `tls`
transport) reads the client's request head and answers bytes the test crafts.
"""

from __future__ import annotations

import base64
import os
import random
import socket
import ssl
import threading

import pytest
import trustme
from conftest import TIMEOUT, Recorder, run_until

import fastws
from fastws import CloseCode, FrameParser, OpCode, encode_frame
from fastws.handshake import accept_key

# Every test here runs over both chains (see conftest.chain): the fast path and a user stage.
pytestmark = pytest.mark.usefixtures("chain")


class CraftedServer:
    """Accepts one connection, reads the request head, sends `answer(head)`.

    With `read_frames=True` it then parses the client's frames (they must be masked)
    until a close frame, answers it with a close frame and closes the connection.
    """

    def __init__(self, transport, answer, *, read_frames: bool = False,
                 server_ssl: ssl.SSLContext | None = None) -> None:
        self.transport = transport
        self.answer = answer
        self.read_frames = read_frames
        self.server_ssl = server_ssl if server_ssl is not None else transport.server_ssl
        self.head: bytes | None = None
        self.frames: list[fastws.Frame] = []
        self.parse_errors: list[tuple[int, str]] = []
        self.error: BaseException | None = None
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(TIMEOUT)
        self.port = self.listener.getsockname()[1]
        scheme = "wss" if self.server_ssl is not None else "ws"
        self.url = f"{scheme}://127.0.0.1:{self.port}/chat?room=1"
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            sock.settimeout(TIMEOUT)
            if self.server_ssl is not None:
                sock = self.server_ssl.wrap_socket(sock, server_side=True)
            with sock:
                self._serve(sock)
        except BaseException as exc:  # handed to the test
            self.error = exc
        finally:
            self.done.set()

    def _serve(self, sock) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        self.head, _, rest = buffer.partition(b"\r\n\r\n")
        sock.sendall(self.answer(self.head))
        if not self.read_frames:
            # Wait for the client to hang up (it must, after a bad answer).
            while sock.recv(65536):
                pass
            return
        parser = FrameParser(self.frames.append,
                             lambda code, reason: self.parse_errors.append((code, reason)),
                             expect_mask=True)
        parser.feed(rest)
        while not any(f.opcode == OpCode.CLOSE for f in self.frames) and not self.parse_errors:
            chunk = sock.recv(65536)
            if not chunk:
                return
            parser.feed(chunk)
        close = next(f for f in self.frames if f.opcode == OpCode.CLOSE)
        sock.sendall(encode_frame(OpCode.CLOSE, bytes(close.data), True, 0, None))

    def headers(self) -> dict[str, list[str]]:
        assert self.head is not None, "no request received"
        found: dict[str, list[str]] = {}
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            found.setdefault(name.strip().lower(), []).append(value.strip())
        return found

    def request_line(self) -> str:
        assert self.head is not None, "no request received"
        return self.head.decode("latin-1").split("\r\n")[0]

    def stop(self) -> None:
        self.listener.close()
        assert self.done.wait(TIMEOUT), "the crafted server did not finish"
        self.thread.join(TIMEOUT)


@pytest.fixture
def crafted(transport):
    servers = []

    def start(answer, **kwargs) -> CraftedServer:
        server = CraftedServer(transport, answer, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def request_key(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-key":
            return value.strip()
    raise AssertionError(f"no Sec-WebSocket-Key in {head!r}")


def switching(head: bytes, *, accept: str | None = None, upgrade: str | None = "websocket",
              extra: str = "") -> bytes:
    """A 101 answer to `head`, with parts to spoil."""
    lines = ["HTTP/1.1 101 Switching Protocols"]
    if upgrade is not None:
        lines.append(f"Upgrade: {upgrade}")
    lines.append("Connection: Upgrade")
    lines.append(f"Sec-WebSocket-Accept: {accept or accept_key(request_key(head))}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def client_ssl_for(server: CraftedServer, transport):
    return transport.client_ssl if server.server_ssl is not None else None


# --------------------------------------------------------------------------- rejected handshakes


BAD_ANSWERS = {
    "wrong accept": (lambda head: switching(head, accept=accept_key("AAAAAAAAAAAAAAAAAAAAAA==")),
                     "Sec-WebSocket-Accept"),
    "missing upgrade": (lambda head: switching(head, upgrade=None), "Upgrade"),
    "upgrade to another protocol": (lambda head: switching(head, upgrade="h2c"), "Upgrade"),
    "subprotocol not offered": (
        lambda head: switching(head, extra="Sec-WebSocket-Protocol: mqtt\r\n"), "mqtt"),
    "extension not offered": (
        lambda head: switching(head, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        "permessage-deflate"),
    "403": (lambda head: b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope", "403"),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
def test_bad_handshake_answer_fails_the_connection(case, crafted, loop, transport):
    answer, named = BAD_ANSWERS[case]
    server = crafted(answer)
    recorder = Recorder()
    # compression=False: "extension not offered" must hold (permessage-deflate is offered by
    # default; its negotiation failures are tested in test_deflate.py).
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop,
                          compression=False)
    run_until(loop, lambda: recorder.closed)
    # Let any stray second report arrive before checking there is exactly one.
    run_until(loop, lambda: server.done.is_set())
    loop.run_once(0.01)
    assert len(recorder.closed) == 1
    code, _reason = recorder.closed[0]
    assert code == CloseCode.ABNORMAL
    assert recorder.upgraded == 0
    assert not recorder.frames
    assert isinstance(conn.error, fastws.HandshakeError), repr(conn.error)
    assert named in str(conn.error)
    assert conn.closed and not conn.is_open
    assert server.error is None, server.error


# --------------------------------------------------------------------------- the request we send


def test_request_carries_key_host_and_headers(crafted, loop, transport):
    server = crafted(lambda head: switching(head), read_frames=True)
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop,
                          headers=[("X-Token", "s3cret"), ("Origin", "http://example.com")])
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    assert server.request_line() == "GET /chat?room=1 HTTP/1.1"
    headers = server.headers()
    (key,) = headers["sec-websocket-key"]
    assert len(base64.b64decode(key, validate=True)) == 16
    assert headers["host"] == [f"127.0.0.1:{server.port}"]
    assert headers["x-token"] == ["s3cret"]
    assert headers["origin"] == ["http://example.com"]
    assert headers["sec-websocket-version"] == ["13"]
    assert "websocket" in headers["upgrade"][0].lower()
    assert "upgrade" in headers["connection"][0].lower()
    assert "sec-websocket-protocol" not in headers
    # permessage-deflate is offered by default
    assert headers["sec-websocket-extensions"] == ["permessage-deflate; client_max_window_bits"]
    assert conn.subprotocol is None
    conn.close()
    run_until(loop, lambda: recorder.closed)
    assert recorder.closed == [(1000, "")]


def test_subprotocols_offered_and_chosen(crafted, loop, transport):
    server = crafted(lambda head: switching(head, extra="Sec-WebSocket-Protocol: v2.chat\r\n"),
                     read_frames=True)
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop,
                          subprotocols=["v1.chat", "v2.chat"])
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    offered = [p.strip() for value in server.headers()["sec-websocket-protocol"]
               for p in value.split(",")]
    assert offered == ["v1.chat", "v2.chat"]
    assert conn.subprotocol == "v2.chat"
    conn.close()
    run_until(loop, lambda: recorder.closed)


def test_every_frame_masked_with_a_fresh_key(crafted, loop, transport):
    server = crafted(lambda head: switching(head), read_frames=True)
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: recorder.upgraded or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    sent = [f"message {i}".encode() for i in range(20)]
    for data in sent:
        conn.send_text(data.decode())
    conn.send_binary(b"\x00" * 64)        # zeros: the wire bytes are the key itself
    conn.ping(b"p")
    conn.close(1000, "done")
    run_until(loop, lambda: recorder.closed)
    assert server.done.wait(TIMEOUT)
    assert server.error is None, server.error
    assert not server.parse_errors        # expect_mask=True: an unmasked frame is an error
    frames = server.frames
    assert [bytes(f.data) for f in frames[:20]] == sent
    assert bytes(frames[20].data) == b"\x00" * 64
    assert frames[21].opcode == OpCode.PING and frames[22].opcode == OpCode.CLOSE
    keys = [f.masking_key for f in frames]
    assert None not in keys
    assert len(set(keys)) == len(keys), "a masking key was reused"
    assert recorder.closed == [(1000, "done")]


def test_first_frame_in_the_same_packet_as_the_101(crafted, loop, transport):
    def answer(head):
        return switching(head) + encode_frame(OpCode.TEXT, b"welcome", True, 0, None)

    server = crafted(answer, read_frames=True)
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: recorder.frames or recorder.closed)
    assert recorder.upgraded == 1, (recorder.closed, conn.error)
    assert [(f.opcode, bytes(f.data)) for f in recorder.frames] == [(OpCode.TEXT, b"welcome")]
    conn.close()
    run_until(loop, lambda: recorder.closed)
    assert recorder.closed == [(1000, "")]


# --------------------------------------------------------------------------- failures to connect


def test_closed_port_reports_1006(loop, transport):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()                          # nothing listens there now
    recorder = Recorder()
    conn = fastws.connect(f"{transport.scheme}://127.0.0.1:{port}/", recorder,
                          ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: recorder.closed)
    loop.run_once(0.01)
    assert len(recorder.closed) == 1
    assert recorder.closed[0][0] == CloseCode.ABNORMAL
    assert recorder.upgraded == 0
    assert isinstance(conn.error, ConnectionError), repr(conn.error)


@pytest.mark.parametrize("url", ["http://127.0.0.1:1/", "ftp://127.0.0.1/", "127.0.0.1:80",
                                 "wss//127.0.0.1/"])
def test_bad_scheme_raises_at_once(url, loop, transport):
    recorder = Recorder()
    with pytest.raises(ValueError):
        fastws.connect(url, recorder, ssl=transport.client_ssl, loop=loop)
    loop.run_once(0.01)
    assert recorder.closed == [] and recorder.upgraded == 0


def test_untrusted_certificate_reports_1015(crafted, loop, transport):
    # The server's certificate comes from a CA this client does not trust.
    other_ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    other_ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server = crafted(lambda head: switching(head), server_ssl=server_ctx)
    client_ctx = transport.client_ssl or ssl.create_default_context()
    recorder = Recorder()
    conn = fastws.connect(server.url, recorder, ssl=client_ctx, loop=loop)
    run_until(loop, lambda: recorder.closed)
    loop.run_once(0.01)
    assert len(recorder.closed) == 1
    assert recorder.closed[0][0] == CloseCode.TLS_HANDSHAKE
    assert recorder.upgraded == 0
    assert isinstance(conn.error, ssl.SSLCertVerificationError), repr(conn.error)
    assert server.done.wait(TIMEOUT)
    assert server.head is None, "the client sent its request to an untrusted server"


def test_pause_and_resume_reading_before_the_handshake_finishes(start_server, loop, transport):
    # Pausing right after connect() (TLS still handshaking) and resuming must neither
    # raise nor start reading early; the connection then upgrades and echoes as usual.
    server = start_server(Recorder(echo=True))
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop)
    conn.pause_reading()
    loop.run_once(0.01)
    conn.resume_reading()
    run_until(loop, lambda: client.upgraded)
    conn.send_text("still here")
    run_until(loop, lambda: client.frames)
    assert client.frames[0].data == b"still here"
    conn.close()
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == CloseCode.NORMAL


class SlowReader(Recorder):
    """Echoes, but stops reading each connection for a while once it is upgraded."""

    def on_upgraded(self, conn):
        super().on_upgraded(conn)
        conn.pause_reading()
        conn.call_later(0.3, conn.resume_reading)


def test_large_masked_frames_survive_partial_sends(start_server, loop, transport):
    """A client's large frames are masked as they are sent, a chunk at a time: what the
    kernel does not take is masked again from where it stopped. With the server not reading
    for a while, the client's sends stop part-way many times; every echo must still match."""
    server = start_server(SlowReader(echo=True), max_message_size=8 << 20,
                          max_frame_size=8 << 20, compression=False)
    client = Recorder()
    messages = [os.urandom(3 << 20), os.urandom(70_000), bytes(5 << 20), os.urandom(200)]
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop,
                          compression=False, max_message_size=8 << 20, max_frame_size=8 << 20)
    run_until(loop, lambda: client.upgraded)
    for message in messages:
        conn.send_binary(message)
    assert conn.write_buffer_size > 0          # the kernel did not take it all at once
    run_until(loop, lambda: len(client.frames) == len(messages), timeout=30)
    assert [bytes(f.data) == m for f, m in zip(client.frames, messages, strict=True)] == \
        [True] * len(messages)
    conn.close()
    run_until(loop, lambda: client.closed)


def test_bursts_of_small_frames_survive_partial_sends(start_server, loop, transport):
    """Small frames queued together leave joined in one buffer, large ones beside them as
    they are: a burst far beyond one send (sizes around the joining limit, more frames than
    one sendmsg() takes, large frames between them), with the server not reading for a
    while, must arrive whole and in order both ways."""
    server = start_server(SlowReader(echo=True), max_message_size=1 << 20, compression=False)
    client = Recorder()
    rng = random.Random(6455)
    small = [0, 1, 125, 126, 2040, 2043, 2044, 2048, 2049, 4096]
    large = [65_535, 65_536, 70_000]
    messages = [rng.randbytes(rng.choice(large if rng.random() < 0.01 else small))
                for _ in range(2_000)]              # about 4 MB, under the write cap
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop,
                          compression=False, max_message_size=1 << 20)
    run_until(loop, lambda: client.upgraded)
    for message in messages:
        conn.send_binary(message)
    assert conn.write_buffer_size > 0          # the kernel did not take it all at once
    run_until(loop, lambda: len(client.frames) == len(messages), timeout=30)
    received = [bytes(f.data) for f in client.frames]
    assert [len(m) for m in received] == [len(m) for m in messages]
    assert received == messages
    conn.close()
    run_until(loop, lambda: client.closed)
