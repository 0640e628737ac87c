"""fastws fan-out server for the benchmark: /sub subscribes to topic "bench", every message
received on /pub is published to it (server.publish: encoded once, one write per socket
per loop iteration). --workers N --redis URL links the workers through Redis."""

import argparse
import signal

import fastws
from fastws import Connection, Frame, Request


class FanOut:
    def on_request(self, conn: Connection, request: Request) -> None:
        if conn.upgrade(fastws.accept(request)) and request.path == "/sub":
            conn.subscribe("bench")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.server.publish("bench", frame.data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--redis")
    args = ap.parse_args()
    loop = fastws.Loop()
    server = fastws.serve(FanOut(), "127.0.0.1", args.port, loop=loop, workers=args.workers,
                          compression=False, pubsub=args.redis, max_connections=None)
    signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(loop.stop))
    loop.run()
    server.close()


if __name__ == "__main__":
    main()
