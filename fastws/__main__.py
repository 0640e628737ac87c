"""The command line: `python -m fastws echo` (an echo server) and `python -m fastws client URL`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import ssl
import sys
from collections.abc import Sequence

import fastws
from fastws import CloseCode, Connection, Frame, OpCode, Request, Response

ECHO_PAGE = """<!doctype html>
<meta charset="utf-8"><title>fastws echo</title>
<h1>fastws echo server</h1>
<p>This page opened a WebSocket to this server; what you type comes back.</p>
<input id="msg" value="hello" autofocus> <button id="send">send</button>
<pre id="log"></pre>
<script>
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/");
ws.onopen = () => log("open");
ws.onmessage = (event) => log("< " + event.data);
ws.onclose = (event) => log("closed " + event.code + " " + event.reason);
document.getElementById("send").onclick = () => {
  const text = document.getElementById("msg").value; ws.send(text); log("> " + text);
};
</script>
"""  # noqa: E501 (a line of the page's script)


_BINARY = int(OpCode.BINARY)   # a plain int: an enum member lookup costs ~60 ns per message


class EchoHandler:
    """Sends every text and binary message back unchanged; serves a small page on GET /."""

    def on_request(self, conn: Connection, request: Request) -> None:
        if request.upgrade:
            conn.upgrade(fastws.accept(request))
        elif request.method in ("GET", "HEAD") and request.path == "/":
            response = Response.html(200, ECHO_PAGE)
            if request.method == "HEAD":
                response.headers.set("Content-Length", str(len(response.body)))
                response.body = b""
            conn.respond(response)
        else:
            conn.respond(Response.text(404, "Not Found\n"))

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        # Whole messages arrive here (Consolidate); the same frame object goes back out
        # (the server never masks, whatever key the client used).
        if frame.opcode <= _BINARY and conn.is_open:
            conn.send(frame)

    # Back-pressure: a client that sends but does not read its echoes is not read
    # either, so the server's memory for it stays near the write buffer's high water.
    def on_pause_writing(self, conn: Connection) -> None:
        conn.pause_reading()

    def on_resume_writing(self, conn: Connection) -> None:
        conn.resume_reading()


def _server_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.certfile:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.certfile, args.keyfile)
    return context


def run_echo(args: argparse.Namespace) -> int:
    limits = {"max_message_size": args.max_message_size, "max_frame_size": args.max_message_size,
              "handshake_timeout": args.handshake_timeout, "idle_timeout": args.idle_timeout,
              "close_timeout": args.close_timeout}
    loop = fastws.Loop(busy_poll=args.busy_poll * 1e-6)
    # With --workers N, serve() forks: everything below runs in every worker process.
    server = fastws.serve(EchoHandler(), args.host, args.port, ssl=_server_ssl(args), loop=loop,
                          workers=max(1, args.workers), compression=not args.no_compression,
                          origins=args.origin, max_connections=args.max_connections, **limits)
    scheme = "wss" if args.certfile else "ws"
    # One write per line: with --workers the processes share stdout.
    sys.stdout.write(f"fastws echo server on {scheme}://{server.host}:{server.port}/ "
                     f"(pid {os.getpid()})\n")
    sys.stdout.flush()

    def shut_down(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(stop)

    deadline = 0.0

    def stop() -> None:
        # Graceful: every WebSocket gets 1001 and close_timeout to answer, then we exit.
        nonlocal deadline
        deadline = loop.time() + args.close_timeout + 0.5
        server.close()
        wait_for_connections()

    def wait_for_connections() -> None:
        if server.connections and loop.time() < deadline:
            loop.call_later(0.02, wait_for_connections)
        else:
            loop.stop()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    try:
        loop.run()
    finally:
        if server.is_serving:
            server.close()               # the loop ended some other way: close anyway
        loop.close()
        # In the parent of --workers: server.close() told the workers to stop; wait for them.
        if not server.join_workers(args.close_timeout + 5):
            for pid in server.worker_pids:
                os.kill(pid, signal.SIGKILL)
            server.join_workers()
    return 0


class ClientHandler:
    """Prints each message; sends stdin lines (or echoes everything back with --echo)."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.code: int | None = None
        self.reason = ""

    def on_upgraded(self, conn: Connection) -> None:
        if not self.echo:
            conn.loop.add_reader(sys.stdin.fileno(), self._stdin_readable, conn)

    def _stdin_readable(self, conn: Connection) -> None:
        chunk = os.read(sys.stdin.fileno(), 65536)
        if not chunk:
            conn.loop.remove_reader(sys.stdin.fileno())
            if conn.is_open:
                conn.close(CloseCode.NORMAL)
            return
        for line in chunk.decode("utf-8", "replace").splitlines():
            if conn.is_open:
                conn.send_text(line)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if self.echo:
            if conn.is_open and frame.opcode in (OpCode.TEXT, OpCode.BINARY):
                conn.send(Frame(opcode=frame.opcode, data=frame.data))
            return
        if frame.opcode == OpCode.TEXT:
            print(frame.string_data, flush=True)
        elif frame.opcode == OpCode.BINARY:
            print(f"<binary {len(frame.data)} bytes: {bytes(frame.data[:32]).hex()}>", flush=True)

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.code, self.reason = code, reason
        conn.loop.stop()


