"""fastws.asyncio.connect through real proxies, across redirects, and reconnecting.

Every proxy (tinyproxy; stunnel4 + tinyproxy as an https:// proxy; microsocks) x ws:// and
wss:// echoes a text, a binary and a 1 MiB message on the stdlib loop, and the proxy's log
shows the tunnel, on the stdlib loop and on uvloop (wss:// through an https:// proxy is TLS
inside TLS: loop.start_tls on a TLS transport, which both loops can do). Then: refusals
(407, a wrong password), the environment and no_proxy, redirects (followed, wss:// to ws://
refused), and `async for ws in connect(url)` across a server killed and started again on
the same port, never retrying a 403. The servers are fastws servers in a thread
(conftest.start_server) or a `python -m fastws echo` process (test_reconnect.EchoProcess).
"""

from __future__ import annotations

import asyncio
import ssl

import pytest
from conftest import Recorder
from proxy_servers import start_https_proxy, start_microsocks, start_tinyproxy
from test_proxy import BIG, PROXIES, PROXY_VARIABLES, _with_password, _without_credentials
from test_reconnect import FAST, EchoProcess

import fastws.asyncio as fa
from fastws import Response
from fastws.exceptions import InvalidStatus, ProxyError, RedirectError

TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def run(coro, loop_kind="asyncio"):
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.run(asyncio.wait_for(coro, TIMEOUT * 3))
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 3))


def trusting(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def echo_server(start_server):
    return start_server(Recorder(echo=True))


async def echo_three(url, transport, **kwargs):
    async with fa.connect(url, ssl=transport.client_ssl, **kwargs) as ws:
        await ws.send("hello through the proxy")
        assert await ws.recv(TIMEOUT) == "hello through the proxy"
        await ws.send(b"\x00\x01binary")
        assert await ws.recv(TIMEOUT) == b"\x00\x01binary"
        await ws.send(BIG)
        assert await ws.recv(TIMEOUT) == BIG
    assert ws.close_code == 1000


# ---------------------------------------------------------------- echo through every proxy

@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("proxy_name", list(PROXIES))
def test_asyncio_client_through_proxy(proxy_name, loop_kind, echo_server, transport, ca,
                                      tmp_path):
    proxy = PROXIES[proxy_name](tmp_path, ca)
    try:
        run(echo_three(echo_server.url, transport, proxy=proxy.url, proxy_ssl=trusting(ca)),
            loop_kind)
        proxy.wait_tunnels(1)
    finally:
        proxy.stop()


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_proxy_refusals(echo_server, tmp_path):
    tinyproxy = start_tinyproxy(tmp_path, credentials=("alice", "s3cret"))
    socks = start_microsocks(tmp_path, credentials=("bob", "hunter2"))
    try:
        with pytest.raises(ProxyError) as info:
            run(fa.connect(echo_server.url, proxy=_without_credentials(tinyproxy)))
        assert info.value.status == 407 and "credentials" in str(info.value)
        with pytest.raises(ProxyError) as info:
            run(fa.connect(echo_server.url, proxy=_with_password(tinyproxy, "nope")))
        assert info.value.status in (401, 407) and "wrong credentials" in str(info.value)
        assert "nope" not in str(info.value)
        with pytest.raises(ProxyError, match="refused the user name and password") as info:
            run(fa.connect(echo_server.url, proxy=_with_password(socks, "nope")))
        assert not info.value.retryable
    finally:
        tinyproxy.stop()
        socks.stop()


def test_proxy_not_listening_and_bad_proxy_url(echo_server, transport):
    from proxy_servers import free_port
    proxy = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionRefusedError, match="cannot connect to the proxy"):
        run(fa.connect(echo_server.url, ssl=transport.client_ssl, proxy=proxy))
    with pytest.raises(ValueError, match="scheme"):
        fa.connect(echo_server.url, proxy="ftp://127.0.0.1:21")


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
@pytest.mark.parametrize("transport", ["tls"], indirect=True)
def test_https_proxy_checks_both_certificates(echo_server, transport, ca, tmp_path, loop_kind):
    """The proxy's certificate against proxy_ssl, the server's (inside the tunnel) against
    ssl: a context that trusts neither fails each step."""
    proxy = start_https_proxy(tmp_path, ca)
    try:
        with pytest.raises(ssl.SSLCertVerificationError):    # the proxy's (default context)
            run(fa.connect(echo_server.url, ssl=transport.client_ssl, proxy=proxy.url),
                loop_kind)
        with pytest.raises(ssl.SSLCertVerificationError):    # the server's, inside the tunnel
            run(fa.connect(echo_server.url, ssl=ssl.create_default_context(), proxy=proxy.url,
                           proxy_ssl=trusting(ca)), loop_kind)
        proxy.wait_tunnels(1)             # the second got as far as the tunnel
    finally:
        proxy.stop()


