"""Maintenance of the bids table's day partitions: ahead of time, reordered, retained, DEFAULT emptied.

One run (`maintain`), in this order, each step idempotent so a run interrupted anywhere is finished by the next:

1. **Partitions ahead**: a partition for today and each of the next `bids_partitions_ahead_days` days (and for
   any day with bids in the DEFAULT partition: those bids are moved into it, step 2).
2. **DEFAULT emptied**: bids stored there (their day had no partition: maintenance had not run) are moved, day
   by day, into a new partition of their own day.
3. **Closed days reordered**: each partition whose day is over and that is not yet in product order is rewritten
   sorted by `product_id` (a sorted copy, then a swap), so the 7-day query's index scans read it in heap order.
4. **Retention**: partitions whose newest possible bid is older than `bids_retention_days` (0: never) lose their
   ledger rows, then are detached and dropped.

Locks, and why inserts never wait more than `bids_maintenance_lock_timeout_ms` for any of this: the pricing
agent's store statement locks the parent table (ROW EXCLUSIVE), the ledger and today's partition only (it
reads no partition). Every statement needing a lock that conflicts with it (ATTACH/DETACH on the parent, the
DEFAULT partition's ACCESS EXCLUSIVE during an ATTACH) runs under `SET LOCAL lock_timeout`: when not granted in
time it gives up (queued inserts go on) and is retried after a pause; the long part of each step (copying or
sorting a day) holds only locks that inserts do not conflict with.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import asyncpg

from processors.transient import is_transient
from redis_streams.retry import Outage
from schema.database import BIDS_TABLE, REQUEST_LEDGER
from schema.partitioning import (
    DAY,
    DEFAULT_PARTITION,
    PARTITIONS_SQL,
    attach_sql,
    day_check_sql,
    day_start,
    partition_day,
    partition_indexes_sql,
    partition_name,
    product_index_wanted,
    set_lock_timeout_sql,
    standalone_day_table_sql,
)
from schema.settings import Settings

log = logging.getLogger(__name__)

# Attempts at a step whose lock is not granted within the lock timeout, and the pause between them (doubling).
LOCK_ATTEMPTS = 20
LOCK_PAUSE_S = 0.05
# Ledger rows deleted per statement when a partition is dropped (short transactions on a hot table).
LEDGER_DELETE_BATCH = 10_000

_PARTITIONS_SQL = PARTITIONS_SQL.replace("%s", "$1")

# The partitions that have their product_id index, and whether they were rewritten in its order.
_PRODUCT_INDEXES_SQL = """
SELECT c.relname, x.indisclustered AS reordered
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class xc ON xc.oid = x.indexrelid
WHERE i.inhparent = to_regclass($1) AND xc.relname = c.relname || '_product_id'
"""


@dataclass(slots=True)
class MaintenanceReport:
    created: list[date] = field(default_factory=list)
    moved_from_default: dict[date, int] = field(default_factory=dict)
    reordered: list[date] = field(default_factory=list)
    unindexed: list[date] = field(default_factory=list)
    dropped: list[date] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"created {len(self.created)} partition(s), moved {sum(self.moved_from_default.values())} bid(s) out of"
            f" DEFAULT, reordered {len(self.reordered)} day(s), dropped the product index of {len(self.unindexed)},"
            f" dropped {len(self.dropped)} day(s)"
        )


class LockNotGranted(RuntimeError):
    """A maintenance step did not get its lock within the timeout in any attempt: the next run tries again."""


async def _partition_days(conn: asyncpg.Connection) -> dict[date, str]:
    rows = await conn.fetch(_PARTITIONS_SQL, BIDS_TABLE)
    return {day: row["relname"] for row in rows if (day := partition_day(row["relname"])) is not None}


async def _in_transaction_with_lock_retries(
    conn: asyncpg.Connection, lock_timeout_ms: int, statements: list[str], *, what: str
) -> None:
    """Run `statements` in one transaction under the lock timeout, retrying when a lock is not granted."""
    pause = LOCK_PAUSE_S
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            async with conn.transaction():
                await conn.execute(set_lock_timeout_sql(lock_timeout_ms))
                for statement in statements:
                    await conn.execute(statement)
            return
        except asyncpg.LockNotAvailableError:
            log.debug("%s: lock not granted within %d ms (attempt %d)", what, lock_timeout_ms, attempt)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 2.0)
    raise LockNotGranted(f"{what}: no lock within {lock_timeout_ms} ms in {LOCK_ATTEMPTS} attempts")


async def create_partition(conn: asyncpg.Connection, day: date, lock_timeout_ms: int, *, now: datetime) -> None:
    """An empty partition for `day`: built detached (no lock on the parent), then attached under the timeout."""
    name = partition_name(day)
    async with conn.transaction():
        wanted = product_index_wanted(day, now)
        for statement in standalone_day_table_sql(BIDS_TABLE, name, day) + partition_indexes_sql(
            name, product_index=wanted
        ):
            await conn.execute(statement)
    try:
        await _in_transaction_with_lock_retries(
            conn, lock_timeout_ms, [attach_sql(BIDS_TABLE, name, day)], what=f"attaching {name}"
        )
    except BaseException:
        await conn.execute(f"DROP TABLE IF EXISTS {name}")
        raise


async def ensure_partitions(
    conn: asyncpg.Connection,
    first: date,
    last: date,
    lock_timeout_ms: int,
    report: MaintenanceReport,
    *,
    now: datetime,
) -> None:
    """A partition for every day from `first` to `last` (inclusive); days with bids in DEFAULT are moved."""
    existing = await _partition_days(conn)
    in_default = set(await _default_days(conn))
    day = first
    while day <= last:
        if day not in existing:
            if day in in_default:
                report.moved_from_default[day] = await move_default_day(conn, day, lock_timeout_ms, now=now)
            else:
                await create_partition(conn, day, lock_timeout_ms, now=now)
            report.created.append(day)
        day += DAY


async def _default_days(conn: asyncpg.Connection) -> list[date]:
    rows = await conn.fetch(
        f"SELECT DISTINCT (calculated_at AT TIME ZONE 'UTC')::date AS day FROM {DEFAULT_PARTITION} ORDER BY 1"
    )
    return [row["day"] for row in rows]


async def move_default_day(conn: asyncpg.Connection, day: date, lock_timeout_ms: int, *, now: datetime) -> int:
    """Move `day`'s bids out of DEFAULT into a new partition of that day; return how many were moved.

    One transaction: the rows are deleted from DEFAULT and inserted into the new table (in product order),
    which is then attached. The ATTACH holds ACCESS EXCLUSIVE on DEFAULT (to re-check its rows) under the
    lock timeout; DEFAULT is small by construction (it holds only what arrived before its day's partition).
    """
    name = partition_name(day)
    statements = [
        *standalone_day_table_sql(BIDS_TABLE, name, day),
        f"LOCK TABLE {DEFAULT_PARTITION} IN SHARE ROW EXCLUSIVE MODE",
        f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE {day_check_sql(day)} RETURNING *)"
        f" INSERT INTO {name} SELECT * FROM moved ORDER BY product_id, id",
        *partition_indexes_sql(name, product_index=product_index_wanted(day, now), reordered=day < now.date()),
        attach_sql(BIDS_TABLE, name, day),
    ]
    moved = await conn.fetchval(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE {day_check_sql(day)}")
    await _in_transaction_with_lock_retries(conn, lock_timeout_ms, statements, what=f"moving {day} out of DEFAULT")
    log.info("moved %d bid(s) of %s out of %s", moved, day, DEFAULT_PARTITION)
    return int(moved)


async def reorder_day(conn: asyncpg.Connection, day: date, lock_timeout_ms: int) -> None:
    """Rewrite a closed day's partition in product order: a sorted copy, then a swap of the two.

    The copy runs with a SHARE lock on the old partition (nothing may write to it meanwhile; the pricing agent
    never does, its bids are today's) and no lock on the parent. Only the swap (DETACH the old, ATTACH the
    copy, DROP the old, renames: milliseconds) takes ACCESS EXCLUSIVE on the parent, under the lock timeout;
    when not granted, the swap alone is retried (a savepoint keeps the sorted copy).
    """
    name = partition_name(day)
    copy = f"{name}_sorted"
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{max(lock_timeout_ms, 1000)}ms'")
        await conn.execute(f"LOCK TABLE {name} IN SHARE MODE")
        for statement in standalone_day_table_sql(BIDS_TABLE, copy, day):
            await conn.execute(statement)
        await conn.execute(f"INSERT INTO {copy} SELECT * FROM {name} ORDER BY product_id, id")
        for statement in partition_indexes_sql(copy, product_index=True, reordered=True):
            await conn.execute(statement)
        await conn.execute(f"ANALYZE {copy}")
        await conn.execute(set_lock_timeout_sql(lock_timeout_ms))
        swap = [
            f"ALTER TABLE {BIDS_TABLE} DETACH PARTITION {name}",
            attach_sql(BIDS_TABLE, copy, day),
            f"DROP TABLE {name}",
            f"ALTER TABLE {copy} RENAME TO {name}",
            f"ALTER INDEX {copy}_pkey RENAME TO {name}_pkey",
            f"ALTER INDEX {copy}_product_id RENAME TO {name}_product_id",
            f"ALTER INDEX {copy}_calculated_at RENAME TO {name}_calculated_at",
            f"ALTER TABLE {name} RENAME CONSTRAINT {copy}_day TO {name}_day",
        ]
        pause = LOCK_PAUSE_S
        for attempt in range(1, LOCK_ATTEMPTS + 1):
            try:
                async with conn.transaction():  # a savepoint: a lock timeout undoes the swap, not the copy
                    for statement in swap:
                        await conn.execute(statement)
                break
            except asyncpg.LockNotAvailableError:
                log.debug("reordering %s: swap lock not granted (attempt %d)", name, attempt)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
        else:
            raise LockNotGranted(f"reordering {name}: no lock within {lock_timeout_ms} ms in {LOCK_ATTEMPTS} attempts")


async def drop_product_index(conn: asyncpg.Connection, name: str, lock_timeout_ms: int) -> None:
    """A day out of the 7-day window loses its product_id index (see migration 0004 for why it must).

    CONCURRENTLY: SHARE UPDATE EXCLUSIVE on the partition only, which no insert or read conflicts with.
    """
    await conn.execute(f"SET lock_timeout = '{max(lock_timeout_ms, 1000)}ms'")
    try:
        await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_product_id")
    finally:
        await conn.execute("RESET lock_timeout")


async def drop_day(conn: asyncpg.Connection, day: date, lock_timeout_ms: int) -> None:
    """Retention: delete the day's ledger rows (while its bids are still there), then detach and drop it.

    Ledger rows go first: between the two, a retry of one of those requests is stored as a new bid (its key
    has expired with the retention) instead of pointing at a bid that no longer exists. DETACH is not
    CONCURRENTLY: PostgreSQL refuses that form while a DEFAULT partition exists; its ACCESS EXCLUSIVE lock on
    the parent is held for milliseconds (the partition's rows are not read), under the lock timeout.
    """
    name = partition_name(day)
    last_id = -1
    while True:
        last = await conn.fetchval(
            f"""
            WITH batch AS (SELECT id, request_id FROM {name} WHERE id > $1 ORDER BY id LIMIT {LEDGER_DELETE_BATCH}),
                 deleted AS (DELETE FROM {REQUEST_LEDGER} l USING batch b WHERE l.request_id = b.request_id
                             AND l.bid_id = b.id)
            SELECT max(id) FROM batch
            """,
            last_id,
        )
        if last is None:
            break
        last_id = last
    await _in_transaction_with_lock_retries(
        conn,
        lock_timeout_ms,
        [f"ALTER TABLE {BIDS_TABLE} DETACH PARTITION {name}", f"DROP TABLE {name}"],
        what=f"dropping {name}",
    )


async def maintain(
    conn: asyncpg.Connection,
    settings: Settings,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> MaintenanceReport:
    """One maintenance run (see the module docstring); raises on failure, after leaving a consistent state."""
    report = MaintenanceReport()
    lock_timeout_ms = settings.bids_maintenance_lock_timeout_ms
    moment = now().astimezone(UTC)
    today = moment.date()
    # 1 and 2: today and the days ahead, then every day still in DEFAULT (back-dated or late bids).
    ahead = today + DAY * settings.bids_partitions_ahead_days
    await ensure_partitions(conn, today, ahead, lock_timeout_ms, report, now=moment)
    for day in await _default_days(conn):
        await ensure_partitions(conn, day, day, lock_timeout_ms, report, now=moment)
    # 3: closed days of the window not yet in product order, oldest first; older days lose the index.
    partitions = await _partition_days(conn)
    indexed = {row["relname"]: row["reordered"] for row in await conn.fetch(_PRODUCT_INDEXES_SQL, BIDS_TABLE)}
    for day in sorted(partitions):
        name = partitions[day]
        if name not in indexed or _expired(day, moment, settings):
            continue
        if not product_index_wanted(day, moment):
            await drop_product_index(conn, name, lock_timeout_ms)
            report.unindexed.append(day)
        elif day < today and not indexed[name]:
            await reorder_day(conn, day, lock_timeout_ms)
            report.reordered.append(day)
    # 4: retention.
    for day in sorted(partitions):
        if _expired(day, moment, settings):
            await drop_day(conn, day, lock_timeout_ms)
            report.dropped.append(day)
    return report


def _expired(day: date, moment: datetime, settings: Settings) -> bool:
    """Past retention: the day's newest possible bid is older than `bids_retention_days` days."""
    days = settings.bids_retention_days
    return days > 0 and day_start(day + DAY) + timedelta(days=days) <= moment


async def maintain_database(database_url: str, settings: Settings) -> MaintenanceReport:
    conn = await asyncpg.connect(database_url)
    try:
        return await maintain(conn, settings)
    finally:
        await conn.close()


async def run_maintenance(pool: asyncpg.Pool, settings: Settings, outage: Outage) -> None:
    """One scheduled run in an agent's process. Never raises (an exception escaping a Faust timer crashes the
    worker): a failure is logged and reported through `outage`, and the timer's next tick is the retry."""
    try:
        async with pool.acquire() as conn:
            report = await maintain(conn, settings)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # any failure: the next tick retries; the worker must live on
        outage.failed(exc, transient=is_transient(exc) or isinstance(exc, LockNotGranted))
        return
    outage.recovered()
    if report.created or report.moved_from_default or report.reordered or report.dropped:
        log.info("bids table maintenance: %s", report)
