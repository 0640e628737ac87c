"""The server as a plain HTTP/1.1 server: keep-alive, bodies, pipelining, errors, and
HTTP requests side by side with WebSocket upgrades, in the clear and under TLS."""

from __future__ import annotations

import base64
import http.client
import os
import socket
import ssl

import pytest
from conftest import TIMEOUT, Recorder, wait_for

import fastws
from fastws import OpCode, Response, encode_frame


class HttpHandler:
    """Answers "METHOD target body-length"; upgrades WebSocket requests and echoes messages.

    /missing gets a 404, /boom raises. Records every connection that sent a request.
    """

    def __init__(self) -> None:
        self.conns: list[fastws.Connection] = []
        self.requests: list[fastws.Request] = []
        self.frames: list[fastws.Frame] = []

    def on_request(self, conn, request):
        if not any(c is conn for c in self.conns):
            self.conns.append(conn)
        self.requests.append(request)
        if request.upgrade:
            conn.upgrade(fastws.accept(request))
            return
        if request.path == "/boom":
            raise RuntimeError("the handler failed")
        if request.path == "/missing":
            conn.respond(Response.text(404, "no such page"))
            return
        if request.method == "HEAD":
            # The handler decides: same headers as the GET would have, no body.
            length = len(f"GET {request.target} 0")
            conn.respond(Response(200, [("Content-Type", "text/plain; charset=utf-8"),
                                        ("Content-Length", str(length))]))
            return
        conn.respond(Response.text(200, f"{request.method} {request.target} "
                                        f"{len(request.body)}"))

    def on_frame(self, conn, frame):
        self.frames.append(frame)
        if frame.opcode in (OpCode.TEXT, OpCode.BINARY):
            conn.send(fastws.Frame(opcode=frame.opcode, data=frame.data))


def http_connection(server, transport) -> http.client.HTTPConnection:
    if transport.client_ssl is not None:
        return http.client.HTTPSConnection("127.0.0.1", server.port, timeout=TIMEOUT,
                                           context=transport.client_ssl)
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)


def get(connection, method, target, body=None, headers=None):
    connection.request(method, target, body=body, headers=headers or {})
    response = connection.getresponse()
    return response.status, response.read(), response


def open_socket(port, transport) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    if transport.client_ssl is not None:
        sock = transport.client_ssl.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


