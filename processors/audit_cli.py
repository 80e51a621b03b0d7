"""The audit's command-line entries (`bidengine audit-report`, `bidengine audit-stats`) and their text output."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from redis import asyncio as aioredis

from processors.audit_report import run_report
from processors.audit_stats import audit_stats
from schema.audit import AuditStats
from schema.settings import DatabaseSettings, RedisSettings

log = logging.getLogger(__name__)


def report_main(settings: DatabaseSettings) -> int:
    """Run the daily budget audit now: the report on stdout, its summary on audit:reports (when Redis is set)."""

    async def run() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True) if settings.redis_url else None
        if redis is None:
            log.warning("REDIS_URL is not set: the summary is not published to audit:reports")
        try:
            report = await run_report(
                settings.database_url, redis, out=sys.stdout, reports_maxlen=settings.audit_reports_maxlen
            )
        finally:
            if redis is not None:
                await redis.aclose()
        log.info(
            "audit report: %d reviewed, %d flagged, published as %s", report.reviewed, report.flagged, report.stream_id
        )

    asyncio.run(run())
    return 0


def stats_main(
    settings: RedisSettings, *, product_ids: Sequence[int] = (), as_json: bool = False, top: int = 10
) -> int:
    """Print the audit agent's windowed aggregates (UTC days and the rolling 7 days)."""

    async def run() -> str:
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
        try:
            stats = await audit_stats(redis, product_ids=list(product_ids) or None, top=top)
        finally:
            await redis.aclose()
        return json.dumps(stats.as_dict(), indent=2) if as_json else format_stats(stats)

    print(asyncio.run(run()))
    return 0


def format_stats(stats: AuditStats) -> str:
    lines = [f"AUDIT AGGREGATES (as of {stats.as_of.isoformat()}, UTC days)"]
    lines.append(f"{'day':<12}{'reviewed':>12}{'flagged':>10}{'deviation':>16}{'flagged dev.':>16}")
    for d in stats.days:
        lines.append(
            f"{d.day.isoformat():<12}{d.overall.reviewed:>12,}{d.overall.flagged:>10,}"
            f"{d.overall.deviation_total:>16,}{d.flagged_deviation_total:>16,}"
        )
    r = stats.rolling
    lines.append(
        f"{'rolling ' + str(len(stats.days)) + 'd':<12}{r.reviewed:>12,}{r.flagged:>10,}{r.deviation_total:>16,}"
    )
    if stats.products:
        lines.append("")
        lines.append(f"{'product':<12}{'reviewed':>12}{'flagged':>10}{'deviation':>16}")
        for product, t in stats.products.items():
            lines.append(f"{product:<12}{t.reviewed:>12,}{t.flagged:>10,}{t.deviation_total:>16,}")
    return "\n".join(lines)
