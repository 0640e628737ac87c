"""TLS: wss:// with an ssl.SSLContext on each side, certificates from trustme.

1. In process: serve(..., ssl=server_context) and connect("wss://...", ssl=client_context).
2. The command line: certificate files for `python -m fastws echo --certfile F --keyfile F`,
   and a client that trusts the test CA through `cafile`.

trustme makes a throwaway CA for tests (pip install trustme); in production load real
files with context.load_cert_chain(certfile, keyfile).

Run:  python examples/tls.py
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import tempfile

import trustme

import fastws
from fastws import Connection, Frame, OpCode


class Echo:
    def on_frame(self, conn: Connection, frame: Frame) -> None:
        conn.send(Frame(opcode=frame.opcode, data=frame.data))


class AskOnce:
    def __init__(self, text: str) -> None:
        self.text = text
        self.answer: str | None = None
        self.closed: tuple[int, str] | None = None
        self.tls_version: str | None = None

    def on_upgraded(self, conn: Connection) -> None:
        sock = conn.socket
        self.tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        conn.send_text(self.text)

    def on_frame(self, conn: Connection, frame: Frame) -> None:
        if frame.opcode == OpCode.TEXT:
            self.answer = frame.string_data
            conn.close()

    def on_closed(self, conn: Connection, code: int, reason: str) -> None:
        self.closed = (code, reason)
        conn.loop.stop()


def ask(url: str, context: ssl.SSLContext, loop: fastws.Loop, text: str) -> AskOnce:
    client = AskOnce(text)
    fastws.connect(url, client, ssl=context, loop=loop)
    timer = loop.call_later(10, loop.stop)
    loop.run()
    timer.cancel()
    return client


def in_process(ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()      # verifies the chain and the host name
    ca.configure_trust(client_context)

    loop = fastws.Loop()
    server = fastws.serve(Echo(), "127.0.0.1", 0, ssl=server_context, loop=loop)
    client = ask(f"wss://127.0.0.1:{server.port}/", client_context, loop, "over TLS")
    server.close()
    loop.close()
    print(f"in process: {client.answer!r} over {client.tls_version}, closed {client.closed}")
    assert client.answer == "over TLS" and client.closed is not None and client.closed[0] == 1000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command_line(ca: trustme.CA) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        certfile, keyfile, cafile = (os.path.join(tmp, name)
                                     for name in ("cert.pem", "key.pem", "ca.pem"))
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(keyfile)
        with open(certfile, "wb") as f:
            for blob in cert.cert_chain_pems:            # the leaf, then intermediates
                f.write(blob.bytes())
        ca.cert_pem.write_to_path(cafile)

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "fastws", "echo", "--port", str(port),
             "--certfile", certfile, "--keyfile", keyfile],
            stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            print("command line:", server.stdout.readline().strip())   # ready once printed
            context = ssl.create_default_context(cafile=cafile)
            loop = fastws.Loop()
            client = ask(f"wss://127.0.0.1:{port}/", context, loop, "hello echo")
            loop.close()
        finally:
            server.terminate()
            server.wait(10)
        print(f"command line: {client.answer!r}, closed {client.closed}")
        assert client.answer == "hello echo"


def main() -> None:
    ca = trustme.CA()
    in_process(ca)
    command_line(ca)


if __name__ == "__main__":
    main()
