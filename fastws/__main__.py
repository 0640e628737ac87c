"""The command line: `python -m fastws echo` (an echo server), `python -m fastws chat` (a chat
relay, fastws.chat) and `python -m fastws client URL`.

Expected failures (a file that will not load, a port in use, a refused connection) end
with one line on stderr and exit status 1; mistakes on the command line are argparse
usage errors (status 2). Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any, NoReturn
from urllib.parse import urlsplit

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


class CommandError(Exception):
    """A failure the user can act on: main() prints it as one line and exits with status 1."""


def _strerror(exc: OSError) -> str:
    """The OS's words for an error, without the "[Errno N]" prefix, in a sentence's case."""
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_LIMITS = fastws.Limits()      # the defaults of the options below: one place for each

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


def _server_ssl(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(certfile, keyfile)
    except OSError as exc:           # ssl.SSLError too; neither names the file at fault
        raise CommandError(_cert_problem(certfile, keyfile, exc)) from None
    return context


def _cert_problem(certfile: str, keyfile: str | None, exc: OSError) -> str:
    """Which file is wrong, and how: OpenSSL says "PEM lib" for most of these."""
    contents = {}
    for option, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path is not None:
            try:
                with open(path, "rb") as file:
                    contents[path] = file.read()
            except OSError as error:
                return f"cannot read {option} {path}: {_strerror(error)}"
    keypath = keyfile or certfile
    if b"CERTIFICATE-----" not in contents[certfile]:
        return f"{certfile} holds no PEM certificate"
    if b"PRIVATE KEY-----" not in contents[keypath]:
        hint = "" if keyfile else " (give the key file with --keyfile)"
        return f"{keypath} holds no private key{hint}"
    if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
        return f"the private key in {keypath} does not match the certificate in {certfile}"
    files = f"{certfile} and {keyfile}" if keyfile else certfile
    return f"cannot load {files}: {exc}"


def _listen(args: argparse.Namespace, handler: object, loop: fastws.Loop,
            **options: Any) -> fastws.Server:
    """serve() for a server command; a host that does not resolve or a port that cannot
    be bound is a one-line CommandError. With --workers N it forks: the caller goes on in
    every worker process."""
    context = _server_ssl(args.certfile, args.keyfile) if args.certfile else None
    try:
        return fastws.serve(handler, args.host, args.port, ssl=context, loop=loop,
                            workers=max(1, args.workers), origins=args.origin,
                            max_message_size=args.max_message_size,
                            max_frame_size=args.max_message_size, **options)
    except socket.gaierror as exc:
        loop.close()
        raise CommandError(f"cannot resolve {args.host}: {_strerror(exc)}") from None
    except OSError as exc:
        loop.close()
        raise CommandError(f"cannot listen on {_address(args.host, args.port)}: "
                           f"{_strerror(exc)}") from None


def _serve_until_signalled(server: fastws.Server, loop: fastws.Loop, grace: float) -> int:
    """Run until SIGTERM or SIGINT, then shut down gracefully: every WebSocket gets 1001
    and close_timeout to answer; the parent of --workers waits `grace` seconds for them."""
    def shut_down(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(server.shutdown)

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    try:
        loop.run()
    finally:
        if server.is_serving:
            server.close()               # the loop ended some other way: close anyway
        loop.close()
        # In the parent of --workers: server.close() told the workers to stop; wait for them.
        if not server.join_workers(grace):
            for pid in server.worker_pids:
                os.kill(pid, signal.SIGKILL)
            server.join_workers()
    return 0


def run_echo(args: argparse.Namespace) -> int:
    loop = fastws.Loop(busy_poll=args.busy_poll * 1e-6)
    server = _listen(args, EchoHandler(), loop, compression=not args.no_compression,
                     max_connections=args.max_connections,
                     handshake_timeout=args.handshake_timeout, idle_timeout=args.idle_timeout,
                     close_timeout=args.close_timeout)
    scheme = "wss" if args.certfile else "ws"
    # One write per line: with --workers the processes share stdout.
    sys.stdout.write(f"fastws echo server on {scheme}://{server.host}:{server.port}/ "
                     f"(pid {os.getpid()})\n")
    sys.stdout.flush()
    return _serve_until_signalled(server, loop, args.close_timeout + 5)


def run_chat(args: argparse.Namespace) -> int:
    """`python -m fastws chat`: rooms are topics, linked across processes by --redis."""
    from .chat import ChatRelay
    from .topics import SlowConsumers
    pubsub = None
    if args.redis:
        try:
            pubsub = fastws.RedisPubSub(args.redis, sharded=args.sharded, cluster=args.cluster)
        except ValueError as exc:
            _usage_error(args, f"--redis: {exc}")
        except ImportError:
            raise CommandError("--redis needs hiredis: pip install 'fastws[redis]'") from None
    # Shared compression: every client's messages are compressed once per room message.
    compression = None if args.no_compression else {"server_no_context_takeover": True}
    loop = fastws.Loop(busy_poll=args.busy_poll * 1e-6)
    server = _listen(args, ChatRelay(), loop, compression=compression, pubsub=pubsub,
                     slow_consumers=SlowConsumers(args.slow_consumers, args.max_backlog))
    scheme = "wss" if args.certfile else "ws"
    sys.stdout.write(f"fastws chat server on {scheme}://{server.host}:{server.port}/ "
                     f"(pid {os.getpid()}, worker {server.worker})\n")
    sys.stdout.flush()
    return _serve_until_signalled(server, loop, 6)


class ClientHandler:
    """Prints each message; sends stdin lines (or echoes everything back with --echo)."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.upgraded = False
        self.code: int | None = None
        self.reason = ""
        self._stdin = -1         # its file descriptor, once we read it
        self._partial_line = b""
        self._polled = True      # stdin is watched by the loop (else read on call_soon)
        self._paused = False     # the write buffer is above its high water: stop reading
        self.conn: Connection | None = None    # the latest connection (after a redirect too)

    def on_upgraded(self, conn: Connection) -> None:
        self.upgraded = True
        self.conn = conn
        if not self.echo:
            self._stdin = sys.stdin.fileno()
            self._watch_stdin(conn)

    def _watch_stdin(self, conn: Connection) -> None:
        if self._polled:
            try:
                conn.loop.add_reader(self._stdin, self._read_stdin, conn)
                return
            except PermissionError:
                # epoll refuses regular files and /dev/null (`client URL < file`); reading
                # them never blocks, so read a chunk per loop turn instead.
                self._polled = False
        conn.loop.call_soon(self._read_stdin, conn)

    def _read_stdin(self, conn: Connection) -> None:
        if self._paused:
            return
        chunk = os.read(self._stdin, 65536)
        # Lines may straddle chunks: keep the unfinished one for the next read.
        lines = (self._partial_line + chunk).split(b"\n")
        self._partial_line = lines.pop() if chunk else b""
        for line in lines:
            if not conn.is_open:         # the peer closed meanwhile; on_closed ends the run
                self._stop_reading(conn)
                return
            if line or chunk:            # at the end, an empty last "line" is no line
                conn.send_text(line.removesuffix(b"\r").decode("utf-8", "replace"))
        if not chunk:
            self._stop_reading(conn)
            conn.close(CloseCode.NORMAL)
        elif not self._polled and not self._paused:   # paused: on_resume_writing goes on
            conn.loop.call_soon(self._read_stdin, conn)

    def _stop_reading(self, conn: Connection) -> None:
        if self._polled:
            conn.loop.remove_reader(self._stdin)

    # Back-pressure: a big file on stdin must not grow the write buffer without bound
    # (past max_write_buffer the connection fails with 1008).
    def on_pause_writing(self, conn: Connection) -> None:
        if not self.echo and not self._paused:
            self._paused = True
            self._stop_reading(conn)

    def on_resume_writing(self, conn: Connection) -> None:
        if self._paused:
            self._paused = False
            self._watch_stdin(conn)

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
        self.conn = conn
        conn.loop.stop()


