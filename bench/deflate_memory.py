"""Server memory per WebSocket connection with permessage-deflate off and on.

Starts a fastws echo server in a subprocess for each mode, opens N connections to it on
127.0.0.1 from this process, and reads the server's VmRSS (/proc/PID/status):

* base: after two warm-up connections have come and gone (imports, first-use caches);
* idle: after the N handshakes (101 received), no message yet;
* active: after every connection has sent --messages text messages of --message-size
  bytes and read each echo, so the server's compressor and decompressor have both run.

KiB per connection = (VmRSS - base) / N. The client side is raw sockets with one
precomputed (compressed, masked) frame per message, identical on every connection (each
connection's deflate stream starts fresh), so this process stays small and fast; the
echo of the first connection is inflated and compared with what was sent.

Modes (--mode, repeatable; default all):

  off       `python -m fastws echo --no-compression`: the client offers, the server declines
  default   `python -m fastws echo`: 15-bit windows, mem_level=8, context takeover
  nct       serve(compression={server,client}_no_context_takeover): fastws drops its
            compressor after every message it sends and (client_no_context_takeover)
            its decompressor after every message it receives
  medium    serve(compression={server_max_window_bits: 12, client_max_window_bits: 12,
            mem_level: 4}): 4 KiB windows, a 1/16 hash and buffers
  small     serve(compression={server_max_window_bits: 9, client_max_window_bits: 9,
            mem_level: 1}): 512-byte windows, smallest hash and buffers
  small-nct both

The echo CLI has no deflate flags, so the last three run a few lines of Python that call
fastws.serve() with the same EchoHandler (--inline runs off/default that way too).
Every client offers what browsers offer: `permessage-deflate; client_max_window_bits`.

    python bench/deflate_memory.py --connections 1000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

MODES: dict[str, dict[str, Any] | bool] = {
    "off": False,
    "default": True,
    "nct": {"server_no_context_takeover": True, "client_no_context_takeover": True},
    "medium": {"server_max_window_bits": 12, "client_max_window_bits": 12, "mem_level": 4},
    "small": {"server_max_window_bits": 9, "client_max_window_bits": 9, "mem_level": 1},
    "small-nct": {"server_max_window_bits": 9, "client_max_window_bits": 9, "mem_level": 1,
                  "server_no_context_takeover": True, "client_no_context_takeover": True},
}
CLI_MODES = {"off": ["--no-compression"], "default": []}
OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
MASK = b"\x37\xfa\x21\x3d"

INLINE_SERVER = """
import json, os, signal, sys
import fastws
from fastws.__main__ import EchoHandler
loop = fastws.Loop()
server = fastws.serve(EchoHandler(), "127.0.0.1", 0, loop=loop,
                      compression=json.loads(sys.argv[1]))
print(f"fastws echo server on ws://127.0.0.1:{server.port}/ (pid {os.getpid()})", flush=True)
signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(loop.stop))
loop.run()
"""


def message(index: int, size: int) -> bytes:
    """A JSON-looking text message of exactly `size` ASCII bytes, different per index."""
    rng = random.Random(index)
    parts = [f'{{"type":"update","seq":{index},"items":[']
    length = len(parts[0])
    while length < size:
        item = (f'{{"id":{rng.randrange(100000)},"name":"sensor-{rng.randrange(64)}",'
                f'"value":{rng.uniform(-40, 60):.2f},"unit":"{rng.choice("CFK")}",'
                f'"ok":{rng.choice(["true", "false"])}}},')
        parts.append(item)
        length += len(item)
    return "".join(parts).encode()[:size]


def frame(payload: bytes, rsv1: bool) -> bytes:
    """A masked client text frame."""
    head = bytearray([0x81 | (0x40 if rsv1 else 0)])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head += struct.pack("!BH", 0x80 | 126, n)
    else:
        head += struct.pack("!BQ", 0x80 | 127, n)
    masked = bytes(b ^ MASK[i & 3] for i, b in enumerate(payload))
    return bytes(head) + MASK + masked


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One server frame: (first byte, payload)."""
    b0, b1 = recv_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", recv_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", recv_exact(sock, 8))[0]
    return b0, recv_exact(sock, n)


