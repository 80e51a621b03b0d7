"""Bid search: keyset pages cover a range exactly once, and no page scans the table (EXPLAIN on 200k rows)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from console import bids
from schema.database import BIDS_TABLE

from .conftest import Console

ROWS = 200_000
DAYS = 20


async def walk(conn: asyncpg.Connection, **kwargs: Any) -> tuple[list[int], int]:
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        page = await bids.search(conn, cursor=cursor, **kwargs)
        pages += 1
        seen.extend(b.id for b in page.bids)
        if page.next is None:
            return seen, pages
        cursor = page.next
        assert pages < 1000


async def test_pages_cover_the_range_once_newest_first(db: asyncpg.Pool) -> None:
    base = datetime(2026, 11, 1, tzinfo=UTC)
    async with db.acquire() as conn:
        # 300 bids, several sharing each timestamp (a batch commits many rows with one now()).
        await conn.execute(
            f"INSERT INTO {BIDS_TABLE} (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id) "
            "SELECT 1 + g % 3, 1, 150, 1.5, $1::timestamptz + (g / 4) * interval '7 minutes', gen_random_uuid() "
            "FROM generate_series(0, 299) g",
            base,
        )
        expected = [
            r["id"] for r in await conn.fetch(f"SELECT id FROM {BIDS_TABLE} ORDER BY calculated_at DESC, id DESC")
        ]
        common = {"start": base, "end": base + timedelta(days=1), "limit": 17, "first_span_s": 60}
        seen, pages = await walk(conn, product_id=None, max_span_s=86400, **common)
        assert seen == expected
        assert pages == len(expected) // 17 + 1
        only2, _ = await walk(conn, product_id=2, max_span_s=86400, **common)
        assert only2 == [
            r["id"]
            for r in await conn.fetch(
                f"SELECT id FROM {BIDS_TABLE} WHERE product_id = 2 ORDER BY calculated_at DESC, id DESC"
            )
        ]
        # A page reads at most max_span_s of time: a sparse filter comes back short, with a way to continue.
        short = await bids.search(conn, cursor=None, product_id=999, max_span_s=3600, **common)
        assert short.bids == []
        assert short.next is not None
        assert short.searched_from == common["end"] - timedelta(hours=1)
        narrow, _ = await walk(conn, product_id=None, max_span_s=3600, **common)
        assert narrow == expected, "pages of at most an hour each still cover everything once"


async def test_bids_page_links_the_next_page(operator: Console, db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await conn.execute(
            f"INSERT INTO {BIDS_TABLE} (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id) "
            "SELECT 5, 1, 150, 1.5, now() - g * interval '1 second', gen_random_uuid() FROM generate_series(1, 45) g"
        )
    size = operator.settings.console_page_size
    body = await (await operator.get("/bids?product=5")).text()
    first = re.findall(r'<td><a href="/bids/(\d+)">', body)
    assert len(first) == size
    link = re.search(r'href="(/bids\?[^"]*after=[^"]+)"', body)
    assert link
    assert "OFFSET" not in link.group(1).upper()
    second = re.findall(
        r'<td><a href="/bids/(\d+)">', await (await operator.get(link.group(1).replace("&amp;", "&"))).text()
    )
    assert len(second) == size
    assert not set(first) & set(second)
    bad = await operator.get("/bids?after=garbage")
    assert bad.status == 200
    assert "not valid" in await bad.text()


def plan_nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    nodes = [plan]
    for child in plan.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


@pytest.fixture
async def big_table(db: asyncpg.Pool) -> asyncpg.Pool:
    """200k bids over 20 days in time order (as the pricing agents write them), analysed and BRIN-summarised."""
    base = datetime.now(UTC) - timedelta(days=DAYS)
    step_ms = DAYS * 86_400_000 // ROWS
    await db.execute(
        f"INSERT INTO {BIDS_TABLE} (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id) "
        "SELECT 1 + g % 5000, 1.00, 150, 1.50, $1::timestamptz + g * $2 * interval '1 millisecond', "
        "gen_random_uuid() FROM generate_series(1, $3) g",
        base,
        step_ms,
        ROWS,
    )
    await db.execute(f"VACUUM ANALYZE {BIDS_TABLE}")  # this machine runs with autovacuum off
    return db


async def test_no_page_scans_the_table(big_table: asyncpg.Pool) -> None:
    async with big_table.acquire() as conn:
        # The whole table: every partition of it (a partitioned parent has no pages of its own).
        table_pages = await conn.fetchval(
            "SELECT sum(relpages) FROM pg_class WHERE relpages > 0"
            f" AND oid IN (SELECT relid FROM pg_partition_tree('{BIDS_TABLE}'))"
        )
        newest = await bids.newest(conn)
        assert newest is not None
        end = newest.calculated_at
        cases = {
            "first page": (end - timedelta(seconds=60), end, bids.AFTER_EVERY_ID, None),
            "product filter, one hour": (end - timedelta(hours=1), end, bids.AFTER_EVERY_ID, 42),
            "an old day": (end - timedelta(days=15), end - timedelta(days=14), 0, None),
        }
        for name, (lower, upper, upper_id, product) in cases.items():
            raw = await conn.fetchval(
                f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {bids.SLICE_SQL}", lower, upper, upper_id, product, 51
            )
            plan = json.loads(raw)[0]["Plan"]
            nodes = plan_nodes(plan)
            kinds = {node["Node Type"] for node in nodes}
            assert "Seq Scan" not in kinds, (name, kinds)
            assert kinds & {"Bitmap Index Scan", "Index Scan", "Index Only Scan"}, (name, kinds)
            blocks = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
            assert blocks < table_pages / 5, f"{name}: {blocks} blocks of {table_pages}"
        # Only empty tables (day partitions ahead of time, the DEFAULT one) may be read whole: nothing to read.
        empty = {
            r["relname"] for r in await conn.fetch("SELECT relname FROM pg_class WHERE relpages = 0 AND relkind = 'r'")
        }
        for sql, arg in ((bids.BY_ID_SQL, newest.id), (bids.BY_REQUEST_SQL, newest.request_id)):
            raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", arg if sql == bids.BY_ID_SQL else _uuid(arg))
            scanned = {
                n.get("Relation Name") for n in plan_nodes(json.loads(raw)[0]["Plan"]) if n["Node Type"] == "Seq Scan"
            }
            assert scanned <= empty, (sql, scanned)
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {bids.NEWEST_SQL}")
        scanned = {
            n.get("Relation Name") for n in plan_nodes(json.loads(raw)[0]["Plan"]) if n["Node Type"] == "Seq Scan"
        }
        assert scanned <= empty, scanned


def _uuid(value: Any) -> Any:
    from uuid import UUID

    return UUID(str(value))
