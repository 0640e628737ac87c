"""Tests for fastws.http: headers, request/response encoding, and both parsers."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import Limits
from fastws._http_head import encode_head
from fastws.http import (
    TOKEN,
    Headers,
    HttpError,
    HttpResponseError,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    is_request_target,
)

PIPELINED = (
    b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\n"
    b"POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nabc\r\n2\r\nde\r\n0\r\nTrailer-X: t\r\n\r\n"
)
UPGRADE_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\n"
    b"Upgrade: websocket\r\n"
)
FRAME = b"\x81\x85\x01\x02\x03\x04ig`ho"  # a masked text frame, as a client would send it


def feed_in_pieces(parser: RequestParser, data: bytes, cuts: list[int]) -> list[Request]:
    requests: list[Request] = []
    start = 0
    for end in sorted(set(cuts)) + [len(data)]:
        requests += parser.feed(data[start:end])
        start = end
    return requests


def check_pipelined(requests: list[Request]) -> None:
    assert [(r.method, r.path, r.query, r.body) for r in requests] == [
        ("GET", "/a", "x=1", b""),
        ("POST", "/b", "", b"hello"),
        ("PUT", "/c", "", b"abcde"),
    ]
    assert "Trailer-X" not in requests[2].headers


# Headers


def test_headers_multimap_case_insensitive() -> None:
    headers = Headers([("Set-Cookie", "a"), ("X", "1"), ("set-cookie", "b")])
    assert headers.get("SET-COOKIE") == "a"
    assert headers["x"] == "1"
    assert headers.get_all("set-cookie") == ["a", "b"]
    assert headers.get("missing") is None and headers.get("missing", "d") == "d"
    assert "x" in headers and "y" not in headers
    with pytest.raises(KeyError):
        headers["y"]
    assert len(headers) == 3
    assert list(headers) == [("Set-Cookie", "a"), ("X", "1"), ("set-cookie", "b")]


def test_headers_set_replaces_all_in_place() -> None:
    headers = Headers([("A", "1"), ("B", "2"), ("a", "3")])
    headers.set("A", "new")
    assert headers.items() == [("A", "new"), ("B", "2")]
    headers.set("C", "4")
    assert headers.items()[-1] == ("C", "4")


def test_headers_constructors_and_equality() -> None:
    from_dict = Headers({"Host": "h", "Upgrade": "websocket"})
    assert Headers(from_dict) == from_dict
    assert Headers([("host", "h"), ("upgrade", "websocket")]) == from_dict
    assert Headers([("Upgrade", "websocket"), ("Host", "h")]) != from_dict
    assert Headers() == Headers(None)
    assert "Host" in repr(from_dict)


def test_headers_tokens() -> None:
    headers = Headers([("Connection", "keep-alive, Upgrade"), ("connection", " ,CLOSE ")])
    assert headers.tokens("connection") == ["keep-alive", "upgrade", "close"]
    assert headers.tokens("missing") == []


# Request and Response types


def test_request_defaults() -> None:
    request = Request(target="/p?q=1&r")
    assert (request.method, request.path, request.query, request.version) == (
        "GET", "/p", "q=1&r", "1.1",
    )
    assert request.keep_alive and not request.upgrade
    assert not Request(headers={"Connection": "close"}).keep_alive
    assert not Request(version="1.0").keep_alive
    assert Request(version="1.0", headers={"Connection": "Keep-Alive"}).keep_alive
    assert Request(headers={"Connection": "upgrade", "Upgrade": "websocket"}).upgrade
    assert not Request(headers={"Upgrade": "websocket"}).upgrade
    assert "GET" in repr(request)


def test_request_encode_round_trip() -> None:
    request = Request("POST", "/x?y", {"Host": "h"}, b"body")
    parsed = RequestParser().feed(request.encode())
    assert parsed == [Request("POST", "/x?y", {"Host": "h", "Content-Length": "4"}, b"body")]


def test_response_encode() -> None:
    assert Response(200, {"X": "1"}, b"hi").encode() == (
        b"HTTP/1.1 200 OK\r\nX: 1\r\nContent-Length: 2\r\n\r\nhi"
    )
    assert Response(404).encode(keep_alive=False) == (
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    assert b"Content-Length" not in Response(204).encode()
    assert b"Content-Length" not in Response(101).encode()
    assert b"Content-Length" not in Response(304).encode()
    chunked = Response(200, {"Transfer-Encoding": "chunked"}, b"0\r\n\r\n").encode()
    assert b"Content-Length" not in chunked
    explicit = Response(200, {"Connection": "keep-alive"}).encode(keep_alive=False)
    assert b"close" not in explicit
    assert Response(299, reason="Custom").encode().startswith(b"HTTP/1.1 299 Custom\r\n")


@pytest.mark.parametrize(
    "headers",
    [
        {"X": "a\r\nSet-Cookie: evil"},
        {"X": "a\nb"},
        {"X": "a\rb"},
        {"X": "a\x00b"},
        {"X\r\nY": "1"},
        {"X Y": "1"},
        {"": "1"},
        {"X": "\u20ac\r\nSet-Cookie: evil"},      # not latin-1 and an injection
        {"Caf\u00e9": "1"},                       # latin-1, but not a token
    ],
)
def test_header_injection_rejected(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        Response(200, headers).encode()
    with pytest.raises(ValueError):
        Request(headers=headers).encode()


def test_heads_are_latin_1() -> None:
    assert Response(200, {"X": "caf\u00e9"}).encode() == (
        b"HTTP/1.1 200 OK\r\nX: caf\xe9\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ValueError, match="latin-1"):
        Response(200, {"X": "\u20ac"}).encode()
    with pytest.raises(ValueError, match="latin-1"):
        Response(200, reason="\u20ac").encode()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.lists(st.tuples(
    st.one_of(st.sampled_from(["Host", "X-A", "a!#$%&'*+-.^_`|~9", "", "B C", "\u00e9", "\u20ac"]),
              st.text(max_size=6)),
    st.text(max_size=12)), max_size=5))
def test_encode_head_matches_the_rules(line: str, pairs: list[tuple[str, str]]) -> None:
    """fastws._http_head.encode_head (C) against the rules written plainly: names are
    tokens, values have no CR, LF or NUL, everything is latin-1, errors in that order."""
    def reference() -> bytes:
        for name, value in pairs:
            if re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) is None:
                raise ValueError(f"invalid header name {name!r}")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name!r} has CR, LF or NUL in its value {value!r}")
        text = line + "".join(f"{name}: {value}\r\n" for name, value in pairs) + "\r\n"
        try:
            return text.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError("HTTP heads must be latin-1; encode other text in the value") \
                from None

    try:
        expected: bytes | str = reference()
    except ValueError as exc:
        expected = str(exc)
    try:
        got: bytes | str = encode_head(line, pairs)
    except ValueError as exc:
        got = str(exc)
    assert got == expected


def test_response_encode_rejects_bad_reason_and_bodyless_body() -> None:
    with pytest.raises(ValueError):
        Response(200, reason="OK\r\nX: y").encode()
    with pytest.raises(ValueError):
        Response(204, body=b"x").encode()
    with pytest.raises(ValueError):
        Request(target="/a b").encode()


@pytest.mark.parametrize("target", ["/a b", "/a\tb", "/\x7f", "/caf\u00e9", "", "/a\r\nX: y"])
def test_request_target_must_be_visible_ascii(target: str) -> None:
    assert not is_request_target(target)
    with pytest.raises(ValueError, match="target"):
        Request(target=target).encode()


def test_request_target_and_token_accept() -> None:
    assert is_request_target("/p%20x?q=a&b=%C3%A9#~!$'()*+,;=:@")
    assert is_request_target("*") and is_request_target("example.com:443")
    assert TOKEN.fullmatch("Sec-WebSocket-Key") and TOKEN.fullmatch("!#$%&'*+-.^_`|~09")
    assert not any(TOKEN.fullmatch(text) for text in ("", "a b", "a,b", "a:b", '"a"', "é"))


def test_response_text_and_html() -> None:
    text = Response.text(200, "héllo", headers={"X": "1"})
    assert text.body == "héllo".encode()
    assert text.headers.items() == [("Content-Type", "text/plain; charset=utf-8"), ("X", "1")]
    assert Response.html(200, "<p>").headers["content-type"] == "text/html; charset=utf-8"


def test_http_error_response() -> None:
    error = HttpError(431, "too many headers")
    assert (error.status, error.reason) == (431, "Request Header Fields Too Large")
    response = error.response()
    assert response.status == 431
    assert response.headers["Connection"] == "close"
    assert b"too many headers" in response.body


# RequestParser


def test_pipelined_in_one_chunk() -> None:
    check_pipelined(RequestParser().feed(PIPELINED))


def test_pipelined_one_byte_at_a_time() -> None:
    check_pipelined(feed_in_pieces(RequestParser(), PIPELINED, list(range(len(PIPELINED)))))


@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=20))
def test_pipelined_any_chunking(cuts: list[int]) -> None:
    check_pipelined(feed_in_pieces(RequestParser(), PIPELINED, cuts))


def test_parsed_request_fields() -> None:
    (request,) = RequestParser().feed(
        b"GET /p%20x?a=b HTTP/1.1\r\nHost: example\r\nX-Multi: 1\r\nx-multi: 2\r\n\r\n"
    )
    assert (request.target, request.path, request.query) == ("/p%20x?a=b", "/p%20x", "a=b")
    assert request.version == "1.1"
    assert request.headers.get_all("X-MULTI") == ["1", "2"]
    assert request.keep_alive and not request.upgrade


@pytest.mark.parametrize(
    ("head", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.0\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n", True),
    ],
)
def test_keep_alive_rules(head: bytes, keep_alive: bool) -> None:
    (request,) = RequestParser().feed(head)
    assert request.keep_alive is keep_alive


@pytest.mark.parametrize(
    "first",
    [
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
    ],
)
def test_nothing_after_a_request_that_closes_is_parsed(first: bytes) -> None:
    # RFC 9112 9.6: no further request is processed, and bytes that would be an error are
    # not blamed on the request before them
    parser = RequestParser()
    (request,) = parser.feed(first + b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    assert request.path == "/a" and not request.keep_alive
    assert parser.feed(b"garbage\r\n\r\nGET /c HTTP/1.1\r\nHost: h\r\n\r\n") == []
    parser = RequestParser()
    (request,) = parser.feed(first + b"\x00garbage")
    assert request.path == "/a"


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", "needs a Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", "more than one Host"),
        (b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host"),
        (UPGRADE_HEAD.replace(b"Host: h\r\n", b"") + b"\r\n", "needs a Host"),
    ],
)
def test_host_missing_or_repeated_is_400(head: bytes, words: str) -> None:
    # RFC 9112 3.2
    with pytest.raises(HttpError, match=words) as caught:
        RequestParser().feed(head)
    assert caught.value.status == 400


def test_host_rules_accept() -> None:
    requests = RequestParser().feed(
        b"GET / HTTP/1.0\r\n\r\n"  # HTTP/1.0 may leave Host out, but then it closes
    ) + RequestParser().feed(
        b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
        b"OPTIONS * HTTP/1.1\r\nHost:\r\n\r\n"  # an empty Host is allowed (RFC 9112 3.2)
    )
    assert [(r.target, r.headers.get("host")) for r in requests] == [
        ("/", None), ("/", "h"), ("*", ""),
    ]


@pytest.mark.parametrize(
    "data",
    [
        # each would let two parsers disagree on where a request ends (request smuggling)
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n"
        b"0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxy",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n",
        # obs-fold: a line starting with whitespace continues the one before
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        # whitespace between a field name and its colon
        b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 1\r\n\r\nx",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\n\r\n0\r\n\r\n",
        # NUL in a name or a value
        b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nX\x00Y: a\r\n\r\n",
        # bare LF or bare CR as a line end
        b"GET / HTTP/1.1\nHost: h\n\n",
        b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\n\n",
        b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\n0\r\n\r\n",
    ],
)
def test_smuggling_probes_are_400(data: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(data)
    assert caught.value.status == 400
    # and whatever the chunking
    parser = RequestParser()
    with pytest.raises(HttpError) as caught:
        for i in range(len(data)):
            parser.feed(data[i : i + 1])
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\r\n\r\n",
        b"G@T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/9.9\r\n\r\n",
        b"GET / FOO/1.1\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
def test_malformed_is_400(data: bytes) -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(data)
    assert caught.value.status == 400


def test_http_2_request_line_is_505() -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(b"GET / HTTP/2.0\r\n\r\n")
    assert caught.value.status == 505


def test_parser_dead_after_error() -> None:
    parser = RequestParser()
    with pytest.raises(HttpError) as first:
        parser.feed(b"garbage\r\n\r\n")
    with pytest.raises(HttpError) as second:
        parser.feed(b"GET / HTTP/1.1\r\n\r\n")
    assert second.value is first.value


def test_request_line_too_long_is_414() -> None:
    parser = RequestParser(max_request_line=100)
    assert parser.feed(b"GET /" + b"a" * 80 + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    with pytest.raises(HttpError) as caught:
        RequestParser(max_request_line=100).feed(b"GET /" + b"a" * 100)
    assert caught.value.status == 414


def test_too_many_headers_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10))
    head += b"\r\n"
    with pytest.raises(HttpError) as caught:
        RequestParser(max_headers=10).feed(head)
    assert caught.value.status == 431
    assert len(RequestParser(max_headers=11).feed(head)) == 1


def test_head_too_large_is_431() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 2000 + b"\r\n\r\n"
    with pytest.raises(HttpError) as caught:
        RequestParser(max_header_size=1000).feed(head)
    assert caught.value.status == 431
    assert len(RequestParser(max_header_size=3000).feed(head)) == 1


def test_endless_header_line_sent_slowly_is_431() -> None:
    # the line never completes, so only the byte count can stop it
    parser = RequestParser(max_header_size=1000)
    parser.feed(b"GET / HTTP/1.1\r\nX: ")
    with pytest.raises(HttpError) as caught:
        for _ in range(200):
            parser.feed(b"v" * 10)
    assert caught.value.status == 431


def test_head_near_the_limit_sent_slowly_is_accepted() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 900 + b"\r\n\r\n"
    parser = RequestParser(max_header_size=1000)
    assert len(feed_in_pieces(parser, head, list(range(0, len(head), 7)))) == 1


def test_big_chunk_of_small_pipelined_requests_is_accepted() -> None:
    # many requests in one chunk, ending mid-head: no head is anywhere near the limit
    one = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    parser = RequestParser(max_header_size=200)
    assert len(parser.feed(one * 100 + one[:20])) == 100
    assert len(parser.feed(one[20:])) == 1


def test_parser_limits_default_to_fastws_limits() -> None:
    limits = Limits()
    post = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
    assert RequestParser().feed(post % limits.max_body_size) == []  # waits for the body
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(post % (limits.max_body_size + 1))
    assert caught.value.status == 413
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(limits.max_headers))
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + many + b"\r\n")
    assert caught.value.status == 431
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
    assert ResponseParser().feed(answer % limits.max_body_size) is None
    with pytest.raises(HttpResponseError, match="body"):
        ResponseParser().feed(answer % (limits.max_body_size + 1))


def test_body_too_large_is_413() -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser(max_body_size=10).feed(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n"
        )
    assert caught.value.status == 413
    chunked = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"6\r\nabcdef\r\n" * 2
    with pytest.raises(HttpError) as caught:
        RequestParser(max_body_size=10).feed(chunked)
    assert caught.value.status == 413


def test_connect_is_501() -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(b"CONNECT h:443 HTTP/1.1\r\nHost: h:443\r\n\r\n")
    assert caught.value.status == 501


def test_upgrade_stops_with_tail() -> None:
    parser = RequestParser()
    requests = parser.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + UPGRADE_HEAD + b"\r\n" + FRAME)
    assert [r.path for r in requests] == ["/", "/ws"]
    assert requests[-1].upgrade and parser.upgraded
    assert parser.tail == FRAME
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_upgrade_tail_offset_is_relative_to_last_chunk() -> None:
    parser = RequestParser()
    data = UPGRADE_HEAD + b"\r\n" + FRAME
    assert parser.feed(data[:30]) == []
    (request,) = parser.feed(data[30:])
    assert request.upgrade and parser.tail == FRAME


def test_upgrade_with_empty_tail() -> None:
    parser = RequestParser()
    assert len(parser.feed(UPGRADE_HEAD + b"\r\n")) == 1
    assert parser.upgraded and parser.tail == b""


def test_upgrade_request_body_is_not_tail() -> None:
    parser = RequestParser()
    data = UPGRADE_HEAD + b"Content-Length: 5\r\n\r\nhello" + FRAME
    assert parser.feed(data[:-len(FRAME) - 2]) == []  # body not all there yet
    (request,) = parser.feed(data[-len(FRAME) - 2:])
    assert request.body == b"hello"
    assert parser.tail == FRAME


def test_upgrade_header_without_connection_upgrade_is_plain() -> None:
    parser = RequestParser()
    requests = parser.feed(
        b"GET /1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert [(r.path, r.upgrade) for r in requests] == [("/1", False), ("/2", False)]
    assert not parser.upgraded
    assert [r.path for r in parser.feed(b"GET /3 HTTP/1.1\r\nHost: h\r\n\r\n")] == ["/3"]


def test_in_message_until_the_request_is_complete() -> None:
    parser = RequestParser()
    assert not parser.in_message
    parser.feed(b"\r\n")  # a stray line end between requests starts nothing
    assert not parser.in_message
    parser.feed(b"GET / HTTP/1.1\r\nHo")
    assert parser.in_message
    parser.feed(b"st: h\r\n\r\n" + UPGRADE_HEAD + b"Content-Length: 5\r\n\r\nhel")
    assert parser.in_message  # the upgrade request's body is still coming
    parser.feed(b"lo")
    assert not parser.in_message and parser.upgraded


def test_chunked_upgrade_request_is_400() -> None:
    with pytest.raises(HttpError) as caught:
        RequestParser().feed(UPGRADE_HEAD + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert caught.value.status == 400


# ResponseParser


def test_response_round_trip() -> None:
    response = Response(200, [("X-A", "1"), ("X-A", "2")], b"payload")
    parsed = ResponseParser().feed(response.encode())
    assert parsed == Response(
        200, [("X-A", "1"), ("X-A", "2"), ("Content-Length", "7")], b"payload"
    )


def test_101_response_with_tail() -> None:
    head = Response(101, {"Upgrade": "websocket", "Connection": "Upgrade"}).encode()
    parser = ResponseParser()
    assert parser.feed(head[:10]) is None
    response = parser.feed(head[10:] + b"\x81\x02hi")
    assert response is not None and response.status == 101
    assert parser.tail == b"\x81\x02hi"
    with pytest.raises(RuntimeError):
        parser.feed(b"x")


def test_101_without_upgrade_headers_is_returned_for_the_handshake_to_reject() -> None:
    response = ResponseParser().feed(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert response is not None and response.status == 101 and "upgrade" not in response.headers


def test_chunked_response_fed_byte_by_byte() -> None:
    data = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n"
    parser = ResponseParser()
    results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
    assert results[:-1] == [None] * (len(data) - 1)
    assert results[-1] is not None and results[-1].body == b"no"


def test_interim_response_is_skipped() -> None:
    response = ResponseParser().feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
    )
    assert response is not None and response.status == 403


def test_response_until_eof() -> None:
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.0 200 OK\r\n\r\nsome ") is None
    assert parser.feed(b"body") is None
    response = parser.feed_eof()
    assert response.body == b"some body" and response.version == "1.0"


def test_response_truncated_by_eof() -> None:
    parser = ResponseParser()
    parser.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
    with pytest.raises(HttpResponseError):
        parser.feed_eof()


@pytest.mark.parametrize(
    ("data", "limits"),
    [
        (b"NOT HTTP\r\n\r\n", {}),
        (b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 5 + b"\r\n", {"max_headers": 4}),
        (b"HTTP/1.1 200 OK\r\nX: " + b"v" * 200 + b"\r\n\r\n", {"max_header_size": 100}),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", {"max_body_size": 10}),
    ],
)
def test_response_errors(data: bytes, limits: dict[str, int]) -> None:
    with pytest.raises(HttpResponseError) as caught:
        ResponseParser(**limits).feed(data)
    assert caught.value.status == 0
    with pytest.raises(RuntimeError):
        caught.value.response()


# The C pass over plain GET heads (fastws._http_head) against llhttp

PLAIN_UPGRADE = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com:8080\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
PLAIN_GETS = b"GET /a HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\nGET /b?x HTTP/1.1\r\nHost: h\r\n\r\n"


def outcome(data: bytes, plain_heads: bool, limits: Limits | None = None) -> tuple:
    """What a user of RequestParser sees for `data` fed at once: the requests, field by field
    (header names with their case), where it stopped, or the error's status."""
    limits = limits or Limits()
    parser = RequestParser(max_request_line=limits.max_request_line,
                           max_header_size=limits.max_header_size,
                           max_headers=limits.max_headers)
    parser._plain_heads = plain_heads
    try:
        requests = parser.feed(data)
    except HttpError as exc:
        return ("error", exc.status)
    fields = [(r.method, r.target, r.path, r.query, r.version, r.headers.items(),
               r.headers._index, r.body, r.keep_alive, r.upgrade) for r in requests]
    return ("ok", fields, parser.upgraded, parser.tail, parser.in_message)


