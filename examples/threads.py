"""Threads: a fastws loop belongs to one thread; other threads reach it with
loop.call_soon_threadsafe(callback, *args), which queues the call and wakes the loop.

Two patterns on one server:
- a worker thread that pushes messages (here: five ticks) to a connection;
- blocking work (here: a slow hash) moved to a ThreadPoolExecutor, with the answer sent back
  on the loop's thread.
Connection methods (send, close, ...) are never called from another thread directly.

Run:  python examples/threads.py
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading
import time

import fastws
from fastws import Connection, Frame, OpCode

executor = concurrent.futures.ThreadPoolExecutor(max_workers=2)


def send_if_open(conn: Connection, text: str) -> None:
    """Runs on the loop's thread; the connection may have closed since the call was queued."""
    if conn.is_open:
        conn.send_text(text)


def ticker(loop: fastws.Loop, conn: Connection) -> None:
    """A worker thread: produces messages at its own pace and hands them to the loop."""
    for i in range(5):
        time.sleep(0.02)
        loop.call_soon_threadsafe(send_if_open, conn, f"tick {i}")


def slow_hash(data: bytes) -> str:
    time.sleep(0.05)                                   # stands for blocking work
    return hashlib.sha256(data).hexdigest()[:16]


class Server:
    def on_upgraded(self, conn: Connection) -> None:
        threading.Thread(target=ticker, args=(conn.loop, conn), daemon=True).start()

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.BINARY:
            future = executor.submit(slow_hash, bytes(frame.data))
            # The done-callback runs in the executor's thread: go through the loop.
            future.add_done_callback(lambda f: conn.loop.call_soon_threadsafe(
                send_if_open, conn, f"sha256 {f.result()}"))


class Client:
    def __init__(self) -> None:
        self.received: list[str] = []
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.send_binary(b"hash me")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.received.append(frame.string_data)
        if len(self.received) == 6:                    # five ticks and the hash
            conn.close(1000, "got everything")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (int(code), reason)
        conn.loop.stop()


def main() -> None:
    loop = fastws.Loop()
    server = fastws.serve(Server(), "127.0.0.1", 0, loop=loop)
    client = Client()
    fastws.connect(f"ws://127.0.0.1:{server.port}/", client, loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    server.close()
    loop.close()
    executor.shutdown()
    for text in client.received:
        print("client got:", text)
    print("client closed:", client.closed)
    assert [t for t in client.received if t.startswith("tick")] == [f"tick {i}" for i in range(5)]
    assert f"sha256 {hashlib.sha256(b'hash me').hexdigest()[:16]}" in client.received
    assert client.closed == (1000, "got everything")


if __name__ == "__main__":
    main()
