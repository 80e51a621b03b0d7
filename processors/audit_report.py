"""The daily budget audit: every bid of the last 7 days whose adjusted CPC moved more than 20%, from PostgreSQL.

PostgreSQL is the source of truth (the Redis aggregates are a real-time view that can lag). The report runs
in one read-only REPEATABLE READ transaction, so the counts and the listed bids come from the same snapshot
and the same `now()`. Memory stays flat however large the window is: counts and sums are aggregated by
PostgreSQL, and the flagged lines are formatted by PostgreSQL and streamed with `COPY ... TO STDOUT`, each
chunk written as it arrives (the client awaits each write, so a slow reader holds the server back through
the socket instead of filling memory). COPY sends the lines as they are, with no per-row record for the
client to decode: the flagged lines take ~20% less time than through a server-side cursor of one text
column (10M rows, 139k lines).
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import asyncpg
from redis import asyncio as aioredis

from schema.database import BIDS_TABLE
from schema.events import AuditReportSummary
from schema.keys import AUDIT_REPORTS, audit_report_run_key

log = logging.getLogger(__name__)

TITLE = AuditReportSummary.TITLE
WINDOW = "7 days"
# The flagged rows are sorted by product; this keeps that sort in memory (for this transaction only).
REPORT_WORK_MEM = "64MB"
# The planner's default (1000) keeps the flagged rows' sort serial over the day partitions; the report is one
# long query a day, where two workers take ~0.6x the time (docs/db-performance.md). This transaction only.
REPORT_PARALLEL_SETUP_COST = 0
# The day's scheduled-run marker outlives the day, so a worker starting late the same day still sees it.
RUN_MARKER_TTL_S = 2 * 86_400

# The flag rule, shared by both queries; identical to `processors.audit.is_flagged` (exact numeric).
_FLAGGED = "abs(adjusted_cpc - current_cpc) > 0.20 * current_cpc"

# The window's start, read first in the report's transaction (so `now()` is the same in every query) and
# passed to the queries as a parameter: the bids table is partitioned by day, and a bound known when the
# query is planned prunes the other days at planning (a `now()` bound is only pruned when the query starts,
# after the planner has costed every partition: planning time would grow with the history kept).
WINDOW_START_SQL = f"SELECT now() - interval '{WINDOW}'"

SUMMARY_SQL = f"""
SELECT now() AS generated_at,
       $1::timestamptz AS window_start,
       count(*) AS reviewed,
       count(*) FILTER (WHERE {_FLAGGED}) AS flagged,
       coalesce(sum(abs(adjusted_cpc - current_cpc)), 0) AS deviation_total,
       coalesce(sum(abs(adjusted_cpc - current_cpc)) FILTER (WHERE {_FLAGGED}), 0) AS flagged_deviation_total
