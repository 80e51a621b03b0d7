"""The audit's hot-path codecs against the stream contract's own: `audited_bid` decodes a `bids:priced` entry as
`PricedBid.from_fields` does, `flag_values` (with the fields the recorder fills in) encodes the `audit:flags`
entry `AuditFlag.to_fields` would, and the flag entry the recorder really writes is that one, field for field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processors.audit import audit_batch, is_flagged
from processors.audit_store import AuditStore
from redis_streams.groups import StreamEntry
from schema.audit import (
    FLAG_FIELDS,
    FLAG_FIELDS_OF_BATCH,
    FLAG_FIELDS_OF_BID,
    FLAG_VALUE_FIELDS,
    MAX_ABS_CENTS,
    audited_bid,
    flag_values,
    parse_amount,
)
from schema.events import AuditFlag, EventDecodeError, PricedBid, money
from schema.keys import AUDIT_FLAGS

CENT = Decimal("0.01")
cents = st.integers(min_value=0, max_value=MAX_ABS_CENTS)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.sampled_from([UTC, None])
) | st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.builds(timezone, st.timedeltas(min_value=timedelta(hours=-14), max_value=timedelta(hours=14))),
)


def priced_bid(bid_id: int, product_id: int, current: int, adjusted: int, at: datetime) -> PricedBid:
    return PricedBid(
        bid_id=bid_id,
        request_id="3cf5bdd7-0d2b-4b9e-8f0a-1c2d3e4f5a6b",
        product_id=product_id,
        current_cpc=Decimal(current).scaleb(-2),
        target_roas=Decimal("150"),
        adjusted_cpc=Decimal(adjusted).scaleb(-2),
        calculated_at=at,
    )


def reference_flag(bid: PricedBid, flagged_at: datetime) -> dict[str, str]:
    """The flag the audit agent wrote with Decimal arithmetic before its hot path (AuditFlag's own encoder), from
    the entry decoded as the contract decodes it."""
    bid = PricedBid.from_fields(bid.to_fields())
    current = bid.current_cpc.quantize(CENT, rounding=ROUND_HALF_UP)
    adjusted = bid.adjusted_cpc.quantize(CENT, rounding=ROUND_HALF_UP)
    pct = None if current == 0 else ((adjusted - current) * 100 / current).quantize(CENT, rounding=ROUND_HALF_UP)
    return AuditFlag(
        bid.bid_id,
        bid.request_id,
        bid.product_id,
        current,
        adjusted,
        adjusted - current,
        pct,
        bid.calculated_at,
        flagged_at,
    ).to_fields()


def assembled_flag(bid: PricedBid, flagged_at: datetime) -> dict[str, str]:
    """The flag entry as the recorder's script assembles it from flag_values() and what it knows itself."""
    values = dict(zip(FLAG_VALUE_FIELDS, flag_values(audited_bid(bid.to_fields())), strict=True))
    known = {"bid_id": str(bid.bid_id), "product_id": str(bid.product_id), "flagged_at": flagged_at.isoformat()}
    return {name: values.get(name, known.get(name, "")) for name in FLAG_FIELDS}


def test_flag_layout_names_every_field_once() -> None:
    assert tuple(reference_flag(priced_bid(1, 2, 100, 200, datetime.now(UTC)), datetime.now(UTC))) == FLAG_FIELDS
    assert sorted(FLAG_VALUE_FIELDS + FLAG_FIELDS_OF_BID + FLAG_FIELDS_OF_BATCH) == sorted(FLAG_FIELDS)


@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.integers(min_value=1, max_value=2**63 - 1),
    cents,
    cents,
    moments,
)
def test_audited_bid_decodes_as_the_contract(
    bid_id: int, product: int, current: int, adjusted: int, at: datetime
) -> None:
    bid = priced_bid(bid_id, product, current, adjusted, at)
    decoded = PricedBid.from_fields(bid.to_fields())
    got_id, request_id, product_id, current_cents, current_text, adjusted_cents, adjusted_text, day, moment = (
        audited_bid(bid.to_fields())
    )

    assert (got_id, request_id, product_id) == (decoded.bid_id, decoded.request_id, decoded.product_id)
    assert (current_cents, current_text) == (current, money(decoded.current_cpc))
    assert (adjusted_cents, adjusted_text) == (adjusted, money(decoded.adjusted_cpc))
    utc = decoded.calculated_at if decoded.calculated_at.tzinfo else decoded.calculated_at.replace(tzinfo=UTC)
    assert day == utc.astimezone(UTC).date().isoformat()
    assert moment == decoded.calculated_at.isoformat()


