"""EXPERIMENT (issue 14's ping-pong cell): the fastws Loop transport on a uvloop loop.

python fastws_fd_uvloop_echo.py --port P

fastws.asyncio runs over uvloop's stream transport (libuv reads and writes, a buffered
protocol). picows instead watches the socket with the loop's add_reader() and calls
recv()/send() itself. This server does the same with fastws' own Loop transport
(fastws/_transport.pyx only uses add_reader/add_writer/call_later/call_soon, which asyncio
loops have): a listening socket watched by add_reader, each accepted socket a
fastws.Connection on the asyncio loop. Plain TCP only, no TLS, no graceful close, internal
API (Connection is not built by users): a measurement, not a server to use. Selected by
name only: `python bench/echo/run.py --servers "fd prototype" "callbacks (uvloop)"
"picows (uvloop)" --scenarios ping-pong --only servers`.
"""
import argparse
import asyncio
import socket

import uvloop

import fastws
from fastws import OpCode
from fastws.connection import Connection


class Echo:
    def on_frame(self, conn, frame):
        if frame.opcode <= OpCode.BINARY:
            conn.send(frame)


class Loop(uvloop.Loop):
    _busy = False          # what the Loop transport asks of a fastws Loop (no busy polling)


async def main(host, port):
    loop = asyncio.get_running_loop()
    listener = socket.create_server((host, port))
    listener.setblocking(False)
    limits = fastws.Limits().updated({"max_message_size": 64 << 20,
                                      "max_frame_size": 64 << 20})
    handler = Echo()
    connections = set()

    def accept():
        while True:
            try:
                sock, peer = listener.accept()
            except BlockingIOError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(loop, sock, handler, is_client=False, limits=limits,
                              peername=peer)
            connections.add(conn)
            conn.start()

    loop.add_reader(listener.fileno(), accept)
    print("listening", flush=True)
    await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    with asyncio.Runner(loop_factory=Loop) as runner:
        runner.run(main(args.host, args.port))
