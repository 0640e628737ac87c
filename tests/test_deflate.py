"""permessage-deflate (RFC 7692): negotiation tables, the Deflate extension, round trips between
our client and our server for every parameter combination, a decompression bomb, and
interoperability with the `websockets` library in both directions.

Every WebSocket test takes the `transport` fixture (clear and TLS).
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import tracemalloc
import zlib

import pytest
import websockets.sync.client
import websockets.sync.server
from conftest import TIMEOUT, RawClient, Recorder, run_until, wait_for

import fastws
from fastws import (
    AutoPong,
    CloseCode,
    Consolidate,
    Deflate,
    DeflateOptions,
    Frame,
    OpCode,
    Protocol,
)
from fastws.__main__ import build_parser
from fastws.deflate import (
    NegotiationError,
    client_offer,
    deflate_options,
    negotiate_client,
    negotiate_server,
)
from fastws.handshake import accept_key, format_extensions, parse_extensions

PMD = "permessage-deflate"


def offers(header: str):
    return parse_extensions([header])


def answer_of(header: str, **options):
    agreed = negotiate_server(offers(header), DeflateOptions(**options))
    if agreed is None:
        return None
    params, stage = agreed
    return format_extensions([(PMD, params)]), stage


# --------------------------------------------------------------------------- server negotiation

@pytest.mark.parametrize("offer, options, expected, stage_settings", [
    # (offer header, our options, answer or None, (local bits, local reset, remote bits, remote reset))
    (PMD, {}, PMD, (15, False, 15, False)),
    (f"{PMD}; client_max_window_bits", {}, PMD, (15, False, 15, False)),
    (f"{PMD}; client_max_window_bits=10", {}, f"{PMD}; client_max_window_bits=10",
     (15, False, 10, False)),
    (f"{PMD}; client_max_window_bits", {"client_max_window_bits": 11},
     f"{PMD}; client_max_window_bits=11", (15, False, 11, False)),
    (f"{PMD}; client_max_window_bits=9", {"client_max_window_bits": 11},
     f"{PMD}; client_max_window_bits=9", (15, False, 9, False)),
    (f"{PMD}; client_max_window_bits=8", {}, f"{PMD}; client_max_window_bits=8",
     (15, False, 8, False)),                      # we inflate 8-bit windows fine
    (PMD, {"client_max_window_bits": 11}, PMD,    # not offered: we may not ask for it
     (15, False, 15, False)),
    (f"{PMD}; server_max_window_bits=10", {}, f"{PMD}; server_max_window_bits=10",
     (10, False, 15, False)),
    (f"{PMD}; server_max_window_bits=12", {"server_max_window_bits": 10},
     f"{PMD}; server_max_window_bits=10", (10, False, 15, False)),
    (PMD, {"server_max_window_bits": 11}, f"{PMD}; server_max_window_bits=11",
     (11, False, 15, False)),
    (f"{PMD}; server_max_window_bits=8", {}, None, None),   # zlib cannot: declined
    (f"{PMD}; server_no_context_takeover", {}, f"{PMD}; server_no_context_takeover",
     (15, True, 15, False)),
    (PMD, {"server_no_context_takeover": True}, f"{PMD}; server_no_context_takeover",
     (15, True, 15, False)),
    # the offer's client_no_context_takeover is a hint: we only rely on what we ask for
    (f"{PMD}; client_no_context_takeover", {}, PMD, (15, False, 15, False)),
    (PMD, {"client_no_context_takeover": True}, f"{PMD}; client_no_context_takeover",
     (15, False, 15, True)),
    ((f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
      "server_max_window_bits=9; client_max_window_bits=9"),
     {"client_no_context_takeover": True},
     (f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
      "server_max_window_bits=9; client_max_window_bits=9"), (9, True, 9, True)),
    ('permessage-deflate; server_max_window_bits="10"', {}, f"{PMD}; server_max_window_bits=10",
     (10, False, 15, False)),                    # quoted values are fine
    ("x-other, permessage-deflate", {}, PMD, (15, False, 15, False)),
    ("x-other", {}, None, None),
])
def test_server_negotiation(offer, options, expected, stage_settings):
    result = answer_of(offer, **options)
    if expected is None:
        assert result is None
        return
    assert result is not None
    header, stage = result
    assert header == expected
    assert (stage.local_max_window_bits, stage.local_no_context_takeover,
            stage.remote_max_window_bits, stage.remote_no_context_takeover) == stage_settings


@pytest.mark.parametrize("bad", [
    "unknown_param",
    "server_max_window_bits",              # value required
    "server_max_window_bits=7",
    "server_max_window_bits=16",
    "server_max_window_bits=010",          # leading zero
    "server_max_window_bits=abc",
    "client_max_window_bits=16",
    "client_max_window_bits=0",
    "server_no_context_takeover=1",        # takes no value
    "client_no_context_takeover=yes",
    "server_no_context_takeover; server_no_context_takeover",   # duplicate
    "client_max_window_bits; client_max_window_bits=10",
])
def test_server_skips_malformed_offers(bad):
    assert answer_of(f"{PMD}; {bad}") is None
    # ... and takes the next acceptable one
    header, stage = answer_of(f"{PMD}; {bad}, {PMD}; server_no_context_takeover")
    assert header == f"{PMD}; server_no_context_takeover"
    assert stage.local_no_context_takeover


def test_options_validation():
    with pytest.raises(ValueError):
        DeflateOptions(server_max_window_bits=16)
    with pytest.raises(ValueError):
        DeflateOptions(client_max_window_bits=7)
    with pytest.raises(ValueError):
        DeflateOptions(level=10)
    with pytest.raises(ValueError):          # our own compressor cannot use 8 bits
        deflate_options({"server_max_window_bits": 8}, is_client=False)
    with pytest.raises(ValueError):
        deflate_options({"client_max_window_bits": 8}, is_client=True)
    assert deflate_options({"client_max_window_bits": 8}, is_client=False) is not None
    assert deflate_options(False, is_client=True) is None
    assert deflate_options(None, is_client=True) is None
    assert deflate_options(True, is_client=True) == DeflateOptions()
    with pytest.raises(TypeError):
        deflate_options("yes", is_client=True)


# --------------------------------------------------------------------------- client negotiation

def test_client_default_offer():
    assert format_extensions([(PMD, client_offer(DeflateOptions()))]) == \
        f"{PMD}; client_max_window_bits"
    full = DeflateOptions(server_no_context_takeover=True, client_no_context_takeover=True,
                          server_max_window_bits=10, client_max_window_bits=12)
    assert format_extensions([(PMD, client_offer(full))]) == (
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=10; client_max_window_bits=12")


def client_result(answer: str, **options):
    opts = DeflateOptions(**options)
    return negotiate_client(offers(answer) if answer else [], client_offer(opts), opts)


@pytest.mark.parametrize("answer, options, settings", [
    ("", {}, None),                                   # declined: no compression
    (PMD, {}, (15, False, 15, False)),
    (f"{PMD}; server_no_context_takeover", {}, (15, False, 15, True)),
    (f"{PMD}; client_no_context_takeover", {}, (15, True, 15, False)),
    (PMD, {"client_no_context_takeover": True}, (15, True, 15, False)),
    (f"{PMD}; server_max_window_bits=8", {}, (15, False, 8, False)),
    (f"{PMD}; client_max_window_bits=10", {}, (10, False, 15, False)),
    (f"{PMD}; client_max_window_bits=9", {"client_max_window_bits": 12}, (9, False, 15, False)),
    (PMD, {"client_max_window_bits": 12}, (12, False, 15, False)),
    (f"{PMD}; server_max_window_bits=10", {"server_max_window_bits": 12},
     (15, False, 10, False)),
    (f"{PMD}; server_no_context_takeover", {"server_no_context_takeover": True},
     (15, False, 15, True)),
])
def test_client_negotiation(answer, options, settings):
    stage = client_result(answer, **options)
    if settings is None:
        assert stage is None
        return
    assert (stage.local_max_window_bits, stage.local_no_context_takeover,
            stage.remote_max_window_bits, stage.remote_no_context_takeover) == settings


@pytest.mark.parametrize("answer, options", [
    (f"{PMD}; foo", {}),                                          # unknown parameter
    (f"{PMD}; server_no_context_takeover; server_no_context_takeover", {}),   # duplicate
    (f"{PMD}; server_max_window_bits=7", {}),                     # out of range
    (f"{PMD}; server_max_window_bits=16", {}),
    (f"{PMD}; server_max_window_bits", {}),                       # value required
    (f"{PMD}; client_max_window_bits", {}),                       # value required in answers
    (f"{PMD}; client_max_window_bits=20", {}),
    (f"{PMD}; client_no_context_takeover=1", {}),
    (f"{PMD}; server_max_window_bits=12", {"server_max_window_bits": 10}),   # above our offer
    (PMD, {"server_max_window_bits": 10}),                        # our limit ignored
    (PMD, {"server_no_context_takeover": True}),                  # our request ignored
    (f"{PMD}; client_max_window_bits=13", {"client_max_window_bits": 12}),   # above our offer
    (f"{PMD}; client_max_window_bits=8", {}),                     # zlib cannot honour 8
    (f"{PMD}, {PMD}", {}),                                        # two answers
    ("x-other", {}),                                              # not offered
    (f"{PMD}, x-other", {}),
])
def test_client_rejects_bad_answers(answer, options):
    with pytest.raises(NegotiationError):
        client_result(answer, **options)


def test_client_rejects_client_max_window_bits_not_offered():
    options = DeflateOptions()
    offer = [("server_no_context_takeover", None)]      # an offer without client_max_window_bits
    with pytest.raises(NegotiationError, match="did not offer"):
        negotiate_client(offers(f"{PMD}; server_no_context_takeover; client_max_window_bits=10"),
                         offer, options)
    stage = negotiate_client(offers(f"{PMD}; server_no_context_takeover"), offer, options)
    assert stage is not None and stage.remote_no_context_takeover


# --------------------------------------------------------------------------- the extension

def pair(max_message_size=None, **settings):
    """A client protocol and a server protocol whose Deflate extensions agree on `settings`
    (given from the client's view); the server delivers frames as they come."""
    sender = Deflate(**settings)
    receiver = Deflate(
        local_max_window_bits=15,
        remote_max_window_bits=settings.get("local_max_window_bits", 15),
        remote_no_context_takeover=settings.get("local_no_context_takeover", False))
    return (Protocol(True, extension=sender),
            Protocol(False, extension=receiver, reassemble=False,
                     max_message_size=max_message_size))


def wire_frames(data: bytes) -> list[Frame]:
    """The frames in a client's bytes, as they are on the wire."""
    frames: list[Frame] = []
    parser = fastws.FrameParser(frames.append, expect_mask=True)
    parser.allowed_rsv = 7
    parser.feed(data)
    return frames


def receiver(max_message_size=None) -> Protocol:
    return Protocol(False, extension=Deflate(), reassemble=False,
                    max_message_size=max_message_size)


def send_raw(protocol: Protocol, opcode: int, data: bytes, fin: bool = True, rsv: int = 0):
    protocol.receive_data(Frame(fin=fin, rsv=rsv, opcode=opcode, data=data,
                                masking_key=0x5A5A5A5A).encode())


@pytest.mark.parametrize("reset", [False, True])
@pytest.mark.parametrize("bits", [9, 12, 15])
def test_extension_round_trip_whole_and_fragmented(reset, bits):
    client, server = pair(local_max_window_bits=bits, local_no_context_takeover=reset)
    text = ("permessage-deflate ünïcödé " * 200).encode()
    data = os.urandom(3000) + b"\x00" * 3000
    client.send(Frame(opcode=OpCode.TEXT, data=text))
    client.send(Frame(opcode=OpCode.BINARY, data=data))
    client.send(Frame(opcode=OpCode.TEXT, data=text))           # context reuse
    client.send(Frame(opcode=OpCode.BINARY, data=b""))
    # fragmented, with a ping in between
    client.send(Frame(fin=False, opcode=OpCode.TEXT, data=text[:1000]))
    client.ping(b"p")
    client.send(Frame(fin=False, opcode=OpCode.CONTINUATION, data=text[1000:2000]))
    client.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data=text[2000:]))
    data_out = client.data_to_send()
    wire = wire_frames(data_out)
    assert [f.rsv for f in wire] == [4, 4, 4, 4, 4, 0, 0, 0]
    assert len(wire[0].data) < len(text) // 5
    if not reset and bits == 15:   # the second copy refers back to the first one
        assert len(wire[2].data) < len(wire[0].data)
    assert wire[3].data == b"\x00"                  # the empty message (RFC 7692 7.2.3.6)
    server.auto_pong = False                        # see the ping among the fragments
    server.receive_data(data_out)
    assert not server.failed
    delivered = server.events_received()
    assert [(f.opcode, f.rsv, f.fin) for f in delivered] == [
        (OpCode.TEXT, 0, True), (OpCode.BINARY, 0, True), (OpCode.TEXT, 0, True),
        (OpCode.BINARY, 0, True), (OpCode.TEXT, 0, False), (OpCode.PING, 0, True),
        (OpCode.CONTINUATION, 0, False), (OpCode.CONTINUATION, 0, True)]
    assert delivered[0].data == text and delivered[2].data == text
    assert delivered[1].data == data and delivered[3].data == b""
    assert b"".join(f.data for f in delivered[4:] if f.opcode != OpCode.PING) == text
    assert client.extension.compressed == 5 and server.extension.decompressed == 5