def _client_ssl(args: argparse.Namespace) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=args.cafile)
    except OSError as exc:           # neither FileNotFoundError nor SSLError names the file
        problem = _strerror(exc) if type(exc) is not ssl.SSLError else str(exc)
        raise CommandError(f"cannot load --cafile {args.cafile}: {problem}") from None
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def run_client(args: argparse.Namespace) -> int:
    secure = urlsplit(args.url).scheme == "wss"
    if (args.cafile or args.insecure) and not secure:
        _usage_error(args, "--cafile and --insecure apply to wss:// URLs only")
    context = _client_ssl(args) if secure else None
    loop = fastws.Loop(busy_poll=args.busy_poll * 1e-6)
    handler = ClientHandler(args.echo)
    limits = {"max_message_size": args.max_message_size, "max_frame_size": args.max_message_size}
    try:
        conn = fastws.connect(args.url, handler, ssl=context, loop=loop,
                              compression=not args.no_compression,
                              proxy=None if args.no_proxy else (args.proxy or True), **limits)
    except ValueError as exc:        # the URL: a fragment, credentials, a bad port
        loop.close()
        _usage_error(args, str(exc) if args.url in str(exc) else f"{args.url!r}: {exc}")

    def close_gracefully(signum: int, _frame: object) -> None:
        # Ctrl-C is "I am done", as end of input is: a normal closing handshake.
        loop.call_soon_threadsafe((handler.conn or conn).close, CloseCode.NORMAL)

    previous = {signum: signal.signal(signum, close_gracefully)
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        loop.run()
    finally:
        loop.close()
        for signum, action in previous.items():
            signal.signal(signum, action)
    return _report_close(args, handler, handler.conn or conn)


def _report_close(args: argparse.Namespace, handler: ClientHandler, conn: Connection) -> int:
    """Say how the connection ended (on stderr) and turn it into the exit status."""
    code = handler.code if handler.code is not None else CloseCode.ABNORMAL
    error = conn.error
    if not handler.upgraded and conn.peername is None and isinstance(error, OSError):
        # The name did not resolve, or TCP itself failed: the reason says which, and where.
        raise CommandError(error.strerror or str(error))
    normal = code in (CloseCode.NORMAL, CloseCode.GOING_AWAY, CloseCode.NO_STATUS)
    if not args.echo or not normal:
        # The reason often quotes the error already ("TLS handshake failed: <error>").
        why = handler.reason
        if error is not None and str(error) not in why:
            why = f"{why}: {error}" if why else str(error)
        print(f"closed {code} {why}".rstrip(), file=sys.stderr)
    return 0 if normal else 1


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit with status 2, the command's usage and `message`, as argparse does."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


def _peer(url: str) -> str:
    """host:port of a URL that connect() accepted, for messages."""
    parts = urlsplit(url)
    default = 443 if parts.scheme == "wss" else 80
    return _address(parts.hostname or "", parts.port if parts.port is not None else default)


def _ws_url(text: str) -> str:
    """Only the scheme is checked here; connect() checks the rest (usage error too)."""
    try:
        scheme = urlsplit(text).scheme
    except ValueError as exc:        # e.g. an unclosed [ of an IPv6 address
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if scheme not in ("ws", "wss"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a WebSocket URL: it starts with ws:// or wss://")
    return text


def _tcp_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return port


EPILOG = """exit status: 0 when all went well (for the client: the connection closed with
1000, 1001 or 1005), 1 when the server cannot start or the connection fails or closes
otherwise (one line on stderr says why), 2 for a usage error."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastws",
                                     description="fastws: WebSocket echo server, chat relay "
                                                 "and client",
                                     epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"fastws {fastws.__version__}")
    parser.add_argument("-v", "--log-level", default="WARNING", type=str.upper,
                        choices=("DEBUG", "INFO", "WARNING", "ERROR"), metavar="LEVEL",
                        help="logging level: DEBUG, INFO, WARNING (default) or ERROR")
    commands = parser.add_subparsers(dest="command", required=True)

    # Each command's parser rides along in the namespace: its usage errors show its usage.
    echo = commands.add_parser("echo", help="run an echo server", epilog=EPILOG)
    echo.set_defaults(parser=echo)
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=_tcp_port, default=9001)
    echo.add_argument("--certfile", help="TLS certificate chain (PEM); serves wss://")
    echo.add_argument("--keyfile", help="TLS private key (PEM)")
    echo.add_argument("--max-message-size", type=int, default=_LIMITS.max_message_size,
                      help="largest frame and message accepted, in bytes "
                           f"(default {_LIMITS.max_message_size})")
    echo.add_argument("--no-compression", action="store_true",
                      help="do not negotiate permessage-deflate")
    echo.add_argument("--workers", type=int, default=1,
                      help="processes sharing the port with SO_REUSEPORT (default 1)")
    echo.add_argument("--max-connections", type=int, default=None,
                      help="pause accepting above this many open connections")
    echo.add_argument("--handshake-timeout", type=float, default=_LIMITS.handshake_timeout,
                      help="seconds for TLS and the first request "
                           f"(default {_LIMITS.handshake_timeout:g})")
    echo.add_argument("--idle-timeout", type=float, default=_LIMITS.idle_timeout,
                      help="seconds an idle HTTP keep-alive connection stays open "
                           f"(default {_LIMITS.idle_timeout:g})")
    echo.add_argument("--close-timeout", type=float, default=_LIMITS.close_timeout,
                      help="seconds to wait for the peer's close frame "
                           f"(default {_LIMITS.close_timeout:g})")
    echo.add_argument("--origin", action="append", default=None,
                      help="allowed Origin for WebSocket upgrades (repeatable; default: any)")
    _add_busy_poll(echo)

    chat = commands.add_parser(
        "chat", help="run a chat relay: ws://HOST:PORT/chat/ROOM; rooms span workers and "
        "machines with --redis", epilog=EPILOG)
    chat.set_defaults(parser=chat)
    chat.add_argument("--host", default="127.0.0.1")
    chat.add_argument("--port", type=_tcp_port, default=9002)
    chat.add_argument("--redis", metavar="URL",
                      help="link every worker and machine through Redis: "
                           "redis://[user:password@]host:port/db or rediss://...")
    chat.add_argument("--sharded", action="store_true",
                      help="use Redis 7 sharded pub/sub (SSUBSCRIBE/SPUBLISH)")
    chat.add_argument("--cluster", action="store_true",
                      help="--redis names a node of a Redis Cluster: route each room to the "
                           "shard that owns it (sharded pub/sub)")
    chat.add_argument("--workers", type=int, default=1,
                      help="processes sharing the port with SO_REUSEPORT (default 1)")
    chat.add_argument("--certfile", help="TLS certificate chain (PEM); serves wss://")
    chat.add_argument("--keyfile", help="TLS private key (PEM)")
    chat.add_argument("--max-message-size", type=int, default=64 * 1024,
                      help="largest message accepted, in bytes (default 64 KiB)")
    chat.add_argument("--slow-consumers", choices=("close", "drop"), default="close",
                      help="a client too far behind: close it with 1008 (default) or drop "
                           "messages for it")
    chat.add_argument("--max-backlog", type=int, default=1024 * 1024,
                      help="unsent bytes that make a client too far behind (default 1 MiB)")
    chat.add_argument("--no-compression", action="store_true",
                      help="do not negotiate permessage-deflate")
    chat.add_argument("--origin", action="append", default=None,
                      help="allowed Origin for WebSocket upgrades (repeatable; default: any)")
    _add_busy_poll(chat)

    client = commands.add_parser("client", help="connect to a WebSocket server", epilog=EPILOG)
    client.set_defaults(parser=client)
    client.add_argument("url", type=_ws_url, help="ws://HOST[:PORT]/PATH or wss://...")
    client.add_argument("--echo", action="store_true",
                        help="send every message received straight back; exit when the peer closes")
    client.add_argument("--cafile", help="CA certificates to trust for wss:// (PEM)")
    client.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    client.add_argument("--max-message-size", type=int, default=_LIMITS.max_message_size,
                        help="largest frame and message accepted, in bytes "
                             f"(default {_LIMITS.max_message_size})")
    client.add_argument("--no-compression", action="store_true",
                        help="do not offer permessage-deflate")
    proxy = client.add_mutually_exclusive_group()
    proxy.add_argument("--proxy", metavar="URL",
                       help="connect through this proxy: http://, https://, socks5://, "
                            "socks5h://, socks4:// (user:password@ for credentials); default: "
                            "from the environment (wss_proxy/ws_proxy, https_proxy, http_proxy "
                            "for ws://, all_proxy; no_proxy)")
    proxy.add_argument("--no-proxy", action="store_true",
                       help="connect directly, whatever the environment says")
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
    # fastws' own log messages start with "fastws:", so the logger's name would repeat it.
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(message)s")
    try:
        if args.command == "echo":
            if args.keyfile and not args.certfile:
                _usage_error(args, "--keyfile needs --certfile (the certificate chain)")
            return run_echo(args)
        if args.command == "chat":
            if args.keyfile and not args.certfile:
                _usage_error(args, "--keyfile needs --certfile (the certificate chain)")
            return run_chat(args)
        return run_client(args)
    except CommandError as exc:
        print(exc, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
