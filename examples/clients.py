"""The clients of docs/clients.md: blocking, reconnecting (blocking, Loop, asyncio), via a proxy.

Starts a fastws server on 127.0.0.1 (an echo at /echo, a redirect from /old to /echo, and
a /restart that closes with 1012 as a server going down for a restart does), then:

1. a blocking client (fastws.sync) that follows the redirect, echoes and pings;
2. a reconnecting blocking client: `for ws in fastws.sync.connect(...)`;
3. a reconnecting Loop client: `fastws.connect(..., reconnect=...)` and `on_reconnecting`;
4. a reconnecting asyncio client: `async for ws in fastws.asyncio.connect(...)`;
5. a blocking and an asyncio client through tinyproxy, when tinyproxy is installed.

    python examples/clients.py
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import fastws
import fastws.asyncio
import fastws.sync
from fastws import Frame, OpCode, Response


class Server:
    def on_request(self, conn: fastws.Connection, request: fastws.Request) -> None:
        if request.path == "/old":
            conn.respond(Response(301, {"Location": "/echo"}))
        else:
            conn.upgrade(fastws.accept(request))

    def on_upgraded(self, conn: fastws.Connection) -> None:
        assert conn.request is not None
        if conn.request.path == "/restart":
            conn.close(1012, "restarting")

    def on_frame(self, conn: fastws.Connection, frame: Frame) -> None:
        if frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))


def blocking(base: str) -> None:
    with fastws.sync.connect(base + "/old", proxy=None) as ws:
        ws.send("hello")
        print(f"blocking client: {ws.recv(timeout=5)!r} from {ws.url} "
              f"(redirected), ping {ws.ping(timeout=5) * 1000:.2f} ms")


def reconnecting_blocking(base: str) -> None:
    backoff = fastws.Backoff(initial_delay=0.05, max_delay=1.0)
    connections = 0

    def on_reconnecting(delay: float, cause: BaseException) -> None:
        print(f"  reconnecting in {delay:.2f} s: {cause}")

    for ws in fastws.sync.connect(base + "/restart", proxy=None, backoff=backoff,
                                  on_reconnecting=on_reconnecting):
        connections += 1
        try:
            for message in ws:
                print("  message:", message)
        except fastws.ConnectionClosed:
            pass
        if connections == 3:
            ws.close()          # the application's own close ends the loop
    print(f"reconnecting blocking client: {connections} connections")


def reconnecting_loop_client(base: str) -> None:
    loop = fastws.Loop()

    class Client:
        closes = 0

        def on_closed(self, conn: fastws.Connection, code: int, reason: str) -> None:
            self.closes += 1
            print(f"  closed {code} {reason}")

        def on_reconnecting(self, conn: fastws.Connection, delay: float) -> bool:
            print(f"  reconnecting in {delay:.2f} s")
            if self.closes == 3:
                loop.stop()
                return False     # enough: stop reconnecting
            return True

    fastws.connect(base + "/restart", Client(), loop=loop, proxy=None,
                   reconnect=fastws.Backoff(initial_delay=0.05, max_delay=1.0))
    loop.run()
    loop.close()
    print("reconnecting Loop client: stopped after 3 connections")


async def reconnecting_asyncio(base: str) -> None:
    connections = 0

    def on_reconnecting(delay: float, cause: BaseException) -> None:
        print(f"  reconnecting in {delay:.2f} s: {cause}")

    async for ws in fastws.asyncio.connect(
            base + "/restart", proxy=None, on_reconnecting=on_reconnecting,
            backoff=fastws.Backoff(initial_delay=0.05, max_delay=1.0)):
        connections += 1
        try:
            async for message in ws:
                print("  message:", message)
        except fastws.asyncio.ConnectionClosed as exc:
            print(f"  closed {exc.code} {exc.reason}")   # 1012: the loop comes round again
        if connections == 3:
            break               # ends the reconnecting
    print(f"reconnecting asyncio client: {connections} connections")


async def asyncio_echo(url: str, proxy: str) -> str:
    async with fastws.asyncio.connect(url, proxy=proxy) as ws:
        await ws.send("via the proxy")
        message = await ws.recv(timeout=5)
        assert isinstance(message, str)
        return message


def through_tinyproxy(base: str) -> None:
    tinyproxy = shutil.which("tinyproxy")
    if tinyproxy is None:
        print("proxy: skipped (tinyproxy is not installed)")
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        config = os.path.join(folder, "tinyproxy.conf")
        with open(config, "w") as out:
            out.write(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nLogLevel Info\n")
        proxy = subprocess.Popen([tinyproxy, "-d", "-c", config], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            with fastws.sync.connect(base + "/echo", proxy=f"http://127.0.0.1:{port}") as ws:
                ws.send("via the proxy")
                print(f"proxy: {ws.recv(timeout=5)!r} through tinyproxy")
            reply = asyncio.run(asyncio_echo(base + "/echo", f"http://127.0.0.1:{port}"))
            print(f"proxy: {reply!r} through tinyproxy (asyncio)")
        finally:
            proxy.terminate()
            proxy.wait(10)


def main() -> None:
    loop = fastws.Loop()
    server = fastws.serve(Server(), "127.0.0.1", 0, loop=loop)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    base = f"ws://127.0.0.1:{server.port}"
    try:
        blocking(base)
        reconnecting_blocking(base)
        reconnecting_loop_client(base)
        asyncio.run(reconnecting_asyncio(base))
        through_tinyproxy(base)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    sys.exit(0)


if __name__ == "__main__":
    main()
