"""WebSocket behaviour of the server and the stage chain (SEED_BEHAVIOURS.md 1-9, 13-15).

Each test runs in the clear and under TLS (the `transport` fixture).
"""

import os
import socket
import struct
import time

import pytest
from conftest import Recorder, run_until, wait_for

import fastws
from fastws import AutoPing, AutoPong, CloseCode, Consolidate, Frame, OpCode, Stage, encode_frame
from fastws._codec import parse_close

# Every test here runs over both chains (see conftest.chain): the fast path and a user stage.
pytestmark = pytest.mark.usefixtures("chain")


class UpperCaseCounter:
    """Seed behaviour 1: upper-cases text and appends a per-connection counter."""

    def __init__(self):
        self.count = 0

    def on_frame(self, conn, frame):
        self.count += 1
        conn.send_text(frame.string_data.upper() + str(self.count))


class PerConnection:
    """Upgrades every request with a fresh handler instance (per-connection state)."""

    def __init__(self, factory, **upgrade_options):
        self.factory = factory
        self.options = upgrade_options

    def on_request(self, conn, request):
        conn.upgrade(fastws.accept(request), self.factory(), **self.options)


def test_echo_state_is_per_connection(start_server, raw_client):
    server = start_server(PerConnection(UpperCaseCounter))
    for _ in range(2):
        client = raw_client(server.port)
        client.send(OpCode.TEXT, b"i am cow")
        assert client.recv_message().data == b"I AM COW1"
        client.send(OpCode.TEXT, b"i am cow")
        assert client.recv_message().data == b"I AM COW2"


def test_fragments_are_reassembled_each_message_from_scratch(start_server, raw_client):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    client = raw_client(server.port)
    for text in (b"hello, fragmented world!", b"second message in four"):
        pieces = [text[i:i + 6] for i in range(0, len(text), 6)][:3]
        pieces.append(text[sum(map(len, pieces)):])
        for i, piece in enumerate(pieces):   # each fragment has its own random key
            client.send(OpCode.TEXT if i == 0 else OpCode.CONTINUATION, piece,
                        fin=i == len(pieces) - 1)
        echoed = client.recv_message()
        assert echoed.fin and echoed.opcode == OpCode.TEXT and echoed.data == text
    assert [f.data for f in recorder.frames] == [b"hello, fragmented world!",
                                                 b"second message in four"]


def test_clean_close_is_answered_with_a_close_frame(start_server, raw_client):
    recorder = Recorder()
    server = start_server(recorder)
    client = raw_client(server.port)
    client.send(OpCode.CLOSE, fastws.close_payload(1000, "done"))
    assert client.expect_close() == (1000, "")
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(1000, "done")]


def test_unmasked_client_frame_gets_1002(start_server, raw_client):
    recorder = Recorder()
    server = start_server(recorder)
    client = raw_client(server.port)
    client.send(OpCode.TEXT, b"not masked", masked=False)
    assert client.expect_close()[0] == CloseCode.PROTOCOL_ERROR
    wait_for(lambda: recorder.closed)
    assert recorder.closed[0][0] == CloseCode.PROTOCOL_ERROR
    assert recorder.frames == []


def test_frame_size_limit(start_server, raw_client):
    server = start_server(Recorder(echo=True), max_frame_size=1024, max_message_size=1024)
    client = raw_client(server.port)
    client.send(OpCode.BINARY, b"x" * 1024)
    assert len(client.recv_message().data) == 1024
    client.send(OpCode.BINARY, b"x" * 1025)
    assert client.expect_close()[0] == CloseCode.MESSAGE_TOO_BIG


def test_fragmented_message_size_limit(start_server, raw_client):
    server = start_server(Recorder(echo=True), max_message_size=1024)
    client = raw_client(server.port)
    for i in range(4):
        client.send(OpCode.BINARY if i == 0 else 0, b"a" * 256, fin=i == 3)
    assert client.recv_message().data == b"a" * 1024
    client2 = raw_client(server.port)
    for i, size in enumerate((257, 256, 256, 256)):
        client2.send(OpCode.BINARY if i == 0 else 0, b"b" * size, fin=i == 3)
    assert client2.expect_close()[0] == CloseCode.MESSAGE_TOO_BIG