def test_silent_proxy_times_out():
    import socket
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TimeoutError):
            run(fa.connect("ws://127.0.0.1:1/", proxy=proxy, handshake_timeout=0.3))


# ---------------------------------------------------------------- the environment

@pytest.fixture
def http_proxy(tmp_path):
    server = start_tinyproxy(tmp_path)
    yield server
    server.stop()


async def echo_once(url, transport, **kwargs):
    async with fa.connect(url, ssl=transport.client_ssl, **kwargs) as ws:
        await ws.send("env")
        assert await ws.recv(TIMEOUT) == "env"


def test_environment_proxy_and_no_proxy(http_proxy, echo_server, transport, monkeypatch):
    monkeypatch.setenv("wss_proxy" if transport.name == "tls" else "ws_proxy", http_proxy.url)
    run(echo_once(echo_server.url, transport))
    http_proxy.wait_tunnels(1)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    run(echo_once(echo_server.url, transport))
    assert http_proxy.tunnels() == 1                # the second went directly
    monkeypatch.delenv("no_proxy")
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")     # nothing listens there
    monkeypatch.delenv("wss_proxy" if transport.name == "tls" else "ws_proxy")
    run(echo_once(echo_server.url, transport, proxy=None))    # proxy=None ignores it


# ---------------------------------------------------------------- redirects

class Redirect:
    """Answers the opening handshake with a redirect to `location` (fixed later)."""

    def __init__(self, status=302):
        self.status = status
        self.location = ""
        self.requests = 0

    def on_request(self, conn, request):
        self.requests += 1
        response = Response(self.status, headers=[("Location", self.location)])
        conn.respond(response)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_redirect_is_followed(start_server, transport, loop_kind):
    target = start_server(Recorder(echo=True))
    redirect = Redirect(301)
    redirect.location = target.url.replace("ws", "http", 1)   # an http(s):// Location
    first = start_server(redirect)
    connecting = fa.connect(first.url, ssl=transport.client_ssl, proxy=None)

    async def main():
        async with connecting as ws:
            await ws.send("after the redirect")
            assert await ws.recv(TIMEOUT) == "after the redirect"

    run(main(), loop_kind)
    assert redirect.requests == 1
    assert connecting.url == target.url          # 301: reconnect there from now on


@pytest.mark.parametrize("transport", ["tls"], indirect=True)
def test_redirect_from_ws_to_wss_is_followed(start_server, transport, ca, tmp_path,
                                             monkeypatch):
    """ws:// may move to wss://: the default context checks the server (it trusts the test
    CA here through SSL_CERT_FILE, as it would a public CA)."""
    target = start_server(Recorder(echo=True))
    from conftest import ThreadedServer, Transport
    redirect = Redirect(308)
    redirect.location = target.url
    plain = ThreadedServer(redirect, Transport("clear", None, None))
    pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))

    async def main():
        async with fa.connect(plain.url, proxy=None) as ws:
            await ws.send("now over TLS")
            assert await ws.recv(TIMEOUT) == "now over TLS"   # target only speaks TLS

    try:
        run(main())
    finally:
        plain.stop()
    assert redirect.requests == 1


@pytest.mark.parametrize("transport", ["tls"], indirect=True)
def test_redirect_from_wss_to_ws_is_refused(start_server, transport):
    redirect = Redirect(307)
    redirect.location = "ws://127.0.0.1:9/"
    server = start_server(redirect)
    with pytest.raises(RedirectError, match="drop TLS"):
        run(fa.connect(server.url, ssl=transport.client_ssl, proxy=None))


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_redirect_loop_is_bounded(start_server, transport):
    redirect = Redirect(302)
    server = start_server(redirect)
    redirect.location = server.url
    with pytest.raises(RedirectError, match="more than 3 redirects"):
        run(fa.connect(server.url, proxy=None, max_redirects=3))
    assert redirect.requests == 4


# ---------------------------------------------------------------- reconnection

