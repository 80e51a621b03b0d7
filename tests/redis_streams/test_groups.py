"""The consumer-group bridge against a real Redis: delivery, recovery, reclaim, trimming."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from processors.app import create_app
from processors.bridge import group_agent, handle_until_done
from redis_streams.groups import Batch, GroupConfig, GroupReader, StreamEntry, group_lag, trim_processed
from redis_streams.retry import Backoff
from tests.support import group_config_for_tests

STREAM = "test:stream"


def config(consumer: str, **overrides: object) -> GroupConfig:
    options: dict[str, object] = {
        "batch_size": 10,
        "block_ms": 10,
        "claim_idle_ms": 50,
        "backoff": Backoff(0.01, 0.05),
    }
    options.update(overrides)
    return group_config_for_tests(STREAM, "g", consumer, **options)


async def add(redis: aioredis.Redis, count: int) -> list[str]:
    return [await redis.xadd(STREAM, {"n": str(i)}) for i in range(count)]


async def test_reads_new_entries_in_batches_and_acks(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a", batch_size=3))
    await reader.ensure_group()
    ids = await add(redis, 5)
    first = await reader.read()
    second = await reader.read()
    assert [e.id for e in first + second] == ids
    assert [e.fields["n"] for e in first] == ["0", "1", "2"]
    assert await group_lag(redis, STREAM, "g") == 5  # delivered, not acknowledged
    await reader.ack(first + second)
    assert await group_lag(redis, STREAM, "g") == 0
    assert await reader.read() == []


async def test_group_created_before_stream_exists_sees_first_entries(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a"))
    await reader.ensure_group()
    await reader.ensure_group()  # idempotent
    ids = await add(redis, 2)
    assert [e.id for e in await reader.read()] == ids


async def test_restarted_consumer_rereads_its_own_pending_entries_once(redis: aioredis.Redis) -> None:
    crashed = GroupReader(redis, config("a", batch_size=2))
    await crashed.ensure_group()
    ids = await add(redis, 3)
    await crashed.read()  # delivered, never acked: the process "died"
    restarted = GroupReader(redis, config("a", batch_size=2))
    recovered = await restarted.read()
    assert [e.id for e in recovered] == ids[:2]
    # The cursor advances past recovered entries, then switches to new ones.
    assert [e.id for e in await restarted.read()] == ids[2:]
    assert await restarted.read() == []


async def test_live_consumer_reclaims_entries_of_a_dead_one(redis: aioredis.Redis) -> None:
    dead = GroupReader(redis, config("dead"))
    await dead.ensure_group()
    ids = await add(redis, 4)
    assert len(await dead.read()) == 4
    live = GroupReader(redis, config("live", claim_idle_ms=50))
    assert await live.reclaim() == []  # not idle long enough yet
    await asyncio.sleep(0.1)
    claimed = await live.reclaim()
    assert [e.id for e in claimed] == ids
    await live.ack(claimed)
    pending = await redis.xpending(STREAM, "g")
    assert pending["pending"] == 0


async def test_failed_handler_is_retried_before_ack(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a"))
    await reader.ensure_group()
    await add(redis, 2)
    batch = await reader.read()
    calls: list[int] = []

    async def flaky(entries: Batch) -> None:
        calls.append(len(entries))
        if len(calls) < 3:
            raise ConnectionError("database away")
        # Not yet acknowledged while the handler runs.
        assert (await redis.xpending(STREAM, "g"))["pending"] == 2

    await handle_until_done(reader, flaky, batch)
    assert calls == [2, 2, 2]
    assert (await redis.xpending(STREAM, "g"))["pending"] == 0


async def test_trim_keeps_everything_a_group_has_not_processed(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a"))
    await reader.ensure_group()
    ids = await add(redis, 6)
    batch = await reader.read()  # all 6 delivered
    await reader.ack(batch[:2])  # 2 processed, 4 pending
    now_ms = int(time.time() * 1000) + 10_000
    min_id = await trim_processed(redis, STREAM, keep_ms=0, now_ms=now_ms)
    assert min_id == ids[2]
    remaining = [entry_id for entry_id, _ in await redis.xrange(STREAM)]
    assert set(ids[2:]) <= set(remaining)  # approximate trimming may keep more, never less


async def test_trim_keeps_undelivered_entries_and_the_retention_window(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a"))
    await reader.ensure_group()
    await add(redis, 3)
    await trim_processed(redis, STREAM, keep_ms=0, now_ms=int(time.time() * 1000) + 10_000)
    assert await redis.xlen(STREAM) == 3  # never delivered: nothing may go
    batch = await reader.read()
    await reader.ack(batch)
    await trim_processed(redis, STREAM, keep_ms=3_600_000, now_ms=int(time.time() * 1000))
    assert await redis.xlen(STREAM) == 3  # processed, but inside the retention window


async def test_faust_agent_handles_every_entry_once(redis: aioredis.Redis, redis_url: str) -> None:
    """The bridge inside a real Faust app: entries reach the agent, are acked, and the source stops cleanly."""
    app = create_app("test-bridge")
    seen: list[StreamEntry] = []
    done = asyncio.Event()

    async def handler(batch: Batch) -> None:
        seen.extend(batch)
        if len(seen) >= 25:
            done.set()

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    group_agent(app, client, config("faust", batch_size=7), handler, name="collect")
    ids = await add(redis, 25)
    await app.start()
    try:
        await asyncio.wait_for(done.wait(), timeout=10)
        assert [e.id for e in seen] == ids
        for _ in range(100):  # the ack follows the handler's return
            if (await redis.xpending(STREAM, "g"))["pending"] == 0:
                break
            await asyncio.sleep(0.01)
        assert await group_lag(redis, STREAM, "g") == 0
    finally:
        await app.stop()
        await client.aclose()


@pytest.mark.parametrize("count", [0, 3])
async def test_group_lag_counts_undelivered_and_pending(redis: aioredis.Redis, count: int) -> None:
    assert await group_lag(redis, STREAM, "g") is None
    reader = GroupReader(redis, config("a"))
    await reader.ensure_group()
    await add(redis, count)
    redis7 = int((await redis.info("server"))["redis_version"].split(".")[0]) >= 7
    # Redis 6.2 (the embedded server) reports no `lag`: only pending entries count there.
    assert await group_lag(redis, STREAM, "g") == (count if redis7 else 0)
    await reader.read()
    assert await group_lag(redis, STREAM, "g") == count


async def test_reclaim_spares_entries_this_consumer_is_still_handling(redis: aioredis.Redis) -> None:
    reader = GroupReader(redis, config("a", claim_idle_ms=0))
    await reader.ensure_group()
    await add(redis, 3)
    batch = await reader.read()
    assert await reader.reclaim() == []  # ours, in flight: not handed out a second time
    await reader.ack(batch[:1])
    other = GroupReader(redis, config("b", claim_idle_ms=0))
    assert [e.id for e in await other.reclaim()] == [e.id for e in batch[1:]]


async def test_a_short_read_spaces_the_next_one_and_a_full_one_does_not(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The waits the reader asks for, recorded instead of slept: the interleaving is the test's, not the clock's.
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("redis_streams.groups.asyncio.sleep", recorded_sleep)
    reader = GroupReader(redis, config("a", batch_size=3, min_read_interval_ms=10_000))
    await reader.ensure_group()
    ids = await add(redis, 4)
    full = await reader.read()  # a full batch: more may be waiting, so the next read is not held back
    short = await reader.read()  # one entry: the next read waits for the stream to fill a batch
    assert [e.id for e in full + short] == ids
    assert waits == []
    await add(redis, 1)
    await reader.read()
    assert len(waits) == 1
    assert 9.0 < waits[0] <= 10.0  # the rest of the interval since the short read started


async def test_without_an_interval_reads_follow_each_other(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []

    async def recorded_sleep(delay: float) -> None:
        waits.append(delay)

    monkeypatch.setattr("redis_streams.groups.asyncio.sleep", recorded_sleep)
    reader = GroupReader(redis, config("a", batch_size=3))
    await reader.ensure_group()
    await add(redis, 1)
    assert len(await reader.read()) == 1
    await add(redis, 1)
    assert len(await reader.read()) == 1
    assert waits == []