def handshake(port: int) -> tuple[socket.socket, str | None]:
    """Connect and upgrade; returns the socket and the server's Sec-WebSocket-Extensions."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: {OFFER}\r\n\r\n")
                 .encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("server closed the connection during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert not rest, "unexpected bytes after the 101"
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise ConnectionError(f"upgrade refused: {lines[0]}")
    ext = None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "sec-websocket-extensions":
            ext = value.strip()
    return sock, ext


def parse_answer(ext: str | None) -> dict[str, int | bool] | None:
    if ext is None:
        return None
    name, *params = [p.strip() for p in ext.split(";")]
    assert name == "permessage-deflate", ext
    found: dict[str, int | bool] = {}
    for param in params:
        key, _, value = param.partition("=")
        found[key.strip()] = int(value) if value else True
    return found


def client_frames(answer: dict[str, Any] | None, count: int, size: int) -> list[bytes]:
    """The frames every connection sends, compressed as the agreement says."""
    frames = []
    if answer is None:
        return [frame(message(i, size), False) for i in range(count)]
    bits = int(answer.get("client_max_window_bits", 15))
    reset = "client_no_context_takeover" in answer
    compressor = None
    for i in range(count):
        if compressor is None or reset:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -bits, 8)
        data = compressor.compress(message(i, size)) + compressor.flush(zlib.Z_SYNC_FLUSH)
        frames.append(frame(data[:-4] if data.endswith(TAIL) else data, True))
    return frames


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@dataclass
class Result:
    mode: str
    connections: int
    extension: str | None
    base_kib: int = 0
    idle_kib: int = 0
    active_kib: int = 0
    after_close_kib: int = 0
    sent_bytes: int = 0
    wire_bytes: int = 0             # server->client payload bytes (compressed when agreed)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def idle_per_conn(self) -> float:
        return (self.idle_kib - self.base_kib) / self.connections

    @property
    def active_per_conn(self) -> float:
        return (self.active_kib - self.base_kib) / self.connections


def start_server(mode: str, inline: bool) -> tuple[subprocess.Popen[str], int]:
    if mode in CLI_MODES and not inline:
        cmd = [sys.executable, "-m", "fastws", "echo", "--port", "0", *CLI_MODES[mode]]
    else:
        cmd = [sys.executable, "-c", INLINE_SERVER, json.dumps(MODES[mode])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if "ws://" not in line:
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    port = int(line.split("ws://127.0.0.1:")[1].split("/")[0])
    return proc, port


def exchange(sock: socket.socket, frames: list[bytes], check: list[bytes] | None,
             answer: dict[str, Any] | None) -> int:
    """Send each frame, read its echo; returns the echoes' payload bytes."""
    total = 0
    decompressor = None
    for i, data in enumerate(frames):
        sock.sendall(data)
        b0, payload = read_frame(sock)
        assert b0 & 0x0F == 1 and b0 & 0x80, f"unexpected frame {b0:#x}"
        total += len(payload)
        if check is not None:
            if b0 & 0x40:
                if decompressor is None or (answer and "server_no_context_takeover" in answer):
                    decompressor = zlib.decompressobj(-15)
                payload = decompressor.decompress(payload + TAIL)
            assert payload == check[i], "echo differs from the message sent"
    return total


