"""Property-based fuzzing of `POST /api/bid/` against the running pipeline (a real gateway and pricing agent).

Whatever the body, Content-Type, Content-Encoding and the other headers: never a 5xx, always a JSON answer,
nothing on `bids:requests` unless the bid was accepted, the legacy rules (`legacy.validate_bid_data`) decide
first, and a 200 is a stored row priced by the legacy formula. A compressed body is judged as the body it
decodes to; one that does not decode is a 400, an unknown coding a 415.
"""

from __future__ import annotations

import gzip
import http.client
import json
import math
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import redis as sync_redis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from ingest.validation import FIELDS
from legacy import calculate_adjusted_cpc, validate_bid_data
from schema import keys
from schema.database import BIDS_TABLE
from schema.settings import Settings
from tests.pipeline.conftest import Pipeline

MAX_BODY_BYTES = Settings().max_body_bytes
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,  # the same examples on every run; the @example()s pin the known edge cases
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Raw:
    """JSON text inserted verbatim: number spellings json.dumps never writes (1e400, -0, NaN, 4400 digits)."""

    text: str


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{encode(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    return json.dumps(value)  # floats: nan/inf come out as NaN/Infinity, which strict JSON rejects


# --- strategies -------------------------------------------------------------------------------------------

NUMERIC_LOOKING = [
    "1", " 1.5", "1.5 ", "\t2\n", "\v3\f", "\u00a01", "1e3", "1E3", "1e", "1e+", ".5", "5.", "+1", "-1", "-0",
    "0", "00", "0.0", "-0.0", "0x1A", "0b1", "0o7", "1_000", "nan", "NaN", "inf", "-inf", "Infinity", "", " ",
    "1.5abc", "abc", "1e400", "-1e400", "1e-400", "9" * 19, "9223372036854775807", "9223372036854775808",
    "-9223372036854775808", "٣", "²", "+-5", "--5", " +5 ", "1,5", "0.00001", "0.0001", "99999999.9999",
    "99999999.99995", "9999999999.99", "9999999999.995", "1.7976931348623157e308", "4.9e-324",
]  # fmt: skip
RAW_NUMBERS = [
    "1e400", "-1e400", "1E-400", "-0", "-0.0", "0e0", "1.0e+2", "123456789012345678901234567890", "NaN",
    "Infinity", "-Infinity", "9223372036854775807", "9223372036854775808", "18446744073709551616", "1" * 4301,
    "0.0001", "0.00005", "99999999.9999", "99999999.99995", "9999999999.99", "9999999999.995", "1e10", "5e-324",
    '"\\ud800"', '"\\u0031"', '"1\\u0000"', '"\\u0661"',
]  # fmt: skip
WHITESPACE = st.sampled_from(["", "", "", " ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "  "])

numeric_strings = st.one_of(
    st.sampled_from(NUMERIC_LOOKING),
    st.builds(
        lambda before, number, after: before + number + after,
        WHITESPACE,
        st.from_regex(r"[+-]?[0-9]{0,25}(\.[0-9]{0,6})?([eE][+-]?[0-9]{1,3})?", fullmatch=True),
        WHITESPACE,
    ),
    # Whole-number strings past Python's int() digit limit (4300), still well under the body limit.
    st.builds(lambda n, lead, pad: pad + lead + "9" * n + pad, st.integers(4250, 5000), st.sampled_from(["", "+"]),
              st.sampled_from(["", " "])),
)  # fmt: skip
raw_numbers = st.one_of(
    st.sampled_from(RAW_NUMBERS),
    st.from_regex(r"-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?", fullmatch=True),
).map(Raw)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # nan and inf included (sent as NaN/Infinity)
    st.floats(min_value=0, max_value=1e4),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, raw_numbers, numeric_strings, st.text(max_size=20))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
# Values that pass every rule, so a good share of examples reach the agent and the database.
plausible = {
    "product_id": st.one_of(st.integers(1, 10**9), st.integers(1, 10**9).map(str), st.just(2**63 - 1)),
    "current_cpc": st.one_of(
        st.integers(0, 10_000), st.floats(0, 1e4), st.decimals(0, 10_000, places=2).map(lambda d: Raw(str(d)))
    ),
    "target_roas": st.one_of(st.integers(1, 1000), st.floats(0.0001, 1e4), st.sampled_from(["150", " 120.5 "])),
}


@st.composite
def bid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """Objects with the three fields (sometimes one missing), arbitrary values and sometimes extra keys."""
    # Each field is plausible 7 times in 10 (a third of the bids reach the database), anything otherwise.
    document = {
        name: draw(plausible[name] if draw(st.integers(0, 9)) < 7 else st.one_of(scalars, json_values))
        for name in FIELDS
    }
    if draw(st.integers(0, 9)) == 0:
        del document[draw(st.sampled_from(FIELDS))]
    document.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return document


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:  # truncated JSON
        text = encode(draw(bid_documents())).encode()
        return text[: draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == 2:  # deep nesting, closed or not, inside a field or not
        depth = draw(st.integers(900, 5000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        nested = opener * depth + "1" + closer * depth * draw(st.integers(0, 1))
        if draw(st.booleans()):
            nested = '{"product_id": 1, "current_cpc": 1, "target_roas": ' + nested + "}"
        return nested.encode()
    if kind == 3:  # invalid UTF-8 inside an otherwise valid bid
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"]))
        return b'{"product_id": "1' + junk + b'", "current_cpc": 1, "target_roas": 100}'
    if kind == 4:  # other encodings of a valid bid, and byte-order marks
        document = encode(draw(bid_documents()))
        encoding = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"]))
        return document.encode(encoding, "replace")
    if kind == 5:  # duplicate keys: the last one wins in json.loads
        first, second = draw(scalars), draw(scalars)
        fields = f'"product_id": {encode(first)}, "current_cpc": 1, "target_roas": 100'
        return f'{{{fields}, "product_id": {encode(second)}}}'.encode()
    if kind == 6:  # around the size limit
        size = draw(st.sampled_from([MAX_BODY_BYTES - 1, MAX_BODY_BYTES, MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES]))
        prefix = b'{"product_id": 1, "current_cpc": 1, "target_roas": 100, "pad": "'
        return prefix + b"x" * max(0, size - len(prefix) - 2) + b'"}'
    return encode(draw(json_values)).encode()


JSON_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "Application/JSON",
    "application/json;charset=latin-1",
]
OTHER_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
               "application/json-patch+json", "application/jsonx", "text/json", "application/octet-stream"]  # fmt: skip
content_types = st.one_of(
    st.sampled_from(JSON_TYPES),
    st.sampled_from([*JSON_TYPES, *OTHER_TYPES, None]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)


# --- a known bug, reported on its own ---------------------------------------------------------------------


# --- the check --------------------------------------------------------------------------------------------


class Target:
    """The module's pipeline, seen through sync clients (hypothesis tests are sync)."""

    def __init__(self, pipeline: Pipeline, redis: sync_redis.Redis, db: psycopg.Connection[Any]) -> None:
        self.pipeline = pipeline
        self.redis = redis
        self.db = db

    def __repr__(self) -> str:  # keeps the environment out of hypothesis' failure reports
        return f"Target({self.pipeline.gateway_url})"

    def last_request_id(self) -> str:
        return str(self.redis.xinfo_stream(keys.BID_REQUESTS)["last-generated-id"])

    def post(
        self, body: bytes, content_type: str | None, extra: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        url = urlsplit(self.pipeline.gateway_url)
        connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        headers = {**({} if content_type is None else {"Content-Type": content_type}), **(extra or {})}
        try:
            connection.request("POST", "/api/bid/", body=body, headers=headers)
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def stored(self, bid_id: int) -> tuple[int, Decimal, str]:
        row = self.db.execute(
            f"SELECT product_id, adjusted_cpc, request_id FROM {BIDS_TABLE} WHERE id = %s", (bid_id,)
        ).fetchone()
        assert row is not None, f"bid {bid_id} answered 200 but has no row"
        return row[0], row[1], str(row[2])


@pytest.fixture(scope="module")
def target(pipeline: Pipeline) -> Iterator[Target]:
    redis = sync_redis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    with psycopg.connect(pipeline.database_url, autocommit=True) as db:
        yield Target(pipeline, redis, db)
    redis.close()


def strict_json(body: bytes) -> Any:
    """The document the gateway should see (PHP's json_decode: no NaN/Infinity), or ValueError."""

    def reject(name: str) -> Any:
        raise ValueError(name)

    return json.loads(body, parse_constant=reject)


def is_json_type(content_type: str | None) -> bool:
    return content_type is not None and content_type.split(";")[0].strip().lower() == "application/json"


def gateway_float(value: Any) -> float:
    return float(value.strip()) if isinstance(value, str) else float(value)


# Deeper documents may be refused as "Malformed JSON body": json.loads hits the recursion limit sooner inside
# the gateway's deeper stack than in this process (PHP's json_decode stops at 512 by default).
JSON_MAX_DEPTH = 512


def depth(document: Any) -> int:
    deepest, level = 0, [(document, 1)]
    while level:
        value, d = level.pop()
        deepest = max(deepest, d)
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        level.extend((child, d + 1) for child in children)
    return deepest


def whole_number(value: Any) -> int:
    """The product id of an accepted bid: digit strings exactly, other numeric strings through float."""
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())
    return int(gateway_float(value))


def stream_id(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


def check(
    target: Target,
    body: bytes,
    content_type: str | None,
    extra: dict[str, str] | None = None,
    *,
    decoded: bytes | None = None,
    expected_status: int | None = None,
) -> None:
    """Post `body`; `decoded` is the body the gateway must judge (a compressed body's content), or
    `expected_status` the refusal it must give whatever the body (a coding it cannot decode or accept)."""
    before = target.last_request_id()
    status, headers, raw = target.post(body, content_type, extra)
    after = target.last_request_id()
    event(f"status {status}")
    assert status in {200, 400, 413, 415, 417}, (status, raw[:300])
    if expected_status is not None and is_json_type(content_type):
        assert status == expected_status, (status, raw[:300])
        assert after == before, f"a {status} added {after} to {keys.BID_REQUESTS}"
        assert json.loads(raw)["errors"], raw
        return
    wire_size = len(body)
    body = body if decoded is None else decoded
    answer = json.loads(raw)
    assert isinstance(answer, dict), answer

    if content_type in JSON_TYPES:
        assert status != 415, answer
    if content_type in OTHER_TYPES or content_type is None:
        assert status == 415, answer
    if is_json_type(content_type) and status != 415:
        too_large = wire_size > MAX_BODY_BYTES or len(body) > MAX_BODY_BYTES
        assert (status == 413) == too_large, (wire_size, len(body), status, answer)

    if status != 200:
        assert after == before, f"a {status} added {after} to {keys.BID_REQUESTS}"
        errors = answer.get("errors")
        assert isinstance(errors, list), answer
        assert errors, answer
        assert all(isinstance(e, str) and e for e in errors), answer

    try:
        document = strict_json(body)
    except (ValueError, RecursionError):
        document = None
    if (
        isinstance(document, dict)
        and all(name in document for name in FIELDS)
        and status in {200, 400}
        and depth(document) <= JSON_MAX_DEPTH
    ):
        legacy_errors = validate_bid_data(*(document[name] for name in FIELDS))
        if legacy_errors:
            assert status == 400, (legacy_errors, answer)
            assert answer["errors"][: len(legacy_errors)] == legacy_errors, answer

    if status == 200:
        assert stream_id(after) > stream_id(before), "a 200 without a stream entry"
        assert isinstance(document, dict), "accepted a body that is not a strict JSON object"
        assert set(answer) == {"adjusted_cpc", "bid_id"}, answer
        product_id, stored_cpc, request_id = target.stored(answer["bid_id"])
        assert request_id == headers.get("X-Request-Id"), (request_id, headers)
        assert float(stored_cpc) == answer["adjusted_cpc"], (stored_cpc, answer)
        assert Decimal(str(answer["adjusted_cpc"])) == stored_cpc
        assert product_id == whole_number(document["product_id"]), (product_id, document)
        cpc, roas = document["current_cpc"], document["target_roas"]
        if all(isinstance(v, int | float | str) and not isinstance(v, bool) for v in (cpc, roas)):
            expected = calculate_adjusted_cpc(gateway_float(cpc), gateway_float(roas))
            assert math.isfinite(expected)
            assert answer["adjusted_cpc"] == expected, (cpc, roas, answer, expected)


# --- the properties ---------------------------------------------------------------------------------------


@FUZZ
@given(document=bid_documents())
@example(document={"product_id": 1, "current_cpc": Raw("-0"), "target_roas": 100})
@example(document={"product_id": 1, "current_cpc": "-0", "target_roas": " 150 "})
@example(document={"product_id": "1e3", "current_cpc": " 1.5", "target_roas": "1e2"})
@example(document={"product_id": 1, "current_cpc": 9999999999.99, "target_roas": 100})
@example(document={"product_id": 1, "current_cpc": 9999999999.99, "target_roas": 101})
@example(document={"product_id": 1, "current_cpc": 1, "target_roas": Raw("0.00005")})
@example(document={"product_id": 1, "current_cpc": 1, "target_roas": Raw("99999999.9999")})
@example(document={"product_id": 1, "current_cpc": Raw("1e400"), "target_roas": 100})
@example(document={"product_id": 2**63, "current_cpc": 1, "target_roas": 100})
@example(document={"product_id": "0x1A", "current_cpc": "nan", "target_roas": "inf"})
@example(document={"product_id": [], "current_cpc": {}, "target_roas": None})
def test_bid_documents(target: Target, document: dict[str, Any]) -> None:
    check(target, encode(document).encode(), "application/json")


@FUZZ
@given(document=json_values)
def test_arbitrary_json_documents(target: Target, document: Any) -> None:
    check(target, encode(document).encode(), "application/json")


@FUZZ
@given(body=raw_bodies(), content_type=content_types)
@example(body=b"[" * 5000, content_type="application/json")
@example(body=b'{"a":' * 5000, content_type="application/json")
@example(body=b"\xff\xfe", content_type="application/json")
@example(body=b"", content_type="application/json")
@example(body=b'{"product_id": 1, "current_cpc": 1, "target_roas": 100}', content_type="text/plain")
@example(body=b'{"product_id": 1, "current_cpc": 1, "target_roas": 100}', content_type=None)
@example(
    body=b'{"product_id": 1, "current_cpc": 1, "target_roas": ' + b"1" * 4301 + b"}", content_type="application/json"
)
def test_raw_bodies_and_content_types(target: Target, body: bytes, content_type: str | None) -> None:
    check(target, body, content_type)


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


COMPRESSORS = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress, "deflate-raw": deflate_raw}
UNKNOWN_CODINGS = ["br", "zstd", "compress", "gzip, deflate", "gzip, gzip", "*", "chunked", "utf-8"]


@st.composite
def encoded_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bytes | None, int | None]:
    """(wire body, headers, the body it decodes to, or the status it must get whatever it decodes to)."""
    plain = draw(st.one_of(st.builds(lambda d: encode(d).encode(), bid_documents()), raw_bodies()))
    headers: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        headers["Idempotency-Key"] = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20))
    if draw(st.integers(0, 5)) == 0:
        headers["Expect"] = draw(st.sampled_from(["100-continue", "100-Continue", "teapot", "200-ok"]))
    expected: int | None = None
    if "Expect" in headers and headers["Expect"].lower() != "100-continue":
        expected = 417
    kind = draw(st.sampled_from(["none", "identity", "valid", "valid", "truncated", "trailing", "unknown", "bomb"]))
    if kind in ("none", "identity"):
        if kind == "identity":
            headers["Content-Encoding"] = "identity"
        return plain, headers, plain, expected
    if kind == "unknown":
        headers["Content-Encoding"] = draw(st.sampled_from(UNKNOWN_CODINGS))
        return plain, headers, None, expected or 415
    coding = draw(st.sampled_from(sorted(COMPRESSORS)))
    headers["Content-Encoding"] = coding.removesuffix("-raw")
    if kind == "bomb":
        plain = b'{"product_id": 1, "current_cpc": 1, "target_roas": 100, "pad": "' + b" " * 200_000 + b'"}'
    wire = COMPRESSORS[coding](plain)
    if kind == "truncated" and coding != "deflate-raw":  # a raw deflate stream has no trailer to miss
        return wire[: draw(st.integers(0, len(wire) - 1))], headers, None, expected or 400
    if kind == "trailing":
        return wire + draw(st.sampled_from([b"x", b"\n", b"garbage", b"\x00"])), headers, None, expected or 400
    return wire, headers, plain, expected


@FUZZ
@given(request=encoded_requests(), content_type=st.sampled_from(JSON_TYPES))
@example(
    request=(
        gzip.compress(b'{"product_id": 1, "current_cpc": 1, "target_roas": 100}'),
        {"Content-Encoding": "gzip"},
        b'{"product_id": 1, "current_cpc": 1, "target_roas": 100}',
        None,
    ),
    content_type="application/json",
)
@example(request=(b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, None, 400), content_type="application/json")
def test_content_encodings_and_headers(
    target: Target, request: tuple[bytes, dict[str, str], bytes | None, int | None], content_type: str
) -> None:
    body, headers, decoded, expected_status = request
    if "Idempotency-Key" in headers:  # never reused across examples: a reused key with another body is a 422
        headers = {**headers, "Idempotency-Key": headers["Idempotency-Key"] + uuid.uuid4().hex}
    check(target, body, content_type, headers, decoded=decoded, expected_status=expected_status)


@pytest.mark.parametrize(
    "product_id",
    ["9" * 5000, " " + "1" * 4400 + " ", "+" + "1" * 4301],
    ids=["5000", "4400", "sign"],
)
def test_product_id_beyond_int_digit_limit_is_a_400(target: Target, product_id: str) -> None:
    """A numeric product_id string of more than 4300 digits is numeric for PHP, out of range for us: a 400."""
    body = json.dumps({"product_id": product_id, "current_cpc": 1, "target_roas": 100}).encode()
    before = target.last_request_id()
    status, _, raw = target.post(body, "application/json")
    assert status == 400, (status, raw[:200])
    assert json.loads(raw)["errors"] == ["product_id must be a whole number from 1 to 9223372036854775807"]
    assert target.last_request_id() == before