def test_extension_min_size_and_uncompressed_inbound():
    client = Protocol(True, extension=Deflate(min_size=100))
    client.send_text("short")
    client.send_text("long" * 50)
    wire = wire_frames(client.data_to_send())
    assert [f.rsv for f in wire] == [0, 4]
    assert wire[0].data == b"short"
    server = receiver()
    send_raw(server, OpCode.TEXT, b"plain")                      # RSV1 unset: as it is
    send_raw(server, OpCode.TEXT, wire[1].data, rsv=4)
    assert [f.data for f in server.events_received()] == [b"plain", b"long" * 50]
    assert not server.failed


def test_extension_rejects_invalid_data_and_utf8():
    server = receiver()
    send_raw(server, OpCode.BINARY, b"\xff\xff\xff\xff", rsv=4)
    assert server.failure.code == CloseCode.INVALID_DATA
    server = receiver()
    compressor = zlib.compressobj(wbits=-15)
    bad = compressor.compress(b"ok \xc3\x28 not utf-8") + compressor.flush(zlib.Z_SYNC_FLUSH)
    send_raw(server, OpCode.TEXT, bad[:-4], rsv=4)
    assert server.failure == (CloseCode.INVALID_DATA, "text message is not valid UTF-8")
    assert not server.events_received()
    # a text message that ends inside a UTF-8 sequence, split over two fragments
    server = receiver()
    compressor = zlib.compressobj(wbits=-15)
    first = compressor.compress(b"abc\xe2\x82") + compressor.flush(zlib.Z_SYNC_FLUSH)
    last = compressor.flush(zlib.Z_SYNC_FLUSH)
    send_raw(server, OpCode.TEXT, first, fin=False, rsv=4)
    assert not server.failed               # may still be completed
    send_raw(server, OpCode.CONTINUATION, last[:-4])
    assert server.failure.code == CloseCode.INVALID_DATA