def test_message_limit_fails_as_soon_as_the_total_passes_it(start_server, raw_client):
    server = start_server(Recorder(echo=True), max_message_size=1024)
    client = raw_client(server.port)
    client.send(OpCode.BINARY, b"c" * 600, fin=False)
    client.send(0, b"c" * 600, fin=False)     # 1200 > 1024: no need to wait for the FIN
    assert client.expect_close()[0] == CloseCode.MESSAGE_TOO_BIG


def test_auto_ping_keeps_pinging_a_silent_client(start_server, raw_client):
    server = start_server(PerConnection(Recorder, stages=[AutoPing(0.1), AutoPong(),
                                                          Consolidate()]))
    client = raw_client(server.port)
    started = time.monotonic()
    pings = [client.recv_frame(timeout=2) for _ in range(3)]
    assert all(f.opcode == OpCode.PING for f in pings)
    assert len({f.data for f in pings}) == 3          # distinct payloads
    assert time.monotonic() - started >= 0.25          # they come at the interval


class FragmentSender:
    """Sends a message in fragments, 60 ms apart, with AutoPing pinging every 20 ms."""

    def on_upgraded(self, conn):
        parts = [b"alpha-", b"beta-", b"gamma-", b"delta"]

        def send(i):
            if conn.is_open:
                conn.send(Frame(fin=i == 3, opcode=OpCode.TEXT if i == 0 else 0, data=parts[i]))
                if i < 3:
                    conn.call_later(0.06, send, i + 1)

        send(0)


def test_pings_arrive_between_fragments_and_message_is_intact(start_server, raw_client):
    server = start_server(PerConnection(FragmentSender, stages=[AutoPing(0.02), AutoPong(),
                                                                Consolidate()]))
    client = raw_client(server.port)
    kinds, data = [], b""
    while True:
        frame = client.recv_frame()
        kinds.append(frame.opcode)
        if frame.opcode in (OpCode.TEXT, OpCode.CONTINUATION):
            data += frame.data
            if frame.fin:
                break
    first, last = kinds.index(OpCode.TEXT), len(kinds) - 1
    assert OpCode.PING in kinds[first:last]            # a ping inside the message
    assert data == b"alpha-beta-gamma-delta"


class RttClient:
    """A client whose pongs can be delayed: our own AutoPong is replaced by this stage."""

    def __init__(self, delay):
        self.delay = delay
        self.rtts = []


class DelayedPong(Stage):
    def __init__(self, delay):
        self.delay = delay

    def on_frame_in(self, frame):
        if frame.opcode == OpCode.PING:
            self.call_later(self.delay, self.pass_out, Frame(opcode=OpCode.PONG, data=frame.data))
        else:
            self.pass_in(frame)


@pytest.mark.parametrize("delay,low,high", [(0.2, 0.2, 2.0), (0.0, 0.0, 0.2)])
def test_round_trip_time(start_server, transport, loop, delay, low, high):
    recorder = Recorder()
    auto_ping = AutoPing(0.3)
    server = start_server(PerConnection(lambda: recorder, stages=[auto_ping, AutoPong(),
                                                                  Consolidate()]))
    client_handler = Recorder()
    conn = fastws.connect(server.url, client_handler, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: client_handler.upgraded)
    conn.replace_stage(AutoPong, DelayedPong(delay))
    assert recorder.rtts == [] and auto_ping.last_rtt is None     # no RTT before any pong
    run_until(loop, lambda: recorder.rtts, timeout=5)
    rtt = recorder.rtts[0]
    assert low < rtt < high
    conn.close()
    run_until(loop, lambda: client_handler.closed)


def test_example_end_to_end(start_server, transport, loop):
    # Seed behaviour 13: the README/examples client upgrades, sends "i am cow", gets "I AM COW".
    from examples.upper_case import UpperCaseServer, run_client
    server = start_server(UpperCaseServer())
    assert run_client(server.url, "i am cow", ssl=transport.client_ssl, loop=loop) == "I AM COW"


def test_ping_answered_with_identical_pong_repeatedly(start_server, raw_client):
    server = start_server(Recorder())
    client = raw_client(server.port)
    for payload in (b"", b"one", bytes(range(125)), b"one"):
        client.send(OpCode.PING, payload)
        pong = client.recv_frame()
        assert pong.opcode == OpCode.PONG and pong.data == payload


