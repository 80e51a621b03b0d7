"""The bids table's day partitions: created ahead, DEFAULT emptied, closed days reordered, retention, locks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from redis import asyncio as aioredis

from processors.bid_maintenance import MAINTENANCE_LOCK_KEY, maintain, run_maintenance
from processors.pricing import PricingHandler
from redis_streams.retry import Outage
from schema.database import BIDS_TABLE, REQUEST_LEDGER
from schema.partitioning import DEFAULT_PARTITION, partition_day, partition_name
from schema.settings import Settings
from tests.support import priced_request, scratch_database

DAY = timedelta(days=1)
PARTITIONS_SQL = f"""
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = '{BIDS_TABLE}'::regclass
"""


async def partition_days(db: asyncpg.Pool) -> set[date]:
    return {day for row in await db.fetch(PARTITIONS_SQL) if (day := partition_day(row["relname"])) is not None}


priced = priced_request


@pytest.fixture
def own_database_url(database_url: str) -> Iterator[str]:
    """A database of this test's own: partitions are schema, which emptying the bids table would not reset."""
    with scratch_database(database_url, "bidengine_parts") as url:
        yield url


@pytest.fixture
async def db(own_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(own_database_url, min_size=1, max_size=4)
    assert pool is not None
    yield pool
    await pool.close()


@pytest.fixture
async def handler(db: asyncpg.Pool, redis: aioredis.Redis) -> PricingHandler:
    return PricingHandler(db, redis, reply_stream_maxlen=1000)


@pytest.fixture
async def conn(db: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with db.acquire() as connection:
        yield connection


async def insert_at(db: asyncpg.Pool, moment: datetime, product_id: int = 1) -> int:
    """A bid stored at `moment` (a back-dated or future bid), with its ledger row, as the store writes them."""
    # The table's statement trigger records the ledger row, as it does for any writer.
    bid_id: int = await db.fetchval(
        f"INSERT INTO {BIDS_TABLE} (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id)"
        " VALUES ($1, 1.00, 100.0, 1.00, $2, gen_random_uuid()) RETURNING id",
        product_id,
        moment,
    )
    return bid_id


async def test_partitions_exist_ahead_of_time(conn: asyncpg.Connection, db: asyncpg.Pool) -> None:
    later = datetime.now(UTC) + 20 * DAY
    report = await maintain(conn, Settings(bids_partitions_ahead_days=3), now=lambda: later)

    days = await partition_days(db)
    assert {later.date() + i * DAY for i in range(4)} <= days
    assert set(report.created) == {later.date() + i * DAY for i in range(4)}
    again = await maintain(conn, Settings(bids_partitions_ahead_days=3), now=lambda: later)
    assert again.created == []  # idempotent


async def test_a_bid_for_a_day_without_a_partition_is_stored_then_moved_out_of_default(
    conn: asyncpg.Connection, db: asyncpg.Pool, handler: PricingHandler
) -> None:
    # Today's partition is gone (as if maintenance had never run): the store still succeeds, into DEFAULT.
    today = datetime.now(UTC).date()
    await db.execute(f"ALTER TABLE {BIDS_TABLE} DETACH PARTITION {partition_name(today)}")
    await db.execute(f"DROP TABLE {partition_name(today)}")
    requests = [priced(product_id) for product_id in range(1, 51)]
    stored = await handler._store(requests)
    future = datetime.now(UTC) + 400 * DAY  # far beyond the partitions made ahead
    future_id = await insert_at(db, future)
    assert await db.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 51

    report = await maintain(conn, Settings())

    assert await db.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION}") == 0
    assert report.moved_from_default == {today: 50, future.date(): 1}
    assert {today, future.date()} <= await partition_days(db)
    rows = await db.fetch(f"SELECT tableoid::regclass::text AS part, id FROM {BIDS_TABLE}")
    assert {row["id"] for row in rows} == {s.bid.bid_id for s in stored.values()} | {future_id}
    assert {row["part"] for row in rows} == {partition_name(today), partition_name(future.date())}
    # Every request answers as before the move: a retry replays the same bid.
    retry = await handler._store(requests)
    assert {k: v.bid.bid_id for k, v in retry.items()} == {k: v.bid.bid_id for k, v in stored.items()}


async def test_closed_days_are_reordered_by_product_and_keep_every_row(
    conn: asyncpg.Connection, db: asyncpg.Pool
) -> None:
    yesterday = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - DAY
    await maintain(conn, Settings(), now=lambda: yesterday - 2 * DAY)  # yesterday's partition exists
    ids = [await insert_at(db, yesterday + timedelta(seconds=i), product_id=(i * 7919) % 50) for i in range(200)]
    before = await db.fetch(f"SELECT * FROM {partition_name(yesterday.date())} ORDER BY id")

    report = await maintain(conn, Settings())

    assert yesterday.date() in report.reordered
    after = await db.fetch(f"SELECT * FROM {partition_name(yesterday.date())}")  # physical order
    assert sorted(after, key=lambda r: r["id"]) == before
    assert [r["product_id"] for r in after] == sorted(r["product_id"] for r in after)
    assert sorted(r["id"] for r in after) == ids
    assert (await maintain(conn, Settings())).reordered == []  # once


@pytest.mark.parametrize("retention_days", [1, 5])
async def test_retention_drops_exactly_the_partitions_past_the_setting(
    conn: asyncpg.Connection, db: asyncpg.Pool, retention_days: int
) -> None:
    now = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0)
    first = now.date() - 10 * DAY
    await maintain(
        conn, Settings(bids_partitions_ahead_days=12), now=lambda: datetime.combine(first, datetime.min.time(), UTC)
    )
    kept_ids: set[int] = set()
    dropped_ids: set[int] = set()
    for back in range(1, 11):
        moment = now - back * DAY
        bid_id = await insert_at(db, moment)
        # A day is dropped once its newest possible bid (the end of the day) is retention_days old.
        end_of_day = datetime.combine(moment.date() + DAY, datetime.min.time(), UTC)
        (dropped_ids if end_of_day + retention_days * DAY <= now else kept_ids).add(bid_id)
    before = await partition_days(db)

    report = await maintain(conn, Settings(bids_retention_days=retention_days), now=lambda: now)

    expected = {d for d in before if datetime.combine(d + DAY, datetime.min.time(), UTC) + retention_days * DAY <= now}
    assert set(report.dropped) == expected
    assert await partition_days(db) == before - expected
    assert {r["id"] for r in await db.fetch(f"SELECT id FROM {BIDS_TABLE}")} == kept_ids
    assert {r["bid_id"] for r in await db.fetch(f"SELECT bid_id FROM {REQUEST_LEDGER}")} == kept_ids
    assert dropped_ids


