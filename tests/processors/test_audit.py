"""The audit handler against a real Redis: flags, windowed aggregates, exactly once per bid."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import redis.asyncio as aioredis

from processors.audit import AuditBatchResult, AuditHandler, Entry, audit_batch
from processors.audit_stats import audit_stats
from processors.audit_store import AuditStore
from redis_streams.groups import Batch, StreamEntry
from schema.keys import AUDIT_FLAGS, AUDIT_GROUP, BIDS_PRICED, audit_day_key, audit_seen_key
from schema.settings import Settings

from .audit_helpers import NOW, entry, priced

EDGES = [
    priced(1, "10.00", "12.00"),  # +20.00%: not flagged
    priced(2, "10.00", "12.01"),  # +20.10%: flagged
    priced(3, "10.00", "7.99"),  # -20.10%: flagged
    priced(4, "10.00", "8.00"),  # -20.00%: not flagged
    priced(5, "0.00", "0.50", product_id=9),  # from zero: flagged, percentage "inf"
    priced(6, "0.00", "0.00", product_id=9),  # zero to zero: not flagged
]


async def review(redis: aioredis.Redis, entries: list[Entry], *, now: datetime) -> AuditBatchResult:
    store = AuditStore(redis, flags_maxlen=Settings().audit_flags_maxlen)
    return await audit_batch(entries, store=store, now=now)


async def flags(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(AUDIT_FLAGS)]


async def test_flags_only_beyond_twenty_percent(redis: aioredis.Redis) -> None:
    result = await review(redis, [entry(b) for b in EDGES], now=NOW)

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
    assert emitted[1]["deviation_pct"] == "-20.10"
    assert emitted[2]["deviation_pct"] == "inf"


async def test_aggregates_per_day_and_product(redis: aioredis.Redis) -> None:
    yesterday = NOW - timedelta(days=1)
    bids = [*EDGES, priced(7, "1.00", "2.00", product_id=9, at=yesterday)]
    await review(redis, [entry(b) for b in bids], now=NOW)

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


async def test_redelivery_counts_and_flags_once(redis: aioredis.Redis) -> None:
    entries = [entry(b) for b in EDGES]
    await review(redis, entries, now=NOW)
    again = await review(redis, entries, now=NOW + timedelta(minutes=5))

    assert (again.counted, again.flagged, again.duplicates) == (0, 0, 6)
    assert len(await flags(redis)) == 3
    stats = await audit_stats(redis, now=NOW)
    assert (stats.rolling.reviewed, stats.rolling.flagged) == (6, 3)


async def test_concurrent_handlers_over_overlapping_entries(redis_url: str, redis: aioredis.Redis) -> None:
    bids = [priced(i, "10.00", "13.00" if i % 2 else "10.50", product_id=i % 5) for i in range(1, 201)]
    first = [entry(b) for b in bids[:150]]
    second = [entry(b) for b in bids[50:]]
    # Two clients, as two agent processes would have, each with its own connection.
    other = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        a, b = await asyncio.gather(review(redis, first, now=NOW), review(other, second, now=NOW))
    finally:
        await other.aclose()

    assert a.counted + b.counted == 200
    assert a.duplicates + b.duplicates == 100
    assert a.flagged + b.flagged == 100
    assert len(await flags(redis)) == 100
    assert sorted(int(f["bid_id"]) for f in await flags(redis)) == list(range(1, 201, 2))
    stats = await audit_stats(redis, now=NOW)
    assert (stats.rolling.reviewed, stats.rolling.flagged) == (200, 100)
    assert stats.rolling.deviation_total == Decimal("3.00") * 100 + Decimal("0.50") * 100


async def test_keys_expire_beyond_the_window(redis: aioredis.Redis) -> None:
    await review(redis, [entry(EDGES[1])], now=NOW)
    for key in (audit_seen_key(NOW.date()), audit_day_key(NOW.date())):
        ttl = await redis.ttl(key)
        assert 8 * 86_400 < ttl <= 10 * 86_400


async def test_too_old_and_invalid_entries_are_skipped(redis: aioredis.Redis) -> None:
    old = priced(1, "10.00", "20.00", at=NOW - timedelta(days=9))
    broken = ("2-0", {"bid_id": "2", "product_id": "x"})
    result = await review(redis, [entry(old), broken], now=NOW)

    assert (result.counted, result.too_old, result.invalid) == (0, 1, 1)
    assert await flags(redis) == []
    assert await redis.exists(audit_day_key(old.calculated_at.date())) == 0


async def test_bridge_handler_takes_stream_entries(redis: aioredis.Redis) -> None:
    handle = AuditHandler(redis, flags_maxlen=Settings().audit_flags_maxlen)  # judges age by the wall clock
    fresh = [priced(b.bid_id, str(b.current_cpc), str(b.adjusted_cpc), at=datetime.now(UTC)) for b in EDGES]
    entries = [StreamEntry(entry_id, dict(fields)) for entry_id, fields in (entry(b) for b in fresh)]
    batch = Batch(entries, BIDS_PRICED, AUDIT_GROUP)
    await handle(batch)
    await handle(batch)  # the bridge redelivers a batch whose ack failed

    assert [f["bid_id"] for f in await flags(redis)] == ["2", "3", "5"]
