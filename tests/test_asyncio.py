"""fastws.asyncio: the callback and awaitable forms on asyncio's loop and on uvloop.

Every test runs four times: on the stdlib loop and on uvloop (the `aio` fixture), each in
the clear and over TLS (the `transport` fixture). Servers and clients run in the test's
own loop; raw peers (asyncio streams) send exactly the bytes a test needs.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import ssl

import pytest

import fastws
import fastws.asyncio as fa
from fastws import CloseCode, Frame, OpCode, encode_frame
from fastws._codec import parse_close

TIMEOUT = 10.0


@pytest.fixture(params=["asyncio", "uvloop"])
def aio(request):
    """Runs a coroutine to completion on the stdlib loop or on uvloop (bounded)."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")

        def run(coro):
            return uvloop.run(asyncio.wait_for(coro, TIMEOUT * 3))
    else:
        def run(coro):
            return asyncio.run(asyncio.wait_for(coro, TIMEOUT * 3))
    return run


@pytest.fixture(params=["socket", "asyncio"])
def server_io(request):
    """The callback-form server's I/O: fastws' own sockets on add_reader, or asyncio's
    transports (serve(transport=...))."""
    return request.param


def url(server, transport, path="/"):
    return f"{transport.scheme}://127.0.0.1:{server.port}{path}"


class Echo:
    """A callback handler: every message back, the close recorded."""

    def __init__(self):
        self.closed = []
        self.frames = []

    def on_frame(self, conn, frame):
        self.frames.append(frame)
        if frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(Frame(opcode=frame.opcode, data=frame.data))

    def on_closed(self, conn, code, reason):
        self.closed.append((code, reason))


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def until(predicate, timeout=TIMEOUT):
    """Yield to the loop until predicate() holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


# ------------------------------------------------------------------ raw peers

async def raw_open(port, transport, path="/", extensions=""):
    """A raw client: the handshake, then the stream for frames."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=transport.client_ssl,
        server_hostname="127.0.0.1" if transport.client_ssl else None)
    key = base64.b64encode(os.urandom(16)).decode()
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n{extra}\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return reader, writer


async def raw_frames(reader):
    """Frames from a raw stream until EOF (a list of Frames)."""
    frames = []
    parser = fastws.FrameParser(frames.append, expect_mask=False)
    while True:
        try:
            data = await reader.read(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            return frames
        parser.feed(data)


def masked(opcode, data, fin=True):
    return encode_frame(opcode, data, fin, 0, int.from_bytes(os.urandom(4), "big"))


# ------------------------------------------------------------------ the callback form

def test_callback_server_and_client_echo(aio, transport, server_io):
    server_handler = Echo()

    class Client:
        def __init__(self):
            self.messages = []
            self.done = asyncio.get_running_loop().create_future()
            self.upgraded = 0

        def on_upgraded(self, conn):
            self.upgraded += 1
            conn.send_text("hello")
            conn.send_binary(b"\x00\x01\xff")
            conn.send(Frame(opcode=OpCode.TEXT, data=b"frag", fin=False))
            conn.send(Frame(opcode=OpCode.CONTINUATION, data=b"mented"))
            conn.send_text("x" * 100_000)       # compressed (deflate negotiated)

        def on_frame(self, conn, frame):
            self.messages.append((frame.opcode, frame.data))
            if len(self.messages) == 4:
                conn.close(4000, "enough")

        def on_closed(self, conn, code, reason):
            self.done.set_result((code, reason))

    async def main():
        server = await fa.serve(server_handler, "127.0.0.1", 0, ssl=transport.server_ssl,
                                transport=server_io)
        async with server:
            client = Client()
            conn = await fa.connect(url(server, transport), client, ssl=transport.client_ssl)
            assert isinstance(conn, fastws.Connection) and client.upgraded == 1
            assert conn.find_stage(fastws.Deflate) is not None
            assert await client.done == (4000, "enough")
            assert client.messages == [(OpCode.TEXT, b"hello"), (OpCode.BINARY, b"\x00\x01\xff"),
                                       (OpCode.TEXT, b"fragmented"),
                                       (OpCode.TEXT, b"x" * 100_000)]
            await until(lambda: server_handler.closed)
            assert server_handler.closed == [(4000, "enough")]
            assert conn.bytes_received > 0 and conn.bytes_sent > 0

    aio(main())


def test_callback_server_answers_plain_http(aio, transport, server_io):
    class Site:
        def on_request(self, conn, request):
            if request.upgrade:
                conn.upgrade(fastws.accept(request))
            else:
                conn.respond(fastws.Response.text(200, f"hello {request.path}\n"))

    async def main():
        async with fa.serve(Site(), "127.0.0.1", 0, ssl=transport.server_ssl,
                            transport=server_io) as server:
            def get():
                if transport.client_ssl is not None:
                    client = http.client.HTTPSConnection("127.0.0.1", server.port,
                                                         context=transport.client_ssl,
                                                         timeout=TIMEOUT)
                else:
                    client = http.client.HTTPConnection("127.0.0.1", server.port,
                                                        timeout=TIMEOUT)
                answers = []
                for path in ("/a", "/b"):                # keep-alive: two on one connection
                    client.request("GET", path)
                    response = client.getresponse()
                    answers.append((response.status, response.read()))
                client.close()
                return answers

            answers = await asyncio.get_running_loop().run_in_executor(None, get)
            assert answers == [(200, b"hello /a\n"), (200, b"hello /b\n")]

    aio(main())


def test_auto_ping_reports_rtt_on_asyncio(aio, transport, server_io):
    class Pinged(Echo):
        def __init__(self):
            super().__init__()
            self.rtts = []

        def on_request(self, conn, request):
            conn.upgrade(fastws.accept(request), stages=[
                fastws.AutoPing(0.05), fastws.AutoPong(), fastws.Consolidate()])

        def on_rtt(self, conn, seconds):
            self.rtts.append(seconds)

    handler = Pinged()

    async def main():
        async with (fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl,
                             transport=server_io) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl)):
            await until(lambda: len(handler.rtts) >= 3)
        assert all(0 < rtt < 1 for rtt in handler.rtts)

    aio(main())



