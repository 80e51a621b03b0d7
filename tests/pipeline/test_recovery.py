"""At-least-once delivery with an exactly-once effect: redelivery, and an agent killed in the middle of a batch."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import asyncpg
import psycopg
import pytest
import redis.asyncio as aioredis

from processors.pricing import PricingHandler
from redis_streams.groups import GroupReader
from schema import keys
from schema.database import BIDS_TABLE
from schema.events import BidRequested, decode_replies
from tests.pipeline.conftest import Pipeline
from tests.support import group_config_for_tests


class DiesAfterCommit(PricingHandler):
    async def _publish(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the process died between the commit and the replies")


async def test_batch_redelivered_after_commit_answers_from_the_table_and_adds_no_row(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    events = [
        BidRequested(str(uuid.uuid4()), "replies:test", f"r{i}", 900 + i, 1.5 + i, 150.0).to_fields() for i in range(5)
    ]
    for fields in events:
        await redis.xadd(keys.BID_REQUESTS, fields)  # type: ignore[arg-type]
    first = GroupReader(redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "first", claim_idle_ms=0))
    await first.ensure_group()
    batch = await first.read()
    with pytest.raises(ConnectionError):
        await DiesAfterCommit(db, redis, reply_stream_maxlen=1000)(batch)
    committed = {str(r["request_id"]): r["id"] for r in await db.fetch(f"SELECT id, request_id FROM {BIDS_TABLE}")}
    assert len(committed) == 5
    assert await redis.xlen("replies:test") == 0
    assert (await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP))["pending"] == 5

    second = GroupReader(
        redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "second", claim_idle_ms=0)
    )
    reclaimed = await second.reclaim()
    assert [e.id for e in reclaimed] == [e.id for e in batch]
    await PricingHandler(db, redis, reply_stream_maxlen=1000)(reclaimed)

    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 5
    replies = {reply.reply_id: reply for _, f in await redis.xrange("replies:test") for reply in decode_replies(f)}
    assert set(replies) == {f"r{i}" for i in range(5)}
    for i, fields in enumerate(events):
        assert replies[f"r{i}"].bid_id == committed[fields["request_id"]]
        assert replies[f"r{i}"].error is None
    assert await redis.xlen(keys.BIDS_PRICED) == 5
    # Acknowledged inside the same MULTI/EXEC as the replies.
    assert (await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP))["pending"] == 0


async def test_undecodable_entry_is_dead_lettered_without_blocking_the_batch(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    good = BidRequested(str(uuid.uuid4()), "replies:test", "ok", 1, 1.0, 100.0)
    await redis.xadd(keys.BID_REQUESTS, {"request_id": "not-a-bid"})
    await redis.xadd(keys.BID_REQUESTS, good.to_fields())  # type: ignore[arg-type]
    reader = GroupReader(redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "a"))
    await reader.ensure_group()
    await PricingHandler(db, redis, reply_stream_maxlen=1000)(await reader.read())
    dead = await redis.xrange(keys.BIDS_DEAD_LETTER)
    assert len(dead) == 1
    assert "reply_to" in dead[0][1]["reason"]
    assert json.loads(dead[0][1]["fields"]) == {"request_id": "not-a-bid"}
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 1
    priced = await redis.xrange(keys.BIDS_PRICED)
    assert [fields["request_id"] for _, fields in priced] == [good.request_id]


async def _post_all(gateway_url: str, count: int) -> list[tuple[int, dict[str, object]]]:
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> tuple[int, dict[str, object]]:
            body = {"product_id": 5000 + i, "current_cpc": 1.0 + i / 100, "target_roas": 150}
            async with session.post(f"{gateway_url}/api/bid/", json=body) as response:
                return response.status, await response.json()

        return await asyncio.gather(*(one(i) for i in range(count)))


async def _wait_for(predicate: object, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not reached")


async def test_agent_killed_mid_batch_loses_and_duplicates_nothing(
    pipeline: Pipeline, db: asyncpg.Pool, database_url: str
) -> None:
    """A real agent process is SIGKILLed while its batch insert waits; a second agent takes the batch over."""
    redis = aioredis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    count = 80  # below aiohttp's 100 connections per session: all requests are in flight at once
    # Hold the table so the agent's transaction is stuck mid-batch, entries read but not acknowledged.
    blocker = psycopg.connect(database_url)
    blocker.execute(f"LOCK TABLE {BIDS_TABLE} IN SHARE ROW EXCLUSIVE MODE")
    try:
        requests = asyncio.ensure_future(_post_all(pipeline.gateway_url, count))

        async def agent_stuck_mid_batch() -> bool:
            # Every bid is on the stream, the agent holds a batch it has not acknowledged, and its
            # INSERT waits on our lock.
            summary = await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP)
            waiting = await db.fetchval(
                f"SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = '{BIDS_TABLE}'::regclass"
            )
            return await redis.xlen(keys.BID_REQUESTS) >= count and int(summary["pending"]) > 0 and waiting > 0

        await _wait_for(agent_stuck_mid_batch)
        pipeline.kill("pricing-agent")
    finally:
        blocker.rollback()
        blocker.close()

    # The killed agent's transaction never committed.
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id >= 5000") == 0
    pipeline.start("pricing-agent", name="successor")  # reclaims after CLAIM_IDLE_MS
    results = await asyncio.wait_for(requests, timeout=60)

    assert [status for status, _ in results] == [200] * count
    bid_ids = [int(body["bid_id"]) for _, body in results]  # type: ignore[call-overload]
    assert len(set(bid_ids)) == count
    rows = await db.fetch(f"SELECT id, product_id FROM {BIDS_TABLE} WHERE product_id >= 5000")
    assert len(rows) == count  # every accepted bid exactly once
    assert {row["id"] for row in rows} == set(bid_ids)
    assert (await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP))["pending"] == 0
    await redis.aclose()
