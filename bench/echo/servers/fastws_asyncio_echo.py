"""fastws on asyncio: echo server in the callback form or the awaitable form, compression off.

python fastws_asyncio_echo.py --port P [--uvloop] [--awaitable] [--transport asyncio]

Callback form: a handler object whose on_frame sends every message back (the same handler
as on the fastws Loop). Awaitable form: `async for message in ws: await ws.send(message)`.
`--transport asyncio` runs the callback form on asyncio's transports instead of fastws'
own socket I/O (serve(transport=...)).
"""
import argparse
import asyncio

import fastws
import fastws.asyncio
from fastws import OpCode


class Echo:
    def on_frame(self, conn, frame):
        # As `python -m fastws echo` does on the fastws Loop: whole messages arrive here, and
        # the same frame object goes back out (a server never masks).
        if frame.opcode <= OpCode.BINARY:
            conn.send(frame)

    # Back-pressure, as `python -m fastws echo` does: a client that keeps 16 MiB in flight
    # is not read while its echoes wait, or the unsent ones pass the 8 MiB write cap (1008).
    def on_pause_writing(self, conn):
        conn.pause_reading()

    def on_resume_writing(self, conn):
        conn.resume_reading()


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(host, port, awaitable, transport):
    handler = echo if awaitable else Echo()
    async with fastws.asyncio.serve(handler, host, port, compression=False, transport=transport,
                                    max_message_size=64 * 1024 * 1024,
                                    max_frame_size=64 * 1024 * 1024) as server:
        print("listening", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--uvloop", action="store_true")
    ap.add_argument("--awaitable", action="store_true")
    ap.add_argument("--transport", default="auto", choices=["auto", "socket", "asyncio"])
    args = ap.parse_args()
    run = main(args.host, args.port, args.awaitable, args.transport)
    if args.uvloop:
        import uvloop
        uvloop.run(run)
    else:
        asyncio.run(run)