def test_ping_answered_at_once_inside_a_fragmented_message(start_server, raw_client):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    client = raw_client(server.port)
    client.send(OpCode.TEXT, b"half ", fin=False)
    client.send(OpCode.PING, b"are you there")
    pong = client.recv_frame()
    assert pong.opcode == OpCode.PONG and pong.data == b"are you there"
    client.send(OpCode.CONTINUATION, b"done")
    assert client.recv_message().data == b"half done"
    assert [f.opcode for f in recorder.frames] == [OpCode.TEXT]     # the handler saw no ping


# ------------------------------------------------------------------ violations and close

VIOLATIONS = [
    ("reserved opcode", lambda c: c.send(3, b"x"), CloseCode.PROTOCOL_ERROR),
    ("rsv bit", lambda c: c.send(OpCode.TEXT, b"x", rsv=2), CloseCode.PROTOCOL_ERROR),
    ("continuation first", lambda c: c.send(0, b"x"), CloseCode.PROTOCOL_ERROR),
    ("new message in fragmented one",
     lambda c: (c.send(OpCode.TEXT, b"a", fin=False), c.send(OpCode.TEXT, b"b")),
     CloseCode.PROTOCOL_ERROR),
    ("big ping", lambda c: c.send_raw(bytes([0x89, 0xFE, 0, 126]) + b"\0" * 130),
     CloseCode.PROTOCOL_ERROR),
    ("fragmented ping", lambda c: c.send(OpCode.PING, b"x", fin=False), CloseCode.PROTOCOL_ERROR),
    ("bad utf-8", lambda c: c.send(OpCode.TEXT, b"\xff"), CloseCode.INVALID_DATA),
    ("bad utf-8 in first fragment",
     lambda c: c.send(OpCode.TEXT, b"ok\xed\xa0\x80", fin=False), CloseCode.INVALID_DATA),
    ("bad close code", lambda c: c.send(OpCode.CLOSE, (999).to_bytes(2, "big")),
     CloseCode.PROTOCOL_ERROR),
    ("bad close reason", lambda c: c.send(OpCode.CLOSE, b"\x03\xe8\xff"), CloseCode.INVALID_DATA),
    ("one-byte close", lambda c: c.send(OpCode.CLOSE, b"\x03"), CloseCode.PROTOCOL_ERROR),
]


@pytest.mark.parametrize("name,act,code", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violation_closes_with_code_and_server_keeps_serving(start_server, raw_client,
                                                             name, act, code):
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    client = raw_client(server.port)
    act(client)
    assert client.expect_close()[0] == code
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(code, recorder.closed[0][1])]
    fresh = raw_client(server.port)
    fresh.send(OpCode.TEXT, b"still here")
    assert fresh.recv_message().data == b"still here"


def test_server_close_waits_for_reply_then_times_out(start_server, raw_client):
    recorder = Recorder()
    server = start_server(recorder, close_timeout=0.3)
    client = raw_client(server.port)
    wait_for(lambda: recorder.conns)
    server.call(recorder.conns[0].close, 4000, "bye")
    frame = client.recv_frame()
    assert frame.opcode == OpCode.CLOSE and fastws.parse_close(frame.data) == (4000, "bye")
    wait_for(lambda: recorder.closed, timeout=3)       # the client never answered
    assert recorder.closed == [(4000, "bye")]


def test_abrupt_disconnect_reports_1006_once(start_server, raw_client):
    recorder = Recorder()
    server = start_server(recorder)
    client = raw_client(server.port)
    wait_for(lambda: recorder.conns)
    client.close()
    wait_for(lambda: recorder.closed)
    assert recorder.closed[0][0] == CloseCode.ABNORMAL and len(recorder.closed) == 1
    assert server.call(lambda: len(server.server.connections)) == 0


class Exploding:
    def on_frame(self, conn, frame):
        if frame.data == b"boom":
            raise RuntimeError("handler bug")
        conn.send(Frame(opcode=frame.opcode, data=frame.data))


