"""On a seeded table the 7-day audit queries read only the window's day partitions, in product order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from bidengine.seed import seed
from processors.audit_report import FLAGGED_LINES_SQL, SUMMARY_SQL
from schema.partitioning import DEFAULT_PARTITION, partition_day

PROBLEM_SQL = "SELECT * FROM bidding_productbid WHERE calculated_at > now() - interval '7 days' ORDER BY product_id"
# The same query with its bound known when it is planned (a parameter under a custom plan, or a literal).
BOUND_PROBLEM_SQL = "SELECT * FROM bidding_productbid WHERE calculated_at > $1 ORDER BY product_id"


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.fixture
async def seeded(db: asyncpg.Pool, database_url: str) -> asyncpg.Pool:
    await seed(database_url, rows=100_000, days=90, products=5_000, random_seed=7, progress=False, analyze=True)
    return db


def in_window(relation: str, now: datetime) -> bool:
    """A partition that can hold a bid of the last 7 days (or of a later day, or DEFAULT)."""
    day = partition_day(relation)
    if day is None:
        return relation == DEFAULT_PARTITION
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC)
    return end > now - timedelta(days=7)


@pytest.mark.parametrize("sql", [PROBLEM_SQL, SUMMARY_SQL, FLAGGED_LINES_SQL], ids=["problem", "summary", "flagged"])
async def test_the_window_reads_only_its_partitions(seeded: asyncpg.Pool, sql: str) -> None:
    async with seeded.acquire() as conn:
        now = await conn.fetchval("SELECT now()")
        args = [now - timedelta(days=7)] if "$1" in sql else []  # the audit binds its window's start
        raw = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args)
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    scanned = {n["Relation Name"] for n in nodes(plan) if "Relation Name" in n}
    pruned = sum(n.get("Subplans Removed", 0) for n in nodes(plan))

    assert scanned, plan
    assert all(in_window(relation, now) for relation in scanned), scanned
    # The 82 older days: removed before any is read (at planning when the bound is a parameter).
    assert pruned >= 80 or len(scanned) <= 20, (pruned, scanned)


@pytest.fixture
async def dense(db: asyncpg.Pool, database_url: str) -> asyncpg.Pool:
    # ~8,300 bids a day: enough for merging ordered index scans to beat one sort (at 1,100 a day, 7,700 rows
    # in the window, the planner rightly prefers sorting them).
    await seed(database_url, rows=100_000, days=12, products=5_000, random_seed=7, progress=False, analyze=True)
    return db


async def test_the_window_in_product_order_needs_no_sort(dense: asyncpg.Pool) -> None:
    """Once the bound is known when planning, the window's partitions are merged in product order."""
    async with dense.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        now = await conn.fetchval("SELECT now()")
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {BOUND_PROBLEM_SQL}", now - timedelta(days=7))
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    kinds = {n["Node Type"] for n in nodes(plan)}
    scanned = {n["Relation Name"] for n in nodes(plan) if "Relation Name" in n}

    assert plan["Node Type"] == "Merge Append", plan
    assert "Sort" not in kinds, kinds
    assert all(in_window(relation, now) for relation in scanned), scanned
    assert {n["Node Type"] for n in nodes(plan) if "Relation Name" in n} == {"Index Scan"}


async def test_seed_spreads_rows_over_the_days_in_time_order(seeded: asyncpg.Pool) -> None:
    row = await seeded.fetchrow(
        """
        SELECT count(*) AS rows,
               count(DISTINCT request_id) AS requests,
               count(*) FILTER (WHERE calculated_at > now() - interval '7 days') AS recent,
               max(calculated_at) - min(calculated_at) > interval '89 days' AS spans_90_days,
               bool_and(calculated_at >= prev) AS time_ordered
        FROM (SELECT *, lag(calculated_at, 1, '-infinity') OVER (ORDER BY id) AS prev FROM bidding_productbid) t
        """
    )
    assert row["rows"] == row["requests"] == 100_000
    assert 7_000 < row["recent"] < 8_600  # 7/90 of the rows
    assert row["spans_90_days"]
    assert row["time_ordered"]
    assert await seeded.fetchval("SELECT count(*) FROM bidding_request_ledger") == 100_000
