"""A real browser against `python -m fastws echo`: headless Chromium (Debian's `chromium`).

Needs `chromium` (`apt-get install -y chromium`; .ci/run installs it); skipped when no
binary is found. The echo server runs as a subprocess (the CLI, exactly as users start it).
The test serves a small page from a stdlib HTTP server in a thread; the page's JavaScript
opens a WebSocket to the echo server as browsers do (Chromium offers
`permessage-deflate; client_max_window_bits`), sends text and binary messages, checks every
echo, closes with 1000 and POSTs a JSON report back to the test's HTTP server.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fastws


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return None


CHROMIUM = chromium_binary()
# The issue asks for a test that runs when Chromium is installed; .ci/run installs it, so
# in CI this never skips. Elsewhere a missing browser is reported as a skip, not a pass.
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install -y chromium; .ci/run does)")

SERVER_START_TIMEOUT = 10.0
RESULT_TIMEOUT = 60.0

# The page: everything is generated in the browser (deterministically), sent in order, and
# each echo compared with what was sent; the report goes back with a POST to /result.
PAGE = """<!doctype html>
<meta charset="utf-8"><title>fastws browser test</title>
<script>
"use strict";
const WS_URL = %(ws_url)s;
const result = {extensions: null, protocol: null, opened: false, errors: [],
                checks: [], close: null};
let reported = false;
function report() {
  if (reported) return;
  reported = true;
  fetch("/result", {method: "POST", headers: {"Content-Type": "application/json"},
                    body: JSON.stringify(result)});
}
window.onerror = (message) => { result.errors.push("page error: " + message); report(); };
setTimeout(() => { result.errors.push("page timeout"); report(); }, 45000);

// xorshift32: "random-ish" but reproducible data.
let seed = 0x9e3779b9;
function next() {
  seed ^= seed << 13; seed >>>= 0;
  seed ^= seed >>> 17;
  seed ^= seed << 5; seed >>>= 0;
  return seed;
}
function randomText(n) {
  // ASCII, Latin-1, Cyrillic, CJK and astral characters: incompressible-ish UTF-8.
  const pools = [[0x20, 0x7e], [0xa0, 0xff], [0x400, 0x4ff], [0x4e00, 0x9fff],
                 [0x1f300, 0x1f64f]];
  const parts = [];
  for (let i = 0; i < n; i++) {
    const [lo, hi] = pools[next() %% pools.length];
    parts.push(String.fromCodePoint(lo + next() %% (hi - lo + 1)));
  }
  return parts.join("");
}
function bytes(n, fill) {
  const array = new Uint8Array(n);
  for (let i = 0; i < n; i++) array[i] = fill(i);
  return array.buffer;
}

const messages = [
  ["ascii", "hello, fastws"],
  ["non-ascii", "h\\u00e9llo \\u2713 \\ud83c\\udf89"],
  ["empty text", ""],
  ["large compressible text", "The quick brown fox jumps over the lazy dog. ".repeat(4600)],
  ["random-ish text", randomText(64 * 1024)],
  ["bytes 0..255", bytes(256, (i) => i)],
  ["empty binary", new ArrayBuffer(0)],
  ["large compressible binary", bytes(300 * 1024, (i) => (i * 7) %% 251 & 0xf0)],
  ["large random binary", bytes(512 * 1024, () => next() & 0xff)],
  ["after large", "still in sync"],
];

function describe(value) {
  return typeof value === "string" ? "text(" + value.length + " chars)"
                                   : "binary(" + value.byteLength + " bytes)";
}
function compare(sent, got) {
  if (typeof sent === "string") {
    if (typeof got !== "string") return "expected text, got " + describe(got);
    if (sent === got) return null;
    let i = 0;
    while (i < sent.length && sent[i] === got[i]) i++;
    return "text differs: sent " + sent.length + " chars, got " + got.length +
           ", first difference at " + i;
  }
  if (!(got instanceof ArrayBuffer)) return "expected binary, got " + describe(got);
  const a = new Uint8Array(sent), b = new Uint8Array(got);
  let i = 0;
  while (i < a.length && a[i] === b[i]) i++;
  if (i === a.length && a.length === b.length) return null;
  return "binary differs: sent " + a.length + " bytes, got " + b.length +
         ", first difference at " + i;
}