def test_handler_exception_closes_that_connection_with_1011(start_server, raw_client, caplog):
    server = start_server(Exploding())
    bystander = raw_client(server.port)
    victim = raw_client(server.port)
    victim.send(OpCode.TEXT, b"boom")
    assert victim.expect_close()[0] == CloseCode.INTERNAL_ERROR
    bystander.send(OpCode.TEXT, b"fine")
    assert bystander.recv_message().data == b"fine"
    assert "handler bug" in caplog.text


# ------------------------------------------------------------------ client side

def test_send_misuse_raises_clear_errors(start_server, transport, loop):
    server = start_server(Recorder(echo=True))
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop)
    with pytest.raises(ConnectionError, match="cannot send"):
        conn.send_text("before the handshake")
    run_until(loop, lambda: client.upgraded)
    with pytest.raises(TypeError, match=r"takes a fastws\.Frame, not bytes: send_binary\(\)"):
        conn.send(b"not a Frame")
    with pytest.raises(TypeError, match=r"not str: send_text\(\)"):
        conn.send("not a Frame")
    with pytest.raises(TypeError, match="send_binary"):
        conn.send_text(b"not a str")
    with pytest.raises(TypeError, match="send_text"):
        conn.send_binary("not bytes")
    with pytest.raises(ValueError, match="control frames"):
        conn.send(Frame(opcode=OpCode.PING, data=b"x" * 126))
    with pytest.raises(ValueError, match="control frames"):
        conn.send(Frame(fin=False, opcode=OpCode.PING, data=b""))
    # None of that reached the wire: the connection still works.
    conn.send_binary(memoryview(b"ok"))
    run_until(loop, lambda: client.frames)
    assert client.frames[0].data == b"ok"
    conn.close()
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == CloseCode.NORMAL


def test_client_close_handshake_and_on_closed_once(start_server, transport, loop):
    server_side = Recorder(echo=True)
    server = start_server(server_side)
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: client.upgraded)
    conn.send_text("ping?")
    run_until(loop, lambda: client.frames)
    assert client.frames[0].data == b"ping?"
    conn.close(4001, "client done")
    run_until(loop, lambda: client.closed)
    assert client.closed == [(4001, "client done")]
    wait_for(lambda: server_side.closed)
    assert server_side.closed == [(4001, "client done")]
    assert conn.closed
    with pytest.raises(ConnectionError):
        conn.send_text("too late")


def test_client_sends_large_messages_back_to_back_intact(start_server, transport, loop):
    # Large client frames are masked into a reused buffer and what the kernel does not take
    # at once is queued: several in a row, bigger than the socket buffer, must all arrive
    # whole and in order, and a small one queued behind them must not overtake them.
    server_side = Recorder(echo=True)
    server = start_server(server_side)
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop,
                          max_message_size=None, max_frame_size=None)
    run_until(loop, lambda: client.upgraded)
    sizes = [64 * 1024, 3 * 1024 * 1024, 1024 * 1024 + 7, 4 * 1024 * 1024, 200 * 1024]
    sent = [bytes([i + 1]) * size for i, size in enumerate(sizes)]
    for payload in sent:
        conn.send_binary(payload)
    conn.send_text("last")
    run_until(loop, lambda: len(client.frames) == len(sent) + 1, timeout=30)
    assert [f.data for f in client.frames[:-1]] == sent
    assert client.frames[-1].data == b"last"
    conn.close()
    run_until(loop, lambda: client.closed)
    assert client.closed[0][0] == CloseCode.NORMAL


def test_user_stage_sees_both_directions_and_can_be_removed(start_server, transport, loop):
    class Tagger(Stage):
        def on_frame_in(self, frame):
            frame.data = b"in:" + frame.data
            self.pass_in(frame)

        def on_frame_out(self, frame):
            frame.data = b"out:" + frame.data
            self.pass_out(frame)

    server = start_server(Recorder(echo=True))
    client = Recorder()
    conn = fastws.connect(server.url, client, ssl=transport.client_ssl, loop=loop)
    run_until(loop, lambda: client.upgraded)
    tagger = Tagger()
    conn.add_stage(tagger, index=len(conn.stages))       # nearest the handler
    assert conn.stages[-1] is tagger and tagger.conn is conn
    conn.send_binary(b"x")
    run_until(loop, lambda: client.frames)
    assert client.frames[0].data == b"in:out:x"
    conn.remove_stage(Tagger)
    assert tagger.conn is None and Tagger not in map(type, conn.stages)
    conn.send_binary(b"y")
    run_until(loop, lambda: len(client.frames) == 2)
    assert client.frames[1].data == b"y"
    conn.close()
    run_until(loop, lambda: client.closed)


