"""The command line as a user meets it: `python -m fastws ...` run as a subprocess.

What a user checks is the exit status and what lands on stderr: usage errors are argparse's
(status 2), failures are one line saying what and where (status 1), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from conftest import Transport, wait_for

import fastws
from fastws import Connection, Frame, Loop, Request
from fastws.__main__ import build_parser

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0


def run_cli(*args: str, stdin: str | Path = "") -> subprocess.CompletedProcess[str]:
    """`python -m fastws ARGS` to completion; a hang fails the test instead of blocking it."""
    command = [sys.executable, "-m", "fastws", *args]
    try:
        if isinstance(stdin, Path):                   # a regular file, not a pipe
            with stdin.open() as file:
                return subprocess.run(command, cwd=ROOT, stdin=file, capture_output=True,
                                      text=True, timeout=TIMEOUT)
        return subprocess.run(command, cwd=ROOT, input=stdin, capture_output=True, text=True,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} still running after {TIMEOUT} s: {exc.stderr!r}")


def assert_one_line_failure(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert (result.returncode, result.stderr) == (1, message + "\n")
    assert result.stdout == ""


def assert_usage_error(result: subprocess.CompletedProcess[str], last_line: str) -> None:
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: python -m fastws")
    assert result.stderr.splitlines()[-1] == last_line
    assert "Traceback" not in result.stderr and result.stdout == ""


def read_line(stream: object, timeout: float = TIMEOUT) -> str:
    # poll(), not select(): a test process may hold descriptors past select()'s 1024.
    poller = select.poll()
    poller.register(stream, select.POLLIN)
    assert poller.poll(timeout * 1000), f"no output within {timeout} s"
    line: str = stream.readline()  # type: ignore[attr-defined]
    return line


@contextlib.contextmanager
def echo_server(*options: str) -> Iterator[str]:
    """`python -m fastws echo --port 0 OPTIONS`; yields its URL, then stops it with SIGTERM.

    It must exit 0 and log nothing at the default level, whatever the test's clients did.
    """
    server = subprocess.Popen([sys.executable, "-m", "fastws", "echo", "--port", "0", *options],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        banner = read_line(server.stdout)
        found = re.match(r"fastws echo server on (wss?://127\.0\.0\.1:\d+/) ", banner)
        assert found, banner
        yield found.group(1)
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=TIMEOUT)
    assert (server.returncode, errors) == (0, "")


@pytest.fixture(scope="module")
def pems(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: a certificate chain, its key, both in one file, another key, the CA."""
    folder = tmp_path_factory.mktemp("pems")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = {name: folder / f"{name}.pem" for name in ("cert", "key", "both", "other_key", "ca")}
    files["cert"].write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files["key"]))
    cert.private_key_and_cert_chain_pem.write_to_path(str(files["both"]))
    ca.issue_cert("elsewhere.test").private_key_pem.write_to_path(str(files["other_key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    return files


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused, and nobody else gets it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("command", [["echo"], ["client", "ws://127.0.0.1:1/"]])
def test_busy_poll_option(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(command).busy_poll == Loop.DEFAULT_BUSY_POLL * 1e6
    assert parser.parse_args([*command, "--busy-poll", "0"]).busy_poll == 0
    assert parser.parse_args([*command, "--busy-poll", "100"]).busy_poll == 100
    for bad in ("-1", "nan", "1e9", "fast"):
        with pytest.raises(SystemExit):
            parser.parse_args([*command, "--busy-poll", bad])
        assert "--busy-poll" in capsys.readouterr().err


def test_help_states_the_exit_statuses() -> None:
    result = run_cli("echo", "--help")
    assert result.returncode == 0
    assert "exit status: 0 when all went well" in result.stdout
    assert "2 for a usage error" in result.stdout


@pytest.mark.parametrize(("args", "last_line"), [
    (["echo", "--keyfile", "key.pem"],
     "python -m fastws echo: error: --keyfile needs --certfile (the certificate chain)"),
    (["echo", "--port", "65536"],
     "python -m fastws echo: error: argument --port: must be between 0 and 65535"),
    (["client", "http://127.0.0.1:9001/"],
     "python -m fastws client: error: argument url: 'http://127.0.0.1:9001/' is not a "
     "WebSocket URL: it starts with ws:// or wss://"),
    (["client", "ws://127.0.0.1:9001/#top"],
     "python -m fastws client: error: 'ws://127.0.0.1:9001/#top' has a fragment, which "
     "WebSocket URLs cannot have"),
    (["client", "ws://127.0.0.1:9001/", "--insecure"],
     "python -m fastws client: error: --cafile and --insecure apply to wss:// URLs only"),
    (["-v", "loud", "echo"],
     "python -m fastws: error: argument -v/--log-level: invalid choice: 'LOUD' "
     "(choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR')"),
], ids=["keyfile without certfile", "port", "http url", "fragment", "insecure ws", "log level"])
def test_usage_errors(args: list[str], last_line: str) -> None:
    # Before the fix, `echo --keyfile K` alone served ws:// and the run hit the timeout.
    assert_usage_error(run_cli(*args), last_line)


# ------------------------------------------------------------------ echo: certificates


def test_certfile_without_a_key(pems: dict[str, Path]) -> None:
    result = run_cli("echo", "--port", "0", "--certfile", str(pems["cert"]))
    assert_one_line_failure(
        result, f"{pems['cert']} holds no private key (give the key file with --keyfile)")


def test_key_that_does_not_match(pems: dict[str, Path]) -> None:
    result = run_cli("echo", "--port", "0", "--certfile", str(pems["cert"]),
                     "--keyfile", str(pems["other_key"]))
    assert_one_line_failure(result, f"the private key in {pems['other_key']} does not match "
                                    f"the certificate in {pems['cert']}")


def test_key_given_as_certificate(pems: dict[str, Path]) -> None:
    result = run_cli("echo", "--port", "0", "--certfile", str(pems["key"]))
    assert_one_line_failure(result, f"{pems['key']} holds no PEM certificate")


@pytest.mark.parametrize("missing", ["--certfile", "--keyfile"])
def test_missing_file_is_named(missing: str, pems: dict[str, Path], tmp_path: Path) -> None:
    files = {"--certfile": str(pems["cert"]), "--keyfile": str(pems["key"])}
    files[missing] = str(tmp_path / "nowhere.pem")
    result = run_cli("echo", "--port", "0", *(part for item in files.items() for part in item))
    assert_one_line_failure(result, f"cannot read {missing} {files[missing]}: "
                                    "no such file or directory")


def test_certfile_holding_the_key_too_serves_wss(pems: dict[str, Path]) -> None:
    with echo_server("--certfile", str(pems["both"])) as url:
        assert url.startswith("wss://")
        result = run_cli("client", url, "--cafile", str(pems["ca"]), stdin="hello\n")
    assert (result.returncode, result.stdout, result.stderr) == (0, "hello\n", "closed 1000\n")


# ------------------------------------------------------------------ echo: the network


def test_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("echo", "--port", str(port))
    assert_one_line_failure(result, f"cannot listen on 127.0.0.1:{port}: address already in use")


@pytest.mark.parametrize("command", [["echo", "--host", "no.such.host.invalid"],
                                     ["client", "ws://no.such.host.invalid/"]])
def test_unknown_host(command: list[str]) -> None:
    result = run_cli(*command)
    # The resolver's words vary ("name or service not known", "temporary failure ...").
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("cannot resolve no.such.host.invalid: ")
    assert result.stderr.count("\n") == 1, result.stderr


# ------------------------------------------------------------------ client


def test_client_connection_refused(unused_port: int) -> None:
    result = run_cli("client", f"ws://127.0.0.1:{unused_port}/")
    assert_one_line_failure(result, f"cannot connect to 127.0.0.1:{unused_port}: "
                                    "connection refused")


def test_client_tls_failure_says_why_once(pems: dict[str, Path]) -> None:
    with echo_server("--certfile", str(pems["cert"]), "--keyfile", str(pems["key"])) as url:
        result = run_cli("client", url)           # without --cafile: an unknown issuer
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("closed 1015 TLS handshake failed: [SSL: "
                                    "CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert result.stderr.count("\n") == 1
    assert result.stderr.count("CERTIFICATE_VERIFY_FAILED") == 1, result.stderr


@pytest.mark.parametrize("stdin", ["pipe", "file"])
def test_client_sends_stdin_lines(stdin: str, tmp_path: Path) -> None:
    # A line longer than one 64 KiB read, a CRLF line, and no newline at the end.
    text = "x" * 100_000 + "\ntwo\r\nlast"
    source: str | Path = text
    if stdin == "file":                  # epoll cannot watch a regular file
        source = tmp_path / "input.txt"
        source.write_bytes(text.encode())
    with echo_server() as url:
        result = run_cli("client", url, stdin=source)
    assert (result.returncode, result.stderr) == (0, "closed 1000\n")
    assert result.stdout.splitlines() == ["x" * 100_000, "two", "last"]


def test_client_ctrl_c_closes_normally() -> None:
    with echo_server() as url:
        client = subprocess.Popen([sys.executable, "-m", "fastws", "client", url], cwd=ROOT,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            assert client.stdin is not None
            client.stdin.write("hi\n")
            client.stdin.flush()
            assert read_line(client.stdout) == "hi\n"     # connected and echoing
            client.send_signal(signal.SIGINT)
            out, errors = client.communicate(timeout=TIMEOUT)
        finally:
            client.kill()
            client.wait()
    assert (client.returncode, out, errors) == (0, "", "closed 1000\n")


class PausedServer:
    """Upgrades with a small receive buffer, reads nothing until resumed, counts the text."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.received = 0

    def on_request(self, conn: Connection, request: Request) -> None:
        # Before data flows: the kernel then buffers a few MiB for us, not tens of MiB.
        conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        conn.upgrade(fastws.accept(request))
        conn.pause_reading()
        self.conn = conn

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.received += len(frame.data)


class Feed:
    """32 MiB of lines for the client's stdin, and how much of it the client has taken."""

    LINE = b"y" * (16 * 1024 - 1) + b"\n"
    COUNT = 2048

    def __init__(self, kind: str, folder: Path) -> None:
        self.kind = kind
        self.written = 0
        self.writer: threading.Thread | None = None
        if kind == "file":
            path = folder / "big.txt"
            path.write_bytes(self.LINE * self.COUNT)
            self.file = path.open("rb")

    def start(self, command: list[str]) -> subprocess.Popen[str]:
        stdin = self.file if self.kind == "file" else subprocess.PIPE
        client = subprocess.Popen(command, cwd=ROOT, stdin=stdin, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        if self.kind == "pipe":
            self.writer = threading.Thread(target=self._write, args=(client.stdin,), daemon=True)
            self.writer.start()
        return client

    def finish(self) -> None:
        """Wait for the writer to hand over its last line and close the pipe."""
        if self.writer is not None:
            self.writer.join(TIMEOUT)
            assert not self.writer.is_alive(), "the client stopped reading its stdin"
        else:
            self.file.close()

    def _write(self, pipe: Any) -> None:
        for _ in range(self.COUNT):             # blocks while the client does not read
            pipe.buffer.write(self.LINE)
            pipe.buffer.flush()
            self.written += len(self.LINE)
        pipe.close()

    def taken(self) -> int:
        if self.kind == "file":                 # the client's stdin shares our file offset
            return os.lseek(self.file.fileno(), 0, os.SEEK_CUR)
        return self.written


@pytest.mark.parametrize("kind", ["pipe", "file"])
def test_client_stops_reading_stdin_while_the_server_does_not_read(
        kind: str, start_server, transport: Transport, ca: trustme.CA, tmp_path: Path) -> None:
    handler = PausedServer()
    server = start_server(handler)
    options = ["--no-compression"]              # else these lines shrink to almost nothing
    if transport.client_ssl is not None:
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        options += ["--cafile", str(tmp_path / "ca.pem")]
    feed = Feed(kind, tmp_path)
    client = feed.start([sys.executable, "-m", "fastws", "client", server.url, *options])
    try:
        # The server has the connection (upgraded, not reading) before a plateau means
        # anything: a client still starting takes nothing either, and the pipe holds a few
        # lines before it reads one; resuming before the upgrade would resume nothing.
        wait_for(lambda: server.call(lambda: handler.conn is not None), TIMEOUT)
        taken, still = -1, 0
        deadline = time.monotonic() + TIMEOUT
        while (still < 10 or taken <= 0) and time.monotonic() < deadline:  # 0.5 s still
            time.sleep(0.05)
            now = feed.taken()
            taken, still = now, (still + 1 if now == taken else 0)
        # Held back by the write buffer's high water, not by the end of the input.
        assert 0 < taken < 16 * 1024 * 1024, taken
        server.call(lambda: handler.conn and handler.conn.resume_reading())
        feed.finish()
        client.wait(TIMEOUT)            # its stderr is one short line: no pipe can fill up
        assert client.stderr is not None
        errors = client.stderr.read()
    finally:
        client.kill()
        client.wait()
    assert (client.returncode, errors) == (0, "closed 1000\n")
    assert server.call(lambda: handler.received) == (len(Feed.LINE) - 1) * Feed.COUNT
