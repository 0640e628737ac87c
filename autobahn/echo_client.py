"""The client side of an Autobahn run, written on the public fastws.connect API.

It speaks the fuzzing server's protocol: /getCaseCount answers with the number of cases
as a text message, /runCase?case=N&agent=A runs case N (we echo every message back,
same type), and /updateReports?agent=A makes the server write its reports.
"""

from __future__ import annotations

import sys

import fastws
from fastws import Connection, Frame, OpCode

CASE_TIMEOUT = 120.0       # seconds; the slowest case (9.x, 16 MiB messages) takes a few


class Echo:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.texts.append(frame.string_data)
        if conn.is_open and frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        conn.loop.stop()


def run(url: str, *, echo: bool = True) -> list[str]:
    """Connect, echo until the server closes; return the text messages received."""
    loop = fastws.Loop()
    handler = Echo()
    if not echo:
        handler.on_frame = lambda conn, frame: handler.texts.append(frame.string_data)  # type: ignore[method-assign]
    conn = fastws.connect(url, handler, loop=loop, max_message_size=None, max_frame_size=None)
    loop.call_later(CASE_TIMEOUT, conn.abort)
    try:
        loop.run()
    finally:
        loop.close()
    return handler.texts


def run_all(base: str, agent: str = "fastws") -> int:
    count = int(run(f"{base}/getCaseCount", echo=False)[0])
    for case in range(1, count + 1):
        run(f"{base}/runCase?case={case}&agent={agent}")
    run(f"{base}/updateReports?agent={agent}", echo=False)
    return count


if __name__ == "__main__":
    print(run_all(sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:9001"), "cases run")