@pytest.fixture
def echo_process(tmp_path):
    server = EchoProcess(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_async_for_reconnects_after_a_restart(echo_process, loop_kind):
    waits: list[tuple[float, BaseException]] = []

    async def on_reconnecting(delay, cause):
        waits.append((delay, cause))
        if len(waits) == 3:       # the server is down: failed tries go on meanwhile
            await asyncio.get_running_loop().run_in_executor(None, echo_process.start)

    async def main():
        opened = []
        async for ws in fa.connect(echo_process.url, proxy=None, backoff=FAST,
                                   on_reconnecting=on_reconnecting):
            opened.append(ws)
            await ws.send(f"connection {len(opened)}")
            assert await ws.recv(TIMEOUT) == f"connection {len(opened)}"
            if len(opened) == 1:
                echo_process.kill()
                with pytest.raises(fa.ConnectionClosed) as info:
                    await ws.recv(TIMEOUT)
                assert info.value.code == 1006
            else:
                await ws.close()      # the application's close: the loop ends
        return opened

    opened = run(main(), loop_kind)
    assert len(opened) == 2 and opened[0] is not opened[1]
    assert isinstance(waits[0][1], fa.ConnectionClosedError)   # the lost connection
    assert waits[0][1].code == 1006
    assert all(isinstance(cause, ConnectionRefusedError) for _, cause in waits[1:])
    for attempt, (delay, _) in enumerate(waits):
        assert FAST.bound(attempt) * (1 - FAST.jitter) <= delay <= FAST.bound(attempt)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_callback_form_reconnects_after_a_restart(echo_process, loop_kind):
    class Client(Recorder):
        def __init__(self):
            super().__init__(echo=False)
            self.reconnecting = []

        def on_upgraded(self, conn):
            super().on_upgraded(conn)
            conn.send_text(f"hello {self.upgraded}")

        def on_reconnecting(self, conn, delay):
            self.reconnecting.append((conn, delay))
            if len(self.reconnecting) == 3:
                echo_process.start()      # blocks the loop a moment: fine for this test

    client = Client()

    async def main():
        first = await fa.connect(echo_process.url, client, proxy=None, reconnect=FAST)
        await until(lambda: client.frames)
        echo_process.kill()
        await until(lambda: client.upgraded == 2 and len(client.frames) == 2)
        assert client.conns[0] is first and client.conns[1] is not first
        client.conns[1].close()              # the application's close: no more tries
        await until(lambda: len(client.closed) == 2)
        await asyncio.sleep(FAST.max_delay * 2)
        return first

    first = run(main(), loop_kind)
    assert [f.data for f in client.frames] == [b"hello 1", b"hello 2"]
    assert client.closed[0][0] == 1006 and client.closed[1] == (1000, "")
    assert client.upgraded == 2 and len(client.reconnecting) == 3
    assert client.reconnecting[0][0] is first
    # The failed tries are reported with their own Connection and its error.
    assert all(isinstance(conn.error, ConnectionRefusedError)
               for conn, _ in client.reconnecting[1:])
    for attempt, (_, delay) in enumerate(client.reconnecting):
        assert delay <= FAST.bound(attempt)


async def until(predicate):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_async_for_stops(start_server, transport):
    server_side = Recorder(echo=True)
    server = start_server(server_side)
    waits = []

    async def main():
        count = 0
        async for ws in fa.connect(server.url, proxy=None, backoff=FAST,
                                   on_reconnecting=lambda d, c: waits.append(d)):
            count += 1
            await ws.send("one")
            assert await ws.recv(TIMEOUT) == "one"
            # the body ends with the WebSocket open: closed with 1000, no reconnection
        assert count == 1 and ws.close_code == 1000
        async for left in fa.connect(server.url, proxy=None, backoff=FAST):
            assert not left.closed
            break
        await asyncio.wait_for(left.wait_closed(), TIMEOUT)   # the generator's finalizer
        assert left.close_code == 1000

    run(main())
    assert waits == []


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_async_for_no_retry_after_403(start_server, transport):
    requests = []

    class Forbidden:
        def on_request(self, conn, request):
            requests.append(request)
            conn.respond(Response.text(403, "no\n"))

    server = start_server(Forbidden())
    waits = []

    async def main():
        async for _ in fa.connect(server.url, proxy=None, backoff=FAST,
                                  on_reconnecting=lambda d, c: waits.append(d)):
            pytest.fail("a 403 never gives a connection")

    with pytest.raises(InvalidStatus) as info:
        run(main())
    assert info.value.status == 403 and waits == [] and len(requests) == 1


def test_reconnection_arguments():
    async def main():
        async for _ in fa.connect("ws://127.0.0.1:9/", Recorder()):
            pass

    with pytest.raises(TypeError, match="without a handler"):
        run(main())
    with pytest.raises(ValueError, match="async for"):
        fa.connect("ws://127.0.0.1:9/", reconnect=True)

