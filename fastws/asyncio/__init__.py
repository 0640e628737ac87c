"""fastws on asyncio (the stdlib loop or uvloop): the same protocol, handlers and stages as
on the fastws Loop, and an awaitable API for coroutines.

    server = await fastws.asyncio.serve(handler, "127.0.0.1", 9001)   # callbacks
    async with fastws.asyncio.serve(echo, "127.0.0.1", 9001):         # async def echo(ws)
        ...
    conn = await fastws.asyncio.connect(url, handler)                  # callbacks
    async with fastws.asyncio.connect(url) as ws:                      # awaitable
        await ws.send("hello"); print(await ws.recv())
    async for ws in fastws.asyncio.connect(url):                       # reconnecting
        ...

Clients go through proxies (from the environment by default), follow redirects and
reconnect, as the other fastws clients do (docs/clients.md).

A coroutine function is the awaitable form; any other object is a handler whose on_*
methods are called (docs/asyncio.md).
"""

from .._asyncio_websocket import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    WebSocket,
)
from .client import Connecting, connect
from .server import Server, Serving, serve

__all__ = [
    "Connecting",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Server",
    "Serving",
    "WebSocket",
    "connect",
    "serve",
]