def took_plain(data: bytes, limits: Limits | None = None) -> bool:
    from fastws._http_head import parse_plain_get

    limits = limits or Limits()
    return parse_plain_get(data, 0, limits.max_request_line, limits.max_header_size,
                           limits.max_headers) is not None


TRICKY_HEADS = [
    PLAIN_UPGRADE,
    PLAIN_UPGRADE + FRAME,
    PLAIN_GETS,
    PLAIN_GETS + b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi",
    PLAIN_GETS + b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /d HTTP/1.1\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGARBAGE",
    b"GET / HTTP/1.1\r\nHost: a \t \r\nX-A:\t b  c \r\nX-E:\r\nX-F:   \r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: caf\xe9\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: \x7f\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nX-A : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: h\r\n\r\n",
    b"get / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n",
    b"GET http://h/x HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /a?b?c#d#e HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /# HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /?#?# HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET //x@y:z/%zz%/[::1]{}|\\^` HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nProxy-Connection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade:\r\nConnection: upgrade\r\n\r\n" + FRAME,
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n" + FRAME,
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n",
] + [
    b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: " + value + b"\r\n\r\n"
    + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"
    for value in (b"Upgrade", b"upgrade, keep-alive", b"keep-alive,upgrade", b"close, Upgrade",
                  b"upgrade x", b"upgradex", b"upgrade,,", b", upgrade", b"Upgrade ;q=1",
                  b"keep-alive", b"close", b"CLOSE", b"x-close", b"", b"\tupgrade\t")
] + [
    b"GET /" + bytes([c]) + b" HTTP/1.1\r\nHost: h\r\n\r\n" for c in range(0x21, 0x80)
] + [
    b"GET / HTTP/1.1\r\nHost: h\r\nX" + bytes([c]) + b"Y: v\r\n\r\n" for c in range(0x20, 0x80)
] + [
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a" + bytes([c]) + b"b\r\n\r\n" for c in range(0x100)
]