def run_client(args: argparse.Namespace) -> int:
    context = None
    if args.url.startswith("wss:"):
        context = ssl.create_default_context(cafile=args.cafile)
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    loop = fastws.Loop(busy_poll=args.busy_poll * 1e-6)
    handler = ClientHandler(args.echo)
    limits = {"max_message_size": args.max_message_size, "max_frame_size": args.max_message_size}
    conn = fastws.connect(args.url, handler, ssl=context, loop=loop,
                          compression=not args.no_compression, **limits)
    try:
        loop.run()
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
    code = handler.code if handler.code is not None else CloseCode.ABNORMAL
    if not args.echo:
        detail = f": {conn.error}" if conn.error else ""
        print(f"closed {code} {handler.reason}{detail}".rstrip(), file=sys.stderr)
    return 0 if code in (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastws",
                                     description="fastws: WebSocket echo server and client")
    parser.add_argument("--version", action="version", version=f"fastws {fastws.__version__}")
    parser.add_argument("-v", "--log-level", default="WARNING",
                        help="logging level (DEBUG, INFO, WARNING, ERROR)")
    commands = parser.add_subparsers(dest="command", required=True)

    echo = commands.add_parser("echo", help="run an echo server")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=9001)
    echo.add_argument("--certfile", help="TLS certificate chain (PEM); serves wss://")
    echo.add_argument("--keyfile", help="TLS private key (PEM)")
    echo.add_argument("--max-message-size", type=int, default=16 * 1024 * 1024,
                      help="largest frame and message accepted, in bytes (default 16 MiB)")
    echo.add_argument("--no-compression", action="store_true",
                      help="do not negotiate permessage-deflate")
    echo.add_argument("--workers", type=int, default=1,
                      help="processes sharing the port with SO_REUSEPORT (default 1)")
    echo.add_argument("--max-connections", type=int, default=None,
                      help="pause accepting above this many open connections")
    echo.add_argument("--handshake-timeout", type=float, default=10.0,
                      help="seconds for TLS and the first request (default 10)")
    echo.add_argument("--idle-timeout", type=float, default=60.0,
                      help="seconds an idle HTTP keep-alive connection stays open (default 60)")
    echo.add_argument("--close-timeout", type=float, default=5.0,
                      help="seconds to wait for the peer's close frame (default 5)")
    echo.add_argument("--origin", action="append", default=None,
                      help="allowed Origin for WebSocket upgrades (repeatable; default: any)")
    _add_busy_poll(echo)

    client = commands.add_parser("client", help="connect to a WebSocket server")
    client.add_argument("url")
    client.add_argument("--echo", action="store_true",
                        help="send every message received straight back; exit when the peer closes")
    client.add_argument("--cafile", help="CA certificates to trust for wss:// (PEM)")
    client.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    client.add_argument("--max-message-size", type=int, default=16 * 1024 * 1024)
    client.add_argument("--no-compression", action="store_true",
                        help="do not offer permessage-deflate")
    _add_busy_poll(client)
    return parser


def _busy_poll_us(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 10_000.0:
        raise argparse.ArgumentTypeError("must be between 0 and 10000 microseconds")
    return value


def _add_busy_poll(parser: argparse.ArgumentParser) -> None:
    default = fastws.Loop.DEFAULT_BUSY_POLL * 1e6
    parser.add_argument("--busy-poll", type=_busy_poll_us, default=default, metavar="US",
                        help="microseconds to poll for the next event before sleeping "
                             f"(adaptive; 0 turns it off; default {default:g})")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    if args.command == "echo":
        return run_echo(args)
    return run_client(args)


if __name__ == "__main__":
    sys.exit(main())
