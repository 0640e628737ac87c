"""Limits and flow control: write_high_water / write_low_water, on_pause_writing /
on_resume_writing, conn.write_buffer_size, and pause_reading / resume_reading.

The server streams 16 MiB in 64 KiB messages, but only while the connection is not paused:
when its write buffer passes write_high_water, fastws calls on_pause_writing and the
producer stops; when the buffer drains to write_low_water, on_resume_writing restarts it.
The client is a slow consumer: it stops reading for a while (pause_reading), so TCP pushes
back and the server's buffer fills up. Memory stays bounded by the high-water mark.

Run:  python examples/flow_control.py
"""

from __future__ import annotations

import fastws
from fastws import Connection, Frame, Request

CHUNK = bytes(range(256)) * 256          # 64 KiB
COUNT = 256                              # 16 MiB in all
HIGH, LOW = 256 * 1024, 64 * 1024


class Producer:
    def __init__(self) -> None:
        self.sent = 0
        self.paused = False
        self.pauses = 0
        self.largest_buffer = 0

    def on_request(self, conn: Connection, request: Request) -> None:
        conn.upgrade(fastws.accept(request), write_high_water=HIGH, write_low_water=LOW)

    def on_upgraded(self, conn: Connection) -> None:
        self.produce(conn)

    def produce(self, conn: Connection) -> None:
        while not self.paused and self.sent < COUNT and conn.is_open:
            conn.send_binary(CHUNK)
            self.sent += 1
            self.largest_buffer = max(self.largest_buffer, conn.write_buffer_size)
        if self.sent == COUNT and conn.is_open:
            conn.close(1000, "all sent")

    def on_pause_writing(self, conn: Connection) -> None:
        self.paused = True
        self.pauses += 1

    def on_resume_writing(self, conn: Connection) -> None:
        self.paused = False
        # Called while fastws is flushing: produce from a fresh callback, not from here.
        conn.loop.call_soon(self.produce, conn)


class SlowConsumer:
    def __init__(self) -> None:
        self.received = 0
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.pause_reading()                             # busy for 0.3 s: read nothing
        conn.loop.call_later(0.3, conn.resume_reading)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.received += len(frame.data)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)
        conn.loop.stop()


def main() -> None:
    loop = fastws.Loop()
    producer = Producer()
    # Random-looking payloads would not compress either; compression=False keeps the byte
    # counts on the wire equal to the payload sizes.
    server = fastws.serve(producer, "127.0.0.1", 0, loop=loop, compression=False)
    consumer = SlowConsumer()
    fastws.connect(f"ws://127.0.0.1:{server.port}/", consumer, loop=loop, compression=False)
    loop.call_later(20, loop.stop)
    loop.run()
    server.close()
    loop.close()
    print(f"client received {consumer.received >> 20} MiB, then {consumer.closed}")
    print(f"server paused {producer.pauses} time(s); "
          f"largest write buffer {producer.largest_buffer >> 10} KiB (high water {HIGH >> 10} KiB)")
    assert consumer.received == COUNT * len(CHUNK) and consumer.closed == (1000, "all sent")
    assert producer.pauses >= 1
    assert producer.largest_buffer <= HIGH + len(CHUNK) + 14     # at most one message over


if __name__ == "__main__":
    main()