def test_extension_inflates_a_final_block_and_starts_over():
    server = receiver()
    for text in (b"first message", b"second message"):
        compressor = zlib.compressobj(wbits=-15)
        data = compressor.compress(text) + compressor.flush()       # BFINAL block
        send_raw(server, OpCode.TEXT, data, rsv=4)
    assert not server.failed
    assert [f.data for f in server.events_received()] == [b"first message", b"second message"]


def test_extension_limit_is_never_passed_by_more_than_one_byte():
    server = receiver(max_message_size=1000)
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b"a" * 1000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    send_raw(server, OpCode.BINARY, data[:-4], rsv=4)                # exactly 1000
    delivered = server.events_received()
    assert not server.failed and len(delivered[0].data) == 1000
    data = compressor.compress(b"a" * 1_000_000) + compressor.flush(zlib.Z_SYNC_FLUSH)
    send_raw(server, OpCode.BINARY, data[:-4], rsv=4)
    assert server.failure.code == CloseCode.MESSAGE_TOO_BIG
    assert server.extension.produced_max == 1001
    assert not server.events_received()


# --------------------------------------------------------------------------- round trips

class SpyingEcho(Recorder):
    """Echo server handler that keeps every connection's Deflate extension."""

    def __init__(self):
        super().__init__(echo=True)
        self.extensions: list = []

    def on_upgraded(self, conn):
        super().on_upgraded(conn)
        self.extensions.append(conn.find_stage(Deflate))


