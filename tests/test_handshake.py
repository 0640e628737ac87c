"""Tests for fastws.handshake: keys, request and response checks, negotiation, URLs."""

from __future__ import annotations

import base64
import binascii
import hashlib
import random

import pytest

import fastws
from fastws.handshake import (
    GUID,
    HandshakeError,
    accept,
    accept_key,
    check_request,
    check_response,
    client_request,
    format_extensions,
    new_key,
    parse_extensions,
    parse_ws_url,
)
from fastws.http import Request, RequestParser, Response, ResponseParser

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_request(**changes: str | None) -> Request:
    """A valid client handshake; a change of None removes that header."""
    fields: dict[str, str | None] = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    fields.update(changes)
    return Request("GET", "/chat", [(k, v) for k, v in fields.items() if v is not None])


def server_answer(**changes: str | None) -> Response:
    fields: dict[str, str | None] = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Accept": ACCEPT,
    }
    fields.update(changes)
    return Response(101, [(k, v) for k, v in fields.items() if v is not None])


def test_rfc_example_accept_key() -> None:
    assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    assert accept_key(KEY) == ACCEPT


def test_accept_key_is_base64_sha1_of_key_and_guid() -> None:
    """accept_key computes SHA-1 and base64 in C (fastws/accept.h): it must agree with
    hashlib for every length, across the one- and two-block paddings of SHA-1, and for keys
    the C path leaves to hashlib (non-ASCII, very long)."""
    def reference(key: str) -> str:
        digest = hashlib.sha1((key + GUID).encode("latin-1")).digest()
        return binascii.b2a_base64(digest, newline=False).decode("ascii")

    rng = random.Random(6455)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= -_."
    for size in range(300):
        key = "".join(rng.choice(alphabet) for _ in range(size))
        assert accept_key(key) == reference(key), size
    for key in ("é" * 24, "x" * 5000):
        assert accept_key(key) == reference(key)
    with pytest.raises(UnicodeEncodeError):
        accept_key("€" * 24)               # not latin-1: no header value can carry it


@pytest.mark.parametrize("key", [
    KEY, "AAAAAAAAAAAAAAAAAAAAAA==", "////////////////////+/==", "AAAAAAAAAAAAAAAAAAAAAB==",
    "AAAAAAAAAAAAAAAAAAAAA==", "AAAAAAAAAAAAAAAAAAAAAAA=", "AAAAAAAAAAAAAAAAAAAAAAAA",
    "AAAAAAAAAAAAAAAAAAAAAAA==", "AAAAAAAAAAAAAAAAAAAA*A==", "AAAAAAAAAAAAAAAAAAAAAé==",
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", " AAAAAAAAAAAAAAAAAAAAAA==", "",
])
def test_the_c_key_check_agrees_with_decoding(key: str) -> None:
    """check_request takes the usual key form in C and decodes anything else: both ways
    must accept exactly the keys that are 16 bytes in base64."""
    try:
        valid = len(base64.b64decode(key.encode("latin-1"), validate=True)) == 16
    except (binascii.Error, ValueError):
        valid = False
    request = upgrade_request(**{"Sec-WebSocket-Key": key})
    if valid:
        assert check_request(request) == key
    else:
        with pytest.raises(HandshakeError) as caught:
            check_request(request)
        assert caught.value.status == 400


def test_new_key_is_16_random_bytes() -> None:
    key = new_key()
    assert len(base64.b64decode(key, validate=True)) == 16
    assert key != new_key()


