"""websockets fan-out server for the benchmark: /sub connections are kept in a set, every
message received on /pub goes to all of them with websockets.broadcast (asyncio)."""

import argparse
import asyncio

import websockets
from websockets.asyncio.server import serve

subscribers: set = set()


async def handler(ws) -> None:
    if ws.request.path == "/sub":
        subscribers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            subscribers.discard(ws)
    else:
        async for message in ws:
            websockets.broadcast(subscribers, message)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None,
                     ping_interval=None):
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(main(ap.parse_args().port))
