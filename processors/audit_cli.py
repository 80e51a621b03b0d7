"""The audit's command-line entries (`bidengine audit-report`, `bidengine audit-stats`), kept out of cli.py."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Sequence

from redis import asyncio as aioredis

from processors.audit_report import run_report
from processors.audit_store import audit_stats, format_stats
from schema.settings import Settings

log = logging.getLogger(__name__)


def report_main(settings: Settings) -> int:
    """Run the daily budget audit now: the report on stdout, its summary on audit:reports."""
    if not settings.database_url:
        raise SystemExit("DATABASE_URL is required for `bidengine audit-report`")
    database_url = settings.database_url

    async def run() -> None:
        redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True) if settings.redis_url else None
        if redis is None:
            log.warning("REDIS_URL is not set: the summary is not published to audit:reports")
        try:
            report = await run_report(database_url, redis, out=sys.stdout)
        finally:
            if redis is not None:
                await redis.aclose()
        log.info(
            "audit report: %d reviewed, %d flagged, published as %s", report.reviewed, report.flagged, report.stream_id
        )

    asyncio.run(run())
    return 0


def stats_main(settings: Settings, *, product_ids: Sequence[int] = (), as_json: bool = False, top: int = 10) -> int:
    """Print the audit agent's windowed aggregates (UTC days and the rolling 7 days)."""
    if not settings.redis_url:
        raise SystemExit("REDIS_URL is required for `bidengine audit-stats`")
    redis_url = settings.redis_url

    async def run() -> str:
        redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            stats = await audit_stats(redis, product_ids=list(product_ids) or None, top=top)
        finally:
            await redis.aclose()
        return json.dumps(stats.as_dict(), indent=2) if as_json else format_stats(stats)

    print(asyncio.run(run()))
    return 0
