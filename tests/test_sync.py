"""The blocking client, fastws.sync, against the fastws server: in the clear and over TLS.

Opening (refused, bad URLs, rejected with a status, a server that never answers, redirects),
receiving (recv with and without a timeout, iteration, after the close), sending from
several threads at once, pings both ways (the server's answered while the application
sleeps), the closing handshake from either side, limits and compression.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from conftest import TIMEOUT, Recorder, wait_for

import fastws
import fastws.sync
from fastws import OpCode, Response
from fastws.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidStatus,
    RedirectError,
)


def connect(url: str, transport, **kwargs):
    return fastws.sync.connect(url, ssl=transport.client_ssl, proxy=None, **kwargs)


@pytest.fixture
def echo(start_server):
    return start_server(Recorder(echo=True))


# ---------------------------------------------------------------- opening

def test_refused_connect(transport):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]        # bound, not listening: refused
        with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}"):
            connect(f"{transport.scheme}://127.0.0.1:{port}/", transport).open()


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "ws://", "ws://h:70000/", "ws://h/#x",
                                 "ws://user:pw@h/", "ws://h/a b", "127.0.0.1:80"])
def test_bad_url(url):
    with pytest.raises(ValueError):
        fastws.sync.connect(url, proxy=None)        # at once, before any `with` or open()


def test_using_connect_as_a_connection_says_how_to_open_it():
    pending = fastws.sync.connect("ws://127.0.0.1:9/", proxy=None)     # nothing opened yet
    with pytest.raises(AttributeError, match=r"with fastws\.sync\.connect\(url\) as ws"):
        pending.send("hello")
    with pytest.raises(AttributeError, match="no attribute 'sned'"):
        pending.sned("hello")


def test_unresolvable_host():
    with pytest.raises(socket.gaierror, match=r"cannot resolve no-such-host\.invalid"):
        fastws.sync.connect("ws://no-such-host.invalid/", proxy=None).open()


def test_rejected_handshake_carries_the_status(start_server, transport):
    class Reject:
        def on_request(self, conn, request):
            conn.respond(Response.text(403, "go away\n"))

    server = start_server(Reject())
    with pytest.raises(InvalidStatus) as info:
        connect(server.url, transport).open()
    assert info.value.status == 403
    assert info.value.http_response.body == b"go away\n"
    assert isinstance(info.value, fastws.HandshakeError)


def test_server_that_never_answers_times_out(transport):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connect(f"{transport.scheme}://127.0.0.1:{port}/", transport, timeout=0.3).open()
        assert time.monotonic() - start < TIMEOUT


def test_subprotocol_and_headers(start_server, transport):
    seen = {}

    class Choose:
        def on_request(self, conn, request):
            seen["agent"] = request.headers.get("x-agent")
            conn.upgrade(fastws.accept(request, subprotocols=["chat.v2"]))

    server = start_server(Choose())
    with connect(server.url, transport, subprotocols=["chat.v1", "chat.v2"],
                 headers={"X-Agent": "test"}) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.status == 101
    assert seen["agent"] == "test"


# ---------------------------------------------------------------- messages

def test_echo_text_binary_and_large(echo, transport):
    with connect(echo.url, transport) as ws:
        ws.send("héllo")
        assert ws.recv(timeout=TIMEOUT) == "héllo"
        ws.send(b"\x00\xff")
        assert ws.recv(timeout=TIMEOUT) == b"\x00\xff"
        ws.send(bytearray(b"from a bytearray"))
        assert ws.recv(timeout=TIMEOUT) == b"from a bytearray"
        big = bytes(range(256)) * 8192           # 2 MiB
        ws.send(memoryview(big))
        assert ws.recv(timeout=TIMEOUT) == big


def test_recv_timeout_zero_polls(echo, transport):
    with connect(echo.url, transport) as ws:
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0)
        ws.send("one")
        wait_for(lambda: echo.server.connections and len(echo.server.connections) == 1)
        deadline = time.monotonic() + TIMEOUT
        while True:     # the echo arrives some time later: poll for it, bounded
            try:
                assert ws.recv(timeout=0) == "one"
                break
            except TimeoutError:
                assert time.monotonic() < deadline
                time.sleep(0.005)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.05)


def test_iteration_ends_at_a_normal_close(start_server, transport):
    class SendThree:
        def on_upgraded(self, conn):
            for text in ("a", "b", "c"):
                conn.send_text(text)
            conn.close(1000, "that is all")

    server = start_server(SendThree())
    with connect(server.url, transport) as ws:
        assert list(ws) == ["a", "b", "c"]
        assert (ws.close_code, ws.close_reason) == (1000, "that is all")


def test_server_close_both_ways(start_server, transport):
    server_side = Recorder()
    server = start_server(server_side)
    ws = connect(server.url, transport).open()
    wait_for(lambda: server_side.conns)
    server.call(server_side.conns[0].close, 1001, "going away")
    with pytest.raises(ConnectionClosedOK) as info:
        ws.recv(timeout=TIMEOUT)
    assert (info.value.code, info.value.reason) == (1001, "going away")
    assert info.value.rcvd_then_sent is True
    with pytest.raises(ConnectionClosedOK):
        ws.recv()                               # and again: closed stays closed
    with pytest.raises(ConnectionClosed):
        ws.send("too late")
    wait_for(lambda: server_side.closed)
    assert server_side.closed == [(1001, "going away")]
    ws.close()                                  # harmless once closed


def test_client_close(echo, transport):
    recorder = echo.server.handler
    ws = connect(echo.url, transport).open()
    ws.send("x")
    assert ws.recv(timeout=TIMEOUT) == "x"
    ws.close(4000, "client is done")
    assert (ws.close_code, ws.close_reason) == (4000, "client is done")
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(4000, "client is done")]
    with pytest.raises(ConnectionClosedError) as info:
        ws.recv()
    assert info.value.code == 4000
    assert not ws._keeper.is_alive()


def test_exception_in_the_block_closes_with_1011(echo, transport):
    recorder = echo.server.handler
    with pytest.raises(RuntimeError), connect(echo.url, transport):
        raise RuntimeError("application failed")
    wait_for(lambda: recorder.closed)
    assert recorder.closed[0][0] == 1011


def test_connection_lost_without_close(start_server, transport):
    server_side = Recorder()
    server = start_server(server_side)
    ws = connect(server.url, transport).open()
    wait_for(lambda: server_side.conns)
    server.call(server_side.conns[0].abort)
    with pytest.raises(ConnectionClosedError) as info:
        ws.recv(timeout=TIMEOUT)
    assert info.value.code == 1006


def test_send_from_four_threads(start_server, transport):
    """Every message arrives whole and once: frames from different threads never interleave."""
    server_side = Recorder()
    server = start_server(server_side)
    per_thread = 200
    with connect(server.url, transport) as ws:
        def sender(index: int) -> None:
            for number in range(per_thread):
                size = (number * 7919) % 70000        # small, medium and over 64 KiB
                body = f"{index}:{number}:".encode() + bytes([65 + index]) * size
                ws.send(body if number % 2 else body.decode())

        threads = [threading.Thread(target=sender, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT * 3)
        wait_for(lambda: len(server_side.frames) == 4 * per_thread, timeout=TIMEOUT * 3)
    seen = set()
    for frame in server_side.frames:
        index, number, rest = frame.data.split(b":", 2)
        size = (int(number) * 7919) % 70000
        assert rest == bytes([65 + int(index)]) * size
        assert frame.opcode == (OpCode.BINARY if int(number) % 2 else OpCode.TEXT)
        seen.add((int(index), int(number)))
    assert len(seen) == 4 * per_thread


def test_server_pings_answered_while_the_application_sleeps(start_server, transport):
    server_side = Recorder()
    server = start_server(server_side)
    with connect(server.url, transport) as ws:
        wait_for(lambda: server_side.conns)
        conn = server_side.conns[0]
        for payload in (b"one", b"two", b"three"):
            server.call(conn.ping, payload)
            # The application is elsewhere (not in recv): the keeper answers.
            wait_for(lambda p=payload: any(f.opcode == OpCode.PONG and f.data == p
                                          for f in server_side.frames))
        # The pings did not disturb the messages.
        server.call(conn.send_text, "after the pings")
        assert ws.recv(timeout=TIMEOUT) == "after the pings"


def test_ping_returns_the_round_trip_time(echo, transport):
    with connect(echo.url, transport) as ws:
        rtt = ws.ping(timeout=TIMEOUT)
        assert 0 < rtt < TIMEOUT
        ws.send("still works")
        assert ws.recv(timeout=TIMEOUT) == "still works"
        assert ws.ping(b"custom", timeout=TIMEOUT) > 0


def test_ping_after_close_raises(echo, transport):
    ws = connect(echo.url, transport).open()
    ws.close()
    with pytest.raises(ConnectionClosed):
        ws.ping()


def test_message_over_the_limit_fails_with_1009(start_server, transport):
    class Big:
        def on_upgraded(self, conn):
            conn.send_binary(b"x" * 5000)

    server = start_server(Big())
    with connect(server.url, transport, max_message_size=1000) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1009


@pytest.mark.parametrize("compression", [True, False])
def test_compression(echo, transport, compression):
    with connect(echo.url, transport, compression=compression) as ws:
        extensions = ws.response.headers.get("sec-websocket-extensions")
        assert (extensions is not None) == compression
        text = "compressible " * 1000
        ws.send(text)
        assert ws.recv(timeout=TIMEOUT) == text


# ---------------------------------------------------------------- redirects

def _redirector(status: int, location: str):
    class Redirect:
        def on_request(self, conn, request):
            conn.respond(Response(status, {"Location": location}))
    return Redirect()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_followed(start_server, echo, transport, status):
    redirect = start_server(_redirector(status, echo.url + "there"))
    with connect(redirect.url, transport) as ws:
        assert ws.url == echo.url + "there"
        ws.send("arrived")
        assert ws.recv(timeout=TIMEOUT) == "arrived"


def test_relative_redirect(start_server, transport):
    class Relative:
        def on_request(self, conn, request):
            if request.path == "/old":
                conn.respond(Response(301, {"Location": "/new"}))
            else:
                conn.upgrade(fastws.accept(request))

    server = start_server(Relative())
    with connect(server.url + "old", transport) as ws:
        assert ws.url == server.url + "new"


def test_redirect_loop_is_bounded(start_server, transport):
    class Loop:
        def on_request(self, conn, request):
            conn.respond(Response(302, {"Location": request.target}))

    server = start_server(Loop())
    with pytest.raises(RedirectError, match="more than 3 redirects"):
        connect(server.url, transport, max_redirects=3).open()


@pytest.mark.parametrize("transport", ["tls"], indirect=True)
def test_redirect_from_wss_to_ws_is_refused(start_server, transport):
    server = start_server(_redirector(301, "ws://127.0.0.1:1/"))
    with pytest.raises(RedirectError, match="drop TLS"):
        connect(server.url, transport).open()


def test_redirect_without_location(start_server, transport):
    server = start_server(_redirector(302, ""))
    with pytest.raises(RedirectError, match="without a Location"):
        connect(server.url, transport).open()


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_loop_client_follows_a_redirect(start_server, echo, transport, loop):
    from conftest import run_until
    redirect = start_server(_redirector(307, echo.url + "moved"))
    client = Recorder()
    first = fastws.connect(redirect.url, client, loop=loop, proxy=None)
    run_until(loop, lambda: client.upgraded)
    conn = client.conns[0]
    assert conn is not first and conn.request.target == "/moved"
    conn.send_text("hello")
    run_until(loop, lambda: client.frames)
    conn.close()
    run_until(loop, lambda: client.closed)
    assert client.closed == [(1000, "")]        # the redirected attempt reported nothing
    assert first.closed


@pytest.fixture
def tls_servers(ca):
    """A TLS echo server and a TLS server redirecting to ws:// (TLS dropped), on one loop."""
    import ssl
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    loop = fastws.Loop()
    echo = fastws.serve(Recorder(echo=True), "127.0.0.1", 0, ssl=server_ctx, loop=loop)
    downgrade = fastws.serve(_redirector(301, "ws://127.0.0.1:1/"), "127.0.0.1", 0,
                             ssl=server_ctx, loop=loop)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    yield (f"wss://127.0.0.1:{echo.port}/", f"wss://127.0.0.1:{downgrade.port}/", client_ctx)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(TIMEOUT)
    loop.close()


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_redirect_from_ws_to_wss_is_followed(start_server, transport, tls_servers, loop, ca,
                                             tmp_path, monkeypatch):
    from conftest import run_until
    secure_echo, _, _ = tls_servers
    # No SSL context can be given for a ws:// URL: the default one is used after the
    # redirect, and it trusts what SSL_CERT_FILE names.
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    redirect = start_server(_redirector(301, secure_echo))
    with fastws.sync.connect(redirect.url, proxy=None) as ws:
        assert ws.url == secure_echo
        ws.send("secure now")
        assert ws.recv(timeout=TIMEOUT) == "secure now"
    client = Recorder()
    fastws.connect(redirect.url, client, loop=loop, proxy=None)
    run_until(loop, lambda: client.upgraded)
    assert client.conns[0].socket.version() is not None        # TLS
    client.conns[0].close()
    run_until(loop, lambda: client.closed)


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_loop_client_refuses_wss_to_ws(transport, tls_servers, loop):
    from conftest import run_until
    _, downgrade, client_ctx = tls_servers
    client = Recorder()
    conn = fastws.connect(downgrade, client, loop=loop, ssl=client_ctx, proxy=None)
    run_until(loop, lambda: client.closed)
    assert isinstance(conn.error, RedirectError)
    assert client.closed[0][0] == 1006 and "drop TLS" in client.closed[0][1]
    assert client.upgraded == 0


