"""The sans-I/O WebSocket protocol (fastws.Protocol), driven with bytes only: no sockets, no
threads. Every rule of RFC 6455 (and RFC 7692's part) that the protocol owns is checked here
once; the integration suites check that every transport gives the same bytes on the wire."""

from __future__ import annotations

import itertools
import os
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import Close, CloseCode, Deflate, Frame, FrameParser, OpCode, Protocol, State

KEY = 0x37FA213D


def client_frame(opcode: int, data: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 key: int | None = KEY) -> bytes:
    """A frame as a client sends it (masked)."""
    return Frame(fin=fin, rsv=rsv, opcode=opcode, data=data, masking_key=key).encode()


def server_frame(opcode: int, data: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    return Frame(fin=fin, rsv=rsv, opcode=opcode, data=data).encode()


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()


def frames_in(data: bytes, *, masked: bool) -> list[Frame]:
    """Parse what a protocol sent (masked when a client sent it)."""
    frames: list[Frame] = []
    parser = FrameParser(frames.append, expect_mask=masked)
    parser.allowed_rsv = 7
    parser.feed(data)
    return frames


def server(**options) -> Protocol:
    return Protocol(False, **options)


def client(**options) -> Protocol:
    return Protocol(True, **options)


# --------------------------------------------------------------------------- messages

def test_a_message_in_one_frame_and_in_four_masked_fragments():
    proto = server()
    proto.receive_data(client_frame(OpCode.TEXT, b"i am cow"))
    parts = [b"hello ", b"frag", b"mented ", b"world"]
    wire = b"".join(client_frame(OpCode.TEXT if i == 0 else OpCode.CONTINUATION, part,
                                 fin=i == 3, key=0x01020304 * (i + 1))
                    for i, part in enumerate(parts))
    proto.receive_data(wire)
    proto.receive_data(wire)             # a second fragmented message starts from scratch
    events = proto.events_received()
    assert [(e.opcode, e.data, e.fin) for e in events] == [
        (OpCode.TEXT, b"i am cow", True),
        (OpCode.TEXT, b"hello fragmented world", True),
        (OpCode.TEXT, b"hello fragmented world", True)]
    assert proto.data_to_send() == b"" and proto.state is State.OPEN


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_gives_the_same_events(cuts):
    wire = (client_frame(OpCode.BINARY, os.urandom(200))
            + client_frame(OpCode.TEXT, "ünï".encode(), fin=False)
            + client_frame(OpCode.PING, b"p")
            + client_frame(OpCode.CONTINUATION, "cödé".encode()))
    whole = server()
    whole.receive_data(wire)
    chunked = server()
    points = sorted({min(cut, len(wire)) for cut in cuts} | {0, len(wire)})
    for start, end in itertools.pairwise(points):
        chunked.receive_data(wire[start:end])
    assert chunked.events_received() == whole.events_received()
    assert chunked.data_to_send() == whole.data_to_send()


def test_without_reassembly_fragments_arrive_as_they_come():
    proto = server(reassemble=False)
    proto.receive_data(client_frame(OpCode.TEXT, b"ab", fin=False)
                       + client_frame(OpCode.CONTINUATION, b"cd"))
    assert [(e.opcode, e.data, e.fin) for e in proto.events_received()] == [
        (OpCode.TEXT, b"ab", False), (OpCode.CONTINUATION, b"cd", True)]


def test_pings_between_fragments_are_answered_at_once_and_the_message_survives():
    proto = server()
    proto.receive_data(client_frame(OpCode.TEXT, b"alpha-", fin=False))
    proto.receive_data(client_frame(OpCode.PING, b"1"))
    assert frames_in(proto.data_to_send(), masked=False) == [Frame(opcode=OpCode.PONG, data=b"1")]
    proto.receive_data(client_frame(OpCode.CONTINUATION, b"beta-", fin=False)
                       + client_frame(OpCode.PING, b"2")
                       + client_frame(OpCode.CONTINUATION, b"gamma"))
    assert frames_in(proto.data_to_send(), masked=False) == [Frame(opcode=OpCode.PONG, data=b"2")]
    assert [e.data for e in proto.events_received()] == [b"alpha-beta-gamma"]


def test_pongs_are_delivered_and_pings_only_when_auto_pong_is_off():
    proto = server()
    proto.receive_data(client_frame(OpCode.PONG, b"x") + client_frame(OpCode.PING, b"y"))
    assert [(e.opcode, e.data) for e in proto.events_received()] == [(OpCode.PONG, b"x")]
    manual = server(auto_pong=False)
    manual.receive_data(client_frame(OpCode.PING, b"y"))
    assert [(e.opcode, e.data) for e in manual.events_received()] == [(OpCode.PING, b"y")]
    assert manual.data_to_send() == b""          # answering is up to the application now
    manual.pong(b"y")
    assert frames_in(manual.data_to_send(), masked=False) == [Frame(opcode=OpCode.PONG, data=b"y")]


def test_a_client_masks_every_frame_with_a_fresh_key_and_a_server_never_masks():
    proto = client()
    for _ in range(3):
        proto.send_text("same")
    frames = frames_in(proto.data_to_send(), masked=True)
    assert [f.data for f in frames] == [b"same"] * 3
    assert len({f.masking_key for f in frames}) == 3
    proto = server()
    proto.send(Frame(opcode=OpCode.BINARY, data=b"x", masking_key=KEY))   # its key is ignored
    assert proto.data_to_send() == b"\x82\x01x"


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 1 << 20])
def test_large_payloads_round_trip_through_the_default_sink(size):
    data = os.urandom(size)
    sender, receiver = client(), server()
    sender.send_binary(data)
    receiver.receive_data(sender.data_to_send())
    assert receiver.events_received()[0].data == data