def test_check_request_accepts_valid_and_returns_key() -> None:
    assert check_request(upgrade_request()) == KEY
    # tokens are case-insensitive and may come with others
    assert check_request(upgrade_request(Upgrade="WebSocket", Connection="keep-alive, UPGRADE"))


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        (Request("POST", "/", upgrade_request().headers), 405, "GET"),
        (Request("GET", "/", upgrade_request().headers, version="1.0"), 400, "HTTP/1.1"),
        (upgrade_request(Host=None), 400, "Host"),
        (upgrade_request(Upgrade=None), 400, "Upgrade"),
        (upgrade_request(Upgrade="h2c"), 400, "Upgrade"),
        (upgrade_request(Connection=None), 400, "Connection"),
        (upgrade_request(Connection="keep-alive"), 400, "Connection"),
        (upgrade_request(**{"Sec-WebSocket-Key": None}), 400, "Sec-WebSocket-Key"),
        (upgrade_request(**{"Sec-WebSocket-Key": "c2hvcnQ="}), 400, "Sec-WebSocket-Key"),
        (upgrade_request(**{"Sec-WebSocket-Key": "not base64 at all!!!!!=="}), 400, "Key"),
        (upgrade_request(**{"Sec-WebSocket-Version": None}), 426, "13"),
        (upgrade_request(**{"Sec-WebSocket-Version": "8"}), 426, "13"),
        (upgrade_request(**{"Sec-WebSocket-Version": "13, 8"}), 426, "13"),
    ],
)
def test_check_request_failures(request_: Request, status: int, words: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        check_request(request_)
    assert caught.value.status == status
    assert words in str(caught.value)


def test_second_check_of_a_validated_request_is_free() -> None:
    request = upgrade_request()
    assert request == upgrade_request()
    assert check_request(request) == KEY
    # what was learnt about the request is not part of it
    assert request == upgrade_request()
    # checked once: the request is what was received, and it is not looked at again
    request.headers.set("Sec-WebSocket-Version", "8")
    assert check_request(request) == KEY
    assert accept(request).headers["Sec-WebSocket-Accept"] == ACCEPT


def test_a_request_that_failed_is_checked_again() -> None:
    request = upgrade_request(**{"Sec-WebSocket-Version": "8"})
    for _ in range(2):
        with pytest.raises(HandshakeError) as caught:
            check_request(request)
        assert caught.value.status == 426


def test_two_keys_is_400() -> None:
    request = upgrade_request()
    request.headers.add("Sec-WebSocket-Key", KEY)
    with pytest.raises(HandshakeError) as caught:
        check_request(request)
    assert caught.value.status == 400


def test_error_responses() -> None:
    with pytest.raises(HandshakeError) as caught:
        check_request(upgrade_request(**{"Sec-WebSocket-Version": "8"}))
    response = caught.value.response()
    assert response.status == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert response.headers["Connection"] == "close"
    assert b"Sec-WebSocket-Version" in response.body
    with pytest.raises(HandshakeError) as caught:
        check_request(upgrade_request(Host=None))
    response = caught.value.response()
    assert response.status == 400 and b"Host" in response.body
    assert "Sec-WebSocket-Version" not in response.headers
    assert HandshakeError(405, "x").response().headers["Allow"] == "GET"
    with pytest.raises(RuntimeError):
        HandshakeError(0, "client side").response()


def test_accept_builds_101() -> None:
    response = accept(upgrade_request(), headers={"X-Server": "fastws"})
    assert response.status == 101
    assert response.headers.items() == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", ACCEPT),
        ("X-Server", "fastws"),
    ]
    assert b"Content-Length" not in response.encode()


def test_accept_raises_on_invalid_request() -> None:
    with pytest.raises(HandshakeError):
        accept(upgrade_request(Upgrade=None))


def test_subprotocol_choice_follows_server_preference() -> None:
    request = upgrade_request(**{"Sec-WebSocket-Protocol": "chat, superchat"})
    request.headers.add("Sec-WebSocket-Protocol", "v2.json")
    chosen = accept(request, subprotocols=["v2.json", "chat"])
    assert chosen.headers.get_all("Sec-WebSocket-Protocol") == ["v2.json"]
    assert accept(request, subprotocols=["superchat"]).headers["sec-websocket-protocol"] == (
        "superchat"
    )
    # names are case-sensitive; no match means no header
    assert "Sec-WebSocket-Protocol" not in accept(request, subprotocols=["CHAT"]).headers
    assert "Sec-WebSocket-Protocol" not in accept(upgrade_request(), subprotocols=["chat"]).headers


def test_parse_extensions() -> None:
    offers = [
        'permessage-deflate; client_max_window_bits; server_max_window_bits="10"',
        'x-webkit-deflate-frame, foo;a = b ;c="d"',
    ]
    assert parse_extensions(offers) == [
        (
            "permessage-deflate",
            [("client_max_window_bits", None), ("server_max_window_bits", "10")],
        ),
        ("x-webkit-deflate-frame", []),
        ("foo", [("a", "b"), ("c", "d")]),
    ]
    assert parse_extensions([]) == [] and parse_extensions([""]) == []
    assert parse_extensions([" , a ,, b ,"]) == [("a", []), ("b", [])]


@pytest.mark.parametrize(
    "value",
    [
        ";a",
        "a;",
        "a; =1",
        "a; b=",
        'a; b="unterminated',
        'a; b="not a token"',
        "a b",
        "a; b=1 c",
        "a; b=@",
    ],
)
def test_parse_extensions_malformed(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extensions([value])


def test_format_extensions_round_trip() -> None:
    offers = [("permessage-deflate", [("client_max_window_bits", None), ("x", "15")]), ("b", [])]
    text = format_extensions(offers)
    assert text == "permessage-deflate; client_max_window_bits; x=15, b"
    assert parse_extensions([text]) == offers
    with pytest.raises(ValueError):
        format_extensions([("a", [("b", "not a token")])])


def test_client_request() -> None:
    request = client_request(
        "example.com", 80, "/chat?x=1", KEY, secure=False,
        subprotocols=["chat", "v2"], extensions="permessage-deflate",
        headers={"Origin": "http://example.com"},
    )
    assert (request.method, request.target, request.version) == ("GET", "/chat?x=1", "1.1")
    assert request.headers.items() == [
        ("Host", "example.com"),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", KEY),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Protocol", "chat, v2"),
        ("Sec-WebSocket-Extensions", "permessage-deflate"),
        ("Origin", "http://example.com"),
    ]
    assert check_request(request) == KEY  # our own request passes our own check


