"""Ping/pong and round-trip times: AutoPing, on_rtt, and the pong timeout.

The server puts AutoPing(interval, timeout=...) in its chain: it pings every `interval`
seconds, reports each round trip to `handler.on_rtt(conn, seconds)`, and fails a peer that
leaves a ping unanswered for `timeout` seconds with 1011. A client can measure too, by
adding AutoPing to its own chain. One client answers pings (AutoPong, the default); the
other removes AutoPong and is dropped.

Run:  python examples/ping_rtt.py
"""

from __future__ import annotations

import fastws
from fastws import Connection, Frame, OpCode, Request

INTERVAL = 0.05
TIMEOUT = 0.3


class Server:
    def __init__(self) -> None:
        self.rtts: list[float] = []

    def on_request(self, conn: Connection, request: Request) -> None:
        conn.upgrade(fastws.accept(request), stages=[
            fastws.AutoPing(INTERVAL, timeout=TIMEOUT),   # nearest the wire: sees pongs first
            fastws.AutoPong(),
            fastws.Consolidate(),
        ])

    def on_rtt(self, conn: Connection, seconds: float) -> None:
        self.rtts.append(seconds)


class Measuring:
    """Answers pings (default AutoPong) and measures its own RTTs with an AutoPing."""

    def __init__(self, finished: list[str]) -> None:
        self.finished = finished
        self.rtts: list[float] = []
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        # Payloads: any bytes up to 125; the default is an 8-byte counter.
        counter = iter(range(1, 1_000_000))
        conn.add_stage(fastws.AutoPing(INTERVAL, lambda: b"probe %d" % next(counter)), 0)

    def on_rtt(self, conn: Connection, seconds: float) -> None:
        self.rtts.append(seconds)
        if len(self.rtts) == 3:
            conn.close(1000, "measured")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.finished.append("measuring")
        if len(self.finished) == 2:
            conn.loop.stop()


class Silent:
    """Removes AutoPong, so the server's pings reach on_frame and are never answered."""

    def __init__(self, finished: list[str]) -> None:
        self.finished = finished
        self.pings = 0
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.remove_stage(fastws.AutoPong)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.PING:
            self.pings += 1

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.finished.append("silent")
        if len(self.finished) == 2:
            conn.loop.stop()


def main() -> None:
    loop = fastws.Loop()
    server_handler = Server()
    server = fastws.serve(server_handler, "127.0.0.1", 0, loop=loop)
    finished: list[str] = []
    measuring, silent = Measuring(finished), Silent(finished)
    fastws.connect(f"ws://127.0.0.1:{server.port}/", measuring, loop=loop)
    fastws.connect(f"ws://127.0.0.1:{server.port}/", silent, loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    server.close()
    loop.close()
    print("client RTTs (ms):", [round(rtt * 1000, 3) for rtt in measuring.rtts])
    print("server RTTs measured:", len(server_handler.rtts))
    print("measuring client closed:", measuring.closed)
    print(f"silent client got {silent.pings} ping(s), then closed:", silent.closed)
    assert measuring.closed == (1000, "measured") and len(measuring.rtts) == 3
    assert silent.closed is not None and silent.closed[0] == 1011, silent.closed


if __name__ == "__main__":
    main()
