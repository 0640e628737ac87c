"""Echo client on picows.ws_connect (uvloop): keeps --inflight binary messages in flight."""
import asyncio

import uvloop
from picows import WSListener, WSMsgType, ws_connect

from common import Meter, parse_args


class Client(WSListener):
    def __init__(self, meter):
        self.meter = meter
        self.buf = bytearray()

    def on_ws_connected(self, transport):
        for _ in range(self.meter.inflight):
            transport.send(WSMsgType.BINARY, self.meter.next_payload())

    def on_ws_frame(self, transport, frame):
        op = frame.msg_type
        if op == WSMsgType.CLOSE:
            transport.disconnect()
            return
        if op not in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            return
        if not frame.fin or self.buf:           # picows delivers raw frames: reassemble
            self.buf += frame.get_payload_as_memoryview()
            if not frame.fin:
                return
            data = bytes(self.buf)
            self.buf.clear()
        else:
            data = frame.get_payload_as_bytes()
        if self.meter.received(data):
            transport.send(WSMsgType.BINARY, self.meter.next_payload())
        elif not self.meter.pending:
            transport.send_close()
            transport.disconnect()


async def run(args):
    meter = Meter(args.size, args.inflight, args.duration, args.warmup)
    transport, _ = await ws_connect(lambda: Client(meter), args.url,
                                    max_frame_size=max(args.size * 2, 16 * 1024 * 1024))
    await asyncio.wait_for(transport.wait_disconnected(), args.warmup + args.duration + 30)
    meter.report("picows")


if __name__ == "__main__":
    uvloop.run(run(parse_args()))
