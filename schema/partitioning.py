"""The day partitions of `bidding_productbid`: their names, bounds and DDL, and the online conversion.

Layout (docs/db-performance.md): `bidding_productbid` is range-partitioned on `calculated_at`, one partition per
UTC day named `bidding_productbid_pYYYYMMDD`, plus `bidding_productbid_default` for a bid whose day has no
partition yet. Each partition has the primary key `(id, calculated_at)` and a B-tree on `product_id`; a closed
day (the pricing agent only inserts `now()`, so only today's partition receives bids) is rewritten in
`product_id` order once, and marked by the `indisclustered` flag of its product index. Request ids are unique
through `bidding_request_ledger` (migration 0004).

The SQL here is shared by the online conversion below (psycopg, run by `apply_migrations`) and by the
maintenance loop (`processors.bid_maintenance`, asyncpg). Every statement that takes a lock the pricing agent's
inserts could queue behind runs under a short `lock_timeout` and is retried, so an insert never waits for
maintenance longer than that timeout.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from yoyo import get_backend

from schema.database import BIDS_ID_SEQUENCE, BIDS_TABLE, REQUEST_LEDGER, yoyo_url
from schema.settings import Settings

log = logging.getLogger(__name__)

STAGING_TABLE = f"{BIDS_TABLE}_partitioned"  # the new layout while the legacy table is being copied
LEGACY_TABLE = f"{BIDS_TABLE}_legacy"  # the legacy table's name between the swap and its drop
DEFAULT_PARTITION = f"{BIDS_TABLE}_default"
MIRROR_TRIGGER = f"{BIDS_TABLE}_mirror"
PARTITION_NAME = re.compile(rf"^{BIDS_TABLE}_p(\d{{8}})$")
DAY = timedelta(days=1)
LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock not granted within lock_timeout
# The 7-day audit window plus one day of margin: how long a day's partition keeps its product_id index.
PRODUCT_INDEX_DAYS = 8


def day_start(day: date) -> datetime:
    return datetime.combine(day, clock_time(0), tzinfo=UTC)


def partition_name(day: date) -> str:
    return f"{BIDS_TABLE}_p{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day a partition holds, from its name (None for the DEFAULT partition or any other table)."""
    match = PARTITION_NAME.match(name)
    return datetime.strptime(match.group(1), "%Y%m%d").date() if match else None


def _literal(moment: datetime) -> str:
    return f"'{moment.isoformat()}'"


def bounds_sql(day: date) -> str:
    return f"FROM ({_literal(day_start(day))}) TO ({_literal(day_start(day + DAY))})"


def day_check_sql(day: date) -> str:
    return f"calculated_at >= {_literal(day_start(day))} AND calculated_at < {_literal(day_start(day + DAY))}"


def standalone_day_table_sql(parent: str, table: str, day: date) -> list[str]:
    """A table shaped like one partition of `parent` for `day`, not yet attached (no lock on `parent`).

    The CHECK constraint proves the range, so ATTACH PARTITION need not scan the table. Indexes are built by
    the caller after loading rows (faster than maintaining them row by row), before the attach.
    """
    return [
        f"CREATE TABLE {table} (LIKE {parent} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)",
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_day CHECK ({day_check_sql(day)})",
    ]


def product_index_wanted(day: date, now: datetime) -> bool:
    """Whether `day`'s partition keeps its product_id index: while the day can be in the 7-day window, with
    one day of margin (an audit started just before midnight still finds it)."""
    return day_start(day + DAY) > now - PRODUCT_INDEX_DAYS * DAY


def partition_indexes_sql(table: str, *, product_index: bool, reordered: bool = False) -> list[str]:
    """The partition's indexes: those ATTACH PARTITION matches with the parent's (the same columns, so it
    builds none itself), and the partition-local product_id index while the day is in the window."""
    statements = [
        f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, calculated_at)",
        f"CREATE INDEX {table}_calculated_at ON {table} (calculated_at)",
    ]
    if product_index:
        statements.append(f"CREATE INDEX {table}_product_id ON {table} (product_id)")
    if product_index and reordered:
        # Marks the day as rewritten in product order (nothing is rewritten by this statement).
        statements.append(f"ALTER TABLE {table} CLUSTER ON {table}_product_id")
    return statements