def _reset(client) -> None:
    """Drop the TCP connection with a reset (RST), as a crashed peer's kernel does."""
    sock = client.sock
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_peer_reset_fails_that_connection_only(start_server, raw_client, transport):
    # The reset reaches the server's read (which runs in C for a plain-TCP connection):
    # that connection is reported closed with 1006 and the error, the others go on.
    # (Through TLS, Python's ssl module reports a reset as an unclean EOF: no error.)
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    other = raw_client(server.port)
    victim = raw_client(server.port)
    victim.send(OpCode.TEXT, b"before the reset")
    assert victim.recv_message().data == b"before the reset"
    _reset(victim)
    wait_for(lambda: recorder.closed)
    assert recorder.closed[0][0] == 1006
    failed = [conn for conn in recorder.conns if conn.closed]
    assert len(failed) == 1
    if transport.name == "clear":
        assert isinstance(failed[0].error, ConnectionResetError)
        assert recorder.closed[0][1].startswith("connection lost")
    other.send(OpCode.BINARY, b"still here")
    assert other.recv_message().data == b"still here"


def test_sending_to_a_reset_peer_closes_with_1006(start_server, raw_client):
    # The server keeps sending after the peer is gone, and does not read (so only a send
    # can see the reset): the failed send (EPIPE or ECONNRESET) closes the connection
    # once, with 1006; nothing raises into the handler.
    class Streamer(Recorder):
        def on_upgraded(self, conn):
            super().on_upgraded(conn)
            conn.pause_reading()
            self.tick(conn)

        def tick(self, conn):
            if conn.is_open:
                conn.send_binary(b"x" * 1000)
                conn.call_later(0.001, self.tick, conn)

    recorder = Streamer()
    server = start_server(recorder)
    client = raw_client(server.port)
    client.recv_message()
    _reset(client)
    wait_for(lambda: recorder.closed)
    assert recorder.closed == [(1006, recorder.closed[0][1])]
    assert recorder.closed[0][1].startswith("connection lost")
    assert isinstance(recorder.conns[0].error, OSError)


def test_the_default_chain_has_its_switches(start_server, raw_client):
    """The default chain is set up without stage objects, but it is [AutoPong(),
    Consolidate()] to whoever looks: found, and removable (pings then reach the handler)."""
    recorder = Recorder()
    server = start_server(recorder)
    client = raw_client(server.port)
    wait_for(lambda: recorder.upgraded)
    conn = recorder.conns[0]
    assert isinstance(conn.find_stage(AutoPong), AutoPong)
    assert isinstance(conn.find_stage(Consolidate), Consolidate)
    client.send(OpCode.PING, b"answered")
    assert client.recv_frame().data == b"answered"           # the protocol's pong
    removed = []
    conn.loop.call_soon_threadsafe(lambda: removed.append(conn.remove_stage(AutoPong)))
    wait_for(lambda: removed)
    assert conn.find_stage(AutoPong) is None
    client.send(OpCode.PING, b"for the handler")
    wait_for(lambda: any(f.opcode == OpCode.PING for f in recorder.frames))
    assert [f.data for f in recorder.frames if f.opcode == OpCode.PING] == [b"for the handler"]


