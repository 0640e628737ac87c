"""Compression: permessage-deflate (RFC 7692), the fastws.Deflate extension.

serve() and connect() negotiate permessage-deflate by default (compression=True); when both
sides agree, each connection's protocol compresses and decompresses its messages (handlers
and stages see them uncompressed; `conn.find_stage(fastws.Deflate)` shows what was agreed).
`conn.bytes_sent` counts the bytes really sent. compression=False on either side (or
`python -m fastws echo --no-compression`) turns it off.

Run:  python examples/compression.py
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

import fastws
from fastws import Connection, Frame, OpCode

MESSAGE = json.dumps([{"id": i, "name": f"sensor-{i}", "status": "ok"} for i in range(1000)])


class Echo:
    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.send(Frame(opcode=frame.opcode, data=frame.data))


class Sender:
    def __init__(self) -> None:
        self.sent = 0                  # bytes on the wire for MESSAGE (frame header included)
        self.extensions: str | None = None
        self.deflate: object = None
        self.echo_ok = False

    def on_upgraded(self, conn: Connection) -> None:
        assert conn.response is not None
        self.extensions = conn.response.headers.get("sec-websocket-extensions")
        self.deflate = conn.find_stage(fastws.Deflate)
        self.sent = conn.bytes_sent            # the handshake so far
        conn.send_text(MESSAGE)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.sent = conn.bytes_sent - self.sent
        self.echo_ok = frame.opcode == OpCode.TEXT and frame.string_data == MESSAGE
        conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        conn.loop.stop()


def exchange(url: str, compression: bool = True) -> Sender:
    loop = fastws.Loop()
    sender = Sender()
    fastws.connect(url, sender, loop=loop, compression=compression)
    loop.call_later(10, loop.stop)
    loop.run()
    loop.close()
    return sender


def report(label: str, sender: Sender) -> None:
    print(f"{label}: extension {sender.extensions!r}, {len(MESSAGE)} bytes of text -> "
          f"{sender.sent} bytes on the wire, echo ok: {sender.echo_ok}")


def main() -> None:
    if not hasattr(fastws, "Deflate"):
        print("skipped: this fastws has no fastws.Deflate (permessage-deflate is not in it yet)")
        return

    server_loop = fastws.Loop()
    server = fastws.serve(Echo(), "127.0.0.1", 0, loop=server_loop)   # compression=True
    thread = threading.Thread(target=server_loop.run, daemon=True)
    thread.start()
    url = f"ws://127.0.0.1:{server.port}/"
    try:
        compressed = exchange(url)                       # compression=True, the default
        report("compressed", compressed)
        plain = exchange(url, compression=False)
        report("compression=False", plain)
    finally:
        server_loop.call_soon_threadsafe(server.close)
        server_loop.call_soon_threadsafe(server_loop.stop)
        thread.join(10)
        server_loop.close()
    assert compressed.deflate is not None and compressed.echo_ok
    assert compressed.sent < len(MESSAGE) // 4
    assert plain.deflate is None and plain.extensions is None and plain.echo_ok
    assert len(MESSAGE) < plain.sent <= len(MESSAGE) + 14      # the message and its header

    # The command line's echo server with --no-compression declines the offer.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    echo = subprocess.Popen([sys.executable, "-m", "fastws", "echo", "--port", str(port),
                             "--no-compression"], stdout=subprocess.PIPE, text=True)
    try:
        assert echo.stdout is not None
        echo.stdout.readline()                           # ready once it printed its URL
        declined = exchange(f"ws://127.0.0.1:{port}/")
    finally:
        echo.terminate()
        echo.wait(10)
    report("echo --no-compression", declined)
    assert declined.deflate is None and declined.echo_ok


if __name__ == "__main__":
    main()
