"""`python -m fastws chat`: the relay's rules, and its page in two headless Chromiums.

The relay runs as users start it (a subprocess). The browser test links two chat server
processes (two workers of one deployment, or two machines: each its own process and port)
through a real redis-server, opens the chat page of each in its own headless Chromium,
and drives the pages through the DevTools protocol as a person would: type, click send,
read the log.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_until
from redis_helpers import REDIS, ChatServer, RedisServer, child_env
from test_browser import CHROMIUM

import fastws
from fastws import CloseCode
from fastws.chat import room_of


class Member:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.closed: tuple[int, str] | None = None

    def on_frame(self, conn, frame):
        self.texts.append(frame.string_data)

    def on_closed(self, conn, code, reason):
        self.closed = (code, reason)


def test_room_names():
    assert room_of("/chat/lobby") == "lobby"
    assert room_of("/chat/caf%C3%A9") == "café"
    assert room_of("/chat/") is None and room_of("/lobby") is None
    assert room_of("/chat/" + "x" * 101) is None


def test_a_bad_redis_url_is_a_usage_error():
    result = subprocess.run([sys.executable, "-m", "fastws", "chat", "--port", "0", "--redis",
                             "http://127.0.0.1:6379/"], capture_output=True, text=True,
                            timeout=30, env=child_env())
    assert result.returncode == 2
    assert "--redis" in result.stderr and "not a Redis URL" in result.stderr


def test_the_relay_without_redis(tmp_path, loop):
    server = ChatServer(tmp_path / "chat.log")
    try:
        url = f"ws://127.0.0.1:{server.port}/chat/"
        people = [Member() for _ in range(3)]
        conns = [fastws.connect(url + room, member, loop=loop)
                 for member, room in zip(people, ["tea", "tea", "coffee"], strict=True)]
        run_until(loop, lambda: all(c.is_open for c in conns))
        # Two senders on two connections: the second sends once the first was relayed,
        # since nothing orders messages that race in on different sockets.
        conns[0].send_text('{"user": "ann", "text": "hi"}')
        run_until(loop, lambda: len(people[0].texts) == len(people[1].texts) == 1)
        conns[1].send_text("not json, relayed anyway")
        run_until(loop, lambda: len(people[0].texts) == len(people[1].texts) == 2)
        # Verbatim, to the whole room, the sender included, in order; not to other rooms.
        assert people[0].texts == people[1].texts == [
            '{"user": "ann", "text": "hi"}', "not json, relayed anyway"]
        assert people[2].texts == []
        conns[2].send_binary(b"\x00")
        run_until(loop, lambda: people[2].closed is not None)
        assert people[2].closed[0] == CloseCode.UNSUPPORTED_DATA
        # The page, and 404 for a WebSocket outside /chat/.
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=5) as page:
            assert b"fastws chat" in page.read()
        lost = Member()
        outside = fastws.connect(f"ws://127.0.0.1:{server.port}/elsewhere", lost, loop=loop)
        run_until(loop, lambda: outside.closed)
        assert "404" in str(outside.error)
    finally:
        server.stop()
    assert server.proc.returncode == 0


def test_a_slow_client_is_closed_and_memory_stays_bounded(tmp_path, loop):
    """10,000 messages of 1 KiB while one client never reads: the others get everything,
    the slow one is closed (1008, the default policy), the server's RSS stays bounded."""
    server = ChatServer(tmp_path / "chat.log", "--max-backlog", str(256 * 1024))
    try:
        port = server.port
        readers = [Member() for _ in range(3)]
        conns = [fastws.connect(f"ws://127.0.0.1:{port}/chat/feed", m, loop=loop,
                                compression=False) for m in readers]
        silent = socket.socket()
        silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        silent.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        silent.sendall(f"GET /chat/feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                       f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        run_until(loop, lambda: all(c.is_open for c in conns))
        for _ in range(20):
            loop.run_once(0.01)
        rss_before = server.rss_kib()
        publisher = conns[0]
        body = "x" * 1016
        sent = 0
        while sent < 10_000:                       # at most 100 of our own in flight
            if sent - len(readers[0].texts) < 100:
                publisher.send_text(f"{sent:08d}{body}")
                sent += 1
            else:
                loop.run_once(0.01)
        run_until(loop, lambda: all(len(m.texts) == 10_000 for m in readers), timeout=120)
        rss_after = server.rss_kib()
        expected = [f"{i:08d}{body}" for i in range(10_000)]
        assert all(m.texts == expected for m in readers)
        # Without the policy the server would hold 10 MiB for the silent client (the
        # old 64 MiB write cap); with it, at most max_backlog plus a message.
        print(f"server RSS {rss_before} KiB before, {rss_after} KiB after")
        assert rss_after - rss_before < 6 * 1024, (rss_before, rss_after)
        # The silent client was closed: after its backlog, the connection ends (the close
        # frame could not be sent to a client that does not read: TCP is dropped after
        # close_timeout).
        silent.settimeout(15)
        received = 0
        try:
            while chunk := silent.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        # What it got: the kernel's socket buffers (a few MiB on loopback) and the
        # backlog; not the 10 MiB published.
        assert received < 6 * 1024 * 1024, received
        assert "slow consumer" in server.output()
        silent.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------- the page, in Chromium

class DevTools:
    """Headless Chromium on one URL, driven through the DevTools protocol."""

    def __init__(self, url: str, tmp_path: Path, name: str) -> None:
        assert CHROMIUM is not None
        self.log_path = tmp_path / f"chromium-{name}.log"
        with open(self.log_path, "wb") as output:
            self.proc = subprocess.Popen(
                [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-extensions",
                 "--no-first-run", "--no-default-browser-check", "--mute-audio",
                 "--remote-debugging-port=0", "--remote-allow-origins=*",
                 f"--user-data-dir={tmp_path / ('profile-' + name)}", url],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.ids = 0
        deadline = time.monotonic() + 30
        while not (found := re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/",
                                      self.log_path.read_text(errors="replace"))):
            assert self.proc.poll() is None, self.log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "Chromium did not start its DevTools server"
            time.sleep(0.05)
        port = int(found.group(1))
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            if pages:
                break
            assert time.monotonic() < deadline, "no page target"
            time.sleep(0.05)
        from websockets.sync.client import connect
        self._exit = contextlib.ExitStack()
        self.ws = self._exit.enter_context(connect(pages[0]["webSocketDebuggerUrl"],
                                                   max_size=None))

    def evaluate(self, expression: str) -> object:
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": "Runtime.evaluate",
                                 "params": {"expression": expression,
                                            "returnByValue": True}}))
        while True:
            answer = json.loads(self.ws.recv(timeout=30))
            if answer.get("id") == self.ids:
                result = answer["result"]
                assert "exceptionDetails" not in result, result
                return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 20) -> None:
        """Poll (bounded) until `expression` is true; false while the page is loading."""
        guarded = f"(() => {{ try {{ return {expression}; }} catch (e) {{ return false; }} }})()"
        deadline = time.monotonic() + timeout
        while not self.evaluate(guarded):
            assert time.monotonic() < deadline, f"never true in the page: {expression}"
            time.sleep(0.05)

    def say(self, text: str) -> None:
        self.evaluate(f"document.getElementById('text').value = {json.dumps(text)};"
                      "document.getElementById('send').click();")

    def log(self) -> list[str]:
        """The lines of the chat log, as the page shows them."""
        lines = self.evaluate("Array.from(document.querySelectorAll('#log p'), p => p.innerText)")
        assert isinstance(lines, list)
        return lines

    def screenshot(self, path: Path) -> None:
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": "Page.captureScreenshot"}))
        while True:
            answer = json.loads(self.ws.recv(timeout=30))
            if answer.get("id") == self.ids:
                path.write_bytes(base64.b64decode(answer["result"]["data"]))
                return

    def stop(self) -> None:
        try:
            self._exit.close()
        finally:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            self.proc.wait(10)


