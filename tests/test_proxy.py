"""Clients through real proxies: tinyproxy (HTTP CONNECT), stunnel4 + tinyproxy (an https://
proxy: TLS to the proxy, then the server's TLS inside it), microsocks (SOCKS5).

Every proxy x ws:// and wss:// x the Loop client and the blocking client echoes a text, a
binary and a 1 MiB message, and the proxy's log shows the tunnel. Then: credentials
(Basic, SOCKS5 user name and password), refusals with a clear error (407, a wrong password),
the environment (ws_proxy, wss_proxy, https_proxy, http_proxy for ws:// only, all_proxy,
no_proxy), and the sans-I/O pieces (proxy URLs, SOCKS framing) on their own.
"""

from __future__ import annotations

import ssl

import pytest
from conftest import Recorder, run_until
from proxy_servers import ProxyServer, start_https_proxy, start_microsocks, start_tinyproxy

import fastws
import fastws.sync
from fastws import Frame, OpCode
from fastws.exceptions import ProxyError
from fastws.proxy import SocksHandshake, parse_proxy, select_proxy

BIG = bytes(range(256)) * 4096          # 1 MiB
PROXY_VARIABLES = ["http_proxy", "https_proxy", "ws_proxy", "wss_proxy", "all_proxy",
                   "no_proxy", "socks_proxy"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No proxy from the machine's environment: each test sets what it needs."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


PROXIES = {
    "http": lambda tmp, ca: start_tinyproxy(tmp),
    "http-auth": lambda tmp, ca: start_tinyproxy(tmp, credentials=("alice", "s3cret")),
    "https": lambda tmp, ca: start_https_proxy(tmp, ca),
    "https-auth": lambda tmp, ca: start_https_proxy(tmp, ca, credentials=("carol", "pa55")),
    "socks5": lambda tmp, ca: start_microsocks(tmp),
    "socks5h": lambda tmp, ca: start_microsocks(tmp, scheme="socks5h"),
    "socks5-auth": lambda tmp, ca: start_microsocks(tmp, credentials=("bob", "hunter2")),
}


@pytest.fixture(params=list(PROXIES))
def proxy(request, tmp_path, ca):
    server = PROXIES[request.param](tmp_path, ca)
    yield server
    server.stop()


@pytest.fixture
def echo_server(start_server):
    return start_server(Recorder(echo=True))


def proxy_ssl(ca) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


# ---------------------------------------------------------------- echo through every proxy

def test_blocking_client_through_proxy(proxy: ProxyServer, echo_server, transport, ca):
    with fastws.sync.connect(echo_server.url, proxy=proxy.url, ssl=transport.client_ssl,
                             proxy_ssl=proxy_ssl(ca), timeout=10) as ws:
        ws.send("hello through the proxy")
        assert ws.recv(timeout=10) == "hello through the proxy"
        ws.send(b"\x00\x01binary")
        assert ws.recv(timeout=10) == b"\x00\x01binary"
        ws.send(BIG)
        assert ws.recv(timeout=10) == BIG
    assert ws.close_code == 1000
    proxy.wait_tunnels(1)


def test_loop_client_through_proxy(proxy: ProxyServer, echo_server, transport, ca, loop):
    received: list[Frame] = []

    class Client:
        def on_upgraded(self, conn):
            conn.send_text("hello through the proxy")
            conn.send_binary(b"\x00\x01binary")
            conn.send_binary(BIG)

        def on_frame(self, conn, frame):
            received.append(frame)
            if len(received) == 3:
                conn.close(1000, "done")

        def on_closed(self, conn, code, reason):
            closed.append((code, reason, conn.error))

    closed: list[tuple[int, str, BaseException | None]] = []
    fastws.connect(echo_server.url, Client(), loop=loop, proxy=proxy.url,
                   ssl=transport.client_ssl, proxy_ssl=proxy_ssl(ca))
    run_until(loop, lambda: closed)
    assert closed[0][:2] == (1000, "done"), closed
    assert [(f.opcode, f.data) for f in received] == [
        (OpCode.TEXT, b"hello through the proxy"), (OpCode.BINARY, b"\x00\x01binary"),
        (OpCode.BINARY, BIG)]
    proxy.wait_tunnels(1)


# ---------------------------------------------------------------- refusals

@pytest.fixture
def auth_tinyproxy(tmp_path):
    server = start_tinyproxy(tmp_path, credentials=("alice", "s3cret"))
    yield server
    server.stop()


@pytest.fixture
def auth_socks(tmp_path):
    server = start_microsocks(tmp_path, credentials=("bob", "hunter2"))
    yield server
    server.stop()


def _without_credentials(server: ProxyServer) -> str:
    scheme, rest = server.url.split("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def _with_password(server: ProxyServer, password: str) -> str:
    scheme, rest = server.url.split("://")
    user = rest.partition(":")[0]
    return f"{scheme}://{user}:{password}@{rest.rpartition('@')[2]}"


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_proxy_wants_credentials_407(auth_tinyproxy, echo_server):
    with pytest.raises(ProxyError) as info:
        fastws.sync.connect(echo_server.url, proxy=_without_credentials(auth_tinyproxy)).open()
    assert info.value.status == 407
    assert "407" in str(info.value) and "credentials" in str(info.value)
    assert not info.value.retryable


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_proxy_wrong_password(auth_tinyproxy, echo_server):
    with pytest.raises(ProxyError) as info:
        fastws.sync.connect(echo_server.url, proxy=_with_password(auth_tinyproxy, "nope")).open()
    # tinyproxy answers a wrong password with 401 (and none at all with 407)
    assert info.value.status in (401, 407)
    assert "wrong credentials" in str(info.value)
    assert "nope" not in str(info.value)            # the password is never shown


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_loop_client_proxy_refusal_reports_1006_with_status(auth_tinyproxy, echo_server, loop):
    client = Recorder()
    conn = fastws.connect(echo_server.url, client, loop=loop,
                          proxy=_without_credentials(auth_tinyproxy))
    run_until(loop, lambda: client.closed)
    code, reason = client.closed[0]
    assert code == 1006 and "407" in reason
    assert isinstance(conn.error, ProxyError) and conn.error.status == 407
    assert client.upgraded == 0


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_socks_wrong_password(auth_socks, echo_server, loop):
    with pytest.raises(ProxyError, match="refused the user name and password"):
        fastws.sync.connect(echo_server.url, proxy=_with_password(auth_socks, "nope")).open()
    client = Recorder()
    conn = fastws.connect(echo_server.url, client, loop=loop,
                          proxy=_with_password(auth_socks, "nope"))
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == 1006
    assert "user name and password" in client.closed[0][1]
    assert isinstance(conn.error, ProxyError) and not conn.error.retryable


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_socks_without_credentials_when_required(auth_socks, echo_server):
    with pytest.raises(ProxyError, match="may want credentials"):
        fastws.sync.connect(echo_server.url, proxy=_without_credentials(auth_socks)).open()


def test_proxy_not_listening(echo_server, transport):
    from proxy_servers import free_port
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConnectionRefusedError, match=r"cannot connect to 127\.0\.0\.1"):
        fastws.sync.connect(echo_server.url, proxy=url, ssl=transport.client_ssl).open()


# ---------------------------------------------------------------- the environment

@pytest.fixture
def http_proxy(tmp_path):
    server = start_tinyproxy(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def socks_proxy(tmp_path):
    server = start_microsocks(tmp_path)
    yield server
    server.stop()


def _echo_once(url: str, transport) -> None:
    with fastws.sync.connect(url, ssl=transport.client_ssl, timeout=10) as ws:
        ws.send("env")
        assert ws.recv(timeout=10) == "env"


@pytest.mark.parametrize("variable", ["ws_proxy|wss_proxy", "https_proxy", "all_proxy"])
def test_environment_proxy_is_used(variable, http_proxy, echo_server, transport, monkeypatch):
    names = variable.split("|")
    name = names[0] if transport.name == "clear" or len(names) == 1 else names[1]
    monkeypatch.setenv(name, http_proxy.url)
    _echo_once(echo_server.url, transport)
    http_proxy.wait_tunnels(1)


def test_http_proxy_variable_is_for_ws_only(http_proxy, echo_server, transport, monkeypatch):
    monkeypatch.setenv("http_proxy", http_proxy.url)
    _echo_once(echo_server.url, transport)
    expected = 1 if transport.name == "clear" else 0
    if expected:
        http_proxy.wait_tunnels(1)
    assert http_proxy.tunnels() == expected


def test_no_proxy_bypasses(http_proxy, echo_server, transport, monkeypatch):
    monkeypatch.setenv("all_proxy", http_proxy.url)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.1")
    _echo_once(echo_server.url, transport)
    assert http_proxy.tunnels() == 0


def test_proxy_none_ignores_the_environment(http_proxy, echo_server, transport, monkeypatch,
                                             loop):
    monkeypatch.setenv("all_proxy", "http://127.0.0.1:9")   # nothing listens there
    with fastws.sync.connect(echo_server.url, ssl=transport.client_ssl, proxy=None) as ws:
        ws.send("direct")
        assert ws.recv(timeout=10) == "direct"


def test_loop_client_takes_the_environment(socks_proxy, echo_server, transport, monkeypatch,
                                           loop):
    monkeypatch.setenv("all_proxy", socks_proxy.url)
    client = Recorder()
    fastws.connect(echo_server.url, client, loop=loop, ssl=transport.client_ssl)
    run_until(loop, lambda: client.upgraded)
    client.conns[0].close()
    run_until(loop, lambda: client.closed)
    socks_proxy.wait_tunnels(1)


# ---------------------------------------------------------------- sans I/O

def test_parse_proxy():
    proxy = parse_proxy("http://us%40er:p%3Ass@proxy.example:3128")
    assert (proxy.scheme, proxy.host, proxy.port) == ("http", "proxy.example", 3128)
    assert (proxy.username, proxy.password) == ("us@er", "p:ss")
    assert str(proxy) == "http://us@er@proxy.example:3128"       # no password in messages
    assert parse_proxy("https://p").port == 443
    assert parse_proxy("socks5h://p").port == 1080
    assert parse_proxy("HTTP://p").scheme == "http"
    for bad in ["ftp://p:21", "http://", "http://p:99999", "http://p/path", "p:3128"]:
        with pytest.raises(ValueError):
            parse_proxy(bad)
    with pytest.raises(ValueError) as info:
        parse_proxy("gopher://user:secret@p")
    assert "secret" not in str(info.value)


def test_select_proxy_settings(monkeypatch):
    assert select_proxy(None, secure=True, host="h", port=1) is None
    assert select_proxy(False, secure=True, host="h", port=1) is None
    assert select_proxy("socks5://p:1", secure=False, host="h", port=1).scheme == "socks5"
    assert select_proxy(True, secure=True, host="h", port=1) is None     # nothing set
    monkeypatch.setenv("wss_proxy", "http://ws-specific:1")
    monkeypatch.setenv("https_proxy", "http://https-proxy:1")
    assert select_proxy(True, secure=True, host="h", port=1).host == "ws-specific"
    monkeypatch.setenv("no_proxy", "h")
    assert select_proxy(True, secure=True, host="h", port=1) is None
    with pytest.raises(TypeError):
        select_proxy(1, secure=True, host="h", port=1)  # type: ignore[arg-type]


def test_socks5_replies_in_pieces():
    """socksio wants each reply whole: the framing here must wait for all of it."""
    handshake = SocksHandshake(parse_proxy("socks5h://u:pw@p"), "example.com", 443)
    assert handshake.data_to_send() == b"\x05\x02\x00\x02"
    assert not handshake.receive_data(b"\x05")
    assert not handshake.receive_data(b"\x02")             # user name and password, please
    assert handshake.data_to_send() == b"\x01\x01u\x02pw"
    assert not handshake.receive_data(b"\x01\x00")         # accepted
    assert handshake.data_to_send() == b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    reply = b"\x05\x00\x00\x03\x04host\x12\x34"            # a domain-name bound address
    for byte in reply[:-1]:
        assert not handshake.receive_data(bytes([byte]))
    assert handshake.receive_data(reply[-1:] + b"first")
    assert handshake.tail == b"first"


def test_socks5_refusal_and_socks4():
    handshake = SocksHandshake(parse_proxy("socks5://p"), "10.0.0.1", 80)
    handshake.data_to_send()
    handshake.receive_data(b"\x05\x00")
    handshake.data_to_send()
    with pytest.raises(ProxyError, match="connection refused"):
        handshake.receive_data(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
    socks4 = SocksHandshake(parse_proxy("socks4://p"), "h", 80, resolved="127.0.0.1")
    assert socks4.data_to_send() == b"\x04\x01\x00\x50\x7f\x00\x00\x01fastws\x00"
    assert socks4.receive_data(b"\x00\x5a\x00\x00\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="socks4a"):
        SocksHandshake(parse_proxy("socks4://p"), "name.example", 80)


# ---------------------------------------------------------------- the command line

def _cli(*args: str, env: dict[str, str] | None = None, stdin: str = ""):
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    environment = {key: value for key, value in os.environ.items()
                   if key.lower() not in PROXY_VARIABLES}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "fastws", "client", *args], cwd=root,
                          input=stdin, capture_output=True, text=True, timeout=30,
                          env=environment)


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_cli_client_through_a_proxy(http_proxy, socks_proxy, echo_server):
    result = _cli(echo_server.url, "--proxy", socks_proxy.url, stdin="one\ntwo\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "one\ntwo\n", "closed 1000\n")
    socks_proxy.wait_tunnels(1)
    # From the environment by default, and --no-proxy ignores it.
    result = _cli(echo_server.url, env={"ws_proxy": http_proxy.url}, stdin="env\n")
    assert (result.returncode, result.stdout) == (0, "env\n")
    http_proxy.wait_tunnels(1)
    result = _cli(echo_server.url, "--no-proxy", env={"ws_proxy": "http://127.0.0.1:9"},
                  stdin="direct\n")
    assert (result.returncode, result.stdout) == (0, "direct\n")


@pytest.mark.parametrize("transport", ["clear"], indirect=True)
def test_cli_client_proxy_refusal(auth_tinyproxy, echo_server):
    result = _cli(echo_server.url, "--proxy", _without_credentials(auth_tinyproxy))
    assert result.returncode == 1
    assert "407 Proxy Authentication Required" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


# ---------------------------------------------------------------- a proxy that cannot help

def test_proxy_cannot_reach_the_server(http_proxy, socks_proxy, loop):
    from proxy_servers import free_port
    url = f"ws://127.0.0.1:{free_port()}/"          # nothing listens there
    with pytest.raises(ProxyError) as info:
        fastws.sync.connect(url, proxy=http_proxy.url).open()
    assert info.value.status is not None and info.value.status >= 500
    assert info.value.retryable                     # the server may come back
    with pytest.raises(ProxyError, match="connection refused") as info:
        fastws.sync.connect(url, proxy=socks_proxy.url).open()
    assert info.value.retryable
    client = Recorder()
    conn = fastws.connect(url, client, loop=loop, proxy=socks_proxy.url)
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == 1006 and isinstance(conn.error, ProxyError)


def test_silent_proxy_times_out(loop):
    import socket
    with socket.socket() as silent:                 # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        proxy = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(TimeoutError):
            fastws.sync.connect("ws://127.0.0.1:1/", proxy=proxy, timeout=0.3).open()
        client = Recorder()
        conn = fastws.connect("ws://127.0.0.1:1/", client, loop=loop, proxy=proxy,
                              handshake_timeout=0.3)
        run_until(loop, lambda: client.closed)
        assert client.closed[0] == (1006, "opening handshake timed out")
        assert isinstance(conn.error, TimeoutError)
