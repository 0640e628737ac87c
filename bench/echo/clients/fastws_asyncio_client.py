"""Echo client on fastws.asyncio.connect (the awaitable form): `async for` over the echoes,
keeping --inflight binary messages in flight. Runs on asyncio's loop (as the websockets
client does), or on uvloop with --uvloop."""
import asyncio
import sys

import fastws.asyncio

from common import Meter, parse_args


async def run(args):
    meter = Meter(args.size, args.inflight, args.duration, args.warmup)
    limit = max(args.size * 2, 16 * 1024 * 1024)
    async with fastws.asyncio.connect(args.url, compression=False, max_message_size=limit,
                                      max_frame_size=limit) as ws:
        for _ in range(meter.inflight):
            await ws.send(meter.next_payload())
        async for data in ws:
            if meter.received(data):
                await ws.send(meter.next_payload())
            elif not meter.pending:
                break
    meter.report("fastws.asyncio")


if __name__ == "__main__":
    uv = "--uvloop" in sys.argv
    if uv:
        sys.argv.remove("--uvloop")
    args = parse_args()
    if uv:
        import uvloop
        uvloop.run(run(args))
    else:
        asyncio.run(run(args))
