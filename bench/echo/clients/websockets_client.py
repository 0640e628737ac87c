"""Echo client on websockets.asyncio.client.connect: keeps --inflight binary messages in flight."""
import asyncio

from websockets.asyncio.client import connect

from common import Meter, parse_args


async def run(args):
    meter = Meter(args.size, args.inflight, args.duration, args.warmup)
    async with connect(args.url, compression=None, max_size=max(args.size * 2, 16 * 1024 * 1024),
                       ping_interval=None) as ws:
        for _ in range(meter.inflight):
            await ws.send(meter.next_payload())
        while meter.pending:
            data = await ws.recv()
            if meter.received(data):
                await ws.send(meter.next_payload())
    meter.report("websockets")


if __name__ == "__main__":
    asyncio.run(run(parse_args()))