@given(
    st.decimals(allow_nan=True, allow_infinity=True, places=None)
    | st.text(max_size=12)
    | st.from_regex(r"-?[0-9]{1,13}\.[0-9]{0,4}", fullmatch=True)
)
def test_amounts_are_judged_as_the_decimal_rule_judged_them(text: object) -> None:
    raw = str(text)
    try:
        expected = Decimal(raw)
        valid = expected.is_finite() and abs(expected.quantize(CENT, rounding=ROUND_HALF_UP)) < 10**10
    except ArithmeticError:
        valid = False
    if not valid:
        with pytest.raises(EventDecodeError):
            parse_amount(raw)
        return
    stored = expected.quantize(CENT, rounding=ROUND_HALF_UP) + 0  # + 0: numeric has no negative zero
    assert parse_amount(raw) == (int(stored.scaleb(2)), money(stored))


@given(st.integers(min_value=-(10**6), max_value=MAX_ABS_CENTS), cents, moments, moments)
def test_flag_values_encode_as_the_contract(current: int, adjusted: int, at: datetime, flagged: datetime) -> None:
    bid = priced_bid(27718, 123, current, adjusted, at)
    assert assembled_flag(bid, flagged) == reference_flag(bid, flagged)


@pytest.mark.parametrize(
    ("moment", "day"),
    [
        ("2026-11-24T23:30:00.000001+00:00", "2026-11-24"),
        ("2026-11-24T23:30:00+00:00", "2026-11-24"),
        ("2026-11-24T23:30:00.000000+00:00", "2026-11-24"),  # isoformat() would not write the zeros
        ("2026-11-24T23:30:00.000001-01:00", "2026-11-25"),
        ("2026-11-24 23:30:00.000001+00:00", "2026-11-24"),
        ("2026-W48-2T23:30:00.000001+00:00", "2026-11-24"),  # a week date of the same length
        ("2026-11-24T23:30:00.000001", "2026-11-24"),  # naive: taken as UTC
        ("2026-11-24T23:30:00Z", "2026-11-24"),
    ],
)
def test_the_day_is_the_utc_day_of_any_iso_spelling(moment: str, day: str) -> None:
    fields = {**priced_bid(1, 2, 100, 200, datetime.now(UTC)).to_fields(), "calculated_at": moment}
    decoded = audited_bid(fields)
    assert decoded[7] == day
    assert decoded[8] == PricedBid.from_fields(fields).calculated_at.isoformat()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bid_id", "x"),
        ("bid_id", "-1"),
        ("bid_id", str(2**63)),
        ("product_id", "7.5"),
        ("current_cpc", "NaN"),
        ("adjusted_cpc", "Infinity"),
        ("adjusted_cpc", "1e999999"),
        ("adjusted_cpc", "10000000000.00"),  # beyond numeric(12, 2)
        ("calculated_at", "yesterday"),
        ("calculated_at", "2026-13-01T00:00:00+00:00"),
    ],
)
def test_what_cannot_be_stored_is_undecodable(field: str, value: str) -> None:
    fields = priced_bid(1, 2, 100, 200, datetime.now(UTC)).to_fields()
    with pytest.raises(EventDecodeError):
        audited_bid({**fields, field: value})
    missing = {k: v for k, v in fields.items() if k != field}
    with pytest.raises(EventDecodeError, match=field):
        audited_bid(missing)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cents, cents, st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC)))
async def test_the_recorder_writes_the_contracts_flag(
    redis: aioredis.Redis, current: int, adjusted: int, at: datetime
) -> None:
    await redis.delete(AUDIT_FLAGS, *[k async for k in redis.scan_iter(match="audit:*")])
    bid = priced_bid(27718, 123, current, adjusted, at)
    flagged_at = at + timedelta(seconds=1)

    await audit_batch([StreamEntry("1-0", bid.to_fields())], store=AuditStore(redis, flags_maxlen=100), now=flagged_at)

    written = [fields for _, fields in await redis.xrange(AUDIT_FLAGS)]
    expected = reference_flag(bid, flagged_at)
    if not is_flagged(current, adjusted):
        assert written == []
    else:
        assert written == [expected]
        assert list(written[0]) == list(expected)  # the same field order
