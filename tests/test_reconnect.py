"""Reconnection: a real server process killed and started again on the same port.

Both clients reconnect after the server comes back, tell the application each time (the
blocking client's `on_reconnecting(delay, cause)`, the Loop client's
`handler.on_reconnecting(conn, delay)`), wait no longer than the back-off bound, stop after
a close the application asked for, and never retry a 403. The back-off schedule itself is
checked without a network.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from conftest import TIMEOUT, Recorder, run_until, wait_for
from proxy_servers import free_port, wait_listening

import fastws
import fastws.sync
from fastws import Backoff, Response
from fastws.exceptions import ConnectionClosed, InvalidStatus, ProxyError
from fastws.reconnect import is_retryable

FAST = Backoff(initial_delay=0.05, max_delay=0.4, factor=2.0, jitter=0.5)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EchoProcess:
    """`python -m fastws echo` on a fixed port, killed (SIGKILL: no closing handshake) and
    started again on the same port."""

    def __init__(self, directory) -> None:
        self.port = free_port()
        self.log = directory / f"echo-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fastws", "echo", "--host", "127.0.0.1", "--port",
                 str(self.port), "--busy-poll", "0"], stdout=out, stderr=subprocess.STDOUT,
                env=env)
        wait_listening(self.port, self.process, self.log)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(TIMEOUT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"


@pytest.fixture
def echo_process(tmp_path):
    server = EchoProcess(tmp_path)
    server.start()
    yield server
    server.stop()


def test_blocking_client_reconnects_after_a_restart(echo_process):
    waits: list[tuple[float, BaseException]] = []
    restarted = threading.Event()

    def on_reconnecting(delay: float, cause: BaseException) -> None:
        waits.append((delay, cause))
        if len(waits) == 3:       # the server is down: failed tries go on meanwhile
            echo_process.start()
            restarted.set()

    connections = []
    for ws in fastws.sync.connect(echo_process.url, proxy=None, backoff=FAST,
                                  on_reconnecting=on_reconnecting):
        connections.append(ws)
        ws.send(f"connection {len(connections)}")
        assert ws.recv(timeout=TIMEOUT) == f"connection {len(connections)}"
        if len(connections) == 1:
            echo_process.kill()
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=TIMEOUT)
            assert info.value.code == 1006
        else:
            ws.close()            # the application's close: the loop ends
    assert len(connections) == 2 and restarted.is_set()
    assert isinstance(waits[0][1], ConnectionClosed)            # the lost connection
    assert all(isinstance(cause, ConnectionRefusedError) for _, cause in waits[1:])
    # Each wait within its bound: the schedule restarts after a connection that opened.
    for attempt, (delay, _) in enumerate(waits):
        assert FAST.bound(attempt) * (1 - FAST.jitter) <= delay <= FAST.bound(attempt)


def test_loop_client_reconnects_after_a_restart(echo_process, loop):
    class Client(Recorder):
        def __init__(self):
            super().__init__(echo=False)
            self.reconnecting: list[tuple[fastws.Connection, float]] = []

        def on_upgraded(self, conn):
            super().on_upgraded(conn)
            conn.send_text(f"hello {self.upgraded}")

        def on_reconnecting(self, conn, delay):
            self.reconnecting.append((conn, delay))
            if len(self.reconnecting) == 3:
                echo_process.start()

    client = Client()
    first = fastws.connect(echo_process.url, client, loop=loop, proxy=None, reconnect=FAST)
    run_until(loop, lambda: client.frames)
    echo_process.kill()
    run_until(loop, lambda: client.upgraded == 2)
    run_until(loop, lambda: len(client.frames) == 2)
    assert [f.data for f in client.frames] == [b"hello 1", b"hello 2"]
    assert client.conns[0] is first and client.conns[1] is not first
    # on_closed for the lost connection and each refused try, then on_reconnecting each time
    assert client.closed[0][0] == 1006
    assert len(client.closed) == len(client.reconnecting) == 3
    assert client.reconnecting[0][0] is first
    for attempt, (_, delay) in enumerate(client.reconnecting):
        assert delay <= FAST.bound(attempt)
    # The application closes: no more reconnection.
    client.conns[1].close()
    run_until(loop, lambda: len(client.closed) == 4)
    assert client.closed[3] == (1000, "")
    loop.run_once(FAST.max_delay * 2)
    assert client.upgraded == 2 and len(client.reconnecting) == 3


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_no_retry_after_403(start_server, transport, loop):
    requests = []

    class Forbidden:
        def on_request(self, conn, request):
            requests.append(request)
            conn.respond(Response.text(403, "no\n"))

    server = start_server(Forbidden())
    waits = []
    with pytest.raises(InvalidStatus) as info:
        for _ in fastws.sync.connect(server.url, proxy=None, backoff=FAST,
                                     on_reconnecting=lambda d, c: waits.append(d)):
            pytest.fail("a 403 never gives a connection")
    assert info.value.status == 403 and waits == [] and len(requests) == 1

    class Client(Recorder):
        reconnects = 0

        def on_reconnecting(self, conn, delay):
            self.reconnects += 1

    client = Client()
    conn = fastws.connect(server.url, client, loop=loop, proxy=None, reconnect=FAST)
    run_until(loop, lambda: client.closed)
    loop.run_once(FAST.max_delay * 2)
    assert client.reconnects == 0 and len(client.closed) == 1 and len(requests) == 2
    assert isinstance(conn.error, InvalidStatus) and conn.error.status == 403


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_on_reconnecting_false_stops(start_server, transport, loop):
    server_side = Recorder()
    server = start_server(server_side)

    class Client(Recorder):
        def on_reconnecting(self, conn, delay):
            return False

    client = Client()
    fastws.connect(server.url, client, loop=loop, proxy=None, reconnect=FAST)
    run_until(loop, lambda: client.upgraded)
    wait_for(lambda: server_side.conns)
    server.call(server_side.conns[0].close, 1012, "service restart")
    run_until(loop, lambda: client.closed)
    loop.run_once(FAST.max_delay * 2)
    assert client.closed == [(1012, "service restart")] and client.upgraded == 1


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_server_close_is_followed_by_a_reconnection(start_server, transport, loop):
    server_side = Recorder()
    server = start_server(server_side)
    client = Recorder()
    fastws.connect(server.url, client, loop=loop, proxy=None, reconnect=FAST)
    run_until(loop, lambda: client.upgraded)
    wait_for(lambda: server_side.conns)
    server.call(server_side.conns[0].close, 1001, "going away")
    run_until(loop, lambda: client.upgraded == 2)
    assert client.closed == [(1001, "going away")]
    client.conns[1].close()
    run_until(loop, lambda: len(client.closed) == 2)


def test_backoff_schedule():
    backoff = Backoff(initial_delay=1, max_delay=10, factor=2, jitter=0)
    delays = backoff.delays()
    assert [next(delays) for _ in range(6)] == [1, 2, 4, 8, 10, 10]
    jittered = Backoff(initial_delay=1, max_delay=10, factor=2, jitter=1.0).delays()
    for attempt in range(50):
        assert 0 <= next(jittered) <= min(10, 2 ** attempt)
    assert Backoff().bound(10_000) == Backoff().max_delay       # no overflow
    for bad in [{"initial_delay": -1}, {"initial_delay": 5, "max_delay": 1}, {"factor": 0.5},
                {"jitter": 2}]:
        with pytest.raises(ValueError):
            Backoff(**bad)


def test_what_is_retried():
    assert is_retryable(ConnectionRefusedError(111, "refused"))
    assert is_retryable(TimeoutError())
    assert is_retryable(ConnectionClosed(1006, "lost"))
    assert is_retryable(InvalidStatus(Response(503)))
    assert not is_retryable(InvalidStatus(Response(403)))
    assert not is_retryable(InvalidStatus(Response(404)))
    assert not is_retryable(ProxyError("407", status=407))
    assert is_retryable(ProxyError("502", status=502))
    assert not is_retryable(ProxyError("bad password", retryable=False))
    assert not is_retryable(ValueError("bad URL"))
    assert not is_retryable(fastws.HandshakeError(0, "bad accept key"))
