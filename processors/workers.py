"""Faust workers, one per agent, both wired here the same way: each process runs one role, so each can be
deployed and scaled alone."""

from __future__ import annotations

import logging
import time
from datetime import UTC
from typing import Any, NoReturn

import asyncpg
import faust
import mode
from redis import asyncio as aioredis

from processors.app import StreamsApp, create_app
from processors.audit import AuditHandler
from processors.audit_report import run_scheduled_report
from processors.bridge import group_agent
from processors.heartbeat import heartbeat_path
from processors.pricing import PricingHandler
from redis_streams.groups import Batch, GroupConfig, default_consumer_name, trim_processed
from schema import keys
from schema.settings import ServerSettings, Settings

log = logging.getLogger(__name__)


class PostgresPool(mode.Service):
    """An asyncpg pool opened when the worker starts (it needs the worker's event loop) and closed at stop."""

    def __init__(self, database_url: str, size: int, **kwargs: Any) -> None:
        self.database_url = database_url
        self.size = size
        self._pool: asyncpg.Pool | None = None
        super().__init__(**kwargs)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL pool is used before the worker started")
        return self._pool

    async def on_start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.database_url,
            min_size=1,
            max_size=self.size,
            reset=_keep_session_state,
            # Plan each batch statement for the table as it is now: a generic plan cached while the table was
            # empty (a fresh install) would keep scanning the whole table for existing request ids.
            server_settings={"plan_cache_mode": "force_custom_plan"},
        )

    async def on_stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()


async def _keep_session_state(_connection: asyncpg.Connection) -> None:
    """The agents never change session state, so the pool's default reset (a round trip per release) is skipped."""


def group_config(
    settings: Settings,
    *,
    stream: str,
    group: str,
    role: str,
    batch_size: int,
    block_ms: int,
    concurrency: int,
    consumer: str | None = None,
) -> GroupConfig:
    """One agent's consumer-group reading, from the settings only (both agents are configured the same way)."""
    return GroupConfig(
        stream=stream,
        group=group,
        consumer=consumer or default_consumer_name(role),
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=settings.claim_idle_ms,
        # Look for stalled entries a few times per idle period, so one is taken over soon after it qualifies.
        claim_interval_s=min(5.0, settings.claim_idle_ms / 2000),
        read_ahead=settings.agent_read_ahead,
        concurrency=concurrency,
        retry_delay_s=settings.handler_retry_delay_s,
        heartbeat_file=heartbeat_path(role),
    )


def build_pricing_app(settings: ServerSettings, *, consumer: str | None = None) -> StreamsApp:
    """The pricing worker: `bids:requests` -> price -> PostgreSQL -> replies and `bids:priced`."""
    app = create_app("bidengine-pricing")
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    postgres = PostgresPool(settings.database_url, size=settings.pricing_concurrency)
    app.service(postgres)  # type: ignore[arg-type]  # started before the source below, so the pool is ready

    handlers: list[PricingHandler] = []

    async def price(batch: Batch) -> None:
        if not handlers:  # the pool exists only once the worker started
            handlers.append(
                PricingHandler(
                    postgres.pool,
                    redis,
                    reply_stream_maxlen=settings.reply_stream_maxlen,
                    reply_stream_ttl_s=settings.reply_stream_ttl_s,
                )
            )
        await handlers[0](batch)

    config = group_config(
        settings,
        stream=keys.BID_REQUESTS,
        group=keys.PRICING_GROUP,
        role="pricing-agent",
        batch_size=settings.pricing_batch_size,
        block_ms=settings.pricing_block_ms,
        concurrency=settings.pricing_concurrency,
        consumer=consumer,
    )
    group_agent(app, redis, config, price, name="price_bids")

    @app.timer(settings.trim_interval_s)
    async def trim_streams() -> None:
        now_ms = int(time.time() * 1000)
        await trim_processed(redis, keys.BID_REQUESTS, keep_ms=settings.requests_retention_s * 1000, now_ms=now_ms)
        await trim_processed(redis, keys.BIDS_PRICED, keep_ms=settings.priced_retention_s * 1000, now_ms=now_ms)

    return app


def build_audit_app(settings: ServerSettings, *, consumer: str | None = None) -> StreamsApp:
    """The audit worker: the `audit` group on `bids:priced` -> flags and aggregates, plus the daily report."""
    app = create_app("bidengine-audit")
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    config = group_config(
        settings,
        stream=keys.BIDS_PRICED,
        group=keys.AUDIT_GROUP,
        role="audit-agent",
        batch_size=settings.audit_batch_size,
        block_ms=settings.audit_block_ms,
        concurrency=1,
        consumer=consumer,
    )
    group_agent(app, redis, config, AuditHandler(redis, flags_maxlen=settings.audit_flags_maxlen), name="audit_bids")

    @app.crontab(settings.audit_report_cron, timezone=UTC)
    async def daily_budget_audit() -> None:
        try:
            await run_scheduled_report(settings.database_url, redis, reports_maxlen=settings.audit_reports_maxlen)
        except Exception:
            # A failed run must not stop the crontab loop: tomorrow's run, and the CLI, still work.
            log.exception("daily budget audit failed")

    return app


def run_worker(app: faust.App, settings: Settings) -> NoReturn:
    """Run the Faust worker until SIGTERM/SIGINT; it stops its services (sources first) and exits the process."""
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()
