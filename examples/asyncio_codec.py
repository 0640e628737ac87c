"""Embedding the codec: fastws' frame parser and encoder inside asyncio Protocols, without
the fastws loop. The codec is Sans-I/O: feed it bytes in any chunking, get Frames back
through a callback; encode_frame() gives the bytes to write.

The server does the HTTP upgrade with fastws.http.RequestParser and fastws.accept(), then
parses frames with FrameParser(expect_mask=True) and echoes them. The client writes the
upgrade request by hand, masks what it sends (RFC 6455 requires it of clients) and parses
the server's frames with FrameParser(expect_mask=False).

Run:  python examples/asyncio_codec.py
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os

import fastws
from fastws import CloseCode, Frame, FrameParser, OpCode, encode_frame
from fastws.http import RequestParser

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class EchoServerProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.http: RequestParser | None = RequestParser()
        self.frames = FrameParser(self.on_frame, self.on_error, expect_mask=True,
                                  max_frame_size=1 << 20, validate_utf8=True)

    def data_received(self, data: bytes) -> None:
        if self.http is None:
            self.frames.feed(data)
            return
        requests = self.http.feed(data)
        if not self.http.upgraded:
            return                                    # the request is not complete yet
        response = fastws.accept(requests[-1])         # raises HandshakeError when invalid
        self.transport.write(response.encode())
        tail, self.http = self.http.tail, None
        if tail:                                       # frames sent right behind the request
            self.frames.feed(tail)

    def on_frame(self, frame: Frame) -> None:
        if frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            self.transport.write(encode_frame(frame.opcode, frame.data))   # server: unmasked
        elif frame.opcode == OpCode.PING:
            self.transport.write(encode_frame(OpCode.PONG, frame.data))
        elif frame.opcode == OpCode.CLOSE:
            code, _ = fastws.parse_close(frame.data)
            self.transport.write(encode_frame(OpCode.CLOSE, fastws.close_payload(code)))
            self.transport.close()
        # (fragments arrive as they are: Consolidate is a fastws stage, not part of the codec)

    def on_error(self, code: int, reason: str) -> None:
        self.transport.write(encode_frame(OpCode.CLOSE, fastws.close_payload(code, reason)))
        self.transport.close()


class ClientProtocol(asyncio.Protocol):
    def __init__(self, messages: list[str | bytes]) -> None:
        self.to_send = messages
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.head: bytes | None = b""
        self.parser = FrameParser(self.on_frame, self.on_error, expect_mask=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n".encode())

    def send(self, opcode: int, data: bytes | str) -> None:
        self.transport.write(encode_frame(opcode, data, masking_key=os.urandom(4)))

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, rest = self.head.partition(b"\r\n\r\n")
            self.head = None
            expected = base64.b64encode(hashlib.sha1((self.key + GUID).encode()).digest())
            assert head.startswith(b"HTTP/1.1 101 ") and expected in head, head
            for message in self.to_send:
                self.send(OpCode.TEXT if isinstance(message, str) else OpCode.BINARY, message)
            data = rest
        self.parser.feed(data)

    def on_frame(self, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.received.append(frame.string_data)
        elif frame.opcode == OpCode.BINARY:
            self.received.append(bytes(frame.data))
        elif frame.opcode == OpCode.CLOSE:
            self.close_code, _ = fastws.parse_close(frame.data)
            self.transport.close()
            return
        if len(self.received) == len(self.to_send):
            self.send(OpCode.CLOSE, fastws.close_payload(CloseCode.NORMAL, "bye"))

    def on_error(self, code: int, reason: str) -> None:
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def amain() -> ClientProtocol:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    messages: list[str | bytes] = ["hello from asyncio", b"\x00\x01\x02", "\u00e9t\u00e9"]
    _, client = await loop.create_connection(lambda: ClientProtocol(messages), "127.0.0.1", port)
    await asyncio.wait_for(client.done, 10)
    server.close()
    await server.wait_closed()
    return client


def main() -> None:
    client = asyncio.run(amain())
    for message in client.received:
        print("echoed:", message)
    print("close code:", client.close_code)
    assert client.received == ["hello from asyncio", b"\x00\x01\x02", "\u00e9t\u00e9"]
    assert client.close_code == 1000


if __name__ == "__main__":
    main()
