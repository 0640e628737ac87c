"""Benchmarks of fastws' RFC 6455 codec against the peers' own codecs.

Run:  pytest bench/ --benchmark-only
See bench/README.md for what each group measures.

Every peer is optional: a peer that is not importable simply has no cases.
Every benchmark checks once, outside the timing, that the implementation
produced the right result, so nothing here can time a no-op.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from functools import partial
from pathlib import Path

import pytest

import fastws

# --------------------------------------------------------------------------
# optional peers

try:
    from websockets.frames import Frame as WebsocketsFrame
    from websockets.speedups import apply_mask as websockets_apply_mask
    from websockets.streams import StreamReader as WebsocketsStreamReader
except ImportError:  # websockets missing, or built without its C speedups
    WebsocketsFrame = None
    websockets_apply_mask = None

try:
    from wsproto.frame_protocol import FrameProtocol as WsprotoFrameProtocol
except ImportError:
    WsprotoFrameProtocol = None

try:
    from aiohttp._websocket.mask import _websocket_mask_cython as aiohttp_mask
except ImportError:  # aiohttp missing or installed without its extensions
    aiohttp_mask = None

try:
    from aiohttp._websocket.reader_c import WebSocketDataQueue as AiohttpDataQueue
    from aiohttp._websocket.reader_c import WebSocketReader as AiohttpReader
except ImportError:
    AiohttpReader = None

try:
    import picows
    from picows.picows import WSProtocol as PicowsProtocol
except ImportError:
    picows = None

# --------------------------------------------------------------------------
# inputs

SIZES = [
    pytest.param(16, id="16B"),
    pytest.param(125, id="125B"),
    pytest.param(1024, id="1KiB"),
    pytest.param(64 * 1024, id="64KiB"),
    pytest.param(1024 * 1024, id="1MiB"),
]
LABELS = {16: "16B", 125: "125B", 1024: "1KiB", 64 * 1024: "64KiB", 1024 * 1024: "1MiB"}

CYTHON_DIR = Path(__file__).resolve().parent / "cython"  # the cdef consumers of parse-c
HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: set on classes defined in Python, not on cdef ones

MASK_KEY = b"\x37\xfa\x21\x3d"
CHUNK_TARGET = 1024 * 1024  # bytes of wire data per parse() call
OP_BINARY = 2


def payload_of(size: int) -> bytes:
    """Deterministic, non-constant payload (a constant one could hide bugs)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def reference_mask(data: bytes, key: bytes) -> bytes:
    """Slow but obviously correct RFC 6455 masking, for verification only."""
    n = len(data)
    if n == 0:
        return b""
    keystream = (key * (n // 4 + 1))[:n]
    x = int.from_bytes(data, "big") ^ int.from_bytes(keystream, "big")
    return x.to_bytes(n, "big")


def client_frames(size: int) -> tuple[bytes, int, bytes]:
    """(payload, frame count, chunk): about CHUNK_TARGET bytes of identical
    masked binary frames, i.e. what a server reads from a client.  Encoded by
    hand (not with fastws) so the parser under test does not also produce its
    own input."""
    payload = payload_of(size)
    if size < 126:
        header = bytes([0x80 | OP_BINARY, 0x80 | size])
    elif size < 65536:
        header = bytes([0x80 | OP_BINARY, 0x80 | 126]) + size.to_bytes(2, "big")
    else:
        header = bytes([0x80 | OP_BINARY, 0x80 | 127]) + size.to_bytes(8, "big")
    frame = header + MASK_KEY + reference_mask(payload, MASK_KEY)
    count = max(1, CHUNK_TARGET // len(frame))
    return payload, count, frame * count


# --------------------------------------------------------------------------
# 1. mask

KEY_INT = int.from_bytes(MASK_KEY, "big")  # the same key as an int, wire order


def _mask_impls():
    """name -> factory(data) -> zero-argument callable.  C functions are bound
    with functools.partial so no Python frame is added to the timing."""
    impls = {
        "fastws.mask (bytes key)": lambda data: partial(fastws.mask, data, MASK_KEY),
        "fastws.mask (int key)": lambda data: partial(fastws.mask, data, KEY_INT),
    }
    if websockets_apply_mask is not None:
        impls["websockets.speedups"] = lambda data: partial(
            websockets_apply_mask, data, MASK_KEY
        )
    if aiohttp_mask is not None:
        # aiohttp masks a bytearray in place; the fresh copy is part of the
        # measurement (fastws and websockets also return new memory).  This
        # one needs a Python function, i.e. one extra frame (~30-50 ns).
        def aiohttp_factory(data):
            def aiohttp_copy_and_mask():
                buf = bytearray(data)
                aiohttp_mask(MASK_KEY, buf)
                return buf

            return aiohttp_copy_and_mask

        impls["aiohttp (copy+mask)"] = aiohttp_factory
    # picows: its mask (_mask_payload) is a cdef inline C function with no
    # Python entry point, so there is nothing standalone to time.
    # Memory-bandwidth limit: bytearray(bytes) is one allocation + one memcpy
    # (bytes(b) and b[:] return b itself for bytes, copying nothing).
    impls["copy: bytearray(data)"] = lambda data: partial(bytearray, data)
    return impls


MASK_IMPLS = _mask_impls()


@pytest.mark.parametrize("impl", list(MASK_IMPLS))
@pytest.mark.parametrize("size", SIZES)
def test_mask(benchmark, bench_run, size, impl):
    benchmark.group = f"mask-{LABELS[size]}"
    data = payload_of(size)
    fn = MASK_IMPLS[impl](data)
    out = fn()
    if impl.startswith("copy"):
        assert out == data
    else:
        assert bytes(out) == reference_mask(data, MASK_KEY)
    bench_run(
        fn,
        kind="mask",
        impl=impl,
        size_label=LABELS[size],
        size=size,
        bytes_per_call=size,
    )


# --------------------------------------------------------------------------
# 2. parse
#
# Two groups, each comparing like with like (bench/README.md):
#
# * parse-<size>: every payload reaches Python code.  Each implementation hands
#   each frame's payload, as bytes, to Python code that appends it to a list: a
#   Python callback where the API is callbacks (fastws' on_frame, picows'
#   on_ws_frame), the loop over the parsed frames where it is not.
# * parse-c-<size>: every payload reaches C code.  fastws' FrameParser and
#   picows' WSListener subclassed as cdef classes (bench/cython/), called
#   through the C vtable with no Python call per frame; the other peers have no
#   such entry point.
#
# Each factory returns parse(chunk) -> the list of payloads (bytes).  The list
# is reused and cleared by the next call, so freeing the previous call's
# payloads is timed alike for everyone.


def make_fastws():
    out = []

    def on_frame(frame):
        out.append(frame.data)

    parser = fastws.FrameParser(on_frame)

    def parse(chunk):
        out.clear()
        parser.feed(chunk)
        return out

    return parse


def make_fastws_cdef(collector_module):
    collector = collector_module.PayloadCollector()
    out = collector.payloads

    def parse(chunk):
        out.clear()
        collector.feed(chunk)
        return out

    return parse


class _WebsocketsParser:
    """Drives websockets' Sans-I/O frame parser the way
    websockets.protocol.Protocol.parse() does: one generator looping on
    StreamReader.at_eof() and Frame.parse(reader.read_exact, mask=...)."""

    def __init__(self):
        self.reader = WebsocketsStreamReader()
        self.out = []
        self.parser = self._parse()
        next(self.parser)

    def _parse(self):
        reader = self.reader
        out = self.out
        while True:
            if (yield from reader.at_eof()):
                raise EOFError
            frame = yield from WebsocketsFrame.parse(
                reader.read_exact, mask=True, max_size=None, extensions=[]
            )
            out.append(frame.data)

    def __call__(self, chunk):
        self.out.clear()
        self.reader.feed_data(chunk)
        next(self.parser)
        return self.out


def make_websockets():
    return _WebsocketsParser()


def make_wsproto():
    proto = WsprotoFrameProtocol(client=False, extensions=[])

    def parse(chunk):
        proto.receive_bytes(chunk)
        return [frame.payload for frame in proto.received_frames()]

    return parse


class _AiohttpProtocolStub:
    """The only protocol surface WebSocketDataQueue touches: flow control."""

    _reading_paused = False

    def pause_reading(self):
        raise AssertionError("queue limit reached; the benchmark should not pause")

    def resume_reading(self):
        pass


def make_aiohttp():
    proto = _AiohttpProtocolStub()

    def parse(chunk):
        # WebSocketReader.queue is typed as the cdef WebSocketDataQueue, so a
        # duck-typed stand-in is rejected; use the real queue (with a
        # protocol stub and no loop; the loop is only used by read()).  A new
        # queue + reader per call, since the queue's byte count can only be
        # drained through the async read().  No size limit (0), no
        # compression, no text decoding (binary frames anyway).
        queue = AiohttpDataQueue(proto, 2**30, loop=None)
        reader = AiohttpReader(queue, 0, False, False)
        reader.feed_data(chunk)
        return [message.data for message, _size in queue._buffer]

    return parse


class _PicowsHarness:
    """picows' frame parser lives in WSProtocol, an asyncio BufferedProtocol.
    It is driven without a network: a stub transport (a never-connected TCP
    socket for the setsockopt calls, write() discarding the 101 response), a
    real HTTP upgrade request, then get_buffer()/buffer_updated() per chunk
    exactly as asyncio's selector transport does after recv_into().

    `listener` is what the upgrade hands frames to; `out` is the list it
    appends payloads to."""

    UPGRADE = (
        b"GET / HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name, default=None):
            return self.sock if name == "socket" else default

        def get_write_buffer_size(self):
            return 0

        def write(self, data):
            pass

        def is_closing(self):
            return False

        def close(self):
            pass

    def __init__(self, listener, out):
        self.out = out
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.loop = asyncio.new_event_loop()

        async def build():
            return PicowsProtocol(
                None, None, False,  # host_port, ws_path, is_client_side
                lambda request: listener,
                logging.getLogger("bench.picows"),
                True,  # disconnect_on_exception
                None,  # websocket_handshake_timeout
                False, 5, 5, picows.WSAutoPingStrategy.PING_WHEN_IDLE,  # no auto-ping
                False,  # enable_auto_pong
                2**31,  # max_frame_size
                None,  # extra_headers
                64 * 1024,  # read_buffer_init_size (grows on demand)
            )

        self.proto = self.loop.run_until_complete(build())
        self.proto.connection_made(self.Transport(self.sock))
        self.feed(self.UPGRADE)
        if self.proto.listener is not listener:
            raise RuntimeError("picows rejected the upgrade request")

    def feed(self, data):
        proto = self.proto
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            buf = proto.get_buffer(-1)
            n = min(len(buf), end - pos)
            buf[:n] = view[pos : pos + n]
            proto.buffer_updated(n)
            pos += n

    def __call__(self, chunk):
        self.out.clear()
        self.feed(chunk)
        return self.out

    def close(self):
        self.loop.close()
        self.sock.close()


def _python_listener():
    out = []

    class Listener(picows.WSListener):
        def on_ws_frame(self, transport, frame):
            # A WSFrame points into picows' receive buffer and is valid only
            # during this call: keep the payload as bytes, as fastws hands it.
            out.append(frame.get_payload_as_bytes())

    return Listener(), out


def _picows_harness(listener, out):
    try:
        return _PicowsHarness(listener, out)
    except Exception as exc:  # e.g. a picows release with another signature
        pytest.skip(f"cannot drive picows' WSProtocol standalone: {exc!r}")


@pytest.fixture(scope="module")
def picows_harness():
    harness = _picows_harness(*_python_listener())
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def fastws_collector(build_cython):
    """bench/cython/fastws_collector.pyx, built against this fastws."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastws.__file__)))
    return build_cython(
        CYTHON_DIR / "fastws_collector.pyx",
        include_path=[root],  # where fastws/_codec.pxd is
        include_dirs=[fastws.get_include()],  # fastws/mask.h, fastws/utf8.h
        depends=[Path(root, "fastws", "_codec.pxd")],
        required=True,  # fastws is what is measured: a failed build is a failure
    )


@pytest.fixture(scope="module")
def picows_cdef_harness(build_cython):
    root = os.path.dirname(os.path.dirname(os.path.abspath(picows.__file__)))
    module = build_cython(
        CYTHON_DIR / "picows_collector.pyx",
        include_path=[root],  # where picows/picows.pxd is
        depends=[Path(root, "picows", "picows.pxd")],
        required=False,  # another picows release may declare another listener: skip
    )
    listener = module.PayloadCollector()
    # A Python subclass would still work, through a Python call per frame: make sure
    # this is the compiled (static, not heap-allocated) type.
    assert not type(listener).__flags__ & HEAPTYPE, "not a cdef class"
    harness = _picows_harness(listener, listener.payloads)
    yield harness
    harness.close()


PARSE_IMPLS = {"fastws FrameParser, Python on_frame": make_fastws}
if WebsocketsFrame is not None:
    PARSE_IMPLS["websockets Frame.parse"] = make_websockets
if WsprotoFrameProtocol is not None:
    PARSE_IMPLS["wsproto FrameProtocol"] = make_wsproto
if AiohttpReader is not None:
    PARSE_IMPLS["aiohttp WebSocketReader (C)"] = make_aiohttp
if picows is not None:
    PARSE_IMPLS["picows WSProtocol, Python WSListener"] = None  # a fixture: picows_harness

PARSE_C_IMPLS = ["fastws cdef FrameParser subclass"]
if picows is not None:
    PARSE_C_IMPLS.append("picows cdef WSListener subclass")


def bench_parse(benchmark, bench_run, kind, impl, size, parse):
    payload, count, chunk = client_frames(size)
    # Verify twice: the second call catches parsers that would leave state
    # behind (partial frames, lost bytes) between calls.
    for _ in range(2):
        got = parse(chunk)
        assert len(got) == count, f"{impl}: {len(got)} frames, expected {count}"
        assert all(type(p) is bytes for p in got), f"{impl}: payload not bytes"
        assert all(p == payload for p in got), f"{impl}: wrong payload"

    bench_run(
        lambda: parse(chunk),
        kind=kind,
        impl=impl,
        size_label=LABELS[size],
        size=size,
        bytes_per_call=count * size,
        frames_per_call=count,
    )
    benchmark.extra_info["wire_bytes_per_call"] = len(chunk)


@pytest.mark.parametrize("impl", list(PARSE_IMPLS))
@pytest.mark.parametrize("size", SIZES)
def test_parse(benchmark, bench_run, request, size, impl):
    benchmark.group = f"parse-{LABELS[size]}"
    make = PARSE_IMPLS[impl]
    parse = make() if make is not None else request.getfixturevalue("picows_harness")
    bench_parse(benchmark, bench_run, "parse", impl, size, parse)


@pytest.mark.parametrize("impl", PARSE_C_IMPLS)
@pytest.mark.parametrize("size", SIZES)
def test_parse_c(benchmark, bench_run, request, size, impl):
    benchmark.group = f"parse-c-{LABELS[size]}"
    if impl.startswith("fastws"):
        parse = make_fastws_cdef(request.getfixturevalue("fastws_collector"))
    else:
        parse = request.getfixturevalue("picows_cdef_harness")
    bench_parse(benchmark, bench_run, "parse-c", impl, size, parse)


# --------------------------------------------------------------------------
# 3. utf8

MIXED_UNIT = "héllo wörld — καλημέρα κόσμε — 日本語のテキスト — ñandú ".encode()


def text_of(size: int, kind: str) -> bytes:
    unit = b"The quick brown fox jumps over the lazy dog. " if kind == "ascii" else MIXED_UNIT
    data = (unit * (size // len(unit) + 1))[:size]
    # Back off to a character boundary and pad with ASCII to the exact size.
    while True:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return data + b"." * (size - len(data))


def _utf8_impls():
    """name -> factory(data) -> zero-argument callable returning the result."""
    Utf8Validator = fastws.Utf8Validator
    return {
        # a fresh validator per call: the streaming API's full cost
        "fastws Utf8Validator().feed": lambda data: lambda: Utf8Validator().feed(data),
        "fastws is_valid_utf8": lambda data: partial(fastws.is_valid_utf8, data),
        'bytes.decode("utf-8")': lambda data: partial(bytes.decode, data, "utf-8"),
    }


UTF8_IMPLS = _utf8_impls()


@pytest.mark.parametrize("impl", list(UTF8_IMPLS))
@pytest.mark.parametrize("text", ["ascii", "mixed"])
@pytest.mark.parametrize("size", SIZES)
def test_utf8(benchmark, bench_run, size, text, impl):
    benchmark.group = f"utf8-{LABELS[size]}"
    data = text_of(size, text)
    assert len(data) == size
    if text == "mixed":
        assert len(data.decode()) < size  # really contains multi-byte chars
    fn = UTF8_IMPLS[impl](data)
    result = fn()
    assert result is True or result == data.decode("utf-8")
    # ...and it must notice invalid input (a lone continuation byte at the end)
    bad = data[:-1] + b"\x80"
    if impl.startswith("fastws"):
        assert UTF8_IMPLS[impl](bad)() is False
    bench_run(
        fn,
        kind="utf8",
        impl=f"{impl} [{text}]",
        size_label=LABELS[size],
        size=size,
        bytes_per_call=size,
    )
