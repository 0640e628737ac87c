"""fastws behind nginx: the configuration of docs/nginx.md, run through a real nginx.

Needs Debian's nginx (`apt-get install -y nginx`); skipped when it is not installed. nginx
runs in the foreground (`daemon off;`) with every path it writes under tmp_path.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TIMEOUT, Recorder, ThreadedServer, Transport, run_until

import fastws
from fastws import Connection, Frame, OpCode, Request

DOC = Path(__file__).resolve().parent.parent / "docs" / "nginx.md"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


NGINX = nginx_binary()
pytestmark = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install -y nginx; .ci/run does)")


def doc_snippet() -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "docs/nginx.md should hold exactly one nginx block"
    return blocks[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class App:
    """Plain HTTP on GET /, WebSocket echo otherwise; records on the server's side."""

    def __init__(self) -> None:
        self.recorder = Recorder(echo=True)
        self.forwarded_for: list[str | None] = []

    def on_request(self, conn: Connection, request: Request) -> None:
        self.forwarded_for.append(request.headers.get("x-forwarded-for"))
        if request.upgrade:
            conn.upgrade(fastws.accept(request))
        else:
            conn.respond(fastws.Response.text(200, f"plain http {request.path}\n"))

    def on_upgraded(self, conn: Connection) -> None:
        self.recorder.on_upgraded(conn)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.recorder.on_frame(conn, frame)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.recorder.on_closed(conn, code, reason)


@pytest.fixture
def behind_nginx(tmp_path):
    """A fastws server on one port and nginx, configured from the doc, on another."""
    app = App()
    server = ThreadedServer(app, Transport("clear", None, None))
    nginx_port = free_port()
    snippet = doc_snippet()
    assert "listen 8080;" in snippet and "127.0.0.1:9001" in snippet
    snippet = (snippet.replace("listen 8080;", f"listen 127.0.0.1:{nginx_port};")
               .replace("127.0.0.1:9001", f"127.0.0.1:{server.port}"))
    user = "user root;" if os.geteuid() == 0 else ""   # workers must reach tmp_path
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
{user}
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log info;
events {{ worker_connections 128; }}
http {{
    access_log {tmp_path}/access.log;
    client_body_temp_path {tmp_path}/client_body;
    proxy_temp_path {tmp_path}/proxy;
    fastcgi_temp_path {tmp_path}/fastcgi;
    uwsgi_temp_path {tmp_path}/uwsgi;
    scgi_temp_path {tmp_path}/scgi;
{snippet}
}}
""")
    assert NGINX is not None
    check = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                            "-c", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                             "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert proc.poll() is None, (tmp_path / "error.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", nginx_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        yield app, nginx_port
    finally:
        proc.terminate()          # SIGTERM: nginx's fast shutdown
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
        server.stop()


class Client:
    """Sends two messages, measures round trips with AutoPing, then closes cleanly."""

    def __init__(self) -> None:
        self.messages: list[Frame] = []
        self.rtts: list[float] = []
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.add_stage(fastws.AutoPing(0.05), 0)
        conn.send_text("through nginx")
        conn.send_binary(bytes(range(256)) * 1000)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.messages.append(frame)
        self._maybe_close(conn)

    def on_rtt(self, conn: Connection, seconds: float) -> None:
        self.rtts.append(seconds)
        self._maybe_close(conn)

    def _maybe_close(self, conn: Connection) -> None:
        if len(self.messages) == 2 and len(self.rtts) >= 2 and conn.is_open:
            conn.close(1000, "done")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)


@pytest.mark.parametrize("compression", [True, False])
def test_echo_ping_and_close_through_nginx(behind_nginx, loop, compression):
    app, port = behind_nginx
    client = Client()
    conn = fastws.connect(f"ws://127.0.0.1:{port}/", client, loop=loop, compression=compression)
    run_until(loop, lambda: client.closed is not None)
    assert conn.error is None
    assert client.closed == (1000, "done")
    assert [(f.opcode, bytes(f.data)) for f in client.messages] == [
        (OpCode.TEXT, b"through nginx"), (OpCode.BINARY, bytes(range(256)) * 1000)]
    assert len(client.rtts) >= 2 and all(0 < rtt < TIMEOUT for rtt in client.rtts)
    run_until(loop, lambda: app.recorder.closed, timeout=TIMEOUT)   # the server's report
    assert app.recorder.closed == [(1000, "done")]
    assert app.forwarded_for == ["127.0.0.1"]


def test_plain_http_through_nginx(behind_nginx):
    app, port = behind_nginx
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        client.request("GET", "/status?x=1")
        response = client.getresponse()
        body = response.read()
    finally:
        client.close()
    assert response.status == 200
    assert body == b"plain http /status\n"
    assert response.getheader("Server", "").startswith("nginx")
    assert app.forwarded_for == ["127.0.0.1"]