@pytest.mark.parametrize("data", TRICKY_HEADS)
def test_plain_get_heads_parse_as_llhttp_parses_them(data: bytes) -> None:
    assert outcome(data, plain_heads=True) == outcome(data, plain_heads=False)


def test_the_plain_pass_takes_the_common_heads() -> None:
    # Without this the comparison above could pass with the C pass never taken.
    assert took_plain(PLAIN_UPGRADE)
    assert took_plain(PLAIN_GETS)
    assert took_plain(TRICKY_HEADS[6])       # trailing whitespace kept, as llhttp keeps it
    (request,) = RequestParser().feed(PLAIN_UPGRADE + FRAME)
    assert request.upgrade and request.headers["sec-websocket-version"] == "13"
    assert request.headers.items()[0] == ("Host", "example.com:8080")
    for other in (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nX-B: b\r\n\r\n",    # bare LF
                  b"GET / HTTP/1.1\r\n\r\n",                                # no Host
                  b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",          # two
                  b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
                  b"POST / HTTP/1.1\r\nHost: h\r\n\r\n",
                  b"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
                  PLAIN_UPGRADE[:-1]):                                     # not all there
        assert not took_plain(other)


@pytest.mark.parametrize("limit", ["max_request_line", "max_header_size", "max_headers"])
def test_plain_get_heads_meet_the_limits_as_llhttp_does(limit: str) -> None:
    # At every limit around the real size, both passes accept or refuse (414/431) alike.
    head = PLAIN_UPGRADE
    # as RequestParser counts: the request line "GET /chat?room=1 HTTP/1.1" and its CRLF;
    # the head: each line's name and value + 4, the target + 17 for the rest of the first line
    lines = [line.partition(b":") for line in head.split(b"\r\n")[1:-2]]
    head_size = sum(len(name) + len(value.strip()) + 4 for name, _, value in lines) + 12 + 17
    sizes = {"max_request_line": 27, "max_header_size": head_size, "max_headers": 6}
    for value in range(sizes[limit] - 3, sizes[limit] + 4):
        limits = Limits(**{limit: value})
        assert outcome(head, True, limits) == outcome(head, False, limits), (limit, value)
    assert took_plain(head, Limits(**{limit: sizes[limit]}))
    assert not took_plain(head, Limits(**{limit: sizes[limit] - 1}))