def run_mode(mode: str, n: int, count: int, size: int, inline: bool, settle: float) -> Result:
    started = time.monotonic()
    proc, port = start_server(mode, inline)
    socks: list[socket.socket] = []
    try:
        pid = proc.pid
        # Warm-up: two connections through the same steps, then closed.
        sock, ext = handshake(port)
        answer = parse_answer(ext)
        frames = client_frames(answer, count, size)
        check = [message(i, size) for i in range(count)]
        exchange(sock, frames, check, answer)
        sock.close()
        sock, _ = handshake(port)
        exchange(sock, frames, None, answer)
        sock.close()
        time.sleep(settle)
        result = Result(mode, n, ext, base_kib=vm_rss_kib(pid))
        for _ in range(n):
            sock, ext2 = handshake(port)
            assert ext2 == ext, f"negotiation changed: {ext2!r} != {ext!r}"
            socks.append(sock)
        time.sleep(settle)
        result.idle_kib = vm_rss_kib(pid)
        for i, sock in enumerate(socks):
            result.wire_bytes += exchange(sock, frames, check if i == 0 else None, answer)
        result.sent_bytes = n * count * size
        time.sleep(settle)
        result.active_kib = vm_rss_kib(pid)
        for sock in socks:
            sock.close()
        socks.clear()
        deadline = time.monotonic() + 10
        previous = -1
        while time.monotonic() < deadline:   # until the server has dropped them all
            time.sleep(settle)
            current = vm_rss_kib(pid)
            if current == previous:
                break
            previous = current
        result.after_close_kib = vm_rss_kib(pid)
    finally:
        for sock in socks:
            sock.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    result.seconds = time.monotonic() - started
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", "-n", type=int, default=1000,
                        help="connections held open at once (default 1000)")
    parser.add_argument("--mode", action="append", choices=list(MODES),
                        help="mode to run (repeatable; default: all)")
    parser.add_argument("--messages", type=int, default=1,
                        help="messages each connection sends and reads back (default 1)")
    parser.add_argument("--message-size", type=int, default=1024,
                        help="bytes of JSON-like text per message (default 1024)")
    parser.add_argument("--inline", action="store_true",
                        help="run off/default with serve() too, not `python -m fastws echo`")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds to wait before each VmRSS reading (default 0.3)")
    parser.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * args.connections + 64      # ours and the server's (it inherits the limit)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            parser.error(f"need {need} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    modes = args.mode or list(MODES)
    print(f"# {args.connections} connections, {args.messages} x {args.message_size} B "
          f"text per connection, zlib {zlib.ZLIB_RUNTIME_VERSION}, Python "
          f"{sys.version.split()[0]}", flush=True)
    if not args.json:
        print(f"{'mode':<10} {'idle KiB/conn':>13} {'active KiB/conn':>15} "
              f"{'base MiB':>8} {'after close MiB':>15} {'wire B/msg':>10} {'s':>5}  "
              f"server's answer", flush=True)
    total = time.monotonic()
    for mode in modes:
        r = run_mode(mode, args.connections, args.messages, args.message_size, args.inline,
                     args.settle)
        wire = r.wire_bytes / (args.connections * args.messages)
        if args.json:
            print(json.dumps({"mode": r.mode, "connections": r.connections,
                              "messages": args.messages, "message_size": args.message_size,
                              "extension": r.extension, "base_kib": r.base_kib,
                              "idle_kib": r.idle_kib, "active_kib": r.active_kib,
                              "after_close_kib": r.after_close_kib,
                              "idle_kib_per_conn": round(r.idle_per_conn, 2),
                              "active_kib_per_conn": round(r.active_per_conn, 2),
                              "wire_bytes_per_message": round(wire, 1),
                              "seconds": round(r.seconds, 2)}), flush=True)
        else:
            print(f"{r.mode:<10} {r.idle_per_conn:>13.1f} {r.active_per_conn:>15.1f} "
                  f"{r.base_kib / 1024:>8.1f} {r.after_close_kib / 1024:>15.1f} "
                  f"{wire:>10.0f} {r.seconds:>5.1f}  {r.extension or '-'}", flush=True)
    print(f"# total {time.monotonic() - total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
