"""The awaitable form of fastws.asyncio: `async def handler(ws)` on the server,
`async with fastws.asyncio.connect(url) as ws` on the client, on asyncio or uvloop.

Run:  python examples/asyncio_awaitable.py [--uvloop]
It serves a chat-like endpoint on a free port, talks to it with two clients, shows how a
closed connection looks to the code (ConnectionClosed with its code and reason, or the
end of `async for`), and exits.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import fastws.asyncio
from fastws.asyncio import ConnectionClosed, WebSocket


async def shout(ws: WebSocket) -> None:
    """Every text message comes back in capitals, binary ones reversed; "bye" closes."""
    assert ws.request is not None
    print(f"server: a client on {ws.request.path}")
    async for message in ws:                    # ends when the client closes normally
        if message == "bye":
            await ws.close(4000, "you said bye")
            return
        if isinstance(message, str):
            await ws.send(message.upper())
        else:
            await ws.send(message[::-1])
    print(f"server: closed {ws.close_code}")


async def main() -> None:
    async with fastws.asyncio.serve(shout, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.port}/shout"
        async with fastws.asyncio.connect(url) as ws:
            await ws.send("hello")
            print("client:", await ws.recv())
            await ws.send(b"\x01\x02\x03")
            print("client:", await ws.recv())
            await ws.send(["frag", "mented"])    # one message in two frames
            print("client:", await ws.recv())
            print(f"client: ping round trip {await ws.ping() * 1e6:.0f} us")
        print(f"client: closed {ws.close_code}")  # async with closed it with 1000

        ws = await fastws.asyncio.connect(url)
        await ws.send("bye")
        try:
            await ws.recv()
        except ConnectionClosed as closed:
            print(f"client: ConnectionClosed {closed.code} {closed.reason!r}")
    print("server closed")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    run: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    if args.uvloop:
        import uvloop
        run = uvloop.run
    run(main())