def test_recv_goes_on_while_another_thread_is_stuck_sending(start_server, transport):
    """A send() waiting for a server that does not read never holds up recv() in another
    thread (the reader leaves its pongs to the sender instead of waiting for the lock)."""
    import socket as socket_module

    class Slow(Recorder):
        def on_request(self, conn, request):
            conn.socket.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_RCVBUF, 32 * 1024)
            conn.upgrade(fastws.accept(request), max_message_size=None, max_frame_size=None)
            conn.pause_reading()

    server_side = Slow()
    server = start_server(server_side)
    big = b"z" * (8 << 20)
    with connect(server.url, transport, compression=False) as ws:
        ws.socket.setsockopt(socket_module.SOL_SOCKET, socket_module.SO_SNDBUF, 32 * 1024)
        wait_for(lambda: server_side.conns)
        conn = server_side.conns[0]
        sender = threading.Thread(target=ws.send, args=(big,))
        sender.start()
        sender.join(0.3)
        assert sender.is_alive()                    # stuck: the server reads nothing
        for text in ("one", "two"):
            server.call(conn.ping, text.encode())   # answered later, by the sender
            server.call(conn.send_text, text)
            assert ws.recv(timeout=TIMEOUT) == text
        server.call(conn.resume_reading)
        sender.join(TIMEOUT * 3)
        assert not sender.is_alive()
        wait_for(lambda: any(f.data == big for f in server_side.frames), timeout=TIMEOUT * 3)
        wait_for(lambda: {f.data for f in server_side.frames if f.opcode == OpCode.PONG}
                 == {b"one", b"two"})
