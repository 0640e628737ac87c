"""Handlers and callbacks: a server that answers plain HTTP and upgrades WebSockets, and a
client, each a plain object whose on_* methods fastws calls on the loop's thread.

Run:  python examples/handlers.py
It starts the server on a free port in a background thread, makes one plain HTTP request
and one WebSocket conversation, prints what happened, and exits.
"""

from __future__ import annotations

import threading
import urllib.request

import fastws
from fastws import Connection, Frame, OpCode, Request


class ChatServer:
    """GET /health is plain HTTP; /chat is upgraded to a WebSocket; the rest is 404."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.path == "/chat" and request.upgrade:
            conn.upgrade(fastws.accept(request))          # 101, then on_upgraded
        elif request.path == "/health":
            conn.respond(fastws.Response.text(200, "ok\n"))
        else:
            conn.respond(fastws.Response.text(404, "not found\n"))

    def on_upgraded(self, conn: Connection) -> None:
        self.events.append("server: upgraded")
        conn.send_text("welcome")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        # Whole messages: the default chain reassembles fragments and answers pings.
        if frame.opcode == OpCode.TEXT:
            conn.send_text(f"you said {frame.string_data!r}")
        elif frame.opcode == OpCode.BINARY:
            conn.send_binary(bytes(reversed(bytes(frame.data))))

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.events.append(f"server: closed {code} {reason}")


class ChatClient:
    """Waits for the welcome, sends a text and a binary message, then closes."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        pass                                              # the server speaks first

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.received.append(frame.string_data)
        else:
            self.received.append(bytes(frame.data))
        if len(self.received) == 1:
            conn.send_text("hello")
            conn.send_binary(b"\x01\x02\x03")
        elif len(self.received) == 3:
            conn.close(1000, "done")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (int(code), reason)
        conn.loop.stop()


def main() -> None:
    # The server gets its own loop in its own thread; one thread runs one Loop.
    server_loop = fastws.Loop()
    handler = ChatServer()
    server = fastws.serve(handler, "127.0.0.1", 0, loop=server_loop)
    thread = threading.Thread(target=server_loop.run, daemon=True)
    thread.start()
    base = f"127.0.0.1:{server.port}"

    with urllib.request.urlopen(f"http://{base}/health", timeout=10) as answer:
        print("GET /health:", answer.status, answer.read().decode().strip())

    loop = fastws.Loop()
    client = ChatClient()
    fastws.connect(f"ws://{base}/chat", client, loop=loop)
    loop.call_later(10, loop.stop)                        # never hang
    loop.run()
    loop.close()
    for message in client.received:
        print("client got:", message)
    print("client closed:", client.closed)

    server_loop.call_soon_threadsafe(server.close)
    server_loop.call_soon_threadsafe(server_loop.stop)
    thread.join(10)
    server_loop.close()
    print("\n".join(handler.events))
    assert client.closed == (1000, "done"), client.closed
    assert client.received == ["welcome", "you said 'hello'", b"\x03\x02\x01"]


if __name__ == "__main__":
    main()