@pytest.mark.parametrize("bad, code", [
    (encode_frame(3, b"", True, 0, 0x01020304), CloseCode.PROTOCOL_ERROR),          # reserved opcode
    (encode_frame(OpCode.TEXT, b"\xff\xfe", True, 0, 0x01020304), CloseCode.INVALID_DATA),
    (encode_frame(OpCode.BINARY, b"x" * 1025, True, 0, 0x01020304), CloseCode.MESSAGE_TOO_BIG),
], ids=["reserved-opcode", "bad-utf8", "too-big"])
def test_callback_server_fails_violations_and_limits(aio, transport, server_io, bad, code):
    """The protocol's rules hold on either I/O path: the peer gets the close code, the
    handler hears it, and the server keeps serving other connections."""
    handler = Echo()

    async def main():
        async with fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl,
                            transport=server_io, max_message_size=1024) as server:
            reader, writer = await raw_open(server.port, transport)
            writer.write(masked(OpCode.TEXT, b"before") + bad)
            frames = await raw_frames(reader)
            writer.close()
            assert frames[0].data == b"before" and frames[-1].opcode == OpCode.CLOSE
            assert parse_close(frames[-1].data)[0] == code
            await until(lambda: handler.closed)
            assert handler.closed[0][0] == code
            async with fa.connect(url(server, transport), ssl=transport.client_ssl) as ws:
                await ws.send("still serving")
                assert await ws.recv() == "still serving"

    aio(main())


def test_callback_server_close_sends_1001(aio, transport, server_io):
    handler = Echo()

    async def main():
        server = await fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl,
                                transport=server_io)
        clients = [await fa.connect(url(server, transport), ssl=transport.client_ssl)
                   for _ in range(3)]
        await until(lambda: len(server.connections) == 3)
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)                       # serve_forever is waiting
        server.close()
        for ws in clients:
            with pytest.raises(fa.ConnectionClosedOK) as raised:
                await ws.recv()
            assert raised.value.code == CloseCode.GOING_AWAY
        await server.wait_closed()
        await asyncio.wait_for(serving, TIMEOUT)     # serve_forever returns once closed
        assert not server.all_connections and not server.is_serving and not server.sockets
        assert [code for code, _ in handler.closed] == [CloseCode.GOING_AWAY] * 3
        with pytest.raises(RuntimeError, match="closed"):
            await server.serve_forever()

    aio(main())


