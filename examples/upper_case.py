"""The seed's README example, ported: a server that answers every text message with its
content upper-cased, and a client that sends "i am cow" and prints "I AM COW".

Run the server:  python examples/upper_case.py server
Run the client:  python examples/upper_case.py client ws://127.0.0.1:9001/
"""

from __future__ import annotations

import ssl
import sys

import fastws
from fastws import Connection, Frame, OpCode, Request


class UpperCaseServer:
    def on_request(self, conn: Connection, request: Request) -> None:
        if request.upgrade:
            conn.upgrade(fastws.accept(request))
        else:
            conn.respond(fastws.Response.text(200, "Upgrade to a WebSocket to talk to me.\n"))

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            conn.send_text(frame.string_data.upper())


class SendOnce:
    """Sends one text message, keeps the first answer, then closes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.answer: str | None = None

    def on_upgraded(self, conn: Connection) -> None:
        conn.send_text(self.text)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.answer = frame.string_data
        conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        conn.loop.stop()


def run_client(url: str, text: str, *, ssl: ssl.SSLContext | None = None,
               loop: fastws.Loop | None = None) -> str | None:
    loop = loop or fastws.Loop()
    handler = SendOnce(text)
    fastws.connect(url, handler, ssl=ssl, loop=loop)
    loop.run()
    return handler.answer


def main() -> None:
    if sys.argv[1:2] == ["server"]:
        fastws.serve(UpperCaseServer(), "127.0.0.1", 9001)
        fastws.default_loop().run()
    else:
        url = sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:9001/"
        print(run_client(url, "i am cow"))


if __name__ == "__main__":
    main()
