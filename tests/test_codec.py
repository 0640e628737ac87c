"""The RFC 6455 codec: frames, parsing in any chunking, encoding, violations."""

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import CloseCode, Frame, FrameParser, OpCode, ProtocolError, encode_frame
from fastws._codec import close_payload, encode_into, parse_close


def parse(data, *, chunks=None, expect_mask=True, max_frame_size=None, allowed_rsv=0):
    """Feed data (whole, or cut at the given positions); return (frames, errors)."""
    frames, errors = [], []
    parser = FrameParser(frames.append, lambda code, reason: errors.append((code, reason)),
                         expect_mask=expect_mask, max_frame_size=max_frame_size)
    parser.allowed_rsv = allowed_rsv
    cuts = [0, *sorted(chunks or []), len(data)]
    for start, end in itertools.pairwise(cuts):
        parser.feed(data[start:end])
    return frames, errors


def split_everywhere(data):
    """Every way of cutting data into two pieces, and one byte at a time."""
    yield [len(data)]
    for i in range(1, len(data)):
        yield [i]
    yield list(range(1, len(data)))


# RFC 6455 section 5.7 examples.
RFC_EXAMPLES = [
    ("single unmasked text", "810548656c6c6f", False,
     [Frame(opcode=OpCode.TEXT, data=b"Hello")]),
    ("single masked text", "818537fa213d7f9f4d5158", True,
     [Frame(opcode=OpCode.TEXT, data=b"Hello", masking_key=0x37FA213D)]),
    ("fragmented unmasked text", "010348656c80026c6f", False,
     [Frame(fin=False, opcode=OpCode.TEXT, data=b"Hel"),
      Frame(opcode=OpCode.CONTINUATION, data=b"lo")]),
    ("unmasked ping", "890548656c6c6f", False, [Frame(opcode=OpCode.PING, data=b"Hello")]),
    ("masked pong", "8a8537fa213d7f9f4d5158", True,
     [Frame(opcode=OpCode.PONG, data=b"Hello", masking_key=0x37FA213D)]),
]


@pytest.mark.parametrize("name,wire,masked,expected", RFC_EXAMPLES, ids=[e[0] for e in RFC_EXAMPLES])
def test_rfc_examples_parse_in_every_chunking(name, wire, masked, expected):
    data = bytes.fromhex(wire)
    for cuts in split_everywhere(data):
        frames, errors = parse(data, chunks=cuts, expect_mask=masked)
        assert errors == []
        assert frames == expected
    assert b"".join(f.encode() for f in expected) == data
    assert frames[0].data == b"Hello"[: len(frames[0].data)]


@pytest.mark.parametrize("length,header", [(256, "827e0100"), (65536, "827f0000000000010000")])
def test_rfc_examples_extended_lengths(length, header):
    payload = os.urandom(length)
    wire = encode_frame(OpCode.BINARY, payload)
    assert wire[: len(header) // 2] == bytes.fromhex(header)
    frames, errors = parse(wire, chunks=[1, 3, 7, 1000], expect_mask=False)
    assert errors == [] and frames == [Frame(opcode=OpCode.BINARY, data=payload)]


def test_string_data_and_str_payload():
    frame = Frame(opcode=OpCode.TEXT, data="héllo")
    assert frame.data == "héllo".encode()
    assert frame.string_data == "héllo"
    assert not frame.is_control and Frame(opcode=OpCode.PING).is_control


def test_masking_key_accepts_int_or_four_bytes():
    assert Frame(masking_key=b"\x37\xfa\x21\x3d").masking_key == 0x37FA213D
    with pytest.raises(ValueError):
        Frame(masking_key=b"abc")
    with pytest.raises(ValueError):
        Frame(masking_key=1 << 32)
    with pytest.raises(ValueError):
        Frame(opcode=16)
    with pytest.raises(ValueError):
        Frame(rsv=8)


# Seed behaviour 10: every opcode, FIN and RSV combination round-trips, masked and not.
@pytest.mark.parametrize("masked", [False, True])
def test_every_opcode_fin_rsv_combination_round_trips(masked):
    for opcode in (0, 1, 2, 8, 9, 10):
        for fin in (False, True) if opcode < 8 else (True,):
            for rsv in range(8) if opcode in (1, 2) else (0,):
                frame = Frame(fin=fin, rsv=rsv, opcode=opcode, data=b"payload",
                              masking_key=0xA1B2C3D4 if masked else None)
                frames, errors = parse(frame.encode(), expect_mask=masked, allowed_rsv=7)
                assert errors == [] and frames == [frame], frame


frame_strategy = st.builds(
    lambda opcode, fin, data, key: Frame(fin=fin or opcode >= 8, opcode=opcode, data=data,
                                         masking_key=key),
    st.sampled_from([0, 1, 2, 8, 9, 10]),
    st.booleans(),
    st.binary(max_size=300),
    st.integers(0, 0xFFFFFFFF),
).filter(lambda f: not (f.is_control and len(f.data) > 125))


@settings(max_examples=300, deadline=None)
@given(st.lists(frame_strategy, min_size=1, max_size=8), st.data())
def test_random_frames_round_trip_in_random_chunkings(frames, data):
    wire = b"".join(f.encode() for f in frames)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=12))
    got, errors = parse(wire, chunks=cuts)
    assert errors == [] and got == frames


