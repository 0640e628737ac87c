"""Tests for fastws.http1.ServerConversation, driven with bytes only: pipelining, keep-alive and
close, HEAD, upgrades declined and accepted, the bytes held behind an upgrade request, errors,
misuse and `idle`."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastws import HandshakeError, Limits, Request, Response, accept
from fastws.http import HttpError
from fastws.http1 import ServerConversation

FRAME = b"\x81\x85\x01\x02\x03\x04ig`ho"  # a masked text frame, as a client would send it
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCH = Response(101, {"Upgrade": "websocket", "Connection": "Upgrade"})
PIPELINED = (
    b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
    b"POST /four HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    b"GET /five HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
)
TEXT = b"Content-Type: text/plain; charset=utf-8\r\n"
# What the server answers to PIPELINED with tests/test_http_server.py's handler (`echo`).
PIPELINED_ANSWERS = (
    b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 10\r\n\r\nGET /one 0"
    b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 11\r\n\r\nPOST /two 3"
    b"HTTP/1.1 404 Not Found\r\n" + TEXT + b"Content-Length: 12\r\n\r\nno such page"
    b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 12\r\n\r\nPOST /four 2"
    b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 11\r\nConnection: close\r\n\r\n"
    b"GET /five 0"
)


def echo(request: Request) -> Response:
    """tests/test_http_server.py's handler: "METHOD target body-size", /missing is a 404."""
    if request.path == "/missing":
        return Response.text(404, "no such page")
    return Response.text(200, f"{request.method} {request.target} {len(request.body)}")


def converse(
    conv: ServerConversation,
    chunks: list[bytes],
    answer: Callable[[Request], Response] = echo,
) -> bytes:
    """Feed each chunk, answering every request as soon as it is handed out; all bytes sent."""
    sent = b""
    for chunk in chunks:
        conv.receive_data(chunk)
        while (request := conv.next_request()) is not None:
            sent += conv.respond(answer(request))
    return sent


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


# pipelining


def test_pipelined_answers_leave_in_request_order() -> None:
    conv = ServerConversation()
    conv.receive_data(PIPELINED)
    first = conv.next_request()
    assert first is not None and first.path == "/one"
    assert conv.awaiting is first
    # one at a time: the next request waits until this one is answered
    assert conv.next_request() is None
    sent = conv.respond(echo(first))
    while (request := conv.next_request()) is not None:
        sent += conv.respond(echo(request))
    assert sent == PIPELINED_ANSWERS
    assert conv.closing and conv.awaiting is None


def test_pipelined_one_byte_at_a_time() -> None:
    conv = ServerConversation()
    assert converse(conv, cut(PIPELINED, list(range(len(PIPELINED))))) == PIPELINED_ANSWERS
    assert conv.closing


@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=20))
def test_pipelined_any_chunking(cuts: list[int]) -> None:
    assert converse(ServerConversation(), cut(PIPELINED, cuts)) == PIPELINED_ANSWERS


