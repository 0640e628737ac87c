"""The callback form of fastws.asyncio: the handler objects of the fastws Loop, with their
stages, on a running asyncio loop (or uvloop), next to other asyncio code.

Run:  python examples/asyncio_callbacks.py
The server answers plain HTTP on /health and echoes WebSocket messages with an AutoPing
stage reporting round-trip times; a callback client sends three messages and closes; an
asyncio task keeps ticking meanwhile, to show the loop is shared.
"""

from __future__ import annotations

import asyncio

import fastws
import fastws.asyncio
from fastws import Connection, Frame, OpCode, Request


class EchoServer:
    def __init__(self) -> None:
        self.rtts: list[float] = []

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.upgrade:
            conn.upgrade(fastws.accept(request), stages=[
                fastws.AutoPing(0.05), fastws.AutoPong(), fastws.Consolidate()])
        else:
            conn.respond(fastws.Response.text(200, "ok\n"))

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.send(Frame(opcode=frame.opcode, data=frame.data))

    def on_rtt(self, conn: Connection, seconds: float) -> None:
        self.rtts.append(seconds)


class Client:
    def __init__(self) -> None:
        self.done: asyncio.Future[tuple[int, str]] = asyncio.get_running_loop().create_future()
        self.echoes: list[str] = []

    def on_upgraded(self, conn: Connection) -> None:
        for text in ("one", "two", "three"):
            conn.send_text(text)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.echoes.append(frame.string_data)
        if len(self.echoes) == 3:
            # Timers run on the asyncio loop; meanwhile AutoPing measures round trips.
            conn.call_later(0.2, conn.close, 1000, "got them all")

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.done.set_result((code, reason))


async def tick(count: list[int]) -> None:
    while True:
        await asyncio.sleep(0.01)
        count[0] += 1


async def main() -> None:
    handler = EchoServer()
    ticks = [0]
    ticker = asyncio.create_task(tick(ticks))
    server = await fastws.asyncio.serve(handler, "127.0.0.1", 0)
    async with server:
        client = Client()
        conn = await fastws.asyncio.connect(f"ws://127.0.0.1:{server.port}/", client)
        print(f"client: connected, {conn!r}")
        code, reason = await client.done
        print(f"client: echoes {client.echoes}, closed {code} {reason!r}")
    ticker.cancel()
    print(f"server: {len(handler.rtts)} round trips measured; the ticker ran {ticks[0]} times")


if __name__ == "__main__":
    asyncio.run(main())
