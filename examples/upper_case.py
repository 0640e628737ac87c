"""The seed's README example, ported: a server that answers every text message with its
content upper-cased, and a client that sends "i am cow" and prints "I AM COW".

Run the server:  python examples/upper_case.py server
Run the client:  python examples/upper_case.py client ws://127.0.0.1:9001/
(without a server, the client says why it got no answer and exits with status 1)
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
        self.closed = ""

    def on_upgraded(self, conn: Connection) -> None:
        conn.send_text(self.text)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        self.answer = frame.string_data
        conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        # A failed connect or handshake ends here too: 1006 (1015 for TLS) and why.
        self.closed = f"{code} {reason}".strip()
        conn.loop.stop()


def run_client(url: str, text: str, *, ssl: ssl.SSLContext | None = None,
               loop: fastws.Loop | None = None) -> str:
    """The server's answer to `text`; ConnectionError when there was none."""
    loop = loop or fastws.Loop()
    handler = SendOnce(text)
    fastws.connect(url, handler, ssl=ssl, loop=loop)
    loop.run()
    if handler.answer is None:
        why = f": closed {handler.closed}" if handler.closed else ""
        raise ConnectionError(f"no answer from {url}{why}")
    return handler.answer


def main() -> None:
    if sys.argv[1:2] == ["server"]:
        fastws.serve(UpperCaseServer(), "127.0.0.1", 9001)
        fastws.default_loop().run()
    else:
        url = sys.argv[2] if len(sys.argv) > 2 else "ws://127.0.0.1:9001/"
        try:
            print(run_client(url, "i am cow"))
        except OSError as exc:           # no answer, or a host name that does not resolve
            sys.exit(str(exc))           # the message on stderr, exit status 1


if __name__ == "__main__":
    main()
