"""Shared fixtures: certificates (trustme), loops, servers in a thread, and a raw client.

Every WebSocket test takes the `transport` fixture and so runs twice: in the clear and
under TLS. Servers run their fastws loop in a background thread so that tests can drive
them with blocking clients (a raw socket client, the websockets library, http.client).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass

import pytest
import trustme

import fastws
from fastws import CloseCode, Frame, FrameParser, OpCode, encode_frame
from fastws._codec import parse_close

TIMEOUT = 10.0

def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    # The manylinux wheel tests/test_packaging.py built and tested, named at the end of the
    # run (CI's log then shows which wheel a release would upload). A test's properties
    # reach this process from pytest-xdist's workers too.
    for report in terminalreporter.stats.get("passed", []):
        for name, value in getattr(report, "user_properties", ()):
            if name == "manylinux_wheel":
                terminalreporter.write_line(f"manylinux wheel of tests/test_packaging.py: {value}")


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@dataclass
class Transport:
    name: str
    server_ssl: ssl.SSLContext | None
    client_ssl: ssl.SSLContext | None

    @property
    def scheme(self) -> str:
        return "wss" if self.server_ssl else "ws"


@pytest.fixture(params=["clear", "tls"])
def transport(request, ca) -> Transport:
    if request.param == "clear":
        return Transport("clear", None, None)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return Transport("tls", server_ctx, client_ctx)


class PassThrough(fastws.Stage):
    """A user stage that passes every frame on: the chain is no longer the fast path."""

    seen = 0

    def on_frame_in(self, frame):
        PassThrough.seen += 1
        self.pass_in(frame)

    def on_frame_out(self, frame):
        PassThrough.seen += 1
        self.pass_out(frame)


@pytest.fixture(params=["fast-chain", "stage-chain"])
def chain(request, monkeypatch) -> str:
    """Runs a test twice: with the default chain (frames go straight between the protocol
    and the handler) and with a pass-through user stage nearest the wire on every
    connection this process makes, server and client. Both must behave the same."""
    if request.param == "stage-chain":
        setup = fastws.stages.StageChain.setup

        def setup_with_stage(self, stages):
            setup(self, stages)
            self.add(PassThrough(), 0)

        monkeypatch.setattr(fastws.stages.StageChain, "setup", setup_with_stage)
    return request.param


@pytest.fixture
def loop():
    with fastws.Loop() as loop:
        yield loop


def run_until(loop: fastws.Loop, predicate, timeout: float = TIMEOUT) -> None:
    """Run the loop until predicate() is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        loop.run_once(0.05)


class ThreadedServer:
    """A fastws server whose loop runs in a background thread."""

    def __init__(self, handler, transport: Transport, **kwargs) -> None:
        self.loop = fastws.Loop()
        self.server = fastws.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl,
                                   loop=self.loop, **kwargs)
        self.port = self.server.port
        self.url = f"{transport.scheme}://127.0.0.1:{self.port}/"
        self.transport = transport
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop and return its result."""
        done = threading.Event()
        box = {}

        def run():
            try:
                box["value"] = fn(*args)
            except BaseException as exc:  # handed back to the test thread
                box["error"] = exc
            done.set()

        self.loop.call_soon_threadsafe(run)
        assert done.wait(TIMEOUT), "server loop did not answer"
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stop(self) -> None:
        def shut_down() -> None:
            self.server.close()
            # The test is over: no closing handshakes, but every socket is closed before
            # the loop stops (the next test in this process starts with none of them open).
            for conn in list(self.server.all_connections):
                conn.abort()
            self.loop.stop()

        self.loop.call_soon_threadsafe(shut_down)
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive()
        self.loop.close()


@pytest.fixture
def start_server(transport):
    servers = []

    def start(handler, **kwargs) -> ThreadedServer:
        server = ThreadedServer(handler, transport, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def spares():
    """fastws._codec's spare payloads (large received payloads kept for reuse): call with a
    bound in bytes to set it (and drop those kept); returns (count, bytes) kept. The default
    bound is back after the test."""
    from fastws._codec import _spare_payloads_kept
    default = 16 * 1024 * 1024
    _spare_payloads_kept(default)                 # start with none kept
    yield _spare_payloads_kept
    _spare_payloads_kept(default)


def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    """Poll a condition set by another thread (bounded)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.005)


class RawClient:
    """A blocking WebSocket client that sends exactly the bytes a test asks for."""

    def __init__(self, port: int, transport: Transport, *, path: str = "/",
                 handshake: bool = True, extra: bytes = b"") -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if transport.client_ssl is not None:
            sock = transport.client_ssl.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.frames: list[Frame] = []
        self.errors: list[tuple[int, str]] = []
        self.parser = FrameParser(self.frames.append,
                                  lambda code, reason: self.errors.append((code, reason)),
                                  expect_mask=False)
        self.buffer = b""
        if handshake:
            self.handshake(path, extra)

    def handshake(self, path: str = "/", extra: bytes = b"") -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode() + extra)
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert fastws.handshake.accept_key(key).encode() in head
        return head

    def read_head(self) -> bytes:
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed during the handshake")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.buffer = b""
        if rest:
            self.parser.feed(rest)
        return head

    def send(self, opcode: int, data: bytes = b"", *, fin: bool = True, rsv: int = 0,
             masked: bool = True) -> None:
        key = int.from_bytes(os.urandom(4), "big") if masked else None
        self.sock.sendall(encode_frame(opcode, data, fin, rsv, key))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_frame(self, timeout: float = TIMEOUT) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed while waiting for a frame")
            self.parser.feed(chunk)
            if time.monotonic() > deadline:
                raise TimeoutError("no frame")
        return self.frames.pop(0)

    def recv_message(self) -> Frame:
        """The next data frame, skipping pings."""
        while True:
            frame = self.recv_frame()
            if frame.opcode not in (OpCode.PING, OpCode.PONG):
                return frame

    def expect_close(self) -> tuple[int, str]:
        """Read up to the server's close frame; check the server then drops TCP."""
        while True:
            frame = self.recv_frame()
            if frame.opcode == OpCode.CLOSE:
                break
        code, reason = parse_close(frame.data)
        self.sock.settimeout(TIMEOUT)
        try:
            rest = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            rest = b""
        assert rest == b"", f"data after the close frame: {rest!r}"
        self.sock.close()      # as a real client does once the server has closed
        return code, reason

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw_client(transport):
    clients = []

    def make(port: int, **kwargs) -> RawClient:
        client = RawClient(port, transport, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


class Recorder:
    """A handler that records what it sees; optionally echoes."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.frames: list[Frame] = []
        self.closed: list[tuple[int, str]] = []
        self.upgraded = 0
        self.rtts: list[float] = []
        self.conns: list[fastws.Connection] = []

    def on_upgraded(self, conn):
        self.upgraded += 1
        self.conns.append(conn)

    def on_frame(self, conn, frame):
        self.frames.append(frame)
        if self.echo and conn.is_open and frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    def on_rtt(self, conn, seconds):
        self.rtts.append(seconds)

    def on_closed(self, conn, code, reason):
        self.closed.append((code, reason))


__all__ = ["CloseCode", "RawClient", "Recorder", "ThreadedServer", "run_until", "wait_for"]
