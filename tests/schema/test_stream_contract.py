"""The stream contract: one entry of every stream, written and read back through a real Redis, held to docs/streams.md.

For each stream the test checks that the encoder writes exactly the fields the document lists, that each value has
the documented format, and that decoding what Redis returns gives back the same event. A change of encoding (a new
field, a renamed one, `1.5E+2` instead of `150`) therefore fails here until the document and the consumers follow.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schema import keys
from schema.competitor import STREAM_RECORD_FIELD, CompetitorPrice
from schema.events import (
    AuditFlag,
    AuditReportSummary,
    BidReply,
    BidRequested,
    DeadLetter,
    PricedBid,
    decode_replies,
    encode_replies,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "streams.md"

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
INT = r"-?\d+"
POSITIVE_INT = r"[1-9]\d*"
MONEY = r"\d+\.\d{2}"
SIGNED_MONEY = r"[+-]\d+\.\d{2}"
PLAIN_DECIMAL = r"\d+(\.\d*[1-9])?"  # positional, no trailing zeros, no exponent
FLOAT_REPR = r"-?(\d+\.\d+(e[+-]\d+)?|\d+e[+-]\d+|inf|nan)"
ISO_WITH_OFFSET = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?[+-]\d{2}:\d{2}"
ENTRY_ID = r"\d+-\d+"
JSON_OBJECT = r"\{.*\}"
ANY = r".+"

MOMENT = datetime(2026, 11, 25, 12, 9, 44, 101_000, tzinfo=UTC)


@dataclass(frozen=True)
class StreamCase:
    stream: str
    event: Any
    encode: Callable[[Any], dict[str, str]]
    decode: Callable[[Mapping[str, str]], Any]
    formats: dict[str, str]


CASES = [
    StreamCase(
        keys.BID_REQUESTS,
        BidRequested("3cf5bdd7-0d2b-4b9e-8f0a-1c2d3e4f5a6b", "bids:replies:9f2c", "10482", 123, 1.5, 150.0),
        BidRequested.to_fields,
        BidRequested.from_fields,
        {
            "request_id": UUID,
            "reply_to": re.escape(keys.REPLY_STREAM_PREFIX) + ANY,
            "reply_id": ANY,
            "product_id": POSITIVE_INT,
            "current_cpc": FLOAT_REPR,
            "target_roas": FLOAT_REPR,
        },
    ),
    StreamCase(
        keys.BIDS_PRICED,
        PricedBid(
            bid_id=27718,
            request_id="3cf5bdd7-0d2b-4b9e-8f0a-1c2d3e4f5a6b",
            product_id=123,
            current_cpc=Decimal("1.50"),
            target_roas=Decimal("150.0000"),  # as numeric(12, 4) returns it
            adjusted_cpc=Decimal("2.25"),
            calculated_at=MOMENT,
        ),
        PricedBid.to_fields,
        PricedBid.from_fields,
        {
            "bid_id": POSITIVE_INT,
            "request_id": UUID,
            "product_id": POSITIVE_INT,
            "current_cpc": MONEY,
            "target_roas": PLAIN_DECIMAL,
            "adjusted_cpc": MONEY,
            "calculated_at": ISO_WITH_OFFSET,
        },
    ),
    StreamCase(
        keys.BIDS_DEAD_LETTER,
        DeadLetter(
            "1764572000000-0",
            keys.BID_REQUESTS,
            "undecodable event",
            {"request_id": "x", "product_id": "7"},
            group=keys.PRICING_GROUP,
        ),
        DeadLetter.to_fields,
        DeadLetter.from_fields,
        {"entry_id": ENTRY_ID, "stream": ANY, "group": ANY, "deliveries": INT, "reason": ANY, "fields": JSON_OBJECT},
    ),
    StreamCase(
        keys.AUDIT_DEAD_LETTER,
        DeadLetter(
            "1764572000000-0",
            keys.BIDS_PRICED,
            "InvalidOperation: [<class 'decimal.InvalidOperation'>]",
            {"bid_id": "27718", "product_id": "7"},
            group=keys.AUDIT_GROUP,
            deliveries=5,
        ),
        DeadLetter.to_fields,
        DeadLetter.from_fields,
        {"entry_id": ENTRY_ID, "stream": ANY, "group": ANY, "deliveries": INT, "reason": ANY, "fields": JSON_OBJECT},
    ),
    StreamCase(
        keys.AUDIT_FLAGS,
        AuditFlag(
            bid_id=27718,
            request_id="3cf5bdd7-0d2b-4b9e-8f0a-1c2d3e4f5a6b",
            product_id=123,
            current_cpc=Decimal("10.00"),
            adjusted_cpc=Decimal("12.01"),
            deviation=Decimal("2.01"),
            deviation_pct=Decimal("20.10"),
            calculated_at=MOMENT,
            flagged_at=MOMENT,
        ),
        AuditFlag.to_fields,
        AuditFlag.from_fields,
        {
            "bid_id": POSITIVE_INT,
            "request_id": UUID,
            "product_id": POSITIVE_INT,
            "current_cpc": MONEY,
            "adjusted_cpc": MONEY,
            "deviation": SIGNED_MONEY,
            "deviation_pct": rf"({SIGNED_MONEY}|inf)",
            "calculated_at": ISO_WITH_OFFSET,
            "flagged_at": ISO_WITH_OFFSET,
        },
    ),
    StreamCase(
        keys.AUDIT_REPORTS,
        AuditReportSummary(
            generated_at=MOMENT,
            window_start=MOMENT,
            reviewed=778214,
            flagged=138502,
            deviation_total=Decimal("91234.56"),
            flagged_deviation_total=Decimal("0"),  # coalesce(sum(...), 0) on an empty window
        ),
        AuditReportSummary.to_fields,
        AuditReportSummary.from_fields,
        {
            "title": re.escape(AuditReportSummary.TITLE),
            "generated_at": ISO_WITH_OFFSET,
            "window_start": ISO_WITH_OFFSET,
            "window_end": ISO_WITH_OFFSET,
            "reviewed": INT,
            "flagged": INT,
            "deviation_total": MONEY,
            "flagged_deviation_total": MONEY,
        },
    ),
    StreamCase(
        keys.COMPETITOR_PRICES_STREAM,
        CompetitorPrice(
            productId=1,
            productName="Essence Mascara",
            brand=None,
            category="beauty",
            price=9.99,
            discountPercentage=7.17,
            rating=4.94,
            stock=5,
            timestamp=MOMENT,
        ),
        lambda record: {STREAM_RECORD_FIELD: record.to_json()},
        lambda fields: CompetitorPrice.from_json(fields[STREAM_RECORD_FIELD]),
        {STREAM_RECORD_FIELD: JSON_OBJECT},
    ),
]


def documented_fields() -> dict[str, list[str]]:
    """Per stream section of docs/streams.md (`## \\`name\\`: ...`), the field names of its table."""
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"## `([^`]+)`", line)
        if heading:
            current = heading.group(1)
            sections[current] = []
            continue
        row = re.match(r"\| `([^`]+)` \|", line)
        if current is not None and row:
            sections[current].append(row.group(1))
    return sections


@pytest.mark.parametrize("case", CASES, ids=[case.stream for case in CASES])
async def test_entry_round_trips_through_redis_with_the_documented_fields(
    redis: aioredis.Redis, case: StreamCase
) -> None:
    fields = case.encode(case.event)
    assert list(fields) == documented_fields()[case.stream], f"fields of {case.stream} differ from docs/streams.md"
    for name, value in fields.items():
        assert re.fullmatch(case.formats[name], value), f"{case.stream} {name}={value!r} is not {case.formats[name]}"

    entry_id = await redis.xadd(case.stream, fields)  # type: ignore[arg-type]
    [(read_id, read_fields)] = await redis.xrange(case.stream)
    assert read_id == entry_id
    assert read_fields == fields
    assert case.decode(read_fields) == case.event


def test_dead_letters_written_before_group_and_deliveries_still_decode() -> None:
    old = {"entry_id": "1-0", "stream": keys.BID_REQUESTS, "reason": "x", "fields": '{"a":"b"}'}
    assert DeadLetter.from_fields(old) == DeadLetter("1-0", keys.BID_REQUESTS, "x", {"a": "b"})


def test_target_roas_is_written_in_positional_notation() -> None:
    bid = CASES[1].event
    for stored, written in [("150.0000", "150"), ("1.2500", "1.25"), ("0.0001", "0.0001"), ("100", "100")]:
        assert PricedBid.to_fields(_with_roas(bid, Decimal(stored)))["target_roas"] == written


def _with_roas(bid: PricedBid, roas: Decimal) -> PricedBid:
    return PricedBid(
        bid.bid_id, bid.request_id, bid.product_id, bid.current_cpc, roas, bid.adjusted_cpc, bid.calculated_at
    )


async def test_replies_round_trip_one_field_per_request(redis: aioredis.Redis) -> None:
    """`bids:replies:<gateway>` (private): `<reply_id>` -> `<bid_id>|<adjusted_cpc>|<error>`."""
    replies = [
        BidReply("1", 27718, "2.25"),
        BidReply("2", 27719, error=BidReply.IDEMPOTENCY_CONFLICT),
        BidReply("3", error=BidReply.REJECTED),
    ]
    stream = keys.reply_stream("gateway-under-test")
    await redis.xadd(stream, encode_replies(replies))  # type: ignore[arg-type]
    [(_, fields)] = await redis.xrange(stream)
    assert fields == {"1": "27718|2.25|", "2": "27719||idempotency-conflict", "3": "||rejected"}
    assert decode_replies(fields) == replies


def test_every_stream_in_the_key_table_has_a_contract() -> None:
    """Each stream of docs/streams.md's key table is covered here (the reply streams by the test above)."""
    documented = set(documented_fields())
    covered = {case.stream for case in CASES}
    assert covered <= documented
    assert documented - covered == {"bids:replies:<gateway id>"}
