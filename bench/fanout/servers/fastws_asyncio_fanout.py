"""fastws.asyncio fan-out server for the benchmark: the same Topics as fastws_fanout.py on an
asyncio loop (--loop uvloop, the default, or asyncio): /sub subscribes to topic "bench",
every message received on /pub is published to it (server.publish: encoded once, each
subscriber's transport held until the end of the loop's iteration, one writelines() per
socket). --redis URL links it to Redis like the Loop server."""

import argparse
import asyncio
import signal

import fastws
import fastws.asyncio
from fastws import Connection, Frame, Request


class FanOut:
    def on_request(self, conn: Connection, request: Request) -> None:
        if conn.upgrade(fastws.accept(request)) and request.path == "/sub":
            conn.subscribe("bench")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.server.publish("bench", frame.data)


async def serve(port: int, redis: str | None) -> None:
    stop = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with fastws.asyncio.serve(FanOut(), "127.0.0.1", port, compression=False,
                                    pubsub=redis):
        await stop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--redis")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop
        uvloop.run(serve(args.port, args.redis))
    else:
        asyncio.run(serve(args.port, args.redis))


if __name__ == "__main__":
    main()
