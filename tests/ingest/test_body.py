"""Content codings of request bodies (ingest.body): what decodes, what is refused, and how much a bomb costs."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.body import BodyError, content_coding, decode

LIMIT = 16 * 1024
BID = b'{"product_id": 1, "current_cpc": 1.5, "target_roas": 150}'


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        (" GZip ", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
        ("identity, gzip", "gzip"),
    ],
)
def test_content_codings_accepted(header: str | None, coding: str | None) -> None:
    assert content_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "compress", "gzip, deflate", "gzip,gzip", "foo", "*", "gzip;q=1"])
def test_other_content_codings_are_a_415(header: str) -> None:
    with pytest.raises(BodyError) as refused:
        content_coding(header)
    assert refused.value.status == 415
    assert refused.value.headers == {"Accept-Encoding": "gzip, deflate"}


@pytest.mark.parametrize(
    ("coding", "body", "expected"),
    [
        ("gzip", gzip.compress(BID), BID),
        ("gzip", gzip.compress(BID[:10]) + gzip.compress(BID[10:]), BID),
        ("deflate", zlib.compress(BID), BID),
        ("deflate", raw_deflate(BID), BID),
        ("gzip", gzip.compress(b""), b""),
    ],
    ids=["gzip", "gzip-members", "deflate-zlib", "deflate-raw", "gzip-empty-content"],
)
def test_decodes(coding: str, body: bytes, expected: bytes) -> None:
    assert decode(body, coding, LIMIT) == expected


def test_exactly_the_limit_decodes_and_one_byte_more_is_a_413() -> None:
    assert decode(gzip.compress(b"x" * LIMIT), "gzip", LIMIT) == b"x" * LIMIT
    with pytest.raises(BodyError) as refused:
        decode(gzip.compress(b"x" * (LIMIT + 1)), "gzip", LIMIT)
    assert refused.value.status == 413
    # The limit is on the whole body, not per gzip member.
    with pytest.raises(BodyError) as refused:
        decode(gzip.compress(b"x" * LIMIT) + gzip.compress(b"y"), "gzip", LIMIT)
    assert refused.value.status == 413


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_bomb_is_refused_after_inflating_at_most_the_limit(coding: str) -> None:
    """16 KiB of compressed zeros would inflate to ~16 MB; decoding allocates about the limit, not that."""
    bomb = gzip.compress(bytes(16_000_000), 9) if coding == "gzip" else zlib.compress(bytes(16_000_000), 9)
    assert len(bomb) <= LIMIT
    tracemalloc.start()
    try:
        with pytest.raises(BodyError) as refused:
            decode(bomb, coding, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 413
    assert peak < 4 * LIMIT + 64 * 1024, peak


GZIPPED = gzip.compress(BID)
CORRUPT = {
    "not-compressed": ("gzip", BID),
    "bad-bytes": ("gzip", b"\x1f\x8b\x08\x00" + b"\xff" * 30),
    "zeroed-crc": ("gzip", GZIPPED[:-8] + bytes(4) + GZIPPED[-4:]),
    "wrong-length": ("gzip", GZIPPED[:-4] + b"\x01\0\0\0"),
    "trailing-garbage": ("gzip", GZIPPED + b"x"),
    "trailing-gzip-magic-only": ("gzip", GZIPPED + b"\x1f\x8b"),
    "truncated-trailer": ("gzip", GZIPPED[:-1]),
    "truncated-stream": ("gzip", GZIPPED[:12]),
    "empty": ("gzip", b""),
    "deflate-bad": ("deflate", b"\x78\x9c\xff\xff"),
    "deflate-zeroed-adler": ("deflate", zlib.compress(BID)[:-4] + bytes(4)),
    "deflate-trailing": ("deflate", zlib.compress(BID) + b"x"),
    "deflate-truncated": ("deflate", zlib.compress(BID)[:-1]),
    "deflate-empty": ("deflate", b""),
    "deflate-gzip-body": ("deflate", GZIPPED),
}


@pytest.mark.parametrize(("coding", "body"), CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_bodies_are_a_400(coding: str, body: bytes) -> None:
    with pytest.raises(BodyError) as refused:
        decode(body, coding, LIMIT)
    assert refused.value.status == 400
    assert coding in refused.value.message


@settings(max_examples=1000, deadline=None, derandomize=True)
@given(
    coding=st.sampled_from(["gzip", "deflate"]),
    payload=st.binary(max_size=300),
    cut=st.integers(0, 400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
    tail=st.binary(max_size=8),
)
def test_any_mangled_body_decodes_or_is_a_4xx(
    coding: str, payload: bytes, cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    """Whatever the bytes: the decoded body (bounded by the limit) or a BodyError 400/413, nothing else."""
    body = bytearray(gzip.compress(payload) if coding == "gzip" else zlib.compress(payload))
    for position, xor in flips:
        if position < len(body):
            body[position] ^= xor
    mangled = bytes(body[: len(body) - cut % (len(body) + 1)]) + tail
    try:
        size, status = len(decode(mangled, coding, LIMIT)), 200
    except BodyError as refused:
        size, status = 0, refused.status
    assert status in {200, 400, 413}
    assert size <= LIMIT