async def test_retention_zero_keeps_everything(conn: asyncpg.Connection, db: asyncpg.Pool) -> None:
    old = datetime.now(UTC) - 3000 * DAY
    bid_id = await insert_at(db, old)
    report = await maintain(conn, Settings(bids_retention_days=0))
    assert report.dropped == []
    assert await db.fetchval(f"SELECT id FROM {BIDS_TABLE} WHERE id = $1", bid_id) == bid_id


async def test_inserts_are_not_held_behind_maintenance_waiting_for_a_lock(
    db: asyncpg.Pool, own_database_url: str, handler: PricingHandler
) -> None:
    """A long reader holds the parent table; maintenance needs ACCESS EXCLUSIVE on it to swap a reordered day.

    Without the lock timeout, its queued request would block every insert until the reader ends. With it, the
    inserts go through while the reader still runs (maintenance gives up, pauses, retries), and once the reader
    ends, maintenance finishes; no bid is lost and every ledger row points at its bid.
    """
    yesterday = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - DAY
    async with db.acquire() as setup:
        await maintain(setup, Settings(), now=lambda: yesterday - DAY)
    for i in range(100):
        await insert_at(db, yesterday + timedelta(seconds=i), product_id=100 - i)
    reader = await asyncpg.connect(own_database_url)
    maintainer = await asyncpg.connect(own_database_url)
    stored: dict[str, Any] = {}
    try:
        reader_txn = reader.transaction()
        await reader_txn.start()
        await reader.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}")  # ACCESS SHARE on the parent and partitions
        maintenance = asyncio.create_task(maintain(maintainer, Settings(bids_maintenance_lock_timeout_ms=50)))
        # Wait until maintenance has asked for its lock at least once (it is then waiting or pausing).
        for _ in range(500):
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                maintainer.get_server_pid(),
            )
            if waiting or maintenance.done():
                break
            await asyncio.sleep(0.01)
        for _ in range(5):
            batch = [priced(p) for p in range(1, 201)]
            # A hang guard, not a timing assertion: blocked behind the reader, this would never return.
            stored.update(await asyncio.wait_for(handler._store(batch), timeout=30))
        assert not maintenance.done()  # still waiting for the reader: the inserts did not wait for it
        await reader_txn.rollback()
        report = await asyncio.wait_for(maintenance, timeout=60)
        assert yesterday.date() in report.reordered
    finally:
        await reader.close()
        await maintainer.close()
    ids = {r["id"] for r in await db.fetch(f"SELECT id FROM {BIDS_TABLE}")}
    assert {s.bid.bid_id for s in stored.values()} <= ids
    assert len(ids) == 100 + 1000
    dangling = await db.fetchval(
        f"SELECT count(*) FROM {REQUEST_LEDGER} l LEFT JOIN {BIDS_TABLE} b"
        " ON b.id = l.bid_id AND b.calculated_at = l.calculated_at WHERE b.id IS NULL"
    )
    assert dangling == 0


async def test_a_failing_run_is_reported_and_never_raises(db: asyncpg.Pool, caplog: pytest.LogCaptureFixture) -> None:
    problems: list[str | None] = []
    import logging

    outage = Outage("maintaining", logger=logging.getLogger("test"), on_change=problems.append)
    broken = Settings(bids_partitions_ahead_days=-(10**9))  # an impossible range: the run fails
    await run_maintenance(db, broken, outage)
    assert outage.active
    assert problems
    assert problems[-1] is not None
    await run_maintenance(db, Settings(), outage)
    assert not outage.active
    assert problems[-1] is None


async def test_one_run_at_a_time(conn: asyncpg.Connection, db: asyncpg.Pool, own_database_url: str) -> None:
    """Every pricing process has the timer: a run that finds another under way leaves the work to it."""
    later = datetime.now(UTC) + 30 * DAY
    other = await asyncpg.connect(own_database_url)
    try:
        await other.execute("SELECT pg_advisory_lock($1)", MAINTENANCE_LOCK_KEY)
        skipped = await maintain(conn, Settings(), now=lambda: later)
        assert skipped.created == []
        assert later.date() not in await partition_days(db)
    finally:
        await other.close()  # ends the other run's session, and its lock
    done = await maintain(conn, Settings(), now=lambda: later)
    assert later.date() in done.created