FROM {BIDS_TABLE}
WHERE calculated_at > $1::timestamptz
"""

FLAGGED_LINES_SQL = f"""
SELECT format(
         'bid=%s product=%s current=%s adjusted=%s deviation=%s%% (%s) at=%s',
         id, product_id, current_cpc, adjusted_cpc,
         CASE WHEN current_cpc = 0 THEN 'inf'
              ELSE to_char(round((adjusted_cpc - current_cpc) * 100 / current_cpc, 2), 'FMSG999999999990.00')
         END,
         to_char(adjusted_cpc - current_cpc, 'FMSG9999999990.00'),
         to_char(calculated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
       )
FROM {BIDS_TABLE}
WHERE calculated_at > $1::timestamptz
  AND {_FLAGGED}
ORDER BY product_id, id
"""


@dataclass(frozen=True, slots=True)
class AuditReport:
    summary: AuditReportSummary
    lines_written: int  # flagged bids printed (equals `flagged`: same snapshot)
    stream_id: str | None  # the audit:reports entry, when published

    @property
    def reviewed(self) -> int:
        return self.summary.reviewed

    @property
    def flagged(self) -> int:
        return self.summary.flagged


def _header(summary: Any) -> str:
    rate = (100 * summary["flagged"] / summary["reviewed"]) if summary["reviewed"] else 0.0
    return "\n".join(
        [
            "=" * 72,
            TITLE,
            f"generated at:  {summary['generated_at'].astimezone(UTC).isoformat()}",
            f"window:        {summary['window_start'].astimezone(UTC).isoformat()} .. now (last {WINDOW})",
            "rule:          |adjusted_cpc - current_cpc| > 20% of current_cpc",
            f"bids reviewed: {summary['reviewed']}",
            f"bids flagged:  {summary['flagged']} ({rate:.2f}%)",
            f"total deviation (all bids):     {summary['deviation_total']}",
            f"total deviation (flagged bids): {summary['flagged_deviation_total']}",
            "-" * 72,
            "flagged bids (by product):",
            "",
        ]
    )


async def _write_report(conn: asyncpg.Connection, out: TextIO) -> tuple[Any, int]:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
        await conn.execute(f"SET LOCAL parallel_setup_cost = {REPORT_PARALLEL_SETUP_COST}")
        # Planned for this window's bound every time (a generic plan would cost every day partition again).
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        window_start = await conn.fetchval(WINDOW_START_SQL)
        summary = await conn.fetchrow(SUMMARY_SQL, window_start)
        out.write(_header(summary))
        lines = 0
        decoder = codecs.getincrementaldecoder("utf-8")()

        async def write(chunk: bytes) -> None:
            # COPY's text format: one line per row, ending in a newline; no line holds a tab, a backslash or
            # a newline of its own (numbers and a timestamp), so the lines arrive exactly as formatted.
            nonlocal lines
            lines += chunk.count(b"\n")
            out.write(decoder.decode(chunk))

        # asyncpg inlines the bound as a literal quoted by PostgreSQL (COPY takes no parameters): still
        # known when the query is planned.
        await conn.copy_from_query(FLAGGED_LINES_SQL, window_start, output=write)
    out.write(f"{'=' * 72}\n{lines} flagged bids listed\n")
    out.flush()
    return summary, lines


async def run_report(
    database: str | asyncpg.Pool,
    redis: aioredis.Redis | None,
    *,
    out: TextIO | None = None,
    reports_maxlen: int,
) -> AuditReport:
    """Print the 7-day audit to `out` (stdout), publish its summary to audit:reports, return the result."""
    target = out if out is not None else sys.stdout
    if isinstance(database, str):
        conn = await asyncpg.connect(database)
        try:
            summary, lines = await _write_report(conn, target)
        finally:
            await conn.close()
    else:
        async with database.acquire() as conn:
            summary, lines = await _write_report(conn, target)
    report = AuditReport(
        summary=AuditReportSummary(
            generated_at=summary["generated_at"],
            window_start=summary["window_start"],
            reviewed=summary["reviewed"],
            flagged=summary["flagged"],
            deviation_total=summary["deviation_total"],
            flagged_deviation_total=summary["flagged_deviation_total"],
        ),
        lines_written=lines,
        stream_id=None,
    )
    if redis is None:
        return report
    stream_id = await redis.xadd(
        AUDIT_REPORTS,
        report.summary.to_fields(),  # type: ignore[arg-type]  # redis-py's field mapping type is invariant
        maxlen=reports_maxlen,
        approximate=True,
    )
    return dataclasses.replace(report, stream_id=str(stream_id))


async def run_scheduled_report(
    database: str | asyncpg.Pool,
    redis: aioredis.Redis,
    *,
    now: datetime | None = None,
    out: TextIO | None = None,
    reports_maxlen: int,
    run_id: str | None = None,
) -> AuditReport | None:
    """The crontab's entry: run today's report unless another audit worker already took today's run.

    `run_id` names this scheduled run: a retry of it (after an outage) passes the same one, and so takes over
    the day's marker it set itself, even when the marker was set but its reply lost.
    """
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    key, owner = audit_report_run_key(day), run_id or uuid.uuid4().hex
    taken = await redis.set(key, owner, nx=True, ex=RUN_MARKER_TTL_S)
    if not taken and (run_id is None or await redis.get(key) != owner):
        log.info("daily budget audit for %s already run by another worker", day)
        return None
    report = await run_report(database, redis, out=out, reports_maxlen=reports_maxlen)
    log.info(
        "daily budget audit for %s: %d reviewed, %d flagged (%s)",
        day,
        report.reviewed,
        report.flagged,
        report.stream_id,
    )
    return report