def test_server_transport_choice(aio):
    """Handler objects get fastws' own socket I/O on asyncio's loop and uvloop; the
    awaitable form runs on asyncio's transports; impossible choices are refused."""
    async def main():
        async with fa.serve(Echo(), "127.0.0.1", 0) as server:
            assert server.transport == "socket"
            assert all(sock.gettimeout() == 0 for sock in server.sockets)
        async with fa.serve(echo, "127.0.0.1", 0) as server:
            assert server.transport == "asyncio"
        async with fa.serve(Echo(), "127.0.0.1", 0, transport="asyncio") as server:
            assert server.transport == "asyncio"
        with pytest.raises(ValueError, match="awaitable"):
            await fa.serve(echo, "127.0.0.1", 0, transport="socket")
        with pytest.raises(ValueError, match="transport must be"):
            await fa.serve(Echo(), "127.0.0.1", 0, transport="epoll")
        with pytest.raises(TypeError, match="not the function"):    # def, not async def
            await fa.serve(lambda ws: None, "127.0.0.1", 0)

    aio(main())

# ------------------------------------------------------------------ the awaitable form

def test_awaitable_server_and_client_echo(aio, transport):
    async def main():
        async with fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl) as server:
            async with fa.connect(url(server, transport), ssl=transport.client_ssl) as ws:
                assert isinstance(ws, fa.WebSocket)
                assert "permessage-deflate" in ws.response.headers["sec-websocket-extensions"]
                await ws.send("héllo")
                assert await ws.recv() == "héllo"
                await ws.send(b"\x00" * 70_000)           # a large frame (and compressed)
                assert await ws.recv() == b"\x00" * 70_000
                await ws.send(["frag", "men", "ted"])      # one message in three frames
                assert await ws.recv() == "fragmented"
                await ws.send([b"a", bytearray(b"b"), memoryview(b"c")])
                assert await ws.recv() == b"abc"
                await ws.send("")
                assert await ws.recv() == ""
                received = []
                for i in range(200):
                    await ws.send(str(i))
                async for message in ws:
                    received.append(message)
                    if len(received) == 200:
                        break
                assert received == [str(i) for i in range(200)]
            assert ws.close_code == 1000 and ws.closed

    aio(main())


def test_awaitable_without_compression(aio, transport):
    async def main():
        async with (fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl, compression=False) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            assert "sec-websocket-extensions" not in ws.response.headers
            await ws.send("plain")
            assert await ws.recv() == "plain"

    aio(main())


def test_close_codes_both_ways(aio, transport):
    seen = []

    async def handler(ws):
        if ws.request.path == "/normal":
            await ws.recv()
            return                                 # returning closes with 1000
        try:
            await ws.recv()
        except fa.ConnectionClosed as exc:
            seen.append((type(exc), exc.code, exc.reason))
            raise
        await ws.close(4001, "server says bye")

    async def main():
        async with fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl) as server:
            # the client closes
            ws = await fa.connect(url(server, transport), ssl=transport.client_ssl)
            await ws.close(4000, "client says bye")
            assert (ws.close_code, ws.close_reason) == (4000, "client says bye")
            await until(lambda: seen)
            assert seen == [(fa.ConnectionClosedError, 4000, "client says bye")]
            # the server closes
            async with fa.connect(url(server, transport), ssl=transport.client_ssl) as ws:
                await ws.send("go")
                with pytest.raises(fa.ConnectionClosedError) as raised:
                    await ws.recv()
                assert (raised.value.code, raised.value.reason) == (4001, "server says bye")
                with pytest.raises(fa.ConnectionClosed):
                    await ws.send("too late")
            assert (ws.close_code, ws.close_reason) == (4001, "server says bye")
            # a normal close ends `async for` without an exception
            async with fa.connect(url(server, transport, "/normal"),
                                  ssl=transport.client_ssl) as ws:
                await ws.send("go")
                assert [m async for m in ws] == []
            assert ws.close_code == 1000

    aio(main())


