"""Fuzz target: the WebSocket protocol (frames, UTF-8, reassembly, permessage-deflate, closing).

    python fuzz/fuzz_frames.py -max_total_time=600        # a long run
    python fuzz/fuzz_frames.py -runs=5000                  # what the test suite does

Input: a chunking seed, a choice of settings, and bytes fed to a server-side Protocol (masks
expected, 64 KiB frame limit, 100 KB message limit, permessage-deflate negotiated or not,
reassembly on or off). Invariants checked on every input:
- nothing raises; a violation fails the connection once, with a close code the RFC allows,
  and a close frame carrying that code is the last thing the protocol sends;
- every frame delivered is well-formed (pings only when not answered; whole text messages
  decode as UTF-8) and no message passes the limit, decompressed;
- with a frame parser alone, violations are reported once and the parser buffers at most
  one frame's worth of bytes; the UTF-8 validator agrees with Python's decoder.
"""

import sys

import atheris

with atheris.instrument_imports():
    from fastws import CloseCode, Deflate, FrameParser, OpCode, Protocol, Utf8Validator

ALLOWED_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG}
MAX_FRAME = 65536
MAX_MESSAGE = 100_000


def check(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    step = provider.ConsumeIntInRange(1, 64)
    settings = provider.ConsumeIntInRange(0, 3)
    payload = provider.ConsumeBytes(provider.remaining_bytes())
    check_protocol(payload, step, deflate=bool(settings & 1), reassemble=bool(settings & 2))
    check_parser(payload, step)


def check_protocol(payload: bytes, step: int, *, deflate: bool, reassemble: bool) -> None:
    protocol = Protocol(False, max_frame_size=MAX_FRAME, max_message_size=MAX_MESSAGE,
                        extension=Deflate() if deflate else None, reassemble=reassemble)
    events = []
    for start in range(0, len(payload), step):
        protocol.receive_data(payload[start:start + step])
        events.extend(protocol.events_received())
    if protocol.failed:
        assert protocol.failure.code in ALLOWED_CODES, protocol.failure
        sent = protocol.data_to_send()
        assert sent.endswith(protocol.failure.code.to_bytes(2, "big")
                             + protocol.failure.reason.encode()[:123]) or protocol.close_rcvd
        assert protocol.sink.ended
    message = None
    for event in events:
        if not hasattr(event, "opcode"):             # the peer's Close: always last
            assert event is events[-1]
            continue
        assert event.opcode in (0, 1, 2, 9, 10) and event.opcode != OpCode.PING
        assert (event.rsv & 4) == 0
        if event.opcode in (OpCode.TEXT, OpCode.BINARY):
            message = (event.opcode, len(event.data))
        elif event.opcode == OpCode.CONTINUATION:
            assert message is not None and not reassemble
            message = (message[0], message[1] + len(event.data))
        if message is not None:
            assert message[1] <= MAX_MESSAGE
            if reassemble and message[0] == OpCode.TEXT:
                event.data.decode("utf-8")        # only valid text gets through
        if event.fin:
            message = None


def check_parser(payload: bytes, step: int) -> None:
    errors = []
    parser = FrameParser(lambda frame: None, lambda code, reason: errors.append(code),
                         max_frame_size=MAX_FRAME, validate_utf8=True)
    for start in range(0, len(payload), step):
        parser.feed(payload[start:start + step])
        assert parser.buffered <= MAX_FRAME + 14, parser.buffered
    assert len(errors) <= 1, errors
    assert all(code in ALLOWED_CODES for code in errors), errors
    # The validator agrees with Python's decoder on the raw input, split at `step`.
    validator = Utf8Validator()
    # Every chunk is fed, even after one is rejected (all() over a generator would stop there).
    results = [validator.feed(payload[i:i + step]) for i in range(0, len(payload), step)]
    ok = all(results)
    try:
        payload.decode("utf-8")
        assert ok and validator.finish()
    except UnicodeDecodeError:
        assert not (ok and validator.finish())


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