# --------------------------------------------------------------------------- violations

def close_code_sent(proto: Protocol, *, masked: bool = False) -> int:
    frames = frames_in(proto.data_to_send(), masked=masked)
    assert frames and frames[-1].opcode == OpCode.CLOSE
    return int.from_bytes(frames[-1].data[:2], "big")


VIOLATIONS = [
    ("unmasked frame from a client", server_frame(OpCode.TEXT, b"x"), CloseCode.PROTOCOL_ERROR),
    ("reserved opcode 3", client_frame(3, b"x"), CloseCode.PROTOCOL_ERROR),
    ("reserved opcode 11", client_frame(11), CloseCode.PROTOCOL_ERROR),
    ("RSV1 without an extension", client_frame(OpCode.TEXT, b"x", rsv=4),
     CloseCode.PROTOCOL_ERROR),
    ("RSV2", client_frame(OpCode.BINARY, b"x", rsv=2), CloseCode.PROTOCOL_ERROR),
    ("fragmented ping", client_frame(OpCode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
    ("ping of 126 bytes", client_frame(OpCode.PING, b"x" * 126), CloseCode.PROTOCOL_ERROR),
    ("orphan continuation", client_frame(OpCode.CONTINUATION, b"x"), CloseCode.PROTOCOL_ERROR),
    ("new message inside a fragmented one",
     client_frame(OpCode.TEXT, b"a", fin=False) + client_frame(OpCode.BINARY, b"b"),
     CloseCode.PROTOCOL_ERROR),
    ("64-bit length with the top bit set",
     b"\x82\xff" + b"\x80" + b"\x00" * 7 + KEY.to_bytes(4, "big"), CloseCode.PROTOCOL_ERROR),
    ("close frame with one byte", client_frame(OpCode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
    ("close code 1005 on the wire", client_frame(OpCode.CLOSE, close_payload(1005)),
     CloseCode.PROTOCOL_ERROR),
    ("close code 999", client_frame(OpCode.CLOSE, close_payload(999)), CloseCode.PROTOCOL_ERROR),
    ("close code 5000", client_frame(OpCode.CLOSE, close_payload(5000)),
     CloseCode.PROTOCOL_ERROR),
    ("close reason not UTF-8", client_frame(OpCode.CLOSE, b"\x03\xe8\xff"),
     CloseCode.INVALID_DATA),
    ("text not UTF-8", client_frame(OpCode.TEXT, b"caf\xe9"), CloseCode.INVALID_DATA),
    ("text ending inside a character", client_frame(OpCode.TEXT, b"\xe2\x82"),
     CloseCode.INVALID_DATA),
    ("bad UTF-8 in the first fragment",
     client_frame(OpCode.TEXT, b"\xed\xa0\x80", fin=False), CloseCode.INVALID_DATA),
    ("frame over max_frame_size", client_frame(OpCode.BINARY, b"x" * 1025),
     CloseCode.MESSAGE_TOO_BIG),
    ("message over max_message_size", client_frame(OpCode.BINARY, b"x" * 1000, fin=False)
     + client_frame(OpCode.CONTINUATION, b"x" * 1000, fin=False)
     + client_frame(OpCode.CONTINUATION, b"x" * 100), CloseCode.MESSAGE_TOO_BIG),
]


@pytest.mark.parametrize("name, wire, code", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_every_violation_fails_with_its_close_code_and_input_stops(name, wire, code):
    proto = server(max_frame_size=1024, max_message_size=2048)
    proto.receive_data(wire)
    assert proto.failed and proto.failure.code == code
    assert close_code_sent(proto) == code
    assert proto.state is State.CLOSING and proto.sink.ended
    assert [e for e in proto.events_received() if isinstance(e, Frame)
            and e.opcode in (OpCode.TEXT, OpCode.BINARY)] == []
    proto.receive_data(client_frame(OpCode.PING, b"late") + client_frame(OpCode.TEXT, b"late"))
    assert proto.events_received() == [] and proto.data_to_send() == b""


def test_a_masked_frame_from_a_server_fails_the_client():
    proto = client()
    proto.receive_data(client_frame(OpCode.TEXT, b"x"))
    assert proto.failure.code == CloseCode.PROTOCOL_ERROR
    assert close_code_sent(proto, masked=True) == CloseCode.PROTOCOL_ERROR


def test_message_limit_fails_as_soon_as_the_running_total_passes_it():
    proto = server(max_message_size=1024)
    for _ in range(4):                                   # four 256-byte fragments: exactly 1024
        proto.receive_data(client_frame(OpCode.BINARY if _ == 0 else OpCode.CONTINUATION,
                                        b"x" * 256, fin=_ == 3))
    assert len(proto.events_received()[0].data) == 1024
    proto.receive_data(client_frame(OpCode.BINARY, b"x" * 257, fin=False))
    proto.receive_data(client_frame(OpCode.CONTINUATION, b"x" * 256, fin=False))
    proto.receive_data(client_frame(OpCode.CONTINUATION, b"x" * 256, fin=False))
    assert not proto.failed                              # 769 so far
    proto.receive_data(client_frame(OpCode.CONTINUATION, b"x" * 256, fin=False))
    assert proto.failure.code == CloseCode.MESSAGE_TOO_BIG   # not waiting for the last fragment


def test_utf8_fails_at_the_first_bad_byte_even_inside_a_frame():
    proto = server()
    wire = client_frame(OpCode.TEXT, b"ok" + b"\xff" + b"x" * 5000)
    proto.receive_data(wire[:20])                        # the bad byte, not the whole frame
    assert proto.failure.code == CloseCode.INVALID_DATA


# --------------------------------------------------------------------------- closing

def test_closing_started_by_the_server():
    proto = server()
    proto.close(1000, "bye")
    assert frames_in(proto.data_to_send(), masked=False) == [
        Frame(opcode=OpCode.CLOSE, data=close_payload(1000, "bye"))]
    assert proto.state is State.CLOSING and not proto.is_open and not proto.sink.ended
    proto.receive_data(client_frame(OpCode.TEXT, b"still flowing"))   # the peer had not seen it
    proto.receive_data(client_frame(OpCode.CLOSE, close_payload(1000)))
    assert [getattr(e, "data", e) for e in proto.events_received()] == [
        b"still flowing", Close(CloseCode.NORMAL, "")]
    assert proto.data_to_send() == b""                   # no second close frame
    assert proto.sink.ended and proto.close_code == 1000 and proto.close_reason == "bye"
    assert proto.close_sent == (1000, "bye") and proto.close_rcvd == (1000, "")


def test_closing_started_by_the_client_is_echoed_with_its_code():
    cli, srv = client(), server()
    cli.close(3001, "app")
    srv.receive_data(cli.data_to_send())
    assert srv.events_received() == [Close(3001, "app")]
    echo = srv.data_to_send()
    assert frames_in(echo, masked=False) == [Frame(opcode=OpCode.CLOSE, data=close_payload(3001))]
    assert srv.sink.ended and srv.close_code == 3001
    assert not cli.sink.ended
    cli.receive_data(echo)
    assert cli.sink.ended and cli.close_code == 3001 and cli.close_reason == "app"


def test_both_sides_close_at_once():
    cli, srv = client(), server()
    cli.close(1000, "client")
    srv.close(1001, "server")
    to_server, to_client = cli.data_to_send(), srv.data_to_send()
    srv.receive_data(to_server)
    cli.receive_data(to_client)
    assert cli.data_to_send() == b"" and srv.data_to_send() == b""    # nobody echoes
    assert cli.sink.ended and srv.sink.ended
    assert (cli.close_code, srv.close_code) == (1000, 1001)          # each its own, first


def test_a_close_without_a_code_is_echoed_without_one():
    srv = server()
    srv.receive_data(client_frame(OpCode.CLOSE))
    assert frames_in(srv.data_to_send(), masked=False) == [Frame(opcode=OpCode.CLOSE)]
    assert srv.close_code == CloseCode.NO_STATUS


def test_nothing_is_sent_after_a_close_frame_not_even_a_pong():
    srv = server()
    srv.close()
    srv.data_to_send()
    srv.receive_data(client_frame(OpCode.PING, b"late ping"))
    assert srv.data_to_send() == b""
    with pytest.raises(ConnectionError, match="closing"):
        srv.send_text("after close")
    with pytest.raises(ConnectionError, match="closing"):
        srv.ping()
    srv.close(1001)                                      # a second close does nothing
    assert srv.data_to_send() == b""


def test_the_end_of_the_transport_without_a_close_frame_is_1006():
    srv = server()
    srv.receive_eof()
    assert srv.state is State.CLOSED and srv.close_code == CloseCode.ABNORMAL
    with pytest.raises(ConnectionError, match="closed"):
        srv.send_text("x")


def test_close_refuses_codes_that_may_not_be_sent():
    srv = server()
    for code in (1005, 1006, 1015, 999, 5000):
        with pytest.raises(ValueError):
            srv.close(code)
    with pytest.raises(ValueError, match="123"):
        srv.close(1000, "x" * 124)
    assert srv.is_open and srv.data_to_send() == b""


# --------------------------------------------------------------------------- misuse

def test_sending_misuse_raises_clear_errors_and_sends_nothing():
    proto = server()
    with pytest.raises(TypeError, match="send_binary"):
        proto.send_text(b"bytes")
    with pytest.raises(TypeError, match="send_text"):
        proto.send_binary("text")
    with pytest.raises(ValueError, match="continuation"):
        proto.send(Frame(opcode=OpCode.CONTINUATION, data=b"orphan"))
    with pytest.raises(ValueError, match="125"):
        proto.ping(b"x" * 126)
    with pytest.raises(ValueError, match="close"):
        proto.send(Frame(opcode=OpCode.CLOSE))
    proto.send(Frame(fin=False, opcode=OpCode.TEXT, data=b"a"))
    with pytest.raises(ValueError, match="inside a fragmented"):
        proto.send_text("b")
    proto.send(Frame(opcode=OpCode.CONTINUATION, data=b"b"))
    assert [f.data for f in frames_in(proto.data_to_send(), masked=False)] == [b"a", b"b"]


def test_a_protocol_made_connecting_cannot_send_until_opened():
    proto = Protocol(True, state=State.CONNECTING)
    with pytest.raises(ConnectionError, match="handshake has not completed"):
        proto.send_text("early")
    proto.open()
    proto.send_text("now")
    assert frames_in(proto.data_to_send(), masked=True)[0].data == b"now"


# --------------------------------------------------------------------------- permessage-deflate

def deflate_pair(**client_settings):
    """Client and server protocols with Deflate extensions that agree on the settings."""
    client_ext = Deflate(**client_settings)
    server_ext = Deflate(
        remote_max_window_bits=client_settings.get("local_max_window_bits", 15),
        remote_no_context_takeover=client_settings.get("local_no_context_takeover", False))
    return client(extension=client_ext), server(extension=server_ext)


@pytest.mark.parametrize("takeover", [True, False])
def test_deflate_with_and_without_context_takeover(takeover):
    cli, srv = deflate_pair(local_no_context_takeover=not takeover)
    message = ("a message that repeats itself " * 40).encode()
    sizes = []
    for _ in range(3):
        cli.send_binary(message)
        wire = cli.data_to_send()
        sizes.append(len(wire))
        assert frames_in(wire, masked=True)[0].rsv == 4
        srv.receive_data(wire)
    assert [e.data for e in srv.events_received()] == [message] * 3
    if takeover:
        assert sizes[1] < sizes[0]          # the second copy refers back to the first
    else:
        assert sizes[0] == sizes[1] == sizes[2]


def test_deflate_fragmented_with_a_ping_between():
    cli, srv = deflate_pair()
    text = ("fragments of compressed text " * 50).encode()
    cli.send(Frame(fin=False, opcode=OpCode.TEXT, data=text[:500]))
    cli.ping(b"between")
    cli.send(Frame(opcode=OpCode.CONTINUATION, data=text[500:]))
    wire = cli.data_to_send()
    assert [f.rsv for f in frames_in(wire, masked=True)] == [4, 0, 0]
    srv.receive_data(wire)
    assert [e.data for e in srv.events_received()] == [text]
    assert frames_in(srv.data_to_send(), masked=False) == [
        Frame(opcode=OpCode.PONG, data=b"between")]


def test_decompression_bomb_fails_with_1009_holding_at_most_the_limit():
    srv = server(extension=Deflate(), max_message_size=64 * 1024)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(50 * 1024 * 1024)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 100_000
    srv.receive_data(client_frame(OpCode.BINARY, bomb[:-4], rsv=4))
    assert srv.failure.code == CloseCode.MESSAGE_TOO_BIG
    assert srv.extension.produced_max <= 64 * 1024 + 1
    assert close_code_sent(srv) == CloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize("wire, code", [
    (client_frame(OpCode.BINARY, b"\xff\xfe\xfd\xfc", rsv=4), CloseCode.INVALID_DATA),
    (client_frame(OpCode.TEXT, b"a", fin=False, rsv=4) + client_frame(0, b"b", rsv=4),
     CloseCode.PROTOCOL_ERROR),
    (client_frame(OpCode.PING, b"", rsv=4), CloseCode.PROTOCOL_ERROR),
])
def test_deflate_violations(wire, code):
    srv = server(extension=Deflate())
    srv.receive_data(wire)
    assert srv.failure.code == code and close_code_sent(srv) == code


def test_decompressed_text_must_be_utf8():
    srv = server(extension=Deflate())
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(b"caf\xe9") + compressor.flush(zlib.Z_SYNC_FLUSH)
    srv.receive_data(client_frame(OpCode.TEXT, data[:-4], rsv=4))
    assert srv.failure == (CloseCode.INVALID_DATA, "text message is not valid UTF-8")