def test_handler_exception_closes_with_1011(aio, transport):
    async def handler(ws):
        await ws.recv()
        raise RuntimeError("boom")

    async def main():
        async with (fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            await ws.send("x")
            with pytest.raises(fa.ConnectionClosedError) as raised:
                await ws.recv()
            assert raised.value.code == CloseCode.INTERNAL_ERROR

    aio(main())


def test_message_too_big_1009(aio, transport):
    async def main():
        async with fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl,
                            max_message_size=1024) as server:
            async with fa.connect(url(server, transport), ssl=transport.client_ssl) as ws:
                await ws.send(b"x" * 1024)
                assert await ws.recv() == b"x" * 1024
                await ws.send(b"x" * 1025)
                with pytest.raises(fa.ConnectionClosedError) as raised:
                    await ws.recv()
                assert raised.value.code == CloseCode.MESSAGE_TOO_BIG
            # the client's own limit
            async with fa.connect(url(server, transport), ssl=transport.client_ssl,
                                  max_message_size=10) as ws:
                await ws.send(b"y" * 11)
                with pytest.raises(fa.ConnectionClosedError) as raised:
                    await ws.recv()
                assert raised.value.code == CloseCode.MESSAGE_TOO_BIG

    aio(main())


@pytest.mark.parametrize("bad, code", [
    (encode_frame(3, b"", True, 0, 0x01020304), CloseCode.PROTOCOL_ERROR),          # reserved opcode
    (encode_frame(OpCode.TEXT, b"x", True, 0, None), CloseCode.PROTOCOL_ERROR),     # unmasked
    (encode_frame(OpCode.TEXT, b"\xff\xfe", True, 0, 0x01020304), CloseCode.INVALID_DATA),
])
def test_server_fails_violations(aio, transport, bad, code):
    seen = []

    async def handler(ws):
        if ws.request.path == "/normal":
            await ws.recv()
            return                                 # returning closes with 1000
        try:
            await ws.recv()
        except fa.ConnectionClosed as exc:
            seen.append(exc.code)

    async def main():
        async with fa.serve(handler, "127.0.0.1", 0, ssl=transport.server_ssl) as server:
            reader, writer = await raw_open(server.port, transport)
            writer.write(bad)
            frames = await raw_frames(reader)
            writer.close()
            assert frames[-1].opcode == OpCode.CLOSE
            assert parse_close(frames[-1].data)[0] == code
            await until(lambda: seen)
            assert seen == [code]

    aio(main())


@pytest.mark.parametrize("bad, code", [
    (encode_frame(OpCode.TEXT, b"\xc0\xaf", True, 0, None), CloseCode.INVALID_DATA),
    (encode_frame(OpCode.TEXT, b"x", True, 0, 0x01020304), CloseCode.PROTOCOL_ERROR),  # masked
    (encode_frame(OpCode.CONTINUATION, b"x", True, 0, None), CloseCode.PROTOCOL_ERROR),
])
def test_client_fails_violations(aio, transport, bad, code):
    async def main():
        async def misbehave(reader, writer):
            head = await reader.readuntil(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key"))
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                         + fastws.handshake.accept_key(key.decode()).encode() + b"\r\n\r\n" + bad)
            await reader.read()          # until the client closes
            writer.close()

        server = await asyncio.start_server(misbehave, "127.0.0.1", 0, ssl=transport.server_ssl)
        async with server:
            port = server.sockets[0].getsockname()[1]
            ws = await fa.connect(f"{transport.scheme}://127.0.0.1:{port}/",
                                  ssl=transport.client_ssl, close_timeout=1.0)
            with pytest.raises(fa.ConnectionClosedError) as raised:
                await ws.recv()
            assert raised.value.code == code
            await ws.wait_closed()

    aio(main())