def attach_sql(parent: str, table: str, day: date) -> str:
    return f"ALTER TABLE {parent} ATTACH PARTITION {table} FOR VALUES {bounds_sql(day)}"


def set_lock_timeout_sql(lock_timeout_ms: int) -> str:
    return f"SET LOCAL lock_timeout = '{int(lock_timeout_ms)}ms'"


def copy_day_sql(source: str, target: str, day: date) -> str:
    """Copy one day's bids into `target`, in product order; rows already there (by primary key) are skipped."""
    return (
        f"INSERT INTO {target} SELECT * FROM {source} WHERE {day_check_sql(day)}"
        " ORDER BY product_id, id ON CONFLICT DO NOTHING"
    )


def ledger_rows_sql(source: str, where: str) -> str:
    return (
        f"INSERT INTO {REQUEST_LEDGER} (request_id, bid_id, calculated_at)"
        f" SELECT request_id, id, calculated_at FROM {source} WHERE {where} ON CONFLICT DO NOTHING"
    )


@dataclass(frozen=True, slots=True)
class ConversionReport:
    rows: int
    days: int
    seconds: float
    swap_attempts: int


def _relkind(conn: Any, table: str) -> str | None:
    row = conn.execute("SELECT c.relkind FROM pg_class c WHERE c.oid = to_regclass(%s)", (table,)).fetchone()
    return str(row[0]) if row else None


