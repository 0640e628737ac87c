"""The stage chain and writing a stage.

Two stages of our own on the server: `CountBytes` counts payload bytes both ways, and
`IdleTimeout` closes a connection that has been quiet for too long (a stage timer).
They join the default stages (AutoPong, Consolidate) in `conn.upgrade(stages=[...])`.

Run:  python examples/stages.py
"""

from __future__ import annotations

import fastws
from fastws import Connection, Frame, OpCode, Request


class CountBytes(fastws.Stage):
    """Counts message payload bytes in each direction; passes every frame on unchanged."""

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0

    def on_frame_in(self, frame: Frame) -> None:        # peer -> handler
        if not frame.is_control:
            self.received += len(frame.data)
        self.pass_in(frame)

    def on_frame_out(self, frame: Frame) -> None:       # handler -> wire
        if not frame.is_control:
            self.sent += len(frame.data)
        self.pass_out(frame)


class IdleTimeout(fastws.Stage):
    """Closes the connection with 1000 "idle" after `seconds` without an incoming frame."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._timer: fastws.Timer | None = None

    def on_attached(self) -> None:                      # self.conn is set now
        self._restart()

    def on_detached(self) -> None:                      # stage timers are cancelled for us
        self._timer = None

    def _restart(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.call_later(self.seconds, self._expired)

    def _expired(self) -> None:
        if self.conn is not None and self.conn.is_open:
            self.conn.close(1000, "idle")

    def on_frame_in(self, frame: Frame) -> None:
        self._restart()
        self.pass_in(frame)


class EchoWithStages:
    def __init__(self) -> None:
        self.counter = CountBytes()

    def on_request(self, conn: Connection, request: Request) -> None:
        # From the wire to the handler. The list replaces the default chain, so keep
        # AutoPong (answers pings) and Consolidate (reassembles fragments) in it. After
        # Consolidate, CountBytes sees whole, decompressed messages; nearer the wire it
        # would see fragments, and compressed bytes when permessage-deflate is on.
        conn.upgrade(fastws.accept(request), stages=[
            fastws.AutoPong(), fastws.Consolidate(), self.counter, IdleTimeout(0.3),
        ])
        print("server chain:", [type(stage).__name__ for stage in conn.stages])

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.send(Frame(opcode=frame.opcode, data=frame.data))


class Client:
    def __init__(self) -> None:
        self.echoes: list[str] = []
        self.closed: tuple[int, str] | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.send_text("one")
        conn.send_text("two")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.echoes.append(frame.string_data)       # then stay quiet: the server times out

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)
        conn.loop.stop()


def main() -> None:
    loop = fastws.Loop()
    server_handler = EchoWithStages()
    server = fastws.serve(server_handler, "127.0.0.1", 0, loop=loop)
    client = Client()
    fastws.connect(f"ws://127.0.0.1:{server.port}/", client, loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    server.close()
    loop.close()
    counter = server_handler.counter
    print("client got:", client.echoes, "then", client.closed)
    print(f"server counted {counter.received} bytes in, {counter.sent} bytes out")
    assert client.echoes == ["one", "two"] and client.closed == (1000, "idle"), client.closed
    assert counter.received == counter.sent == 6


if __name__ == "__main__":
    main()