def test_ping_returns_rtt(aio, transport):
    async def main():
        async with (fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            rtts = [await ws.ping() for _ in range(3)]
            assert all(0 < rtt < 1 for rtt in rtts)
            assert ws.latency == rtts[-1]
            first = asyncio.ensure_future(ws.ping(b"one"))
            second = asyncio.ensure_future(ws.ping(b"two"))
            assert (await first) > 0 and (await second) > 0
            with pytest.raises(ValueError):
                await ws.ping(b"x" * 126)

    aio(main())


def test_recv_timeout_and_concurrent_recv(aio, transport):
    async def main():
        async with (fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            with pytest.raises(TimeoutError):
                await ws.recv(timeout=0.05)
            waiting = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0.01)
            with pytest.raises(RuntimeError, match="already waiting"):
                await ws.recv()
            await ws.send("after")
            assert await waiting == "after"

    aio(main())


def test_cancelled_recv_leaves_the_connection_usable(aio, transport):
    async def main():
        async with (fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            for _ in range(3):
                blocked = asyncio.ensure_future(ws.recv())
                await asyncio.sleep(0.01)
                blocked.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await blocked
            await ws.send("still here")
            assert await ws.recv() == "still here"
            # a message that arrives as the waiter is cancelled stays queued
            blocked = asyncio.ensure_future(ws.recv())
            await asyncio.sleep(0.01)
            await ws.send("queued")
            await until(lambda: ws.queued == 1 or blocked.done())
            if not blocked.done():
                blocked.cancel()
                assert await ws.recv() == "queued"
            else:
                assert blocked.result() == "queued"
            await ws.send("next")
            assert await ws.recv() == "next"

    aio(main())


def test_send_waits_for_a_peer_that_does_not_read(aio, transport):
    state = {"sent": 0}
    chunk = b"z" * 65536

    async def producer(ws):
        for _ in range(400):                       # 25 MiB if nothing held it back
            await ws.send(chunk)
            state["sent"] += 1
            state["buffer"] = max(state.get("buffer", 0), ws.connection.write_buffer_size)
        await ws.close()

    async def main():
        async with fa.serve(producer, "127.0.0.1", 0, ssl=transport.server_ssl,
                            compression=False) as server:
            reader, writer = await raw_open(server.port, transport)
            sock = writer.get_extra_info("socket")
            # The client reads nothing: the producer stops once the kernel's and the
            # server's buffers are full (no progress in ten of until()'s turns).
            seen = []

            def settled():
                seen.append(state["sent"])
                return len(seen) > 10 and seen[-1] == seen[-11]
            await until(settled)
            assert state["sent"] < 400, "send() did not wait"
            # bounded: the high-water mark plus one message, plus the kernel's buffers
            assert state["buffer"] <= 256 * 1024 + len(chunk) + 16 * 1024
            assert sock is not None
            frames = await raw_frames(reader)      # now read everything
            writer.close()
            data = [f for f in frames if f.opcode == OpCode.BINARY]
            assert len(data) == 400 and all(f.data == chunk for f in data)
            assert frames[-1].opcode == OpCode.CLOSE

    aio(main())


def test_receive_queue_is_bounded_and_pauses_reading(aio, transport):
    async def main():
        got = asyncio.get_running_loop().create_future()

        async def lazy(ws):
            await got                              # reads nothing until told
            messages = [await ws.recv() for _ in range(300)]
            await ws.send(str(len(messages)))
            await ws.recv()

        async with (fa.serve(lazy, "127.0.0.1", 0, ssl=transport.server_ssl, max_queue=4, compression=False) as server,
                    fa.connect(url(server, transport), ssl=transport.client_ssl) as ws):
            for i in range(300):
                await ws.send(b"%d" % i + b"." * 4000)
            await until(lambda: any(conn._transport.reading_paused
                                    for conn in server.connections))
            conns = list(server.connections)
            assert len(conns) == 1
            queue = conns[0].handler.queued
            # max_queue plus what one read brought (a read is at most 256 KiB)
            assert 4 <= queue <= 4 + 256 * 1024 // 4000 + 1
            assert conns[0]._transport.reading_paused
            got.set_result(None)
            assert await ws.recv() == "300"

    aio(main())


def test_server_close_sends_1001_to_every_client(aio, transport):
    async def main():
        server = await fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl)
        clients = [await fa.connect(url(server, transport), ssl=transport.client_ssl)
                   for _ in range(3)]
        callback_closed = asyncio.get_running_loop().create_future()

        class Watch:
            def on_closed(self, conn, code, reason):
                callback_closed.set_result(code)

        await fa.connect(url(server, transport), Watch(), ssl=transport.client_ssl)
        await until(lambda: len(server.connections) == 4)
        server.close()
        for ws in clients:
            with pytest.raises(fa.ConnectionClosedOK) as raised:
                await ws.recv()
            assert raised.value.code == CloseCode.GOING_AWAY
        assert await callback_closed == CloseCode.GOING_AWAY
        await server.wait_closed()
        assert not server.all_connections and not server.is_serving

    aio(main())


def test_connect_failures_raise(aio, transport):
    async def main():
        import socket as socket_module
        with socket_module.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            port = unused.getsockname()[1]
            with pytest.raises(OSError):
                await fa.connect(f"{transport.scheme}://127.0.0.1:{port}/",
                                 ssl=transport.client_ssl)

        class NoUpgrade:
            def on_request(self, conn, request):
                conn.respond(fastws.Response.text(404, "nope\n"))

        async with fa.serve(NoUpgrade(), "127.0.0.1", 0, ssl=transport.server_ssl) as server:
            with pytest.raises(fastws.HandshakeError):
                await fa.connect(url(server, transport), ssl=transport.client_ssl)
        with pytest.raises(ValueError):
            fa.connect("http://127.0.0.1/")

    aio(main())


def test_tls_certificate_is_checked(aio, ca):
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ssl)

    async def main():
        async with fa.serve(echo, "127.0.0.1", 0, ssl=server_ssl) as server:
            with pytest.raises(ssl.SSLCertVerificationError):      # the CA is not trusted
                await fa.connect(f"wss://127.0.0.1:{server.port}/")
            await until(lambda: not server.all_connections)

    aio(main())