class EchoKeepingSome(Recorder):
    """Echoes each message as `python -m fastws echo` does (the received frame goes back
    out) and keeps the payload of every message whose first byte is 1."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[bytes] = []

    def on_upgraded(self, conn):
        super().on_upgraded(conn)
        # A small send buffer: most of each echo waits in the write queue and leaves it
        # later, once the client reads (the transport's side of the reuse).
        conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)

    def on_frame(self, conn, frame):
        if frame.data[:1] == b"\x01":
            self.kept.append(frame.data)
        conn.send(frame)


def test_echoed_large_payloads_stay_intact_when_buffers_are_reused(start_server, raw_client,
                                                                   spares):
    """A large received payload that nothing references once its echo is sent is reused for
    the next one (fastws/_codec.pyx, spare payloads): every echo and every payload the
    handler kept must still be exactly what was sent."""
    spares(400_000)           # one at a time: what is kept is what the next payload reuses
    handler = EchoKeepingSome()
    server = start_server(handler)
    clients = [raw_client(server.port) for _ in range(3)]
    for client in clients:        # and a small receive buffer, for the same reason
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sent = []
    for round_ in range(4):
        # Each client one message at a time (its echo goes out at once), then a burst
        # (the echoes queue up behind each other and leave the queue later).
        for i, client in enumerate(clients):
            data = bytes([round_ % 2]) + os.urandom(300_000 + 1000 * i + round_)
            sent.append(data)
            client.send(OpCode.BINARY, data)
            assert client.recv_message().data == data
        burst = [bytes([(round_ + i) % 2]) + os.urandom(280_000 + 7 * i) for i in range(6)]
        sent += burst
        clients[round_ % 3].send_raw(b"".join(
            encode_frame(OpCode.BINARY, data, True, 0, i + 1) for i, data in enumerate(burst)))
        assert [clients[round_ % 3].recv_message().data for _ in burst] == burst
    expected = [data for data in sent if data[0] == 1]
    wait_for(lambda: len(handler.kept) == len(expected))
    assert sorted(handler.kept) == sorted(expected)


def test_a_connection_failed_while_the_peer_sends_still_delivers_its_close_frame(
        start_server, raw_client):
    """The server fails the connection (invalid UTF-8, 1007) at the start of a 2 MB frame
    and the client goes on sending all of it and more: the server half-closes and reads
    (and drops) the rest, TLS with close_notify first, so that its close frame is not
    destroyed by the reset that closing with unread input would make the kernel send."""
    server = start_server(Recorder())
    client = raw_client(server.port)
    frame = encode_frame(OpCode.TEXT, b"\xff" + b"a" * 2_000_000, True, 0, 7)
    client.send_raw(frame)                              # all of it: the server drains it
    client.send(OpCode.BINARY, b"x" * 100_000)
    frame = client.recv_frame()
    assert frame.opcode == OpCode.CLOSE
    assert parse_close(frame.data)[0] == CloseCode.INVALID_DATA
    # Then a clean end: EOF (over TLS, close_notify then EOF), never a reset.
    client.sock.settimeout(5)
    assert client.sock.recv(65536) == b""


def test_large_payloads_arrive_whole_and_checked(start_server, raw_client):
    """Payloads of 64 KiB and more are read straight into their bytes object (no read buffer
    in between, fastws/_parser.pxi payload_room): every byte must still be unmasked, in order,
    across reads that end anywhere; text still checked as its bytes arrive."""
    recorder = Recorder(echo=True)
    server = start_server(recorder)
    client = raw_client(server.port)
    big = os.urandom(3 * 1024 * 1024 + 7)            # many reads, an odd end
    client.send(OpCode.BINARY, big)
    assert client.recv_message().data == big
    text = ("é" * 300_000 + "end").encode()            # 2-byte characters split across reads
    client.send(OpCode.TEXT, text[:200_001], fin=False)
    client.send(OpCode.CONTINUATION, text[200_001:])
    assert client.recv_message().data == text
    # Back to back, so that one read ends a payload and begins the frames after it.
    burst = [os.urandom(n) for n in (300_000, 10, 700_001, 65_536, 3, 1_000_000)]
    client.send_raw(b"".join(encode_frame(OpCode.BINARY, data, True, 0, 0x1234567 * i + 1)
                             for i, data in enumerate(burst)))
    assert [client.recv_message().data for _ in burst] == burst
    # Invalid UTF-8 far inside a large frame: 1007 at once, not at the frame's end. The frame
    # is sent only up to its bad byte: the answer cannot wait for the rest, and the server
    # has read all there is when it closes (unread input would make the close a reset).
    frame = encode_frame(OpCode.TEXT, b"a" * 500_000 + b"\xff" + b"a" * 500_000, True, 0, 7)
    header = 2 + 8 + 4                                  # 64-bit length, masking key
    client.send_raw(frame[:header + 500_001])
    assert client.expect_close()[0] == CloseCode.INVALID_DATA
