"""Real proxy servers for the proxy tests, started on 127.0.0.1 from Debian's packages.

tinyproxy (HTTP CONNECT, optionally with Basic credentials), microsocks (SOCKS5, optionally
with a user name and password), and stunnel4 as the TLS front of a tinyproxy (an https://
proxy). Each runs in the foreground in its own process with its log in a file, so that a
test can show that its traffic went through it. `.ci/run` installs the packages; without
them the tests that need them are skipped, as the nginx and Chromium tests are.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

TINYPROXY = shutil.which("tinyproxy")
MICROSOCKS = shutil.which("microsocks")
STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path,
                   timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited: {log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{process.args[0]} is not listening on {port} after {timeout} s")


@dataclass
class ProxyServer:
    """A running proxy: its URL (with credentials when it wants them), its log, and the
    processes behind it."""

    name: str
    url: str
    log: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0

    def tunnels(self) -> int:
        """How many tunnels the proxy has opened so far, from its log."""
        text = self.log.read_text(errors="replace")
        if self.name.startswith("socks"):
            return text.count("connected to")
        return text.count("Established connection to host")

    def wait_tunnels(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the log shows `count` tunnels (logs are written a moment later)."""
        deadline = time.monotonic() + timeout
        while self.tunnels() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.tunnels() >= count, f"{self.name}: {self.tunnels()} tunnels in the log"

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def start_tinyproxy(directory: Path, *, credentials: tuple[str, str] | None = None,
                    name: str = "http") -> ProxyServer:
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed (apt-get install tinyproxy)")
    port = free_port()
    config = directory / f"tinyproxy-{port}.conf"
    log = directory / f"tinyproxy-{port}.log"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 30", "LogLevel Info",
             "MaxClients 100", "Allow 127.0.0.1", "DisableViaHeader Yes"]
    if credentials is not None:
        lines.append(f"BasicAuth {credentials[0]} {credentials[1]}")
    config.write_text("\n".join(lines) + "\n")
    with open(log, "wb") as out:
        process = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=out,
                                   stderr=subprocess.STDOUT)
    server = ProxyServer(name, _url("http", port, credentials), log, [process], port)
    try:
        wait_listening(port, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_microsocks(directory: Path, *, credentials: tuple[str, str] | None = None,
                     scheme: str = "socks5") -> ProxyServer:
    if MICROSOCKS is None:
        pytest.skip("microsocks is not installed (apt-get install microsocks)")
    port = free_port()
    log = directory / f"microsocks-{port}.log"
    args = [MICROSOCKS, "-i", "127.0.0.1", "-p", str(port)]
    if credentials is not None:
        args += ["-u", credentials[0], "-P", credentials[1]]
    with open(log, "wb") as out:
        # stdbuf: microsocks logs with stdio, which a file would buffer until it exits
        process = subprocess.Popen(["stdbuf", "-oL", "-eL", *args], stdout=out,
                                   stderr=subprocess.STDOUT)
    server = ProxyServer(scheme, _url(scheme, port, credentials), log, [process], port)
    try:
        wait_listening(port, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_https_proxy(directory: Path, ca, *,
                      credentials: tuple[str, str] | None = None) -> ProxyServer:
    """stunnel4 terminating TLS (a trustme certificate for 127.0.0.1) in front of tinyproxy."""
    if STUNNEL is None:
        pytest.skip("stunnel4 is not installed (apt-get install stunnel4)")
    backend = start_tinyproxy(directory, credentials=credentials, name="https")
    port = free_port()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    pem = directory / f"stunnel-{port}.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    config = directory / f"stunnel-{port}.conf"
    stunnel_log = directory / f"stunnel-{port}.log"
    config.write_text("\n".join([
        "foreground = yes", f"output = {stunnel_log}", "debug = 5", "pid =",
        "[https-proxy]", f"accept = 127.0.0.1:{port}", f"connect = 127.0.0.1:{backend.port}",
        f"cert = {pem}",
    ]) + "\n")
    with open(directory / f"stunnel-{port}.out", "wb") as out:
        process = subprocess.Popen([STUNNEL, str(config)], stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "HOME": str(directory)})
    backend.processes.append(process)
    backend.url = _url("https", port, credentials)
    backend.port = port
    try:
        wait_listening(port, process, stunnel_log)
    except BaseException:
        backend.stop()
        raise
    return backend


def _url(scheme: str, port: int, credentials: tuple[str, str] | None) -> str:
    user = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    return f"{scheme}://{user}127.0.0.1:{port}"