@pytest.mark.skipif(CHROMIUM is None or REDIS is None,
                    reason="needs chromium and redis-server (.ci/run installs both)")
def test_two_browsers_on_two_servers_chat_through_redis(tmp_path):
    redis = RedisServer(tmp_path)
    servers = []
    browsers = []
    try:
        servers = [ChatServer(tmp_path / f"chat-{n}.log", "--redis", redis.url)
                   for n in ("a", "b")]
        for server, user in zip(servers, ("alice", "bob"), strict=True):
            browsers.append(DevTools(f"http://127.0.0.1:{server.port}/?room=lobby&user={user}",
                                     tmp_path, user))
        for browser in browsers:
            browser.wait("document.getElementById('status').textContent === 'in room lobby'")
        deadline = time.monotonic() + 10
        while redis.numsub("fastws:lobby") != 2:         # both servers joined the room
            assert time.monotonic() < deadline
            time.sleep(0.02)
        alice, bob = browsers
        alice.say("hello from alice")
        bob.say("hi alice, bob here <b>not bold</b>")
        for browser in browsers:
            browser.wait("document.querySelectorAll('#log p').length >= 2")
        for browser in browsers:
            lines = browser.log()
            assert sorted(lines) == ["alice: hello from alice",
                                     "bob: hi alice, bob here <b>not bold</b>"], lines
        alice.screenshot(tmp_path / "alice.png")
    finally:
        for browser in browsers:
            browser.stop()
        for server in servers:
            server.stop()
        redis.stop()
