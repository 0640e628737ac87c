"""Fuzz target: the HTTP request parser, the server conversation and the WebSocket opening
handshake.

    python fuzz/fuzz_http.py -max_total_time=600
    python fuzz/fuzz_http.py -runs=5000

Arbitrary bytes, fed in fuzzer-chosen chunks, may only end in requests or an HttpError
(whose status is a 4xx/5xx the server can answer with); every upgrade request either
gets a well-formed 101 from fastws.accept or a HandshakeError with 400, 405 or 426;
every error response encodes. The same chunks through a ServerConversation, each request
answered (upgrades accepted or declined), give only HTTP/1.1 answers or an HttpError that
reject() answers, and never a RuntimeError.
"""

import sys

import atheris

with atheris.instrument_imports():
    from fastws.handshake import HandshakeError, accept, accept_key
    from fastws.http import HttpError, RequestParser, Response
    from fastws.http1 import ServerConversation
    from fastws.limits import Limits

MAX_HELD = 256
LIMITS = Limits(max_header_size=4096, max_headers=32, max_body_size=4096, max_frame_size=MAX_HELD)
SWITCH = Response(101, {"Upgrade": "websocket", "Connection": "Upgrade"})

SEED_REQUEST = (b"GET /chat?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\n\r\n")


def check(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    step = provider.ConsumeIntInRange(1, 128)
    use_seed = provider.ConsumeBool()
    payload = provider.ConsumeBytes(provider.remaining_bytes())
    if use_seed:   # mutate around a valid upgrade so the handshake checks get exercised
        cut = len(payload) % (len(SEED_REQUEST) + 1)
        payload = SEED_REQUEST[:cut] + payload + SEED_REQUEST[cut:]

    chunks = [payload[start:start + step] for start in range(0, len(payload), step)]
    converse(chunks)
    parser = RequestParser(max_header_size=4096, max_headers=32, max_body_size=4096)
    requests = []
    try:
        for chunk in chunks:
            requests += parser.feed(chunk)
            if parser.upgraded:
                break
    except HttpError as error:
        assert 400 <= error.status <= 599, error.status
        assert error.response().encode(keep_alive=False).startswith(b"HTTP/1.1 ")
    for request in requests:
        assert request.method and request.target
        if not request.upgrade:
            continue
        try:
            response = accept(request)
        except HandshakeError as error:
            assert error.status in (400, 405, 426), error.status
            assert error.response().encode(keep_alive=False).startswith(b"HTTP/1.1 4")
        else:
            assert response.status == 101
            key = request.headers.get("sec-websocket-key")
            assert response.headers.get("sec-websocket-accept") == accept_key(key)
            response.encode()


def converse(chunks: list[bytes]) -> None:
    conv = ServerConversation(LIMITS)
    for chunk in chunks:
        try:
            conv.receive_data(chunk)
        except HttpError as error:
            assert 400 <= error.status <= 599, error.status
            assert conv.reject(error.response()).startswith(b"HTTP/1.1 ")
            assert conv.closing and not conv.idle
            return
        while (request := conv.next_request()) is not None:
            # the request decides the answer, so that a corpus entry always replays the same
            if request.upgrade and len(request.target) % 2:
                data, rest = conv.accept_upgrade(SWITCH)
                assert data.startswith(b"HTTP/1.1 101 ") and conv.upgraded
                assert len(rest) <= MAX_HELD + 14  # the held bytes are bounded
                return
            data = conv.respond(Response(200 + len(request.target) % 3 * 100, body=b"x"))
            assert data.startswith(b"HTTP/1.1 ")
        if conv.closing:
            return


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