def test_mutated_plain_heads_parse_as_llhttp_parses_them() -> None:
    # Every one-byte change of two plain heads (each byte replaced by a few others, deleted,
    # or doubled): what the C pass accepts must be what llhttp makes of it.
    seeds = (PLAIN_UPGRADE + FRAME, PLAIN_GETS)
    taken = 0
    for seed in seeds:
        for at in range(len(seed)):
            variants = [seed[:at] + seed[at + 1:], seed[:at] + seed[at:at + 1] + seed[at:]]
            variants += [seed[:at] + bytes([c]) + seed[at + 1:]
                         for c in (0x00, 0x09, 0x0A, 0x0D, 0x20, 0x2C, 0x3A, 0x7F, 0xFF)]
            for data in variants:
                assert outcome(data, True) == outcome(data, False), data
                taken += took_plain(data)
    assert taken > 1000


# Heads built from parts that are mostly plain and sometimes not: the bytes a real client or
# an attacker could send in each place (any byte at all in one part in four).
def _part(known: list[str], plain: str) -> st.SearchStrategy[str]:
    anything = st.binary(max_size=8).map(lambda b: b.decode("latin-1"))
    return st.one_of(st.sampled_from(known), st.sampled_from(known),
                     st.text(alphabet=plain, max_size=10), anything)


