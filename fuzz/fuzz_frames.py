"""Fuzz target: the frame parser, UTF-8 validation and reassembly (Consolidate).

    python fuzz/fuzz_frames.py -max_total_time=600        # a long run
    python fuzz/fuzz_frames.py -runs=5000                  # what the test suite does

Input: a chunking seed and bytes fed to a server-side parser (masks expected, 64 KiB frame
limit, text validated as it arrives). Invariants checked on every input:
- violations are reported once, with a close code the RFC allows, and nothing else raises;
- every frame delivered is well-formed (control frames FIN and <= 125 bytes; text frames
  that complete a message decode as UTF-8);
- reassembled messages never exceed the message limit and concatenate their fragments;
- the parser buffers at most one frame's worth of bytes.
"""

import sys

import atheris

with atheris.instrument_imports():
    from fastws import CloseCode, FrameParser, OpCode, Utf8Validator
    from fastws.stages import Consolidate

ALLOWED_CODES = {CloseCode.PROTOCOL_ERROR, CloseCode.INVALID_DATA, CloseCode.MESSAGE_TOO_BIG}
MAX_FRAME = 65536
MAX_MESSAGE = 100_000


class FakeConnection:
    """What Consolidate needs from a connection: a limit and fail()."""

    def __init__(self):
        self.max_message_size = MAX_MESSAGE
        self.failures = []

    def fail(self, code, reason):
        self.failures.append((code, reason))


def check(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    step = provider.ConsumeIntInRange(1, 64)
    payload = provider.ConsumeBytes(provider.remaining_bytes())

    frames, errors, messages = [], [], []
    conn = FakeConnection()
    consolidate = Consolidate()
    consolidate.conn = conn
    consolidate._pass_in = messages.append
    consolidate._pass_out = lambda frame: None

    def on_frame(frame):
        frames.append(frame)
        if not conn.failures:
            consolidate.on_frame_in(frame)

    parser = FrameParser(on_frame, lambda code, reason: errors.append(code),
                         max_frame_size=MAX_FRAME, validate_utf8=True)
    for start in range(0, len(payload), step):
        parser.feed(payload[start:start + step])
        assert parser.buffered <= MAX_FRAME + 14, parser.buffered

    assert len(errors) <= 1, errors
    assert all(code in ALLOWED_CODES for code in errors), errors
    assert all(code in ALLOWED_CODES for code, _ in conn.failures), conn.failures
    for frame in frames:
        assert 0 <= frame.opcode <= 15 and frame.opcode not in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)
        if frame.is_control:
            assert frame.fin and len(frame.data) <= 125
        assert len(frame.data) <= MAX_FRAME
    for message in messages:
        if message.opcode in (OpCode.TEXT, OpCode.BINARY):
            assert message.fin and len(message.data) <= MAX_MESSAGE
        if message.opcode == OpCode.TEXT:
            message.data.decode("utf-8")          # the parser let only valid text through
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
