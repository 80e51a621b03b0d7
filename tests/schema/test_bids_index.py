"""On a seeded table the audit queries read the 7-day window through the shipped index, not the whole table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from bidengine.seed import seed
from processors.audit_report import FLAGGED_LINES_SQL, SUMMARY_SQL

SHIPPED_INDEX = "bidding_productbid_calculated_at_brin"
PROBLEM_SQL = "SELECT * FROM bidding_productbid WHERE calculated_at > now() - interval '7 days' ORDER BY product_id"


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


@pytest.fixture
async def seeded(db: asyncpg.Pool, database_url: str) -> asyncpg.Pool:
    await seed(database_url, rows=100_000, days=90, products=5_000, random_seed=7, progress=False, analyze=True)
    return db


@pytest.mark.parametrize("sql", [PROBLEM_SQL, SUMMARY_SQL, FLAGGED_LINES_SQL], ids=["problem", "summary", "flagged"])
async def test_window_is_read_through_the_brin_index(seeded: asyncpg.Pool, sql: str) -> None:
    raw = await seeded.fetchval(f"EXPLAIN (FORMAT JSON) {sql}")
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    scans = [n for n in nodes(plan) if n["Node Type"].endswith("Scan")]

    assert not [n for n in scans if n["Node Type"] in ("Seq Scan", "Parallel Seq Scan")], scans
    assert [n["Index Name"] for n in scans if "Index Name" in n] == [SHIPPED_INDEX]


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