_TCHARS = "!#$%&'*+-.^_`|~09AZaz"
_VISIBLE = "".join(chr(c) for c in range(0x20, 0x7F)) + "\t"
_TARGETS = _part(["/", "/chat?room=1", "*", "http://h/x", "/a#b"], _VISIBLE).map(
    lambda t: t if t[:1] in ("/", "*", "h") else "/" + t)
_NAMES = _part(["Host", "host", "Connection", "Upgrade", "Content-Length", "Transfer-Encoding",
                "Proxy-Connection", "X-A", "Origin"], _TCHARS)
_VALUES = _part(["h", "websocket", "Upgrade", "keep-alive, Upgrade", "close", "0", "chunked",
                 " x ", "", "upgrade,", "UPGRADE"], _VISIBLE)


@given(st.sampled_from(["GET", "GET", "POST", "get"]), _TARGETS,
       st.sampled_from(["HTTP/1.1", "HTTP/1.1", "HTTP/1.0", "HTTP/1.2"]),
       st.lists(st.tuples(_NAMES, _VALUES), max_size=6), st.booleans(),
       st.binary(max_size=8))
def test_generated_heads_parse_as_llhttp_parses_them(method: str, target: str, version: str,
                                                     lines: list[tuple[str, str]], host: bool,
                                                     after: bytes) -> None:
    head = f"{method} {target} {version}\r\n" + ("Host: h\r\n" if host else "")
    head += "".join(f"{name}: {value}\r\n" for name, value in lines) + "\r\n"
    data = head.encode("latin-1") + after
    assert outcome(data, plain_heads=True) == outcome(data, plain_heads=False)


@given(st.text(alphabet=_VISIBLE.replace(" ", "").replace("\t", ""), max_size=12),
       st.lists(st.tuples(st.text(alphabet=_TCHARS, min_size=1, max_size=8),
                          st.text(alphabet=_VISIBLE, max_size=10)), max_size=6),
       st.sampled_from(["", "Upgrade", "close", "keep-alive", "upgrade, keep-alive"]))
def test_generated_plain_heads_take_the_c_pass_and_parse_as_llhttp(
        target: str, lines: list[tuple[str, str]], connection: str) -> None:
    lines = [(name, value) for name, value in lines
             if name.lower() not in ("host", "connection", "upgrade")]
    if connection:
        lines.append(("Connection", connection))
    head = f"GET /{target} HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
    data = (head + "".join(f"{n}: {v}\r\n" for n, v in lines) + "\r\n").encode() + FRAME
    assert took_plain(data)
    assert outcome(data, plain_heads=True) == outcome(data, plain_heads=False)
