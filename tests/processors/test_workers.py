"""The Faust wiring: the audit agent on its own group, the daily audit as a UTC crontab, and the periodic tasks
that must never raise (an exception escaping a Faust timer or crontab crashes the worker)."""

from __future__ import annotations

import asyncio
import io
import logging
from datetime import UTC, tzinfo
from typing import Any

import pytest
import redis.asyncio as aioredis
from faust.utils import cron

from processors.heartbeat import Heartbeat
from processors.workers import build_audit_app, run_daily_audit, trim_bid_streams
from redis_streams.client import connect
from redis_streams.retry import Outage
from schema import keys
from schema.database import apply_migrations
from schema.settings import ServerSettings, Settings
from tests.servers import PostgresServer, RedisServer


def crontabs(app: Any) -> list[tuple[str, tzinfo | None, str]]:
    """(cron string, timezone, function name) of every crontab registered on a Faust app.

    Faust keeps no table of crontabs: each is an app task wrapping a `cron_starter` closure over the cron
    string, the timezone and the scheduled function, which is what is read here.
    """
    found = []
    for task in app._app_tasks:
        starter = getattr(task, "__wrapped__", None)
        if starter is None or starter.__closure__ is None:
            continue
        cells = dict(
            zip(starter.__code__.co_freevars, (c.cell_contents for c in starter.__closure__ or ()), strict=True)
        )
        if "cron_format" in cells:
            found.append((cells["cron_format"], cells["timezone"], cells["fun"].__name__))
    return found


def test_daily_audit_is_a_utc_crontab_with_the_configured_schedule() -> None:
    settings = ServerSettings(
        redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x", audit_report_cron="30 5 * * *"
    )
    app = build_audit_app(settings, consumer="audit-test")

    assert crontabs(app) == [("30 5 * * *", UTC, "daily_budget_audit")]
    # 05:30 UTC: the next run is at most a day away and lands on that minute.
    assert 0 < cron.secs_for_next("30 5 * * *", UTC) <= 86_400


def test_audit_agent_is_registered_on_its_own_group() -> None:
    settings = ServerSettings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x")
    app = build_audit_app(settings, consumer="audit-test")

    names = [agent.name for agent in app.agents.values()]
    assert any(name.endswith("audit_bids") for name in names), names
    sources = [s for s in app._extra_services if type(s).__name__ == "GroupSource"]
    assert [(s.reader.config.stream, s.reader.config.group) for s in sources] == [("bids:priced", "audit")]
    assert sources[0].reader.config.batch_size == settings.audit_batch_size
    assert sources[0].reader.config.min_read_interval_ms == settings.audit_read_interval_ms > 0


async def test_trimming_never_raises_while_redis_is_away_and_says_so_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A ConnectionError escaping the trim timer used to crash the whole pricing worker."""
    settings = Settings(redis_connect_timeout_s=0.5)
    client = connect(redis_server.url(), settings)  # nothing listens there yet
    heartbeat = Heartbeat(None)
    outage = Outage(
        "trimming the bid streams",
        logger=logging.getLogger("test.trim"),
        on_change=lambda p: heartbeat.report("trim", p, readiness=False),
    )
    with caplog.at_level(logging.WARNING, logger="test.trim"):
        for _ in range(3):
            await trim_bid_streams(client, settings, outage)  # must not raise
        assert outage.failures == 3
        assert heartbeat.ready  # trimming late is no reason to stop consuming
        assert heartbeat.state()["degraded"]
        assert "trim" in heartbeat.state()["degraded"][0]
        redis_server.start()
        await trim_bid_streams(client, settings, outage)
    assert not outage.active
    assert heartbeat.state()["degraded"] == []
    assert len(caplog.records) == 2  # started, ended
    await client.aclose()


async def test_the_daily_audit_waits_out_a_postgres_outage_instead_of_skipping_the_day(
    redis: aioredis.Redis, redis_url: str
) -> None:
    server = PostgresServer()
    try:
        server.start()
        apply_migrations(server.url())
        server.stop()
        settings = ServerSettings(
            redis_url=redis_url, database_url=server.url(), retry_delay_s=0.05, retry_max_delay_s=0.2
        )
        heartbeat = Heartbeat(None)
        out = io.StringIO()
        run = asyncio.ensure_future(run_daily_audit(settings, redis, heartbeat, out=out))
        for _ in range(500):
            if heartbeat.state()["degraded"]:
                break
            await asyncio.sleep(0.02)
        assert "daily audit" in heartbeat.state()["degraded"][0]
        assert not run.done()
        assert await redis.xlen(keys.AUDIT_REPORTS) == 0
        server.start()
        await asyncio.wait_for(run, timeout=60)
        assert await redis.xlen(keys.AUDIT_REPORTS) == 1  # the day's report, once, despite the retries
        assert "DAILY BUDGET AUDIT REPORT" in out.getvalue()
        assert heartbeat.state()["degraded"] == []
    finally:
        server.remove()
