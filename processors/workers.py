"""Faust workers, one per agent: each process runs one role, so each can be deployed and scaled alone."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any, NoReturn

import asyncpg
import faust
import mode
from redis import asyncio as aioredis

from processors.app import StreamsApp, create_app
from processors.heartbeat import heartbeat_path
from processors.pricing import PricingHandler
from processors.redis_streams import Batch, GroupConfig, default_consumer_name, group_agent, trim_processed
from schema import keys
from schema.settings import Settings

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


def _require_urls(settings: Settings) -> tuple[str, str]:
    if not settings.redis_url or not settings.database_url:
        raise SystemExit("REDIS_URL and DATABASE_URL are required (`bidengine run` starts embedded servers)")
    return settings.redis_url, settings.database_url


def build_pricing_app(settings: Settings, *, consumer: str | None = None) -> StreamsApp:
    """The pricing worker: `bids:requests` -> price -> PostgreSQL -> replies and `bids:priced`."""
    redis_url, database_url = _require_urls(settings)
    app = create_app("bidengine-pricing")
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    postgres = PostgresPool(database_url, size=settings.pricing_concurrency)
    app.service(postgres)  # type: ignore[arg-type]  # started before the source below, so the pool is ready

    handlers: list[PricingHandler] = []

    async def price(batch: Batch) -> None:
        if not handlers:
            handlers.append(PricingHandler(postgres.pool, redis, reply_stream_maxlen=settings.reply_stream_maxlen))
        await handlers[0](batch)

    group_agent(
        app,
        redis,
        GroupConfig(
            stream=keys.BID_REQUESTS,
            group=keys.PRICING_GROUP,
            consumer=consumer or default_consumer_name("pricing"),
            batch_size=settings.pricing_batch_size,
            block_ms=settings.pricing_block_ms,
            claim_idle_ms=settings.claim_idle_ms,
            claim_interval_s=min(5.0, settings.claim_idle_ms / 2000),
            concurrency=settings.pricing_concurrency,
            heartbeat_file=heartbeat_path("pricing-agent"),
        ),
        price,
        name="price_bids",
    )

    @app.timer(settings.trim_interval_s)
    async def trim_streams() -> None:
        now_ms = int(time.time() * 1000)
        await trim_processed(redis, keys.BID_REQUESTS, keep_ms=settings.requests_retention_s * 1000, now_ms=now_ms)
        await trim_processed(redis, keys.BIDS_PRICED, keep_ms=settings.priced_retention_s * 1000, now_ms=now_ms)

    return app


def run_worker(app: faust.App, settings: Settings) -> NoReturn:
    """Run the Faust worker until SIGTERM/SIGINT; it stops its services (sources first) and exits the process."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover  # uvloop is optional (not on Windows)
        pass
    # As in the gateway: fewer young-generation collections for the per-bid garbage, startup objects frozen.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
    worker.execute_from_commandline()


def run_pricing_worker(settings: Settings) -> NoReturn:
    run_worker(build_pricing_app(settings), settings)


def run_audit_worker(settings: Settings) -> NoReturn:
    from processors.audit import build_audit_app

    run_worker(build_audit_app(settings), settings)
