"""Embedding the protocol: fastws' sans-I/O WebSocket protocol inside asyncio Protocols,
without the fastws loop. `fastws.Protocol` owns every rule (fragments reassembled, pings
answered, limits, UTF-8, the closing handshake); you feed it the bytes you read and write
the bytes it gives back.

The server does the HTTP upgrade with fastws.http.RequestParser and fastws.accept(), then
hands what follows to a server Protocol and echoes every message. The client uses
fastws.client.ClientHandshake for its request and the check of the answer, and a client
Protocol (which masks what it sends, as RFC 6455 requires of clients). It sends one message
in three fragments, which comes back whole.

Run:  python examples/asyncio_codec.py
"""

from __future__ import annotations

import asyncio

import fastws
from fastws import Close, CloseCode, Frame, OpCode, Protocol
from fastws.client import ClientHandshake
from fastws.http import RequestParser


class EchoServerProtocol(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.http: RequestParser | None = RequestParser()
        self.ws = Protocol(False, max_frame_size=1 << 20, max_message_size=1 << 20)

    def data_received(self, data: bytes) -> None:
        if self.http is not None:
            requests = self.http.feed(data)
            if not self.http.upgraded:
                return                                 # the request is not complete yet
            response = fastws.accept(requests[-1])      # raises HandshakeError when invalid
            self.transport.write(response.encode())
            data, self.http = self.http.tail, None      # frames sent right behind the request
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Frame) and event.opcode in (OpCode.TEXT, OpCode.BINARY):
                self.ws.send(Frame(opcode=event.opcode, data=event.data))
        self.flush()

    def flush(self) -> None:
        """Write what the protocol produced; close once it says the conversation is over."""
        self.transport.write(self.ws.data_to_send())
        if self.ws.sink.ended:                          # close handshake done, or a violation
            self.transport.close()


class ClientProtocol(asyncio.Protocol):
    def __init__(self, port: int, messages: list[str | bytes]) -> None:
        self.to_send = messages
        self.received: list[str | bytes] = []
        self.close_code: int | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.handshake: ClientHandshake | None = ClientHandshake("127.0.0.1", port, "/",
                                                                 secure=False)
        self.ws = Protocol(True)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        assert self.handshake is not None
        transport.write(self.handshake.request_bytes())

    def data_received(self, data: bytes) -> None:
        if self.handshake is not None:
            response = self.handshake.receive_data(data)
            if response is None:
                return
            self.handshake.check(response)              # raises HandshakeError if refused
            data, self.handshake = self.handshake.tail, None
            self.send_all()
        self.ws.receive_data(data)
        for event in self.ws.events_received():
            if isinstance(event, Close):
                self.close_code = event.code
            elif event.opcode == OpCode.TEXT:
                self.received.append(event.string_data)
            elif event.opcode == OpCode.BINARY:
                self.received.append(bytes(event.data))
        if len(self.received) == len(self.to_send) and self.ws.is_open:
            self.ws.close(CloseCode.NORMAL, "bye")
        self.transport.write(self.ws.data_to_send())

    def send_all(self) -> None:
        for message in self.to_send:
            if isinstance(message, str):
                self.ws.send_text(message)
            else:                                       # a binary message in three fragments
                self.ws.send(Frame(fin=False, opcode=OpCode.BINARY, data=message[:1]))
                self.ws.send(Frame(fin=False, opcode=OpCode.CONTINUATION, data=message[1:2]))
                self.ws.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data=message[2:]))
        self.transport.write(self.ws.data_to_send())

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()
        if not self.done.done():
            self.done.set_result(None)


async def amain() -> ClientProtocol:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServerProtocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    messages: list[str | bytes] = ["hello from asyncio", b"\x00\x01\x02\x03", "\u00e9t\u00e9"]
    _, client = await loop.create_connection(lambda: ClientProtocol(port, messages),
                                             "127.0.0.1", port)
    await asyncio.wait_for(client.done, 10)
    server.close()
    await server.wait_closed()
    return client


def main() -> None:
    client = asyncio.run(amain())
    for message in client.received:
        print("echoed:", message)
    print("close code:", client.close_code)
    assert client.received == ["hello from asyncio", b"\x00\x01\x02\x03", "\u00e9t\u00e9"]
    assert client.close_code == 1000


if __name__ == "__main__":
    main()
