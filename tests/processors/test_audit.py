"""The audit handler against a real Redis: flags, windowed aggregates, acknowledgement, counted once per bid."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import redis.asyncio as aioredis

from processors import audit_store
from processors.audit import AuditHandler
from processors.audit_stats import audit_stats
from redis_streams.groups import GroupReader, StreamEntry, ensure_group
from schema.audit import FLAG_FIELDS, SEEN_KEY_BYTES, SEEN_KEY_IDS
from schema.keys import (
    AUDIT_GROUP,
    BIDS_PRICED,
    audit_day_key,
    audit_products_key,
    audit_seen_key,
    audit_seen_set_key,
)
from schema.settings import Settings

from .audit_helpers import (
    NOW,
    audit_group,
    entries,
    entry,
    flagged_ids,
    flags,
    priced,
    publish,
    review,
    reviewed_and_flagged,
)

EDGES = [
    priced(1, "10.00", "12.00"),  # +20.00%: not flagged
    priced(2, "10.00", "12.01"),  # +20.10%: flagged
    priced(3, "10.00", "7.99"),  # -20.10%: flagged
    priced(4, "10.00", "8.00"),  # -20.00%: not flagged
    priced(5, "0.00", "0.50", product_id=9),  # from zero: flagged, percentage "inf"
    priced(6, "0.00", "0.00", product_id=9),  # zero to zero: not flagged
]


async def test_flags_only_beyond_twenty_percent(redis: aioredis.Redis) -> None:
    result = await review(redis, entries(EDGES))

    assert (result.counted, result.flagged, result.duplicates) == (6, 3, 0)
    emitted = await flags(redis)
    assert [f["bid_id"] for f in emitted] == ["2", "3", "5"]
    assert emitted[0] == {
        "bid_id": "2",
        "request_id": EDGES[1].request_id,
        "product_id": "7",
        "current_cpc": "10.00",
        "adjusted_cpc": "12.01",
        "deviation": "+2.01",
        "deviation_pct": "+20.10",
        "calculated_at": NOW.isoformat(),
        "flagged_at": NOW.isoformat(),
    }
    assert tuple(emitted[0]) == FLAG_FIELDS  # in AuditFlag.to_fields() order
    assert emitted[1]["deviation_pct"] == "-20.10"
    assert emitted[2]["deviation_pct"] == "inf"


async def test_aggregates_per_day_and_product(redis: aioredis.Redis) -> None:
    yesterday = NOW - timedelta(days=1)
    bids = [*EDGES, priced(7, "1.00", "2.00", product_id=9, at=yesterday)]
    await review(redis, entries(bids))

    stats = await audit_stats(redis, now=NOW)

    assert [d.day for d in stats.days] == [NOW.date() - timedelta(days=n) for n in range(6, -1, -1)]
    today, previous = stats.days[-1], stats.days[-2]
    assert (today.overall.reviewed, today.overall.flagged) == (6, 3)
    # |2.00| + |2.01| + |2.01| + |2.00| + |0.50| + 0 over all reviewed; 2.01 + 2.01 + 0.50 over flagged.
    assert today.overall.deviation_total == Decimal("8.52")
    assert today.flagged_deviation_total == Decimal("4.52")
    assert (previous.overall.reviewed, previous.overall.flagged) == (1, 1)
    assert (stats.rolling.reviewed, stats.rolling.flagged) == (7, 4)
    assert stats.rolling.deviation_total == Decimal("9.52")
    assert stats.products[7].reviewed == 4
    assert stats.products[7].flagged == 2
    assert stats.products[9].reviewed == 3
    assert stats.products[9].flagged == 2
    assert list(stats.products) == [7, 9]  # most flagged first, then most reviewed

    only = await audit_stats(redis, now=NOW, product_ids=[9, 12345])
    assert only.products[9].deviation_total == Decimal("1.50")
    assert only.products[12345].reviewed == 0
    assert only.as_dict()["rolling"] == {"days": 7, "reviewed": 7, "flagged": 4, "deviation_total": "9.52"}
    none = await audit_stats(redis, now=NOW, product_ids=[])
    assert (none.products, none.rolling.reviewed) == ({}, 7)


async def test_redelivery_counts_and_flags_once(redis: aioredis.Redis) -> None:
    await review(redis, entries(EDGES))
    again = await review(redis, entries(EDGES), now=NOW + timedelta(minutes=5))

    assert (again.counted, again.flagged, again.duplicates) == (0, 0, 6)
    assert len(await flags(redis)) == 3
    assert await reviewed_and_flagged(redis) == (6, 3)


async def test_a_bid_twice_in_one_batch_counts_once(redis: aioredis.Redis) -> None:
    # The pricing agent publishes a bid again when a request is retried with the same Idempotency-Key.
    bid = EDGES[1]
    result = await review(redis, [entry(bid, "1-0"), entry(EDGES[0]), entry(bid, "2-0")])

    assert (result.counted, result.flagged, result.duplicates) == (2, 1, 1)
    assert await flagged_ids(redis) == [2]


async def test_a_batch_across_id_ranges_and_days(redis: aioredis.Redis) -> None:
    yesterday = NOW - timedelta(days=1)
    boundary = 5 * SEEN_KEY_IDS  # the first id of range 5
    bids = [
        priced(boundary - 1, "1.00", "2.00", at=yesterday),
        priced(boundary, "1.00", "1.10"),
        priced(boundary + 1, "1.00", "2.00", product_id=8),
        priced(3, "1.00", "2.00", at=yesterday),  # an old id, redelivered late: range 0
    ]
    first = await review(redis, entries(bids))
    second = await review(redis, entries(reversed(bids)))

    assert (first.counted, first.flagged) == (4, 3)
    assert (second.counted, second.duplicates) == (0, 4)
    assert await flagged_ids(redis) == [3, boundary - 1, boundary + 1]
    for id_range, offset in ((4, SEEN_KEY_IDS - 1), (5, 0), (5, 1), (0, 3)):
        assert await redis.getbit(audit_seen_key(id_range), offset) == 1
    assert await redis.getbit(audit_seen_key(5), 2) == 0
    assert await redis.strlen(audit_seen_key(5)) == SEEN_KEY_BYTES  # created at its full size
    stats = await audit_stats(redis, now=NOW)
    assert [(d.overall.reviewed, d.overall.flagged) for d in stats.days[-2:]] == [(2, 2), (2, 1)]


async def test_keys_expire_beyond_the_window(redis: aioredis.Redis) -> None:
    await review(redis, [entry(EDGES[1])])
    for key in (audit_seen_key(0), audit_day_key(NOW.date()), audit_products_key(NOW.date())):
        ttl = await redis.ttl(key)
        assert 9 * 86_400 < ttl <= 10 * 86_400, key


async def test_too_old_and_invalid_entries_are_acknowledged_and_counted_nowhere(redis: aioredis.Redis) -> None:
    old = priced(1, "10.00", "20.00", at=NOW - timedelta(days=9))
    fresh = priced(2, "10.00", "20.00")
    await publish(redis, [old, fresh])
    await redis.xadd(BIDS_PRICED, {"bid_id": "3", "product_id": "x"})
    await redis.xadd(BIDS_PRICED, {**fresh.to_fields(), "bid_id": "-4"})  # SETBIT would refuse a negative offset
    await redis.xadd(BIDS_PRICED, {**fresh.to_fields(), "current_cpc": "1e999999"})  # cannot be quantized
    reader = GroupReader(redis, audit_group("a"))
    await reader.ensure_group()
    batch = await reader.read()

    result = await review(redis, batch, acknowledge=batch)

    assert (result.counted, result.too_old, result.invalid) == (1, 1, 3)
    assert await flagged_ids(redis) == [2]
    assert await redis.exists(audit_day_key(old.calculated_at.date())) == 0
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 0


async def test_bridge_handler_acknowledges_in_its_script(redis: aioredis.Redis) -> None:
    handle = AuditHandler(redis, flags_maxlen=Settings().audit_flags_maxlen)  # judges age by the wall clock
    fresh = [priced(b.bid_id, str(b.current_cpc), str(b.adjusted_cpc), at=datetime.now(UTC)) for b in EDGES]
    await publish(redis, fresh)
    reader = GroupReader(redis, audit_group("a"))
    await reader.ensure_group()
    batch = await reader.read()

    await handle(batch)

    assert batch.acknowledged  # the bridge then sends no XACK of its own
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 0
    await handle(batch)  # the bridge retries a batch whose handler it believes failed
    assert [f["bid_id"] for f in await flags(redis)] == ["2", "3", "5"]


async def test_a_forgotten_script_is_sent_again(redis: aioredis.Redis) -> None:
    await review(redis, [entry(EDGES[1])])
    await redis.script_flush()  # as after a Redis restart

    result = await review(redis, entries(EDGES))

    assert (result.counted, result.flagged, result.duplicates) == (5, 2, 1)


async def test_large_batches_are_split_into_several_calls(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_store, "MAX_BIDS_PER_CALL", 4)
    await ensure_group(redis, BIDS_PRICED, AUDIT_GROUP)
    bids = [priced(i, "1.00", "2.00" if i % 3 else "1.05", product_id=i % 4) for i in range(1, 12)]
    await publish(redis, bids)
    reader = GroupReader(redis, audit_group("a"))
    batch = await reader.read()

    result = await review(redis, [*batch, batch[0]], acknowledge=batch)

    assert (result.counted, result.flagged, result.duplicates) == (11, 8, 1)
    assert await flagged_ids(redis) == [i for i in range(1, 12) if i % 3]
    flagged = {int(f["bid_id"]): f for f in await flags(redis)}
    assert flagged[11]["product_id"] == "3"  # each flag got its own values across the calls
    assert flagged[11]["request_id"] == bids[10].request_id
    assert (await redis.xpending(BIDS_PRICED, AUDIT_GROUP))["pending"] == 0


async def test_bids_counted_by_the_previous_version_are_not_counted_again(redis: aioredis.Redis) -> None:
    # Before the bitmaps, counted ids were kept in one set per day; an entry the old agent counted but did not
    # acknowledge (it was stopped for the upgrade) is redelivered to the new one.
    await redis.sadd(audit_seen_set_key(NOW.date()), "2", "3")

    result = await review(redis, entries(EDGES))

    assert (result.counted, result.flagged, result.duplicates) == (4, 1, 2)
    assert await flagged_ids(redis) == [5]
    assert await redis.getbit(audit_seen_key(0), 2) == 1  # marked in the new state too


async def test_an_empty_batch_writes_nothing(redis: aioredis.Redis) -> None:
    result = await review(redis, [])
    assert (result.counted, result.invalid) == (0, 0)
    assert await redis.dbsize() == 0


async def test_amounts_in_other_decimal_spellings_are_judged_as_stored(redis: aioredis.Redis) -> None:
    bid = priced(1, "10.00", "12.01")
    fields = {**bid.to_fields(), "current_cpc": "10", "adjusted_cpc": "12.005"}  # stored as 10.00 and 12.01
    result = await review(redis, [StreamEntry("1-0", fields)])

    assert result.flagged == 1
    (flag,) = await flags(redis)
    assert (flag["current_cpc"], flag["adjusted_cpc"], flag["deviation_pct"]) == ("10.00", "12.01", "+20.10")