class ResponseReader:
    """Reads HTTP responses framed by Content-Length off a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def read(self, *, to_head: bool = False,
             version: str = "HTTP/1.1") -> tuple[int, dict[str, str], bytes]:
        """The next response; `to_head=True` for the answer to a HEAD request (no body)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a full response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        answered, status, _ = status_line.split(" ", 2)
        assert answered in ("HTTP/1.1", version), status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if to_head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise ConnectionError("closed inside a response body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status), headers, body

    def at_eof(self) -> bool:
        """True when the server closed the connection (and sent nothing more)."""
        while True:
            if self.buffer:
                return False
            if not self._fill():
                return True


def upgrade_request(key: str | None = "dGhlIHNhbXBsZSBub25jZQ==", version: str = "13") -> bytes:
    lines = ["GET /chat HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Version: {version}"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --------------------------------------------------------------------------- plain HTTP


def test_keep_alive_reuses_one_connection(start_server, transport):
    handler = HttpHandler()
    server = start_server(handler)
    connection = http_connection(server, transport)
    try:
        assert get(connection, "GET", "/")[:2] == (200, b"GET / 0")
        first_sock = connection.sock
        for i in range(4):
            status, body, response = get(connection, "GET", f"/page/{i}?q={i}")
            assert status == 200
            assert body == f"GET /page/{i}?q={i} 0".encode()
            assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
            assert not response.will_close
            assert connection.sock is first_sock, "http.client had to reconnect"
    finally:
        connection.close()
    assert len(handler.requests) == 5
    assert len(handler.conns) == 1, "the server saw more than one connection"


def test_post_bodies_content_length_and_chunked(start_server, transport):
    handler = HttpHandler()
    server = start_server(handler)
    connection = http_connection(server, transport)
    try:
        status, body, _ = get(connection, "POST", "/form", body=b"a=1&b=22")
        assert (status, body) == (200, b"POST /form 8")
        # An iterable body without Content-Length goes out chunked.
        chunks = [b"x" * 1000, b"", b"y" * 5000, b"z"]
        status, body, _ = get(connection, "POST", "/upload", body=iter(chunks))
        assert (status, body) == (200, b"POST /upload 6001")
        status, body, _ = get(connection, "PUT", "/big", body=os.urandom(200_000))
        assert (status, body) == (200, b"PUT /big 200000")
        status, body, _ = get(connection, "GET", "/after")
        assert (status, body) == (200, b"GET /after 0")
    finally:
        connection.close()
    assert len(handler.conns) == 1
    posted = [r for r in handler.requests if r.method == "POST"]
    assert posted[0].body == b"a=1&b=22"
    assert posted[1].body == b"".join(chunks)
    assert "transfer-encoding" in posted[1].headers


def test_pipelined_requests_answered_in_order(start_server, transport):
    handler = HttpHandler()
    server = start_server(handler)
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /four HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nhi\r\n0\r\n\r\n"
            b"GET /five HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reader = ResponseReader(sock)
        answers = [reader.read() for _ in range(5)]
        assert [(status, body) for status, _, body in answers] == [
            (200, b"GET /one 0"),
            (200, b"POST /two 3"),
            (404, b"no such page"),
            (200, b"POST /four 2"),
            (200, b"GET /five 0"),
        ]
        assert answers[-1][1].get("connection") == "close"
        assert reader.at_eof(), "the server kept the connection open after Connection: close"
    finally:
        sock.close()
    assert [r.path for r in handler.requests] == ["/one", "/two", "/missing", "/four", "/five"]


def test_head_and_404_as_the_handler_decides(start_server, transport):
    server = start_server(HttpHandler())
    connection = http_connection(server, transport)
    try:
        status, body, response = get(connection, "HEAD", "/doc")
        assert (status, body) == (200, b"")
        assert response.getheader("Content-Length") == str(len(b"GET /doc 0"))
        status, body, _ = get(connection, "GET", "/missing")
        assert (status, body) == (404, b"no such page")
        # Still the same keep-alive connection, still in sync.
        status, body, _ = get(connection, "GET", "/doc")
        assert (status, body) == (200, b"GET /doc 0")
    finally:
        connection.close()


def test_head_response_never_carries_a_body(start_server, transport):
    class SameForHead:
        def on_request(self, conn, request):
            conn.respond(Response.text(200, f"{request.method} page"))

    server = start_server(SameForHead())
    sock = open_socket(server.port, transport)
    try:
        # http.client would hide the stray bytes (it drops a response's read buffer), so
        # read the wire: a HEAD answer ends at its head (RFC 9110 9.3.2, RFC 9112 6.3).
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = ResponseReader(sock)
        status, headers, _ = reader.read(to_head=True)
        assert status == 200
        assert headers["content-length"] == str(len(b"HEAD page"))
        assert reader.read()[::2] == (200, b"GET page")
    finally:
        sock.close()


def test_garbage_gets_400_and_server_keeps_serving(start_server, transport):
    server = start_server(HttpHandler())
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
        reader = ResponseReader(sock)
        status, headers, _ = reader.read()
        assert status == 400
        assert headers.get("connection") == "close"
        assert reader.at_eof()
    finally:
        sock.close()
    connection = http_connection(server, transport)
    try:
        assert get(connection, "GET", "/still-here")[:2] == (200, b"GET /still-here 0")
    finally:
        connection.close()


def test_exception_in_on_request_gives_500(start_server, transport):
    server = start_server(HttpHandler())
    connection = http_connection(server, transport)
    try:
        status, _, response = get(connection, "GET", "/boom")
        assert status == 500
        assert response.will_close
    finally:
        connection.close()
    connection = http_connection(server, transport)
    try:
        assert get(connection, "GET", "/fine")[:2] == (200, b"GET /fine 0")
    finally:
        connection.close()


# --------------------------------------------------------------------------- upgrade requests


def test_upgrade_without_key_gets_400(start_server, transport):
    handler = HttpHandler()
    server = start_server(handler)
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(upgrade_request(key=None))
        reader = ResponseReader(sock)
        status, _headers, body = reader.read()
        assert status == 400
        assert b"Sec-WebSocket-Key" in body
        assert reader.at_eof()
    finally:
        sock.close()
    assert not handler.frames


def test_upgrade_with_version_8_gets_426(start_server, transport):
    server = start_server(HttpHandler())
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(upgrade_request(version="8"))
        reader = ResponseReader(sock)
        status, headers, _ = reader.read()
        assert status == 426
        assert headers.get("sec-websocket-version") == "13"
        assert "sec-websocket-accept" not in headers
    finally:
        sock.close()


def test_default_handler_404s_http_and_upgrades_websockets(start_server, transport, raw_client):
    recorder = Recorder(echo=True)       # no on_request
    server = start_server(recorder)
    connection = http_connection(server, transport)
    try:
        status, _, _ = get(connection, "GET", "/")
        assert status == 404
        status, _, _ = get(connection, "GET", "/other")
        assert status == 404
    finally:
        connection.close()
    client = raw_client(server.port)
    client.send(OpCode.TEXT, b"hello")
    echoed = client.recv_message()
    assert (echoed.opcode, bytes(echoed.data)) == (OpCode.TEXT, b"hello")
    wait_for(lambda: recorder.upgraded == 1)


def test_keep_alive_http_beside_websockets(start_server, transport, raw_client):
    handler = HttpHandler()
    server = start_server(handler)
    connection = http_connection(server, transport)
    try:
        assert get(connection, "GET", "/before")[:2] == (200, b"GET /before 0")
        ws = raw_client(server.port, path="/ws")
        ws.send(OpCode.TEXT, b"first")
        assert bytes(ws.recv_message().data) == b"first"
        # HTTP on the keep-alive connection while the WebSocket is open.
        assert get(connection, "POST", "/during", body=b"12345")[:2] == \
            (200, b"POST /during 5")
        second_ws = raw_client(server.port, path="/ws2")
        assert get(connection, "GET", "/during2")[:2] == (200, b"GET /during2 0")
        ws.send(OpCode.BINARY, b"\x00second")
        frame = ws.recv_message()
        assert (frame.opcode, bytes(frame.data)) == (OpCode.BINARY, b"\x00second")
        second_ws.send(OpCode.TEXT, b"other socket")
        assert bytes(second_ws.recv_message().data) == b"other socket"
        assert get(connection, "GET", "/after")[:2] == (200, b"GET /after 0")
    finally:
        connection.close()
    # one HTTP connection and two upgraded ones
    assert len(handler.conns) == 3
    http_paths = [r.path for r in handler.requests if not r.upgrade]
    assert http_paths == ["/before", "/during", "/during2", "/after"]


def test_upgrade_and_first_frame_in_one_send(start_server, transport, raw_client):
    handler = HttpHandler()
    server = start_server(handler)
    frame = encode_frame(OpCode.TEXT, b"right behind the request", True, 0,
                         int.from_bytes(os.urandom(4), "big"))
    client = raw_client(server.port, extra=frame)
    echoed = client.recv_message()
    assert (echoed.opcode, bytes(echoed.data)) == (OpCode.TEXT, b"right behind the request")
    client.send(OpCode.TEXT, b"and another")
    assert bytes(client.recv_message().data) == b"and another"
    wait_for(lambda: len(handler.frames) == 2)


def test_upgrade_key_must_be_16_bytes(start_server, transport):
    server = start_server(HttpHandler())
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(upgrade_request(key=base64.b64encode(b"short").decode()))
        status, _, _ = ResponseReader(sock).read()
        assert status == 400
    finally:
        sock.close()


# --------------------------------------------------------------------------- RFC 9112 rules

@pytest.mark.parametrize("head", [
    b"GET / HTTP/1.1\r\n\r\n",                                      # no Host
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",                # two
    b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",                # two, in HTTP/1.0 too
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",        # obs-fold
    b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",                          # space before the colon
    b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",              # NUL
    b"GET / HTTP/1.1\nHost: x\n\n",                                 # bare LF
])
def test_ambiguous_requests_get_400_and_the_server_goes_on(start_server, transport, head):
    handler = HttpHandler()
    server = start_server(handler)
    sock = open_socket(server.port, transport)
    try:
        sock.sendall(head)
        reader = ResponseReader(sock)
        status, headers, _ = reader.read()
        assert status == 400 and headers.get("connection") == "close"
        assert reader.at_eof()
    finally:
        sock.close()
    assert handler.requests == []
    connection = http_connection(server, transport)      # others are still served
    try:
        assert get(connection, "GET", "/ok")[:2] == (200, b"GET /ok 0")
    finally:
        connection.close()


def test_http_1_0_keep_alive_is_kept_as_asked(start_server, transport):
    handler = HttpHandler()
    server = start_server(handler)
    sock = open_socket(server.port, transport)
    try:
        reader = ResponseReader(sock)
        for i in range(3):
            sock.sendall(f"GET /{i} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n".encode())
            status, headers, body = reader.read(version="HTTP/1.0")
            assert (status, body) == (200, f"GET /{i} 0".encode())
            assert headers.get("connection", "").lower() == "keep-alive"
        sock.sendall(b"GET /last HTTP/1.0\r\n\r\n")            # no keep-alive: the last one
        assert reader.read(version="HTTP/1.0")[2] == b"GET /last 0"
        assert reader.at_eof()
    finally:
        sock.close()
    assert len(handler.conns) == 1
