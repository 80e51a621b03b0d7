"""Faust workers, one per agent, both wired here the same way: each process runs one role, so each can be
deployed and scaled alone.

Nothing a worker starts needs Redis or PostgreSQL to be up: the consumer-group source creates its group in its
read loop, the PostgreSQL pool opens its connections on first use, and every periodic task (the stream trim,
the daily audit) catches its failures and retries them (`redis_streams.retry`), so a worker started during an
outage, or living through one, never exits; its heartbeat says it is alive and not ready.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any, NoReturn, TextIO

import asyncpg
import faust
import mode
from prometheus_client import CollectorRegistry
from redis import asyncio as aioredis

from processors.app import StreamsApp, create_app
from processors.audit import AuditHandler
from processors.audit_report import run_scheduled_report
from processors.bid_maintenance import run_maintenance
from processors.bridge import group_agent
from processors.heartbeat import Heartbeat, heartbeat_path
from processors.metrics import AuditMetrics, PricingMetrics
from processors.pricing import PricingHandler
from processors.transient import is_transient
from redis_streams.client import connect
from redis_streams.groups import Batch, GroupConfig, default_consumer_name, trim_processed
from redis_streams.metrics import GroupStateCollector
from redis_streams.metrics import connect as connect_collector
from redis_streams.retry import Backoff, Outage, describe, retry
from schema import keys
from schema.settings import ServerSettings, Settings
from telemetry.logs import dict_config
from telemetry.metrics import RETRY_BIND_S, MetricsEndpoint

log = logging.getLogger(__name__)


class MetricsServer(mode.Service):
    """Serves a registry at /metrics on its own port while the worker runs (`telemetry.metrics`: a thread of
    prometheus-client's, so a scrape never runs on the worker's event loop). A port that is taken never stops
    the worker: it is tried again in the background."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, role: str, **kwargs: Any) -> None:
        self.endpoint = MetricsEndpoint(registry, host, port, role=role)
        super().__init__(**kwargs)

    @mode.Service.task
    async def _serve(self) -> None:
        while not self.should_stop and not self.endpoint.bind():
            await self.sleep(RETRY_BIND_S)

    async def on_stop(self) -> None:
        self.endpoint.close()


def watch_groups(registry: CollectorRegistry, settings: ServerSettings) -> None:
    """Every consumer group's lag, pending entries, live consumers and the dead-letter lengths, read from Redis
    at scrape time (`redis_streams.metrics`), in `registry`."""
    registry.register(GroupStateCollector(connect_collector(settings.redis_url), alive_ms=settings.consumer_alive_ms))


class PostgresPool(mode.Service):
    """An asyncpg pool made when the worker starts (it needs the worker's event loop) and closed at stop.

    It opens no connection at start (`min_size=0`): a worker starts while PostgreSQL is away, and its handler
    meets the outage as it meets any other (transient errors, retried with back-off). Connections that
    PostgreSQL closed (a restart) fail once and are replaced by the pool.
    """

    def __init__(
        self, database_url: str, size: int, *, connect_timeout_s: float, command_timeout_s: float, **kwargs: Any
    ) -> None:
        self.database_url = database_url
        self.size = size
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
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
            min_size=0,
            max_size=self.size,
            reset=_keep_session_state,
            timeout=self.connect_timeout_s,
            # Bounded statements: a server that stops answering is an outage (retried), not a handler hung forever.
            command_timeout=self.command_timeout_s,
            # Plan each batch statement for the table as it is now: a generic plan cached while the table was
            # empty (a fresh install) would keep scanning the whole table for existing request ids.
            server_settings={"plan_cache_mode": "force_custom_plan"},
        )

    @mode.Service.task
    async def _warm_up(self) -> None:
        """Open one connection in the background, so the first batch does not pay for it (best effort)."""
        try:
            await self.pool.execute("SELECT 1")
        except Exception as exc:  # never raise from a service task: it would crash the worker
            log.info("PostgreSQL is not reachable yet (%s); batches will connect when it is", describe(exc))

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
    dead_letter_stream: str,
    consumer: str | None = None,
    min_read_interval_ms: int = 0,
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
        backoff=Backoff.from_settings(settings),
        max_deliveries=settings.max_deliveries,
        dead_letter_stream=dead_letter_stream,
        dead_letter_maxlen=settings.dead_letter_maxlen,
        consumer_expiry_ms=settings.consumer_expiry_s * 1000,
        presence_key=keys.consumers_key(group),
        heartbeat_file=heartbeat_path(role),
        min_read_interval_ms=min_read_interval_ms,
    )


