"""The close handshake and close codes.

Each client below provokes one way for a connection to end; the server and the client
each report it once, through `on_closed(conn, code, reason)`:

  /normal    the client calls conn.close(1000, "bye"): a clean closing handshake
  /too-big   a 2000-byte message against max_message_size=1024     -> 1009
  /bad-utf8  a text message that is not UTF-8                       -> 1007
  /protocol  a continuation frame with no message to continue       -> 1002
             (fastws will not send one: this client plays a broken peer with raw bytes)
  /crash     the server's on_frame raises                           -> 1011
  /abort     the server drops TCP without a close frame (abort())   -> 1006
  /deaf      the client stops reading, so the server's close frame is never answered:
             the server gives up after close_timeout (0.2 s here) and drops TCP

Run:  python examples/close_codes.py
"""

from __future__ import annotations

import logging
import time

import fastws
from fastws import Connection, Frame, OpCode, Request

SCENARIOS = ["/normal", "/too-big", "/bad-utf8", "/protocol", "/crash", "/abort", "/deaf"]


class Server:
    def __init__(self) -> None:
        self.closed: dict[str, list[tuple[int, str]]] = {path: [] for path in SCENARIOS}
        self.close_started: dict[str, float] = {}

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.path == "/too-big":
            conn.upgrade(fastws.accept(request), max_message_size=1024)
        elif request.path == "/deaf":
            conn.upgrade(fastws.accept(request), close_timeout=0.2)
        else:
            conn.upgrade(fastws.accept(request))

    def on_upgraded(self, conn: Connection) -> None:
        path = conn.request.path if conn.request else ""
        if path == "/abort":
            conn.abort()
        elif path == "/deaf":
            conn.call_later(0.05, self._close_deaf, conn)

    def _close_deaf(self, conn: Connection) -> None:
        self.close_started["/deaf"] = time.monotonic()
        conn.close(1001, "going away")

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if conn.request and conn.request.path == "/crash":
            raise RuntimeError("a bug in the handler")   # logged; the peer gets 1011

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        path = conn.request.path if conn.request else ""
        self.closed[path].append((int(code), reason))
        if path in self.close_started:
            waited = time.monotonic() - self.close_started[path]
            print(f"server: /deaf gave up after {waited:.2f} s")


class Client:
    def __init__(self, path: str, results: dict[str, tuple[int, str]], stop_after: int) -> None:
        self.path = path
        self.results = results
        self.stop_after = stop_after

    def on_upgraded(self, conn: Connection) -> None:
        path = self.path
        if path == "/normal":
            conn.close(1000, "bye")
        elif path == "/too-big":
            conn.send_binary(b"x" * 2000)
        elif path == "/bad-utf8":
            conn.send(Frame(opcode=OpCode.TEXT, data=b"caf\xe9"))          # latin-1, not UTF-8
        elif path == "/protocol":
            orphan = Frame(opcode=OpCode.CONTINUATION, data=b"orphan")
            try:
                conn.send(orphan)                      # fastws refuses to break the protocol
            except ValueError:
                orphan.masking_key = 0x1234ABCD        # so play a broken peer, on the raw socket
                sock = conn.socket                     # None only once it is closed
                assert sock is not None
                sock.send(orphan.encode())
        elif path == "/crash":
            conn.send_text("boom")
        elif path == "/deaf":
            conn.pause_reading()                       # we will not see the close frame...
            conn.loop.call_later(0.5, conn.resume_reading)   # ...until long after the timeout

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.results[self.path] = (int(code), reason)
        if len(self.results) == self.stop_after:
            conn.loop.stop()


def main() -> None:
    # The /crash scenario logs its exception with a traceback on the "fastws" logger;
    # it is expected here, so keep the output short.
    logging.getLogger("fastws").setLevel(logging.CRITICAL)
    loop = fastws.Loop()
    server_handler = Server()
    server = fastws.serve(server_handler, "127.0.0.1", 0, loop=loop, compression=False)
    results: dict[str, tuple[int, str]] = {}
    for path in SCENARIOS:
        fastws.connect(f"ws://127.0.0.1:{server.port}{path}", Client(path, results, len(SCENARIOS)),
                       loop=loop, compression=False)
    loop.call_later(10, loop.stop)
    loop.run()
    deadline = time.monotonic() + 5          # let the server side report its last closes
    while not all(server_handler.closed.values()) and time.monotonic() < deadline:
        loop.run_once(0.05)
    server.close()
    loop.close()
    for path in SCENARIOS:
        print(f"{path}:\n    client on_closed {results.get(path)}\n"
              f"    server on_closed {server_handler.closed[path]}")
    expected = {"/normal": 1000, "/too-big": 1009, "/bad-utf8": 1007, "/protocol": 1002,
                "/crash": 1011, "/abort": 1006}
    for path, code in expected.items():
        assert results[path][0] == code, (path, results[path])
    for path in SCENARIOS:
        assert len(server_handler.closed[path]) == 1, (path, server_handler.closed[path])


if __name__ == "__main__":
    main()
