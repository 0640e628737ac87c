"""A real uvicorn running a Starlette app (tests/asgi_app.py) with
`--ws fastws.uvicorn:WebSocketProtocol`, on asyncio's loop and on uvloop, in the clear and
over TLS, driven by the websockets library's client.

uvicorn is started as users start it (`python -m uvicorn ... --port 0`), and the port is
read from its log line.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

import fastws

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

TESTS = Path(__file__).resolve().parent
START_TIMEOUT = 20.0
MiB = 1024 * 1024


class Uvicorn:
    """`python -m uvicorn asgi_app:app --ws fastws.uvicorn:WebSocketProtocol` in a subprocess."""

    def __init__(self, log: Path, loop: str, *extra: str) -> None:
        self.log_path = log
        env = dict(os.environ)
        package_parent = str(Path(fastws.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        with open(log, "wb") as output:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "asgi_app:app", "--app-dir", str(TESTS),
                 "--host", "127.0.0.1", "--port", "0", "--loop", loop,
                 "--ws", "fastws.uvicorn:WebSocketProtocol", *extra],
                stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"uvicorn exited: {self.output()}"
            found = re.search(r"Uvicorn running on https?://127\.0\.0\.1:(\d+)", self.output())
            if found:
                return int(found.group(1))
            assert time.monotonic() < deadline, f"uvicorn did not start: {self.output()}"
            time.sleep(0.05)      # bounded poll for the log line

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture(scope="module", params=[("asyncio", "clear"), ("asyncio", "tls"),
                                        ("uvloop", "clear"), ("uvloop", "tls")],
                ids=lambda p: "-".join(p))
def server(request, ca, tmp_path_factory):
    loop, mode = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    tmp = tmp_path_factory.mktemp(f"uvicorn-{loop}-{mode}")
    extra: list[str] = ["--ws-max-size", str(2 * MiB)]
    client_ssl = None
    if mode == "tls":
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_pem.write_to_path(tmp / "key.pem")
        cert.cert_chain_pems[0].write_to_path(tmp / "cert.pem")
        extra += ["--ssl-keyfile", str(tmp / "key.pem"), "--ssl-certfile", str(tmp / "cert.pem")]
        client_ssl = ssl.create_default_context()
        ca.configure_trust(client_ssl)
    uvicorn = Uvicorn(tmp / "uvicorn.log", loop, *extra)
    scheme = "wss" if mode == "tls" else "ws"
    uvicorn.url = f"{scheme}://127.0.0.1:{uvicorn.port}"
    uvicorn.http = f"{'https' if mode == 'tls' else 'http'}://127.0.0.1:{uvicorn.port}"
    uvicorn.client_ssl = client_ssl
    yield uvicorn
    uvicorn.stop()
    assert "Traceback" not in uvicorn.output(), uvicorn.output()


def open_ws(server, path, **kwargs):
    return connect(server.url + path, ssl=server.client_ssl, open_timeout=10,
                   close_timeout=10, **kwargs)


def test_echo_text_and_bytes(server):
    with open_ws(server, "/echo", max_size=2 * MiB) as ws:
        ws.send("hello, uvicorn")
        assert ws.recv(timeout=10) == "hello, uvicorn"
        ws.send(b"\x00\x01\xfe\xff")
        assert ws.recv(timeout=10) == b"\x00\x01\xfe\xff"
        ws.send("")
        assert ws.recv(timeout=10) == ""
        ws.send(["frag", "mented"])
        assert ws.recv(timeout=10) == "fragmented"
        big = os.urandom(MiB)
        ws.send(big)
        assert ws.recv(timeout=30) == big
        text = "é" * (MiB // 2)                 # 1 MiB of UTF-8
        ws.send(text)
        assert ws.recv(timeout=30) == text


def test_permessage_deflate(server):
    with open_ws(server, "/echo") as ws:
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        text = "The quick brown fox jumps over the lazy dog. " * 2000
        ws.send(text)
        assert ws.recv(timeout=10) == text
    with open_ws(server, "/echo", compression=None) as ws:
        assert ws.protocol.extensions == []
        ws.send("uncompressed")
        assert ws.recv(timeout=10) == "uncompressed"


def test_message_over_ws_max_size_closes_with_1009(server):
    with open_ws(server, "/echo", max_size=4 * MiB) as ws:
        ws.send(b"x" * (2 * MiB + 1))
        with pytest.raises(ConnectionClosed) as raised:
            ws.recv(timeout=10)
        assert raised.value.rcvd is not None and raised.value.rcvd.code == 1009


def test_subprotocol_selection(server):
    with open_ws(server, "/subprotocol",
                 subprotocols=["v9.unknown", "v1.fastws.test", "v2.fastws.test"]) as ws:
        assert ws.subprotocol == "v1.fastws.test"
        assert ws.recv(timeout=10) == "chosen: v1.fastws.test"
    with open_ws(server, "/subprotocol") as ws:
        assert ws.subprotocol is None
        assert ws.recv(timeout=10) == "chosen: None"


def test_close_from_the_app(server):
    with open_ws(server, "/close-by-app") as ws:
        ws.send("please close")
        with pytest.raises(ConnectionClosed) as raised:
            ws.recv(timeout=10)
    assert raised.value.rcvd.code == 4001 and raised.value.rcvd.reason == "app says bye"


def test_close_from_the_client(server):
    with open_ws(server, "/echo") as ws:
        ws.send("x")
        ws.recv(timeout=10)
        ws.close(4002, "client says bye")
    assert ws.protocol.close_rcvd.code == 4002            # echoed by the server
    deadline = time.monotonic() + 10
    while True:
        context = server.client_ssl
        with urllib.request.urlopen(server.http + "/closes", timeout=10, context=context) as r:
            closes = json.loads(r.read())
        if [4002, "client says bye"] in closes:
            break
        assert time.monotonic() < deadline, closes
        time.sleep(0.05)      # bounded poll: the app records it after the close


def test_rejection_before_accept_is_403(server):
    with pytest.raises(InvalidStatus) as raised:
        open_ws(server, "/reject")
    assert raised.value.response.status_code == 403


def test_denial_response(server):
    with pytest.raises(InvalidStatus) as raised:
        open_ws(server, "/deny")
    response = raised.value.response
    assert response.status_code == 401 and response.body == b"go away\n"


def test_invalid_upgrade_is_answered_before_the_app_runs(server):
    import http.client
    if server.client_ssl is not None:
        client = http.client.HTTPSConnection("127.0.0.1", server.port,
                                             context=server.client_ssl, timeout=10)
    else:
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    client.request("GET", "/echo", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                            "Sec-WebSocket-Version": "13"})    # no key
    response = client.getresponse()
    assert response.status == 400
    client.close()


def test_shutdown_closes_with_1012(tmp_path):
    uvicorn = Uvicorn(tmp_path / "uvicorn.log", "asyncio")
    try:
        with connect(f"ws://127.0.0.1:{uvicorn.port}/echo", open_timeout=10) as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
            uvicorn.proc.send_signal(signal.SIGINT)
            with pytest.raises(ConnectionClosed) as raised:
                ws.recv(timeout=10)
        assert raised.value.rcvd is not None and raised.value.rcvd.code == 1012
        assert uvicorn.proc.wait(15) == 0
    finally:
        uvicorn.stop()