def test_1025_random_frames_up_to_100k_round_trip():
    # Seed behaviour 11, with the 16-bit length boundary (and its neighbours) forced in.
    rng = random.Random(1025)
    lengths = [0, 1, 125, 126, 127, 32767, 32768, 32769, 65534, 65535, 65536, 65537]
    lengths += [rng.randint(0, 100_000) for _ in range(1025 - len(lengths))]
    frames = [Frame(opcode=OpCode.BINARY, data=rng.randbytes(n), masking_key=rng.getrandbits(32))
              for n in lengths]
    wire = b"".join(f.encode() for f in frames)
    cuts = sorted(rng.sample(range(len(wire)), 3000))
    got, errors = parse(wire, chunks=cuts)
    assert errors == []
    assert [len(f.data) for f in got] == lengths
    assert got == frames


@pytest.mark.parametrize("length,header_len", [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_length_forms(length, header_len):
    wire = encode_frame(OpCode.BINARY, b"x" * length)
    assert len(wire) == header_len + length
    assert len(encode_frame(OpCode.BINARY, b"x" * length, masking_key=1)) == header_len + 4 + length


def test_encode_into_appends_frames_to_one_buffer():
    out = bytearray(b"prefix")
    n1 = encode_into(out, OpCode.TEXT, "hi")
    n2 = encode_into(out, OpCode.BINARY, b"\x00" * 300, masking_key=0x01020304)
    assert n1 == 4 and n2 == 4 + 4 + 300
    frames, errors = parse(bytes(out[6:4 + 6]) + bytes(out[10:]), expect_mask=False)
    assert errors == [(CloseCode.PROTOCOL_ERROR, "masked frame from a server")]
    assert frames == [Frame(opcode=OpCode.TEXT, data=b"hi")]
    assert bytes(out[10:]) == encode_frame(OpCode.BINARY, b"\x00" * 300, masking_key=0x01020304)


def test_encode_into_at_an_offset_reuses_the_buffer():
    scratch = bytearray()
    n = encode_into(scratch, OpCode.BINARY, b"\x07" * 1000, masking_key=0x0A0B0C0D, at=0)
    assert bytes(scratch[:n]) == encode_frame(OpCode.BINARY, b"\x07" * 1000, masking_key=0x0A0B0C0D)
    # A smaller frame overwrites the start and leaves the buffer's size alone.
    m = encode_into(scratch, OpCode.TEXT, "ok", at=0)
    assert len(scratch) == n and bytes(scratch[:m]) == encode_frame(OpCode.TEXT, "ok")
    with pytest.raises(ValueError, match="past the end"):
        encode_into(scratch, OpCode.TEXT, "ok", at=n + 1)


# ------------------------------------------------------------------ violations

def raw_frame(b0, length, *, masked=True, payload=None):
    """Frame bytes with an arbitrary first byte and a length field as given."""
    b1 = 0x80 if masked else 0
    if length < 126:
        head = bytes([b0, b1 | length])
    elif length < 65536:
        head = bytes([b0, b1 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([b0, b1 | 127]) + length.to_bytes(8, "big")
    if masked:
        head += b"\x00\x00\x00\x00"
    return head + (payload if payload is not None else b"a" * min(length, 200))


VIOLATIONS = [
    *[(f"reserved opcode {op}", raw_frame(0x80 | op, 1), CloseCode.PROTOCOL_ERROR)
      for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)],
    *[(f"rsv {rsv}", raw_frame(0x81 | (rsv << 4), 1), CloseCode.PROTOCOL_ERROR)
      for rsv in range(1, 8)],
    ("ping over 125 bytes", raw_frame(0x89, 126), CloseCode.PROTOCOL_ERROR),
    ("fragmented ping", raw_frame(0x09, 1), CloseCode.PROTOCOL_ERROR),
    ("fragmented close", raw_frame(0x08, 2), CloseCode.PROTOCOL_ERROR),
    ("64-bit length top bit", bytes([0x82, 0xFF]) + (1 << 63).to_bytes(8, "big") + b"\0" * 4,
     CloseCode.PROTOCOL_ERROR),
    ("unmasked from client", raw_frame(0x81, 5, masked=False), CloseCode.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("name,wire,code", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_each_violation_reported_once_with_its_code(name, wire, code):
    good = encode_frame(OpCode.TEXT, b"ok", masking_key=7)
    for cuts in ([], [1], list(range(1, len(wire)))):
        frames, errors = parse(good + wire + good, chunks=[len(good) + c for c in cuts])
        assert frames == [Frame(opcode=OpCode.TEXT, data=b"ok", masking_key=7)]
        assert len(errors) == 1 and errors[0][0] == code


def test_masked_frame_to_client_is_1002():
    frames, errors = parse(encode_frame(OpCode.TEXT, b"x", masking_key=1), expect_mask=False)
    assert frames == [] and errors == [(CloseCode.PROTOCOL_ERROR, "masked frame from a server")]


def test_frame_size_limit_inclusive():
    frames, errors = parse(encode_frame(2, b"x" * 1024, masking_key=3), max_frame_size=1024)
    assert errors == [] and len(frames[0].data) == 1024
    frames, errors = parse(encode_frame(2, b"x" * 1025, masking_key=3), max_frame_size=1024)
    assert frames == [] and errors[0][0] == CloseCode.MESSAGE_TOO_BIG


def test_oversized_frame_detected_from_header_before_payload():
    errors = []
    parser = FrameParser(lambda f: None, lambda c, r: errors.append(c), max_frame_size=1 << 20)
    header = bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\0\0\0\0"
    parser.feed(header)
    assert errors == [CloseCode.MESSAGE_TOO_BIG]
    assert parser.failed and parser.buffered == 0


def test_unbounded_parser_does_not_reserve_a_forged_length():
    # 2**40 declared, 1 KiB sent: the parser holds about what arrived, not a terabyte.
    parser = FrameParser(lambda f: None)
    parser.feed(bytes([0x82, 0xFF]) + (1 << 40).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 1024)
    assert parser.buffered == 1024


def test_allowed_rsv_only_on_first_data_frame():
    wire = Frame(rsv=4, opcode=OpCode.TEXT, data=b"x", masking_key=1).encode()
    assert parse(wire, allowed_rsv=4)[1] == []
    assert parse(wire, allowed_rsv=0)[1][0][0] == CloseCode.PROTOCOL_ERROR
    continuation = Frame(fin=True, rsv=4, opcode=0, data=b"x", masking_key=1).encode()
    assert parse(continuation, allowed_rsv=4)[1][0][0] == CloseCode.PROTOCOL_ERROR
    ping = Frame(rsv=4, opcode=OpCode.PING, data=b"x", masking_key=1).encode()
    assert parse(ping, allowed_rsv=4)[1][0][0] == CloseCode.PROTOCOL_ERROR


def test_input_after_a_violation_is_ignored():
    frames, errors = [], []
    parser = FrameParser(frames.append, lambda c, r: errors.append(c))
    parser.feed(raw_frame(0x83, 1))
    parser.feed(encode_frame(1, b"late", masking_key=9))
    assert frames == [] and errors == [CloseCode.PROTOCOL_ERROR]


def test_without_on_error_violations_raise():
    parser = FrameParser(lambda f: None)
    with pytest.raises(ProtocolError) as info:
        parser.feed(raw_frame(0x83, 1))
    assert info.value.code == CloseCode.PROTOCOL_ERROR


def test_callback_exception_keeps_the_rest_of_the_chunk():
    seen = []

    def on_frame(frame):
        seen.append(frame.data)
        if frame.data == b"boom":
            raise RuntimeError("handler failed")

    parser = FrameParser(on_frame)
    wire = b"".join(encode_frame(1, d, masking_key=5) for d in (b"a", b"boom", b"b", b"c"))
    with pytest.raises(RuntimeError):
        parser.feed(wire[:-2])
    parser.feed(wire[-2:])
    assert seen == [b"a", b"boom", b"b", b"c"]


def test_parser_needs_callable_callbacks():
    with pytest.raises(TypeError):
        FrameParser()
    with pytest.raises(TypeError):
        FrameParser(42)


# ------------------------------------------------------------------ close payloads

def test_close_payload_round_trip():
    assert parse_close(close_payload(1000, "bye")) == (1000, "bye")
    assert parse_close(b"") == (CloseCode.NO_STATUS, "")
    assert parse_close(close_payload(4999, "é" * 61)) == (4999, "é" * 61)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes_are_1002(code):
    with pytest.raises(ProtocolError) as info:
        parse_close(code.to_bytes(2, "big"))
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(ValueError):
        close_payload(code)


def test_close_reason_bad_utf8_is_1007_and_one_byte_is_1002():
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff")
    assert info.value.code == CloseCode.INVALID_DATA
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03")
    assert info.value.code == CloseCode.PROTOCOL_ERROR
    with pytest.raises(ValueError):
        close_payload(1000, "x" * 124)


# ------------------------------------------------------------------ UTF-8 while parsing

def test_text_validated_as_bytes_arrive_inside_one_frame():
    # Autobahn 6.4.3: one frame sent in chops; the bad bytes fail it before the frame ends.
    errors = []
    parser = FrameParser(lambda f: None, lambda c, r: errors.append(c), validate_utf8=True)
    wire = encode_frame(OpCode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 50,
                        masking_key=0x11223344)
    parser.feed(wire[:6 + 11])          # header + the valid part
    assert errors == []
    parser.feed(wire[6 + 11:6 + 13])    # the first bytes of the invalid sequence
    assert errors == [CloseCode.INVALID_DATA]


def test_text_validation_spans_fragments_and_skips_binary_and_compressed():
    frames, errors = parse_utf8([
        Frame(fin=False, opcode=OpCode.TEXT, data=b"\xe2\x82", masking_key=1),
        Frame(opcode=OpCode.PING, data=b"\xff", masking_key=2),     # control: not text
        Frame(fin=True, opcode=0, data=b"\xac", masking_key=3),
        Frame(opcode=OpCode.BINARY, data=b"\xff", masking_key=4),
        Frame(rsv=4, opcode=OpCode.TEXT, data=b"\xff", masking_key=5),   # compressed
    ])
    assert errors == [] and len(frames) == 5
    frames, errors = parse_utf8([Frame(fin=False, opcode=OpCode.TEXT, data=b"ok\xe2", masking_key=1),
                                 Frame(fin=True, opcode=0, data=b"", masking_key=1)])
    assert errors == [CloseCode.INVALID_DATA] and len(frames) == 1


def parse_utf8(frames_in):
    frames, errors = [], []
    parser = FrameParser(frames.append, lambda c, r: errors.append(c), validate_utf8=True)
    parser.allowed_rsv = 4
    for frame in frames_in:
        parser.feed(frame.encode())
    return frames, errors


# Spare payloads: large received payloads that nobody kept are reused for the next ones
# (fastws/_codec.pyx, _new_payload / keep_spare).

def test_a_spare_payload_never_changes_a_payload_someone_holds(spares):
    rng = random.Random(5)
    sizes = [200_000, 200_000, 150_000, 390_000, 200_001, 131_072, 260_000] * 3
    payloads = [rng.randbytes(size) for size in sizes]
    kept, checks = [], []

    def on_frame(frame):
        data = frame.data
        # The cached hash of a reused bytes object is that of its new contents.
        checks.append((data == payloads[len(checks)],
                       hash(data) == hash(bytes(bytearray(data)))))
        if len(checks) % 3 == 0:
            kept.append((len(checks) - 1, data))

    parser = FrameParser(on_frame)
    for i, payload in enumerate(payloads):
        frame = encode_frame(OpCode.BINARY, payload, masking_key=0x01020304 + i)
        # Whole in one chunk, and split so that the payload is filled across feeds.
        if i % 2:
            parser.feed(frame)
        else:
            parser.feed(frame[:1000])
            parser.feed(frame[1000:])
    assert checks == [(True, True)] * len(payloads)
    assert all(data == payloads[i] for i, data in kept)
    count, size = spares()
    assert count >= 1 and size <= 16 * 1024 * 1024   # reuse happened, within its bound


def test_spare_payloads_are_bounded(spares):
    spares(300_000)                               # room for one 200 KB payload, not two
    parser = FrameParser(lambda frame: None)
    held = []
    for i in range(4):
        payload = os.urandom(200_000)
        held.append(payload)
        parser.feed(encode_frame(OpCode.BINARY, payload, masking_key=i + 1))
    assert spares() == (1, 200_000)
    spares(0)                                     # none at all
    parser.feed(encode_frame(OpCode.BINARY, held[0], masking_key=9))
    assert spares() == (0, 0)