@pytest.mark.parametrize(
    ("host", "port", "secure", "expected"),
    [
        ("h", 80, False, "h"),
        ("h", 443, True, "h"),
        ("h", 443, False, "h:443"),
        ("h", 80, True, "h:80"),
        ("::1", 9000, False, "[::1]:9000"),
        ("::1", 443, True, "[::1]"),
    ],
)
def test_client_request_host_header(host: str, port: int, secure: bool, expected: str) -> None:
    assert client_request(host, port, "/", KEY, secure=secure).headers["Host"] == expected


def test_client_request_rejects_non_token_subprotocol() -> None:
    with pytest.raises(ValueError):
        client_request("h", 80, "/", KEY, secure=False, subprotocols=["a b"])


def test_full_handshake_over_the_parsers() -> None:
    key = new_key()
    sent = client_request("h", 8080, "/ws", key, secure=False, subprotocols=["chat"]).encode()
    (request,) = RequestParser().feed(sent)
    answer = accept(request, subprotocols=["chat"]).encode()
    response = ResponseParser().feed(answer)
    assert response is not None
    assert check_response(response, key, subprotocols=["chat"]) == ("chat", [])


def test_check_response_valid() -> None:
    assert check_response(server_answer(), KEY) == (None, [])
    answer = server_answer(**{
        "Sec-WebSocket-Protocol": "chat",
        "Sec-WebSocket-Extensions": "permessage-deflate; server_no_context_takeover",
    })
    assert check_response(answer, KEY, subprotocols=["x", "chat"], extensions_offered=True) == (
        "chat", [("permessage-deflate", [("server_no_context_takeover", None)])],
    )


@pytest.mark.parametrize(
    ("response", "words"),
    [
        (Response(403), "403"),
        (Response(200), "200"),
        (server_answer(Upgrade=None), "Upgrade"),
        (server_answer(Upgrade="h2c"), "Upgrade"),
        (server_answer(Connection=None), "Connection"),
        (server_answer(**{"Sec-WebSocket-Accept": None}), "Sec-WebSocket-Accept"),
        (server_answer(**{"Sec-WebSocket-Accept": accept_key("other")}), "Sec-WebSocket-Accept"),
        (server_answer(**{"Sec-WebSocket-Protocol": "superchat"}), "superchat"),
        (server_answer(**{"Sec-WebSocket-Protocol": "chat, superchat"}), "several"),
        (server_answer(**{"Sec-WebSocket-Extensions": "permessage-deflate"}), "extensions"),
    ],
)
def test_check_response_failures(response: Response, words: str) -> None:
    with pytest.raises(HandshakeError) as caught:
        check_response(response, KEY, subprotocols=["chat"])
    assert caught.value.status == 0
    assert words in str(caught.value)


def test_check_response_malformed_extensions() -> None:
    answer = server_answer(**{"Sec-WebSocket-Extensions": "a;;"})
    with pytest.raises(HandshakeError, match="malformed"):
        check_response(answer, KEY, extensions_offered=True)


def test_check_response_several_protocol_lines() -> None:
    answer = server_answer(**{"Sec-WebSocket-Protocol": "chat"})
    answer.headers.add("Sec-WebSocket-Protocol", "chat")
    with pytest.raises(HandshakeError, match="several"):
        check_response(answer, KEY, subprotocols=["chat"])


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ws://example.com", (False, "example.com", 80, "/")),
        ("wss://example.com", (True, "example.com", 443, "/")),
        ("WS://Example.COM:8080/chat?room=1&x", (False, "example.com", 8080, "/chat?room=1&x")),
        ("wss://[::1]:9001/", (True, "::1", 9001, "/")),
        ("ws://h?q", (False, "h", 80, "/?q")),
    ],
)
def test_parse_ws_url(url: str, expected: tuple[bool, str, int, str]) -> None:
    assert parse_ws_url(url) == expected


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://example.com/", "scheme"),
        ("example.com", "scheme"),
        ("ws://example.com/#frag", "fragment"),
        ("ws://example.com/#", "fragment"),
        ("ws:///path", "host"),
        ("ws://user:pw@example.com/", "credentials"),
        ("ws://example.com:99999/", "ort"),
        ("ws://127.0.0.1:9/path with space", "whitespace"),
        ("ws://127.0.0.1:9/path?q=a b", "whitespace"),
        ("ws://127.0.0.1:9/pa\tth", "whitespace"),  # urlsplit would drop the tab
        ("ws://127.0.0.1:9/pa\r\nth", "whitespace"),
        ("ws://127.0.0.1:9/\x00", "control"),
        ("ws://127.0.0.1:9/\x7f", "control"),
        ("ws://127.0.0.1:9/caf\u00e9", "percent-encode"),
        ("ws://exa mple.com/", "whitespace"),
        (" ws://example.com/", "whitespace"),
    ],
)
def test_parse_ws_url_errors(url: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_ws_url(url)


def test_parse_ws_url_percent_encoded_resource_is_kept() -> None:
    assert parse_ws_url("ws://h/path%20with%20space?q=caf%C3%A9") == (
        False, "h", 80, "/path%20with%20space?q=caf%C3%A9",
    )



def test_connect_refuses_a_bad_url_before_any_io() -> None:
    with pytest.raises(ValueError, match="whitespace"):
        fastws.connect("ws://127.0.0.1:9/path with space", object())