TEXT = ("Ein Zeichen für Kompression, das sich wiederholt. " * 300)
BINARY = bytes(range(256)) * 64 + os.urandom(2048)

CONTEXT = [(False, False), (True, False), (False, True), (True, True)]
BITS = [(None, None), (9, 9), (10, 15), (15, 12)]


@pytest.mark.parametrize("server_reset, client_reset", CONTEXT)
@pytest.mark.parametrize("server_bits, client_bits", BITS)
@pytest.mark.parametrize("who_asks", ["client", "server"])
def test_round_trip_our_client_our_server(start_server, loop, transport, server_reset,
                                          client_reset, server_bits, client_bits, who_asks):
    settings = {"server_no_context_takeover": server_reset,
                "client_no_context_takeover": client_reset,
                "server_max_window_bits": server_bits, "client_max_window_bits": client_bits}
    handler = SpyingEcho()
    server = start_server(handler, compression=settings if who_asks == "server" else True)
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop,
                          compression=settings if who_asks == "client" else True)
    run_until(loop, lambda: client.upgraded or client.closed)
    assert client.upgraded, (client.closed, conn.error)
    stage = conn.find_stage(Deflate)
    assert stage is not None
    assert conn.stages == ()              # deflate is the protocol's, not a stage
    assert isinstance(conn.find_stage(AutoPong), AutoPong)
    assert isinstance(conn.find_stage(Consolidate), Consolidate)
    # what each side agreed to (our client's view: local = client)
    assert stage.local_no_context_takeover == client_reset
    assert stage.remote_no_context_takeover == server_reset
    if who_asks == "server" and client_bits is not None:
        assert stage.local_max_window_bits == client_bits
    if server_bits is not None:
        assert stage.remote_max_window_bits == server_bits
    messages = [TEXT, BINARY, TEXT, BINARY[:10], "", TEXT[:5000]]
    for message in messages:
        if isinstance(message, str):
            conn.send_text(message)
        else:
            conn.send_binary(message)
    # a fragmented message too
    conn.send(Frame(fin=False, opcode=OpCode.TEXT, data=TEXT[:3000].encode()))
    conn.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data=TEXT[3000:].encode()))
    run_until(loop, lambda: len(client.frames) == len(messages) + 1)
    for frame, message in zip(client.frames, messages + [TEXT], strict=True):
        if isinstance(message, str):
            assert frame.opcode == OpCode.TEXT and frame.string_data == message
        else:
            assert frame.opcode == OpCode.BINARY and frame.data == message
    conn.close()
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == CloseCode.NORMAL
    # The server inflated what it received and deflated what it sent: every message.
    server_side = handler.extensions[0]
    assert server_side.decompressed == len(messages) + 1
    assert server_side.compressed == len(messages) + 1