def _with_lock_retries(
    conn: Any,
    statements: Callable[[], list[str]],
    *,
    lock_timeout_ms: int,
    attempts: int,
    pause_s: float,
) -> int:
    """Run `statements` in one transaction under `lock_timeout`, retrying when a lock is not granted in time."""
    for attempt in range(1, attempts + 1):
        try:
            with conn.transaction():
                conn.execute(set_lock_timeout_sql(lock_timeout_ms))
                for statement in statements():
                    conn.execute(statement)
            return attempt
        except Exception as exc:
            if getattr(exc, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.info("lock not granted within %d ms (attempt %d of %d); retrying", lock_timeout_ms, attempt, attempts)
            time.sleep(pause_s * attempt)
    raise TimeoutError(f"no lock within {lock_timeout_ms} ms in {attempts} attempts; run the migration again")


def convert_to_partitioned(
    database_url: str,
    *,
    ahead_days: int = Settings.bids_partitions_ahead_days,
    lock_timeout_ms: int = Settings.bids_maintenance_lock_timeout_ms,
    swap_attempts: int = 200,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ConversionReport | None:
    """Move the legacy (unpartitioned) `bidding_productbid` to the day-partitioned layout, online.

    1. A partition for every day holding bids, up to `ahead_days` after today, in the empty new table.
    2. A trigger on the legacy table writes every bid inserted from now on to the new table and the ledger.
    3. Every bid committed before the trigger is copied, day by day (closed days already in product order),
       with its ledger row; the copy and the trigger skip what the other wrote (ON CONFLICT on the keys).
    4. One short transaction swaps the names (ACCESS EXCLUSIVE on the legacy table for milliseconds, under
       `lock_timeout`, retried); the id sequence moves with the name. The legacy table is then dropped.
    Safe to run again at any point (idempotent); returns None when there is nothing to convert.
    """
    started = time.monotonic()
    # The migration runner's own connection (psycopg, through yoyo), in autocommit: each step commits itself.
    conn = get_backend(yoyo_url(database_url)).connection
    conn.commit()  # whatever the backend ran on connecting
    conn.autocommit = True
    with conn:
        if _relkind(conn, BIDS_TABLE) != "r":
            _drop_leftovers(conn, lock_timeout_ms=lock_timeout_ms, attempts=swap_attempts)
            return None
        if _relkind(conn, STAGING_TABLE) != "p":
            raise RuntimeError(f"{STAGING_TABLE} is missing: apply migration 0004 first")
        today = now().astimezone(UTC).date()
        first, last = conn.execute(f"SELECT min(calculated_at), max(calculated_at) FROM {BIDS_TABLE}").fetchone() or (
            None,
            None,
        )
        first_day = first.astimezone(UTC).date() if isinstance(first, datetime) else today
        last_day = max(last.astimezone(UTC).date() if isinstance(last, datetime) else today, today)
        days = [first_day + DAY * i for i in range((last_day + DAY * ahead_days - first_day).days + 1)]
        existing = _partition_days(conn, STAGING_TABLE)
        for day in days:
            if day not in existing:
                _create_partition(conn, STAGING_TABLE, day, product_index=product_index_wanted(day, now()))
        _with_lock_retries(
            conn,
            lambda: [
                f"DROP TRIGGER IF EXISTS {MIRROR_TRIGGER} ON {BIDS_TABLE}",
                f"CREATE TRIGGER {MIRROR_TRIGGER} AFTER INSERT ON {BIDS_TABLE}"
                f" FOR EACH ROW EXECUTE FUNCTION {MIRROR_TRIGGER}()",
            ],
            lock_timeout_ms=lock_timeout_ms,
            attempts=swap_attempts,
            pause_s=0.05,
        )
        copied = 0
        for day in days:
            # Closed days receive no new bids (calculated_at defaults to now()): copied in product order, they
            # need no rewrite later. Today's copy races the trigger; ON CONFLICT settles it either way.
            cursor = conn.execute(copy_day_sql(BIDS_TABLE, partition_name(day), day))
            copied += max(cursor.rowcount, 0)
            conn.execute(ledger_rows_sql(BIDS_TABLE, day_check_sql(day)))
            if day < today and product_index_wanted(day, now()):
                conn.execute(f"ALTER TABLE {partition_name(day)} CLUSTER ON {partition_name(day)}_product_id")
        # Bids outside every day above cannot exist (the days span min..max), but a NULL-free check is cheap.
        attempts = _with_lock_retries(
            conn,
            lambda: [
                f"LOCK TABLE {BIDS_TABLE} IN ACCESS EXCLUSIVE MODE",
                f"DROP TRIGGER {MIRROR_TRIGGER} ON {BIDS_TABLE}",
                f"ALTER TABLE {BIDS_TABLE} RENAME TO {LEGACY_TABLE}",
                f"ALTER TABLE {STAGING_TABLE} RENAME TO {BIDS_TABLE}",
                f"ALTER SEQUENCE {BIDS_ID_SEQUENCE} OWNED BY {BIDS_TABLE}.id",
            ],
            lock_timeout_ms=lock_timeout_ms,
            attempts=swap_attempts,
            pause_s=0.05,
        )
        conn.execute(f"ANALYZE {BIDS_TABLE}, {REQUEST_LEDGER}")
        _drop_leftovers(conn, lock_timeout_ms=lock_timeout_ms, attempts=swap_attempts)
    report = ConversionReport(copied, len(days), time.monotonic() - started, attempts)
    log.info(
        "%s converted to day partitions: %d rows over %d days in %.1f s (swap after %d attempt(s))",
        BIDS_TABLE,
        report.rows,
        report.days,
        report.seconds,
        report.swap_attempts,
    )
    return report


def _drop_leftovers(conn: Any, *, lock_timeout_ms: int, attempts: int) -> None:
    if _relkind(conn, LEGACY_TABLE) is not None:
        _with_lock_retries(
            conn,
            lambda: [f"DROP TABLE {LEGACY_TABLE}", f"DROP FUNCTION IF EXISTS {MIRROR_TRIGGER}()"],
            lock_timeout_ms=lock_timeout_ms,
            attempts=attempts,
            pause_s=0.05,
        )


def _partition_days(conn: Any, parent: str) -> set[date]:
    rows = conn.execute(PARTITIONS_SQL, (parent,)).fetchall()
    return {day for (name,) in rows if (day := partition_day(str(name))) is not None}


PARTITIONS_SQL = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname
"""


def _create_partition(conn: Any, parent: str, day: date, *, product_index: bool) -> None:
    name = partition_name(day)
    with conn.transaction():
        for statement in standalone_day_table_sql(parent, name, day) + partition_indexes_sql(
            name, product_index=product_index
        ):
            conn.execute(statement)
        conn.execute(attach_sql(parent, name, day))
