"""The daily budget audit against the real PostgreSQL schema: window, rule, content, published summary."""

from __future__ import annotations

import io
from datetime import timedelta
from decimal import Decimal

import asyncpg
import redis.asyncio as aioredis

from processors.audit_report import TITLE, run_report, run_scheduled_report
from schema.keys import AUDIT_REPORTS
from schema.settings import Settings

MAXLEN = Settings().audit_reports_maxlen

# (product, current, adjusted, age): only rows younger than 7 days are reviewed.
ROWS = [
    (11, "10.00", "12.00", timedelta(hours=1)),  # +20.00%: reviewed, not flagged
    (11, "10.00", "12.01", timedelta(hours=2)),  # flagged
    (12, "10.00", "7.99", timedelta(hours=3)),  # flagged
    (12, "10.00", "8.00", timedelta(hours=4)),  # reviewed, not flagged
    (13, "0.00", "0.40", timedelta(hours=5)),  # flagged, deviation "inf"
    (14, "5.00", "9.00", timedelta(days=6)),  # flagged, inside the window
    (15, "5.00", "9.00", timedelta(days=8)),  # flagged by the rule, but outside the window: never appears
]


async def insert_rows(db: asyncpg.Pool) -> list[int]:
    ids = []
    for product, current, adjusted, age in ROWS:
        ids.append(
            await db.fetchval(
                """
                INSERT INTO bidding_productbid
                    (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id)
                VALUES ($1, $2, 4.0, $3, now() - $4::interval, gen_random_uuid())
                RETURNING id
                """,
                product,
                Decimal(current),
                Decimal(adjusted),
                age,
            )
        )
    return ids


async def test_report_lists_flagged_bids_of_the_last_seven_days(db: asyncpg.Pool, redis: aioredis.Redis) -> None:
    ids = await insert_rows(db)
    out = io.StringIO()

    report = await run_report(db, redis, out=out, reports_maxlen=MAXLEN)

    text = out.getvalue()
    assert TITLE in text.splitlines()[1]
    assert "bids reviewed: 6" in text
    assert "bids flagged:  4 (66.67%)" in text
    lines = [line for line in text.splitlines() if line.startswith("bid=")]
    assert [line.split(" at=")[0] for line in lines] == [
        f"bid={ids[1]} product=11 current=10.00 adjusted=12.01 deviation=+20.10% (+2.01)",
        f"bid={ids[2]} product=12 current=10.00 adjusted=7.99 deviation=-20.10% (-2.01)",
        f"bid={ids[4]} product=13 current=0.00 adjusted=0.40 deviation=inf% (+0.40)",
        f"bid={ids[5]} product=14 current=5.00 adjusted=9.00 deviation=+80.00% (+4.00)",
    ]
    assert f"bid={ids[6]} " not in text  # 8 days old
    assert text.rstrip().endswith("4 flagged bids listed")

    assert (report.reviewed, report.flagged, report.lines_written) == (6, 4, 4)
    assert (
        report.summary.deviation_total == Decimal("2.00") + Decimal("2.01") * 2 + Decimal("2.00") + Decimal("0.40") + 4
    )
    assert report.summary.flagged_deviation_total == Decimal("2.01") * 2 + Decimal("0.40") + 4
    entries = await redis.xrange(AUDIT_REPORTS)
    assert [entry_id for entry_id, _ in entries] == [report.stream_id]
    summary = entries[0][1]
    assert (summary["title"], summary["reviewed"], summary["flagged"]) == (TITLE, "6", "4")
    assert summary["flagged_deviation_total"] == "8.42"


async def test_empty_window(db: asyncpg.Pool, redis: aioredis.Redis) -> None:
    out = io.StringIO()
    report = await run_report(db, None, out=out, reports_maxlen=MAXLEN)
    assert (report.reviewed, report.flagged, report.lines_written, report.stream_id) == (0, 0, 0, None)
    assert "bids reviewed: 0" in out.getvalue()
    assert await redis.xlen(AUDIT_REPORTS) == 0


async def test_scheduled_run_happens_once_a_day_across_workers(db: asyncpg.Pool, redis: aioredis.Redis) -> None:
    await insert_rows(db)
    first = await run_scheduled_report(db, redis, out=io.StringIO(), reports_maxlen=MAXLEN)
    second = await run_scheduled_report(db, redis, out=io.StringIO(), reports_maxlen=MAXLEN)

    assert first is not None
    assert first.flagged == 4
    assert second is None
    assert await redis.xlen(AUDIT_REPORTS) == 1