def test_requests_arriving_while_one_is_awaiting_are_kept_in_order() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    first = conv.next_request()
    assert first is not None
    conv.receive_data(b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\nGET /3 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is None
    conv.respond(Response(204))
    paths = []
    while (request := conv.next_request()) is not None:
        paths.append(request.path)
        conv.respond(Response(204))
    assert paths == ["/2", "/3"]


def test_input_is_copied_out_of_the_callers_buffer() -> None:
    # the caller reads into one buffer it reuses: nothing may point into it afterwards
    buffer = bytearray(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi" + UPGRADE + FRAME)
    conv = ServerConversation()
    conv.receive_data(memoryview(buffer))
    buffer[:] = b"\x00" * len(buffer)
    post = conv.next_request()
    assert post is not None and (post.path, post.headers["host"], post.body) == ("/p", "h", b"hi")
    conv.respond(Response(204))
    assert conv.next_request() is not None
    assert conv.accept_upgrade(SWITCH)[1] == FRAME


# keep-alive and close


def test_http_1_1_keeps_the_connection_by_default() -> None:
    conv = ServerConversation()
    sent = converse(conv, [b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"])
    assert sent == b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 7\r\n\r\nGET / 0"
    assert not conv.closing and conv.idle


def test_request_connection_close_ends_the_conversation() -> None:
    conv = ServerConversation()
    conv.receive_data(
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    request = conv.next_request()
    assert request is not None and not request.keep_alive
    sent = conv.respond(Response(200, body=b"bye"))
    assert sent == b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
    assert conv.closing and not conv.idle
    # RFC 9112 9.6: nothing after it is processed, even what would be an error
    conv.receive_data(b"garbage\r\n\r\n")
    assert conv.next_request() is None


def test_response_connection_close_ends_the_conversation() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    sent = conv.respond(Response(503, {"Connection": "close"}))
    assert sent == b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    assert conv.closing
    assert conv.next_request() is None  # /b is dropped: its answer could never be read


def test_http_1_0_without_keep_alive_closes() -> None:
    conv = ServerConversation()
    sent = converse(conv, [b"GET / HTTP/1.0\r\n\r\n"])
    assert sent == (
        b"HTTP/1.1 200 OK\r\n" + TEXT + b"Content-Length: 7\r\nConnection: close\r\n\r\nGET / 0"
    )
    assert conv.closing


def test_http_1_0_keep_alive_is_kept_and_said() -> None:
    conv = ServerConversation()
    request = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    sent = converse(conv, [request, request])
    # an HTTP/1.0 client closes unless the answer says keep-alive (RFC 9112 C.2.2)
    one = (
        b"HTTP/1.1 200 OK\r\n" + TEXT + b"Connection: keep-alive\r\nContent-Length: 7\r\n\r\n"
        b"GET / 0"
    )
    assert sent == one * 2
    assert not conv.closing and conv.idle


def test_http_1_0_keep_alive_with_the_applications_own_connection_header() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET / HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
    assert conv.next_request() is not None
    sent = conv.respond(Response(204, {"Connection": "Keep-Alive"}))
    assert sent == b"HTTP/1.1 204 No Content\r\nConnection: Keep-Alive\r\n\r\n"
    assert conv.next_request() is None and not conv.closing


def test_the_applications_connection_header_gets_the_close_it_lacks() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert conv.next_request() is not None
    sent = conv.respond(Response(204, {"Connection": "keep-alive"}))
    assert sent == b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n"
    assert conv.closing


# HEAD


def test_head_answer_has_gets_headers_and_no_body() -> None:
    conv = ServerConversation()
    sent = converse(
        conv,
        [b"HEAD /doc HTTP/1.1\r\nHost: h\r\n\r\nGET /doc HTTP/1.1\r\nHost: h\r\n\r\n"],
        lambda request: Response.text(200, "the page"),
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n\r\n"
    assert sent == head + head + b"the page"


# upgrades


def test_accept_upgrade_returns_the_frames_that_followed_in_the_same_chunk() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + UPGRADE + FRAME)
    plain = conv.next_request()
    assert plain is not None and not plain.upgrade
    conv.respond(Response(204))
    request = conv.next_request()
    assert request is not None and request.upgrade and request.path == "/ws"
    data, rest = conv.accept_upgrade(SWITCH)
    assert data == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    assert rest == FRAME
    assert conv.upgraded and not conv.closing and not conv.idle and conv.awaiting is None


def test_bytes_arriving_before_the_upgrade_is_answered_are_handed_over() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE[:20])
    conv.receive_data(UPGRADE[20:] + FRAME[:3])
    assert conv.next_request() is not None
    conv.receive_data(FRAME[3:])
    conv.receive_data(FRAME)
    assert conv.accept_upgrade(SWITCH)[1] == FRAME + FRAME


def test_accept_upgrade_with_nothing_behind() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE)
    assert conv.next_request() is not None
    assert conv.accept_upgrade(SWITCH)[1] == b""


def test_declined_upgrade_goes_on_with_the_held_bytes() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE + b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b")
    request = conv.next_request()
    assert request is not None and request.upgrade
    conv.receive_data(b" HTTP/1.1\r\nHost: h\r\n\r\n")   # held too: it may be frames
    assert conv.next_request() is None
    sent = conv.respond(Response(404))
    assert sent == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    assert not conv.closing
    paths = []
    while (request := conv.next_request()) is not None:
        paths.append(request.path)
        conv.respond(Response(204))
    assert paths == ["/a", "/b"]
    assert converse(conv, [b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"]).endswith(b"GET /c 0")
    assert conv.idle


def test_declined_upgrade_then_another_upgrade_accepted() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE + UPGRADE + FRAME)
    assert conv.next_request() is not None
    conv.respond(Response(403))
    second = conv.next_request()
    assert second is not None and second.upgrade
    assert conv.accept_upgrade(SWITCH)[1] == FRAME


def test_declined_upgrade_with_a_bad_request_behind_it() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE + b"garbage\r\n\r\n")
    assert conv.next_request() is not None
    sent = conv.respond(Response(404))
    # the decline's answer, then the bad request's, and the end
    assert sent.startswith(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\nHTTP/1.1 400 Bad Request")
    assert b"Connection: close\r\n" in sent[40:]
    assert conv.closing and conv.error is not None and conv.error.status == 400


def test_declined_upgrade_with_close_drops_the_held_bytes() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE + b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    assert conv.respond(Response(400, {"Connection": "close"})).endswith(b"\r\n\r\n")
    assert conv.closing and conv.next_request() is None


def test_upgrade_request_body_is_not_handed_over() -> None:
    conv = ServerConversation()
    head = UPGRADE[:-2] + b"Content-Length: 5\r\n\r\n"
    conv.receive_data(head + b"hel")
    assert conv.next_request() is None and not conv.idle   # the body is partly received
    conv.receive_data(b"lo" + FRAME)
    request = conv.next_request()
    assert request is not None and request.body == b"hello"
    assert conv.accept_upgrade(SWITCH)[1] == FRAME


# the bytes held behind an upgrade request


@pytest.mark.parametrize("max_frame_size", [100, None])
def test_held_bytes_are_bounded(max_frame_size: int | None) -> None:
    bound = (max_frame_size or 1 << 20) + 14  # one largest frame and its header
    conv = ServerConversation(Limits(max_frame_size=max_frame_size))
    conv.receive_data(UPGRADE + b"x" * 10)
    assert conv.next_request() is not None
    conv.receive_data(b"x" * (bound - 10))            # up to the bound: kept
    with pytest.raises(HttpError) as caught:
        conv.receive_data(b"x")                       # past it: refused
    assert caught.value.status == 400
    assert conv.error is caught.value
    with pytest.raises(RuntimeError, match="reject"):
        conv.accept_upgrade(SWITCH)
    sent = conv.reject(caught.value.response())
    assert sent.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in sent
    assert conv.closing and conv.awaiting is None
    conv.receive_data(b"x" * 100)                     # closing: ignored


def test_held_bytes_bound_counts_the_tail_of_the_chunk() -> None:
    conv = ServerConversation(Limits(max_frame_size=10))
    with pytest.raises(HttpError) as caught:
        conv.receive_data(UPGRADE + b"x" * 25)
    assert caught.value.status == 400


# errors


def test_bad_request_raises_and_reject_answers_it() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    with pytest.raises(HttpError) as caught:
        conv.receive_data(b"GET / HTTP/1.1\r\n\r\n")   # no Host
    assert caught.value.status == 400
    # broken: the same error again, no more requests, only reject() answers
    with pytest.raises(HttpError) as again:
        conv.receive_data(b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert again.value is caught.value
    assert conv.next_request() is None and not conv.idle
    with pytest.raises(RuntimeError, match="reject"):
        conv.respond(Response(200))
    sent = conv.reject(caught.value.response())
    assert sent.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in sent and b"needs a Host" in sent
    assert conv.closing and conv.awaiting is None


def test_garbage_is_400_and_close() -> None:
    conv = ServerConversation()
    with pytest.raises(HttpError) as caught:
        conv.receive_data(b"\x16\x03\x01 this is not HTTP at all\r\n\r\n")
    sent = conv.reject(caught.value.response())
    assert sent.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"\r\nConnection: close\r\n" in sent
    assert conv.closing


@pytest.mark.parametrize(
    ("change", "status", "header"),
    [
        ((b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), 400, b"Sec-WebSocket-Key"),
        ((b"Version: 13", b"Version: 8"), 426, b"Sec-WebSocket-Version: 13\r\n"),
    ],
)
def test_a_failed_handshake_is_rejected(
    change: tuple[bytes, bytes], status: int, header: bytes
) -> None:
    # how the server composes the two: fastws.handshake checks, the conversation answers
    conv = ServerConversation()
    conv.receive_data(UPGRADE.replace(*change) + FRAME)
    request = conv.next_request()
    assert request is not None and request.upgrade
    with pytest.raises(HandshakeError) as caught:
        accept(request)
    sent = conv.reject(caught.value.response())
    assert sent.startswith(b"HTTP/1.1 %d " % status)
    assert header in sent and b"Connection: close\r\n" in sent
    assert conv.closing


def test_an_accepted_handshake() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE + FRAME)
    request = conv.next_request()
    assert request is not None
    data, rest = conv.accept_upgrade(accept(request))
    assert b"\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data
    assert rest == FRAME


def test_limits_are_the_conversations() -> None:
    conv = ServerConversation(Limits(max_body_size=4))
    with pytest.raises(HttpError) as caught:
        conv.receive_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    assert caught.value.status == 413


def test_reject_of_an_awaiting_request() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    sent = conv.reject(Response.text(500, "oops"))
    assert sent == (
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 4\r\nConnection: close\r\n\r\noops"
    )
    assert conv.closing and conv.next_request() is None


def test_reject_of_a_head_request_has_no_body() -> None:
    conv = ServerConversation()
    conv.receive_data(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    assert conv.reject(Response(500, body=b"oops")).endswith(b"Connection: close\r\n\r\n")


def test_an_answer_that_cannot_be_encoded_changes_nothing() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    request = conv.next_request()
    with pytest.raises(ValueError):
        conv.respond(Response(200, {"X": "a\r\nSet-Cookie: evil"}))
    assert conv.awaiting is request
    assert conv.respond(Response(204)) == b"HTTP/1.1 204 No Content\r\n\r\n"


# misuse


def test_respond_with_nothing_awaiting() -> None:
    conv = ServerConversation()
    with pytest.raises(RuntimeError, match="no request is awaiting"):
        conv.respond(Response(200))
    with pytest.raises(RuntimeError, match="no request is awaiting"):
        conv.accept_upgrade(SWITCH)
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")   # parsed, not handed out yet
    with pytest.raises(RuntimeError, match="no request is awaiting"):
        conv.respond(Response(200))


@pytest.mark.parametrize("status", [101, 100, 103])
def test_respond_with_an_informational_status(status: int) -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE)
    assert conv.next_request() is not None
    with pytest.raises(RuntimeError, match="accept_upgrade" if status == 101 else "interim"):
        conv.respond(Response(status))
    assert conv.awaiting is not None


def test_accept_upgrade_misuse() -> None:
    conv = ServerConversation()
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert conv.next_request() is not None
    with pytest.raises(RuntimeError, match="did not ask for an upgrade"):
        conv.accept_upgrade(SWITCH)
    conv.respond(Response(204))
    conv.receive_data(UPGRADE)
    assert conv.next_request() is not None
    with pytest.raises(RuntimeError, match="101"):
        conv.accept_upgrade(Response(200))


def test_nothing_after_the_upgrade() -> None:
    conv = ServerConversation()
    conv.receive_data(UPGRADE)
    assert conv.next_request() is not None
    conv.accept_upgrade(SWITCH)
    assert conv.next_request() is None
    with pytest.raises(RuntimeError, match="frames"):
        conv.receive_data(FRAME)
    with pytest.raises(RuntimeError, match="upgrade"):
        conv.respond(Response(200))
    with pytest.raises(RuntimeError, match="upgrade"):
        conv.reject(Response(400))


def test_reject_misuse() -> None:
    conv = ServerConversation()
    with pytest.raises(RuntimeError, match="final"):
        conv.reject(Response(101))
    conv.reject(Response(400))
    with pytest.raises(RuntimeError, match="closing"):
        conv.reject(Response(400))


# idle


def test_idle() -> None:
    conv = ServerConversation()
    assert conv.idle                                   # waiting for the first request
    conv.receive_data(b"GET / HTTP/1.1\r\nHo")
    assert not conv.idle                               # partly received
    conv.receive_data(b"st: h\r\n\r\n")
    assert not conv.idle                               # complete, pending
    request = conv.next_request()
    assert request is not None and not conv.idle      # awaiting its answer
    conv.respond(Response(204))
    assert conv.idle                                   # waiting for the next one
    conv.receive_data(b"\r\n")                         # a stray CRLF between requests
    assert conv.idle
    conv.receive_data(UPGRADE)
    assert conv.next_request() is not None
    conv.respond(Response(404))                        # declined, nothing held
    assert conv.idle
    conv.receive_data(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert conv.next_request() is not None
    conv.respond(Response(204))
    assert conv.closing and not conv.idle              # closing: no keep-alive timer
