"""Fragmentation: sending a message in fragments, and receiving with and without Consolidate.

The client sends "Hello, world €" as three frames: a TEXT frame with fin=False, then
CONTINUATION frames, the last one with fin=True (the € sign is split across two of them).
The server's /whole path keeps the default chain, whose Consolidate switch hands the handler
one frame per message; /raw drops Consolidate and sees every fragment as it arrives.

Run:  python examples/fragmentation.py
"""

from __future__ import annotations

import fastws
from fastws import Connection, Frame, OpCode, Request

TEXT = "Hello, world \u20ac"


class Server:
    def __init__(self) -> None:
        self.seen: dict[str, list[tuple[str, bool, bytes]]] = {"/whole": [], "/raw": []}
        self.messages: list[str] = []
        self._parts: list[bytes] = []

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.path == "/raw":
            # No Consolidate: fragments reach on_frame one by one (AutoPong still answers pings).
            conn.upgrade(fastws.accept(request), stages=[fastws.AutoPong()])
        else:
            conn.upgrade(fastws.accept(request))      # default: AutoPong, Consolidate

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        path = conn.request.path if conn.request else "?"
        self.seen[path].append((OpCode(frame.opcode).name, frame.fin, bytes(frame.data)))
        if path == "/raw":
            # Reassemble bytes, decode once at the end: a fragment may end inside a character.
            self._parts.append(bytes(frame.data))
            if frame.fin:
                self.messages.append(b"".join(self._parts).decode("utf-8"))
                self._parts = []
        else:
            self.messages.append(frame.string_data)


class FragmentSender:
    def __init__(self, done: list[Connection]) -> None:
        self.done = done

    def on_upgraded(self, conn: Connection) -> None:
        data = TEXT.encode("utf-8")
        conn.send(Frame(fin=False, opcode=OpCode.TEXT, data=data[:7]))           # "Hello, "
        # "world " and the first 2 of the 3 bytes of €
        conn.send(Frame(fin=False, opcode=OpCode.CONTINUATION, data=data[7:15]))
        conn.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data=data[15:]))    # the last byte
        conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.done.append(conn)
        if len(self.done) == 2:
            conn.loop.stop()


def main() -> None:
    loop = fastws.Loop()
    server_handler = Server()
    # compression=False keeps the example about fragments only (with permessage-deflate
    # the same holds, the frames' payloads are just compressed on the wire).
    server = fastws.serve(server_handler, "127.0.0.1", 0, loop=loop, compression=False)
    done: list[Connection] = []
    for path in ("/whole", "/raw"):
        fastws.connect(f"ws://127.0.0.1:{server.port}{path}", FragmentSender(done), loop=loop)
    loop.call_later(10, loop.stop)
    loop.run()
    server.close()
    loop.close()
    for path, frames in server_handler.seen.items():
        print(f"{path}: {len(frames)} frame(s)")
        for opcode, fin, data in frames:
            print(f"   {opcode:<12} fin={fin!s:<5} {data!r}")
    print("messages:", server_handler.messages)
    assert len(server_handler.seen["/whole"]) == 1 and len(server_handler.seen["/raw"]) == 3
    assert server_handler.messages == [TEXT, TEXT]


if __name__ == "__main__":
    main()