def test_client_handler_and_server_handler_are_told_apart():
    from fastws.asyncio._connections import is_coroutine_handler

    class Callable:
        async def __call__(self, ws):
            pass

    assert is_coroutine_handler(echo) and is_coroutine_handler(Callable())
    assert not is_coroutine_handler(Echo()) and not is_coroutine_handler(lambda ws: None)


def test_closed_connection_is_freed(aio, transport):
    import gc
    import weakref

    async def main():
        async with fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl) as server:
            async with fa.connect(url(server, transport), ssl=transport.client_ssl) as ws:
                await ws.send("x")
                await ws.recv()
                ref = weakref.ref(ws.connection)
            await until(lambda: not server.all_connections)
        return ref

    gc.collect()
    gc.disable()
    try:
        ref = aio(main())
        # Freed by reference counting alone: no cycle holds a closed connection.
        assert ref() is None
    finally:
        gc.enable()


@pytest.mark.parametrize("after, code", [
    (encode_frame(3, b"", True, 0, 0x01020304), CloseCode.PROTOCOL_ERROR),        # violation
    (encode_frame(OpCode.TEXT, b"\xff", True, 0, 0x01020304), CloseCode.INVALID_DATA),
    (encode_frame(OpCode.CLOSE, b"\x03\xe8", True, 0, 0x01020304), CloseCode.NORMAL),  # close
])
def test_answers_leave_before_the_protocols_answer_to_later_input(aio, transport, after, code):
    """Messages sent in one packet with a violation (or a close) behind them are answered
    by the coroutine before the close frame leaves, as a synchronous server would."""
    async def main():
        async with fa.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl,
                            compression=False) as server:
            reader, writer = await raw_open(server.port, transport)
            writer.write(masked(OpCode.TEXT, b"first") + masked(OpCode.BINARY, b"second")
                         + masked(OpCode.PING, b"p") + after)
            frames = await raw_frames(reader)
            writer.close()
            kinds = [(f.opcode, bytes(f.data)) for f in frames if f.opcode != OpCode.PONG]
            assert kinds[:2] == [(OpCode.TEXT, b"first"), (OpCode.BINARY, b"second")]
            assert kinds[2][0] == OpCode.CLOSE and parse_close(kinds[2][1])[0] == code
            assert len(kinds) == 3
            assert [f.data for f in frames if f.opcode == OpCode.PONG] == [b"p"]

    aio(main())


def test_a_coroutine_that_does_not_read_still_answers_pings_and_closes(aio, transport):
    """Bytes the coroutine does not ask for are parsed in the loop's next round: pings
    are answered and the peer's close is seen although recv() is never called."""
    async def deaf(ws):
        await ws.wait_closed()

    async def main():
        async with fa.serve(deaf, "127.0.0.1", 0, ssl=transport.server_ssl,
                            compression=False) as server:
            reader, writer = await raw_open(server.port, transport)
            writer.write(masked(OpCode.TEXT, b"unread") + masked(OpCode.PING, b"p1"))
            frames = []                            # the first pong, before anything else
            parser = fastws.FrameParser(frames.append, expect_mask=False)
            async with asyncio.timeout(TIMEOUT):
                while not frames:
                    data = await reader.read(65536)
                    assert data, "closed early"
                    parser.feed(data)
            writer.write(masked(OpCode.PING, b"p2") + masked(OpCode.CLOSE, b"\x0f\xa0bye"))
            frames += await raw_frames(reader)
            writer.close()
            assert [(f.opcode, bytes(f.data)) for f in frames] == [
                (OpCode.PONG, b"p1"), (OpCode.PONG, b"p2"), (OpCode.CLOSE, b"\x0f\xa0")]

    aio(main())


