"""The server for bench/sync: the fastws server, in its own process.

`GET /flood?n=N&size=S`: once upgraded, sends N binary messages of S bytes (each starting
with its sequence number, so that the client can check order and count), as fast as the
client reads (it stops on on_pause_writing and goes on at on_resume_writing), then closes
with 1000. Any other path echoes every message back (ping-pong).

The flood writes each batch of 512 frames (encoded by `fastws.encode_frame`) with one
transport write. Sent one `conn.send_binary()` at a time outside a read callback, the fastws
server makes one send() system call per message whenever the client keeps up (its writes
are batched only while it handles a read): the server, not the client, would then be what
is measured. `--per-message` keeps that public path, for comparison.

    python bench/sync/server.py PORT [--per-message]
"""

from __future__ import annotations

import sys
from urllib.parse import parse_qs

import fastws
from fastws import Frame, OpCode

BATCH = 512
PER_MESSAGE = "--per-message" in sys.argv


class Bench:
    def on_request(self, conn, request):
        conn.flood = None     # set before the upgrade, which calls on_upgraded
        if request.path == "/flood":
            query = parse_qs(request.query)
            conn.flood = [int(query["n"][0]), int(query.get("size", ["32"])[0]), 0, False]
        conn.upgrade(fastws.accept(request), compression=False)

    def on_upgraded(self, conn):
        if getattr(conn, "flood", None) is not None:
            self._pump(conn)

    def _pump(self, conn):
        total, size, sent, _ = conn.flood
        pad = b"x" * (size - 8)
        encode = fastws.encode_frame
        while sent < total and not conn.flood[3]:
            end = min(total, sent + BATCH)
            if PER_MESSAGE:
                for seq in range(sent, end):
                    conn.send_binary(seq.to_bytes(8, "big") + pad)
            else:
                conn._transport.write_bytes(b"".join(
                    encode(OpCode.BINARY, seq.to_bytes(8, "big") + pad)
                    for seq in range(sent, end)))
            sent = end
            conn.flood[2] = sent
        if sent >= total and conn.is_open:
            conn.close(1000, "done")

    def on_pause_writing(self, conn):
        if conn.flood is not None:
            conn.flood[3] = True

    def on_resume_writing(self, conn):
        if conn.flood is not None:
            conn.flood[3] = False
            self._pump(conn)

    def on_frame(self, conn, frame):
        if frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))


if __name__ == "__main__":
    server = fastws.serve(Bench(), "127.0.0.1", int(sys.argv[1]), compression=False)
    print("ready", flush=True)
    fastws.default_loop().run()
