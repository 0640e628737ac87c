"""Echo client on fastws.connect: keeps --inflight binary messages in flight for --duration s."""
import fastws

from common import Meter, parse_args


class Client:
    def __init__(self, meter, loop):
        self.meter = meter
        self.loop = loop
        self.closed_code = None

    def on_upgraded(self, conn):
        for _ in range(self.meter.inflight):
            conn.send_binary(self.meter.next_payload())

    def on_frame(self, conn, frame):
        if self.meter.received(frame.data):
            conn.send_binary(self.meter.next_payload())
        elif not self.meter.pending:
            conn.close()

    def on_closed(self, conn, code, reason):
        self.closed_code = code
        self.loop.stop()


def main():
    args = parse_args()
    loop = fastws.Loop()
    meter = Meter(args.size, args.inflight, args.duration, args.warmup)
    client = Client(meter, loop)
    limit = max(args.size * 2, 4 * 1024 * 1024)
    # It sends its whole window at once without waiting for on_resume_writing: the write cap
    # (default 8 MiB, which 16 x 1 MiB passes) must hold the window, or the client fails
    # itself with 1008 whenever the server is slow to read.
    window = max(2 * args.inflight * args.size, 8 * 1024 * 1024)
    fastws.connect(args.url, client, loop=loop, max_frame_size=limit, max_message_size=limit,
                   max_write_buffer=window)
    loop.call_later(args.warmup + args.duration + 30, loop.stop)   # safety net
    loop.run()
    meter.report("fastws", close_code=client.closed_code)


if __name__ == "__main__":
    main()