def test_callback_flow_control_and_write_overflow(aio, transport, server_io):
    """The Loop's flow-control callbacks on asyncio: on_pause_writing above the high-water
    mark, on_resume_writing once the peer reads; a handler that ignores them and passes
    max_write_buffer fails the connection (1008) and it is dropped after close_timeout."""
    chunk = b"q" * 65536

    class Producer:
        def __init__(self, respect):
            self.respect = respect
            self.events = []
            self.sent = 0
            self.closed = asyncio.get_running_loop().create_future()

        def on_upgraded(self, conn):
            self.produce(conn)

        def produce(self, conn):
            while conn.is_open and self.sent < 200:
                conn.send_binary(chunk)
                self.sent += 1
                if self.respect and self.events[-1:] == ["pause"]:
                    return

        def on_pause_writing(self, conn):
            self.events.append("pause")

        def on_resume_writing(self, conn):
            self.events.append("resume")
            self.produce(conn)

        def on_closed(self, conn, code, reason):
            self.closed.set_result(code)

    async def main():
        polite = Producer(respect=True)
        async with fa.serve(polite, "127.0.0.1", 0, ssl=transport.server_ssl,
                            transport=server_io,
                            compression=False) as server:
            reader, writer = await raw_open(server.port, transport)
            # The client reads nothing yet: paused once the kernel's socket buffers filled,
            # with the 13 MiB not all queued.
            await until(lambda: polite.events[-1:] == ["pause"])
            assert polite.sent < 200
            conn = next(iter(server.connections))
            assert conn.write_buffer_size <= 256 * 1024 + 2 * len(chunk)
            frames = await raw_frames_until(reader, 200)
            assert len(frames) == 200 and "resume" in polite.events
            writer.close()

        rude = Producer(respect=False)
        async with fa.serve(rude, "127.0.0.1", 0, ssl=transport.server_ssl,
                            transport=server_io, compression=False,
                            max_write_buffer=1 << 20, close_timeout=0.5) as server:
            reader, writer = await raw_open(server.port, transport)
            assert await asyncio.wait_for(rude.closed, TIMEOUT) == CloseCode.POLICY_VIOLATION
            assert rude.sent < 200                        # failed before all of it was queued
            writer.close()

    aio(main())


def test_one_message_larger_than_the_write_cap_is_sent_whole(aio, transport, server_io):
    """max_write_buffer judges a backlog, not one message: 24 MiB and a short message
    behind it reach a reading peer whole under a 1 MiB cap."""
    big = b"b" * (24 << 20)

    class BigSender:
        def __init__(self):
            self.closed = []

        def on_upgraded(self, conn):
            conn.send_binary(big)
            conn.send_binary(b"after")

        def on_closed(self, conn, code, reason):
            self.closed.append(code)

    async def main():
        sender = BigSender()
        async with fa.serve(sender, "127.0.0.1", 0, ssl=transport.server_ssl,
                            transport=server_io,
                            compression=False, max_write_buffer=1 << 20) as server:
            reader, writer = await raw_open(server.port, transport)
            frames = await raw_frames_until(reader, 2)
            assert [len(f.data) for f in frames] == [len(big), 5]
            assert frames[0].data == big and sender.closed == []
            writer.close()

    aio(main())


async def raw_frames_until(reader, count):
    """Read frames from a raw stream until `count` data frames arrived (bounded)."""
    frames = []
    parser = fastws.FrameParser(frames.append, expect_mask=False)
    async with asyncio.timeout(TIMEOUT):
        while sum(f.opcode == OpCode.BINARY for f in frames) < count:
            data = await reader.read(65536)
            assert data, "closed early"
            parser.feed(data)
    return [f for f in frames if f.opcode == OpCode.BINARY]