const ws = new WebSocket(WS_URL);
ws.binaryType = "arraybuffer";
let received = 0;
ws.onopen = () => {
  result.opened = true;
  result.extensions = ws.extensions;
  result.protocol = ws.protocol;
  for (const [, value] of messages) ws.send(value);
};
ws.onmessage = (event) => {
  if (received >= messages.length) {
    result.errors.push("unexpected extra message: " + describe(event.data));
    return;
  }
  const [name, sent] = messages[received++];
  result.checks.push({name: name, sent: describe(sent), got: describe(event.data),
                      error: compare(sent, event.data)});
  if (received === messages.length) ws.close(1000, "done");
};
ws.onerror = () => { result.errors.push("error event (readyState " + ws.readyState + ")"); };
ws.onclose = (event) => {
  result.close = {code: event.code, reason: event.reason, wasClean: event.wasClean};
  report();
};
</script>
"""

EXPECTED_CHECKS = 10


class EchoServer:
    """`python -m fastws echo` in a subprocess, listening on 127.0.0.1."""

    def __init__(self, log: Path, *extra: str) -> None:
        self.log_path = log
        # The same fastws as this test imported, whatever the working directory.
        env = dict(os.environ)
        package_parent = str(Path(fastws.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [package_parent, os.environ.get("PYTHONPATH")]))
        # --port 0: the kernel picks a free port and the CLI prints it (no race for it).
        with open(log, "wb") as output:         # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "fastws", "echo", "--host", "127.0.0.1", "--port", "0",
                 *extra],
                stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            self.port = self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert self.proc.poll() is None, f"echo server exited: {self.output()}"
            found = re.search(r"fastws echo server on ws://127\.0\.0\.1:(\d+)/", self.output())
            if found:
                port = int(found.group(1))
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return port
                except OSError:
                    pass
            assert time.monotonic() < deadline, f"echo server did not listen: {self.output()}"
            time.sleep(0.05)      # bounded poll for the listener; the assert above fails it

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)       # graceful shutdown in the CLI
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class PageServer:
    """Serves the test page on GET / and receives the page's report on POST /result."""

    def __init__(self, page: str) -> None:
        self.result: dict | None = None
        self.received = threading.Event()
        body = page.encode()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(body)
                else:
                    self.send_error(404)

            def do_POST(self) -> None:
                if self.path != "/result":
                    self.send_error(404)
                    return
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                self.send_response(204)
                self.end_headers()
                if owner.result is None:
                    owner.result = json.loads(data)
                    owner.received.set()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(10)


class Chromium:
    """Headless Chromium on one URL, in its own process group with a throwaway profile."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        assert CHROMIUM is not None
        self.log_path = tmp_path / "chromium.log"
        with open(self.log_path, "wb") as output:
            self.proc = subprocess.Popen(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--no-first-run", "--no-default-browser-check", "--mute-audio",
                 "--password-store=basic", "--use-mock-keychain",
                 f"--user-data-dir={tmp_path / 'profile'}", url],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """SIGTERM the whole group, then SIGKILL what is left; reap the browser process."""
        pgid = self.proc.pid                 # start_new_session: the leader's pid is the group
        try:
            os.killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            os.killpg(pgid, signal.SIGKILL)  # helpers that outlived the browser process
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while True:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            assert time.monotonic() < deadline, "chromium processes remain after SIGKILL"
            time.sleep(0.05)      # bounded poll for the process group to be gone


def run_page(tmp_path: Path, *server_args: str) -> tuple[dict, EchoServer]:
    """Start the echo server, the page server and Chromium; return the page's report."""
    echo = EchoServer(tmp_path / "echo.log", *server_args)
    try:
        page = PageServer(PAGE % {"ws_url": json.dumps(f"ws://127.0.0.1:{echo.port}/")})
        try:
            browser = Chromium(page.url, tmp_path)
            try:
                got = page.received.wait(RESULT_TIMEOUT)
                alive = browser.proc.poll() is None
            finally:
                browser.stop()
            assert got, (f"no report from the page within {RESULT_TIMEOUT} s "
                         f"(chromium {'running' if alive else 'exited'}); chromium output:\n"
                         f"{browser.output()}\necho server output:\n{echo.output()}")
            assert page.result is not None
            assert echo.proc.poll() is None, f"echo server died: {echo.output()}"
            return page.result, echo
        finally:
            page.stop()
    finally:
        echo.stop()


def check_echoes(result: dict) -> None:
    assert result["opened"], f"the WebSocket never opened: {result}"
    assert result["errors"] == [], result["errors"]
    failed = [check for check in result["checks"] if check["error"] is not None]
    assert failed == [], "echoes that differ: " + json.dumps(failed, indent=1)
    names = [check["name"] for check in result["checks"]]
    assert len(names) == EXPECTED_CHECKS, f"only {len(names)} echoes came back: {names}"
    assert result["close"] is not None, "no close event"
    assert result["close"]["code"] == 1000, result["close"]
    assert result["close"]["wasClean"] is True, result["close"]


def test_chromium_echo_with_permessage_deflate(tmp_path):
    result, _ = run_page(tmp_path)
    extensions = result["extensions"] or ""
    assert "permessage-deflate" in extensions, f"ws.extensions is {extensions!r}"
    check_echoes(result)


def test_chromium_echo_without_compression(tmp_path):
    result, _ = run_page(tmp_path, "--no-compression")
    assert result["extensions"] == "", f"ws.extensions is {result['extensions']!r}"
    check_echoes(result)