def build_pricing_app(settings: ServerSettings, *, consumer: str | None = None) -> StreamsApp:
    """The pricing worker: `bids:requests` -> price -> PostgreSQL -> replies and `bids:priced`."""
    app = create_app("bidengine-pricing")
    redis = connect(settings.redis_url, settings, client_name="pricing-agent")
    postgres = PostgresPool(
        settings.database_url,
        size=settings.pricing_concurrency,
        connect_timeout_s=settings.database_connect_timeout_s,
        command_timeout_s=settings.database_command_timeout_s,
    )
    app.service(postgres)  # type: ignore[arg-type]  # started before the source below, so the pool is ready
    metrics = PricingMetrics()
    watch_groups(metrics.registry, settings)
    server = MetricsServer(metrics.registry, settings.metrics_host, settings.pricing_metrics_port, role="pricing-agent")
    app.service(server)  # type: ignore[arg-type]
    recorded = metrics if settings.metrics_enabled else None

    handlers: list[PricingHandler] = []

    async def price(batch: Batch) -> None:
        if not handlers:  # the pool exists only once the worker started
            handlers.append(
                PricingHandler(
                    postgres.pool,
                    redis,
                    reply_stream_maxlen=settings.reply_stream_maxlen,
                    reply_stream_ttl_s=settings.reply_stream_ttl_s,
                    metrics=recorded,
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
        dead_letter_stream=keys.BIDS_DEAD_LETTER,
        consumer=consumer,
    )
    heartbeat = Heartbeat(config.heartbeat_file)
    group_agent(
        app,
        redis,
        config,
        price,
        name="price_bids",
        heartbeat=heartbeat,
        metrics=recorded.stream if recorded is not None else None,
    )

    trimming = Outage(
        "trimming the bid streams",
        logger=log,
        on_change=lambda problem: heartbeat.report("trim", problem, readiness=False),
    )

    @app.timer(settings.trim_interval_s)
    async def trim_streams() -> None:
        await trim_bid_streams(redis, settings, trimming)

    maintaining = Outage(
        "maintaining the bids table's partitions",
        logger=log,
        on_change=lambda problem: heartbeat.report("bids-maintenance", problem, readiness=False),
    )

    # on_leader=False: every pricing process runs it; the steps are idempotent and their DDL serializes.
    @app.timer(settings.bids_maintenance_interval_s)
    async def maintain_bids_table() -> None:
        await run_maintenance(postgres.pool, settings, maintaining)

    return app


def build_audit_app(settings: ServerSettings, *, consumer: str | None = None) -> StreamsApp:
    """The audit worker: the `audit` group on `bids:priced` -> flags and aggregates, plus the daily report."""
    app = create_app("bidengine-audit")
    redis = connect(settings.redis_url, settings, client_name="audit-agent")
    config = group_config(
        settings,
        stream=keys.BIDS_PRICED,
        group=keys.AUDIT_GROUP,
        role="audit-agent",
        batch_size=settings.audit_batch_size,
        block_ms=settings.audit_block_ms,
        concurrency=1,
        dead_letter_stream=keys.AUDIT_DEAD_LETTER,
        consumer=consumer,
        min_read_interval_ms=settings.audit_read_interval_ms,
    )
    heartbeat = Heartbeat(config.heartbeat_file)
    collector_client = connect_collector(settings.redis_url)
    metrics = AuditMetrics(reports_client=collector_client)
    metrics.registry.register(GroupStateCollector(collector_client, alive_ms=settings.consumer_alive_ms))
    app.service(MetricsServer(metrics.registry, settings.metrics_host, settings.audit_metrics_port, role="audit-agent"))  # type: ignore[arg-type]
    recorded = metrics if settings.metrics_enabled else None
    handler = AuditHandler(redis, flags_maxlen=settings.audit_flags_maxlen, metrics=recorded)
    group_agent(
        app,
        redis,
        config,
        handler,
        name="audit_bids",
        heartbeat=heartbeat,
        metrics=recorded.stream if recorded is not None else None,
    )

    @app.crontab(settings.audit_report_cron, timezone=UTC)
    async def daily_budget_audit() -> None:
        await run_daily_audit(settings, redis, heartbeat)

    return app


async def trim_bid_streams(redis: aioredis.Redis, settings: Settings, outage: Outage) -> None:
    """One trim of both bid streams. Never raises (an exception escaping a Faust timer crashes the whole
    worker): a failure is reported through `outage`, and the timer's next tick is the retry."""
    now_ms = int(time.time() * 1000)
    try:
        await trim_processed(redis, keys.BID_REQUESTS, keep_ms=settings.requests_retention_s * 1000, now_ms=now_ms)
        await trim_processed(redis, keys.BIDS_PRICED, keep_ms=settings.priced_retention_s * 1000, now_ms=now_ms)
    except Exception as exc:
        outage.failed(exc, transient=is_transient(exc))
    else:
        outage.recovered()


async def run_daily_audit(
    settings: ServerSettings, redis: aioredis.Redis, heartbeat: Heartbeat, *, out: TextIO | None = None
) -> None:
    """The crontab's run. Never raises (an exception escaping a crontab crashes the worker). An outage at the
    scheduled time delays the report until the backends answer, instead of skipping the day; `now` and
    `run_id` are fixed at the scheduled run, so every attempt claims the same day's marker as the same run."""
    scheduled, run_id = datetime.now(UTC), uuid.uuid4().hex
    outage = Outage(
        "the daily budget audit",
        logger=log,
        on_change=lambda problem: heartbeat.report("daily audit", problem, readiness=False),
    )

    async def attempt() -> None:
        await run_scheduled_report(
            settings.database_url,
            redis,
            now=scheduled,
            out=out,
            reports_maxlen=settings.audit_reports_maxlen,
            run_id=run_id,
        )

    try:
        await retry(attempt, backoff=Backoff.from_settings(settings), outage=outage, is_transient=is_transient)
    except Exception:
        # Not an outage: a retry would fail the same way. Tomorrow's run, and the CLI, still work.
        log.exception("daily budget audit failed")
        heartbeat.report("daily audit", None, readiness=False)


def run_worker(app: faust.App, settings: Settings) -> NoReturn:
    """Run the Faust worker until SIGTERM/SIGINT; it stops its services (sources first) and exits the process."""
    # Faust replaces the root logger's handlers when it starts: it is given the product's JSON lines set-up.
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(), quiet=True, logging_config=dict_config(settings.log_level)
    )
    worker.execute_from_commandline()
