"""The audit state's memory, measured in a real Redis with default settings (MEMORY USAGE): bounded by design.

The bound documented in processors/audit_store.py and docs/capacity.md: the seen-bitmaps cost 1 bit per bid id
(at most 1.001 bits measured, key included), whatever the magnitude of the ids; the aggregates grow with the
products of a day, not with its bids.
"""

from __future__ import annotations

from datetime import timedelta

import redis.asyncio as aioredis

from processors.audit_store import AuditStore, Recording
from schema.audit import KEY_TTL_S, SEEN_KEY_BYTES, SEEN_KEY_IDS
from schema.keys import AUDIT_SEEN_PREFIX, audit_products_key, audit_seen_key
from tests.servers import RedisServer

from .audit_helpers import NOW, entries, priced, review

DAY = NOW.date().isoformat()
CALL = 100_000  # bids recorded per call of the store here (the agent's batches are smaller)


async def record_ids(redis: aioredis.Redis, first: int, count: int, products: int = 100) -> int:
    """Record `count` consecutive bid ids from `first` (none flagged); the number counted."""
    store = AuditStore(redis, flags_maxlen=1000)
    counted = 0
    for start in range(first, first + count, CALL):
        recording = Recording()
        for bid_id in range(start, min(start + CALL, first + count)):
            recording.add(bid_id, DAY, bid_id % products, 25, None)
        counted += (await store.record(recording, flagged_at=NOW.isoformat())).counted
    return counted


async def memory(redis: aioredis.Redis, key: str) -> int:
    used = await redis.memory_usage(key, samples=0)
    assert used is not None, key
    return int(used)


async def test_seen_state_costs_a_bit_per_bid_id(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.start(), decode_responses=True)
    try:
        # One full range of ids, far from 0: the offset base keeps the bitmap from spanning 0 .. 10^12.
        id_range = 10**12 // SEEN_KEY_IDS + 1
        first = id_range * SEEN_KEY_IDS
        assert await record_ids(redis, first, SEEN_KEY_IDS) == SEEN_KEY_IDS

        seen_keys = [key async for key in redis.scan_iter(match=f"{AUDIT_SEEN_PREFIX}*")]
        assert seen_keys == [audit_seen_key(id_range)]
        used = await memory(redis, seen_keys[0])
        bits_per_id = used * 8 / SEEN_KEY_IDS
        assert bits_per_id <= 1.001, f"{used:,} bytes for {SEEN_KEY_IDS:,} ids: {bits_per_id:.4f} bits per id"
        assert used >= SEEN_KEY_BYTES
        assert 0 < await redis.ttl(seen_keys[0]) <= KEY_TTL_S

        # A partly used range costs its whole key: the bound over any span is one key per started range.
        assert await record_ids(redis, first + SEEN_KEY_IDS, 10) == 10
        assert await memory(redis, audit_seen_key(id_range + 1)) == used
    finally:
        await redis.aclose()


async def test_aggregates_grow_with_products_not_with_bids(redis_server: RedisServer) -> None:
    redis = aioredis.Redis.from_url(redis_server.start(), decode_responses=True)
    try:
        await record_ids(redis, 1, 20_000, products=500)
        after_20k = await memory(redis, audit_products_key(NOW.date()))
        await record_ids(redis, 20_001, 80_000, products=500)
        after_100k = await memory(redis, audit_products_key(NOW.date()))

        # Five times the bids, same products: only the counters' digits grow.
        assert after_100k <= after_20k * 1.05, (after_20k, after_100k)
        # Another day is another hash, expired with its day.
        await review(redis, entries([priced(200_000, "1.00", "2.00", at=NOW - timedelta(days=1))]))
        assert await redis.exists(audit_products_key((NOW - timedelta(days=1)).date())) == 1
    finally:
        await redis.aclose()
