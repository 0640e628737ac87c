"""The C helpers behind the codec: masking and incremental UTF-8 validation."""

import itertools
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastws import FrameParser, Utf8Validator, encode_frame, is_valid_utf8, mask


def xor_mask(data, key_bytes, offset=0):
    return bytes(b ^ key_bytes[(i + offset) % 4] for i, b in enumerate(data))


@pytest.mark.parametrize("length", [0, 1, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65,
                                    127, 128, 129, 255, 1000, 4097])
def test_mask_matches_plain_xor_at_every_alignment(length):
    rng = random.Random(length)
    backing = rng.randbytes(length + 64)
    key = rng.getrandbits(32)
    for start in range(33):   # unaligned starts through a memoryview slice
        data = memoryview(backing)[start:start + length]
        assert mask(data, key) == xor_mask(data, key.to_bytes(4, "big"))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.binary(min_size=4, max_size=4))
def test_mask_is_its_own_inverse(data, key):
    assert mask(data, key) == xor_mask(data, key)
    assert mask(mask(data, key), key) == data


def test_mask_rejects_missing_or_bad_key():
    with pytest.raises(TypeError):
        mask(b"abc", None)
    with pytest.raises(ValueError):
        mask(b"abc", b"12")


def test_unmasking_resumes_at_every_key_offset():
    # A masked payload split at every position: the parser must continue the key
    # from the right byte (offsets 1, 2 and 3 into the key included).
    payload = os.urandom(300)
    wire = encode_frame(2, payload, masking_key=0xDEADBEEF)
    for cut in range(1, len(wire)):
        frames = []
        parser = FrameParser(frames.append)
        parser.feed(wire[:cut])
        parser.feed(wire[cut:])
        assert frames[0].data == payload


# ------------------------------------------------------------------ UTF-8

def python_says_valid(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


ADVERSARIAL = [
    b"", b"plain ascii", "κόσμε".encode(), "\U0010ffff".encode(), "\ud7ff".encode(),
    "\ue000".encode(), b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xe0\x9f\xbf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x8f\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xff", b"\xfe", b"\x80", b"\xbf",
    b"\xe2\x82", b"\xf0\x9f\x98", b"a\xe2\x82\xacb", b"\xe2\x28\xa1", b"\xc3\x28",
    "Hello-µ@ßöäüàá-UTF-8!!".encode(), b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    b"x" * 40 + "é".encode() + b"y" * 40 + b"\xe9" + b"z" * 17,
]


@pytest.mark.parametrize("data", ADVERSARIAL)
def test_validator_agrees_with_python_at_every_split(data):
    expected = python_says_valid(data)
    assert is_valid_utf8(data) == expected
    for cut in range(len(data) + 1):
        v = Utf8Validator()
        ok = v.feed(data[:cut]) and v.feed(data[cut:])
        assert (ok and v.finish()) == expected, (data, cut)
    v = Utf8Validator()
    ok = all(v.feed(data[i:i + 1]) for i in range(len(data)))
    assert (ok and v.finish()) == expected


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.text(max_size=100).map(lambda s: s.encode("utf-8", "surrogatepass")),
                 st.text(max_size=100).map(str.encode)),
       st.lists(st.integers(0, 200), max_size=5))
def test_validator_matches_python_on_random_input(data, cuts):
    expected = python_says_valid(data)
    v = Utf8Validator()
    edges = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    ok = all(v.feed(data[a:b]) for a, b in itertools.pairwise(edges))
    assert (ok and v.finish()) == expected


def test_validator_fails_at_the_first_bad_byte_not_at_the_end():
    v = Utf8Validator()
    assert v.feed(b"valid start ")
    assert not v.feed(b"\xed\xa0")        # a surrogate's lead: known bad at once
    assert not v.valid
    assert not v.feed(b"ascii after")     # sticky
    v.reset()
    assert v.feed(b"\xe2\x82") and v.valid and not v.finish()   # open, not wrong
    assert v.feed(b"\xac") and v.finish()