@pytest.mark.parametrize("server_setting, client_setting", [(False, True), (True, False)])
def test_compression_off_on_either_side(start_server, loop, transport, server_setting,
                                        client_setting):
    server = start_server(Recorder(echo=True), compression=server_setting)
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop,
                          compression=client_setting)
    run_until(loop, lambda: client.upgraded or client.closed)
    assert client.upgraded
    assert conn.find_stage(Deflate) is None
    assert conn.response.headers.get("sec-websocket-extensions") is None
    conn.send_text(TEXT)
    run_until(loop, lambda: client.frames)
    assert client.frames[0].string_data == TEXT
    conn.close()
    run_until(loop, lambda: client.closed)


def test_upgrade_can_override_the_server_setting(start_server, loop, transport):
    class NoDeflate(Recorder):
        def on_request(self, conn, request):
            conn.upgrade(fastws.accept(request), compression=False)

    server = start_server(NoDeflate(echo=True))
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: client.upgraded or client.closed)
    assert client.upgraded and conn.find_stage(Deflate) is None


# --------------------------------------------------------------------------- raw clients

def deflate_handshake(client: RawClient, offer: str = f"{PMD}; client_max_window_bits") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    client.parser.allowed_rsv = 4           # the server's answers may be compressed
    client.sock.sendall(
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n".encode())
    head = client.read_head()
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert accept_key(key).encode() in head
    return head


def test_raw_client_sees_the_answer_and_compressed_echo(start_server, raw_client):
    server = start_server(Recorder(echo=True))
    client = raw_client(server.port, handshake=False)
    head = deflate_handshake(client, f"{PMD}; server_no_context_takeover; client_max_window_bits")
    assert b"\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover" in head
    for _ in range(2):
        compressor = zlib.compressobj(wbits=-15)
        payload = compressor.compress(TEXT.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
        client.send(OpCode.TEXT, payload[:-4], rsv=4)
        frame = client.recv_message()
        assert frame.rsv == 4 and frame.opcode == OpCode.TEXT
        decompressor = zlib.decompressobj(wbits=-15)     # no context takeover: fresh each time
        assert decompressor.decompress(bytes(frame.data) + b"\x00\x00\xff\xff") == TEXT.encode()


@pytest.mark.parametrize("case, expected", [
    ("rsv1 on a continuation", CloseCode.PROTOCOL_ERROR),
    ("rsv1 on a ping", CloseCode.PROTOCOL_ERROR),
    ("invalid deflate data", CloseCode.INVALID_DATA),
    ("invalid utf-8 after inflating", CloseCode.INVALID_DATA),
])
def test_raw_client_violations(start_server, raw_client, case, expected):
    recorder = Recorder()
    server = start_server(recorder)
    client = raw_client(server.port, handshake=False)
    deflate_handshake(client)
    compressor = zlib.compressobj(wbits=-15)
    if case == "rsv1 on a continuation":
        client.send(OpCode.TEXT, compressor.compress(b"abc") + compressor.flush(zlib.Z_SYNC_FLUSH),
                    fin=False, rsv=4)
        client.send(OpCode.CONTINUATION, b"\x00", rsv=4)
    elif case == "rsv1 on a ping":
        client.send(OpCode.PING, b"", rsv=4)
    elif case == "invalid deflate data":
        client.send(OpCode.BINARY, b"\xff\xfe\xfd\xfc" * 4, rsv=4)
    else:
        data = compressor.compress(b"\xed\xa0\x80 surrogate") + compressor.flush(zlib.Z_SYNC_FLUSH)
        client.send(OpCode.TEXT, data[:-4], rsv=4)
    assert client.expect_close()[0] == expected
    wait_for(lambda: recorder.closed)
    assert recorder.closed[0][0] == expected
    assert not recorder.frames


def test_rsv1_without_negotiation_is_a_protocol_error(start_server, raw_client):
    server = start_server(Recorder())
    client = raw_client(server.port)          # plain handshake: nothing negotiated
    compressor = zlib.compressobj(wbits=-15)
    client.send(OpCode.TEXT, compressor.compress(b"x") + compressor.flush(zlib.Z_SYNC_FLUSH),
                rsv=4)
    assert client.expect_close()[0] == CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("fragments", [1, 4])
def test_decompression_bomb_is_rejected_with_bounded_memory(start_server, raw_client, fragments):
    """100 MB of zeros deflate to ~100 KB; the server must stop at max_message_size + 1."""
    limit = 1024 * 1024
    handler = SpyingEcho()
    stages = handler.extensions
    server = start_server(handler, max_message_size=limit, max_frame_size=1024 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(zeros) for _ in range(100))
    bomb += compressor.flush(zlib.Z_SYNC_FLUSH)
    bomb = bomb[:-4]
    assert len(bomb) < 200_000
    client = raw_client(server.port, handshake=False)
    deflate_handshake(client)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        step = -(-len(bomb) // fragments)
        pieces = [bomb[i:i + step] for i in range(0, len(bomb), step)]
        for i, piece in enumerate(pieces):
            try:
                client.send(OpCode.BINARY if i == 0 else OpCode.CONTINUATION, piece,
                            fin=i == len(pieces) - 1, rsv=4 if i == 0 else 0)
            except OSError:      # the server gave up after an earlier fragment: fine
                break
        code, _ = client.expect_close()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == CloseCode.MESSAGE_TOO_BIG
    wait_for(lambda: handler.closed)
    assert handler.closed[0][0] == CloseCode.MESSAGE_TOO_BIG
    assert not handler.frames
    # The stage never held more than limit + 1 inflated bytes ...
    assert stages and stages[0].produced_max <= limit + 1
    # ... and the whole process (test client included) allocated a few MiB at most, not 100 MB.
    assert peak < 8 * limit, f"peak traced allocation {peak} bytes"


# --------------------------------------------------------------------------- client failures

class AnsweringServer:
    """Answers one upgrade request with a 101 carrying `extensions`, then reads until EOF."""

    def __init__(self, transport, extensions: str) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{transport.scheme}://127.0.0.1:{self.port}/"
        self.transport = transport
        self.extensions = extensions
        self.received = b""
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            sock, _ = self.listener.accept()
            sock.settimeout(TIMEOUT)
            if self.transport.server_ssl is not None:
                sock = self.transport.server_ssl.wrap_socket(sock, server_side=True)
            with sock:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += sock.recv(65536)
                key = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                           if line.lower().startswith(b"sec-websocket-key:"))
                sock.sendall(
                    f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept_key(key)}\r\n"
                    f"Sec-WebSocket-Extensions: {self.extensions}\r\n\r\n".encode())
                try:
                    while chunk := sock.recv(65536):
                        self.received += chunk
                except OSError:
                    pass
        except OSError:
            pass
        finally:
            self.done.set()

    def stop(self) -> None:
        self.listener.close()
        self.thread.join(TIMEOUT)


@pytest.mark.parametrize("extensions", [
    f"{PMD}; unknown=1",
    f"{PMD}; server_max_window_bits=16",
    f"{PMD}; client_max_window_bits=8",
    f"{PMD}, {PMD}",
    f"{PMD}; server_no_context_takeover; server_no_context_takeover",
])
def test_client_fails_with_1010_on_a_bad_answer(loop, transport, extensions):
    server = AnsweringServer(transport, extensions)
    try:
        recorder = Recorder()
        conn = fastws.connect(server.url, recorder, ssl=transport.client_ssl, loop=loop)
        run_until(loop, lambda: recorder.closed)
        assert recorder.closed[0][0] == CloseCode.MANDATORY_EXTENSION
        assert recorder.upgraded == 0
        assert isinstance(conn.error, NegotiationError)
        assert isinstance(conn.error, fastws.HandshakeError)
        assert conn.closed
        wait_for(server.done.is_set)
        assert server.received == b""          # nothing was sent as a WebSocket
    finally:
        server.stop()


# --------------------------------------------------------------------------- websockets interop

def test_their_client_our_server(start_server, transport):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    with websockets.sync.client.connect(
            server.url, ssl=transport.client_ssl, compression="deflate", proxy=None,
            open_timeout=TIMEOUT, close_timeout=TIMEOUT, ping_interval=None,
            max_size=None) as ws:
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        for _ in range(3):          # context takeover across messages, both ways
            ws.send(TEXT)
            assert ws.recv(timeout=TIMEOUT) == TEXT
            ws.send(BINARY)
            assert ws.recv(timeout=TIMEOUT) == BINARY
        ws.send([TEXT[:100], TEXT[100:]])            # fragmented
        assert ws.recv(timeout=TIMEOUT) == TEXT
        ws.send(b"")
        assert ws.recv(timeout=TIMEOUT) == b""
    wait_for(lambda: recorder.closed)
    conn = recorder.conns[0]
    assert conn.response.headers.get("sec-websocket-extensions").startswith(PMD)
    assert len(recorder.frames) == 8


def test_our_client_their_server(loop, transport):
    def echo(ws):
        for message in ws:
            ws.send(message)

    with websockets.sync.server.serve(echo, "127.0.0.1", 0, ssl=transport.server_ssl,
                                      compression="deflate", max_size=None) as their:
        thread = threading.Thread(target=their.serve_forever, daemon=True)
        thread.start()
        port = their.socket.getsockname()[1]
        client = Recorder()
        conn = fastws.connect(f"{transport.scheme}://127.0.0.1:{port}/", client,
                              ssl=transport.client_ssl, loop=loop)
        run_until(loop, lambda: client.upgraded or client.closed)
        assert client.upgraded, (client.closed, conn.error)
        assert conn.find_stage(Deflate) is not None
        messages = [TEXT, BINARY, TEXT, BINARY, "é", b""]
        for message in messages:
            if isinstance(message, str):
                conn.send_text(message)
            else:
                conn.send_binary(message)
        conn.send(Frame(fin=False, opcode=OpCode.BINARY, data=BINARY[:500]))
        conn.send(Frame(fin=True, opcode=OpCode.CONTINUATION, data=BINARY[500:]))
        run_until(loop, lambda: len(client.frames) == len(messages) + 1)
        for frame, message in zip(client.frames, messages + [BINARY], strict=True):
            if isinstance(message, str):
                assert frame.opcode == OpCode.TEXT and frame.string_data == message
            else:
                assert frame.opcode == OpCode.BINARY and frame.data == message
        conn.close()
        run_until(loop, lambda: client.closed)
        assert client.closed[0][0] == CloseCode.NORMAL
        their.shutdown()
        thread.join(TIMEOUT)


# --------------------------------------------------------------------------- command line

def test_command_line_switch():
    assert build_parser().parse_args(["echo", "--no-compression"]).no_compression
    assert not build_parser().parse_args(["echo"]).no_compression
    assert build_parser().parse_args(["client", "ws://x/", "--no-compression"]).no_compression
