"""The competitor monitor service: poll the source on a fixed interval, publish to Redis, serve health.

`main(settings)` is what `bidengine monitor` runs. It returns 0 after SIGTERM or SIGINT: the current poll is
abandoned (its Redis write is a single transaction, so either all of it landed or none did), the HTTP
server stops, and connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from monitor.client import FetchError, ProductsClient
from monitor.health import PollHistory, PollOutcome, PollReport
from monitor.http import build_app
from monitor.metrics import MonitorMetrics
from monitor.publisher import publish
from monitor.upstream import normalize
from redis_streams.client import connect
from schema.settings import RedisSettings, Settings
from telemetry.metrics import RETRY_BIND_S, MetricsEndpoint

log = logging.getLogger(__name__)

# Polls may fail this many intervals in a row before /health reports the monitor unhealthy.
STALE_AFTER_INTERVALS: Final = 3
# Each rejected item is logged on its own up to this many per poll; the rest only count.
MAX_REJECTIONS_LOGGED: Final = 20


def connect_redis(url: str, settings: Settings | None = None) -> aioredis.Redis:
    """A client (the shared factory's: timeouts, keepalive, dead connections replaced) that fails fast.

    No command retries: a transaction whose connection broke during EXEC may or may not have been applied,
    and re-sending it could publish a poll twice. The next poll (or probe) simply gets a fresh connection.
    """
    return connect(url, settings or Settings(), retry_commands=False, client_name="monitor")


class Monitor:
    def __init__(
        self,
        settings: Settings,
        redis: aioredis.Redis,
        session: aiohttp.ClientSession,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        backoff_base_s: float = 0.5,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: MonitorMetrics | None = None,
    ) -> None:
        self._settings = settings
        self.metrics = metrics
        self._redis = redis
        self._clock = clock
        self._wall_clock = wall_clock
        self._client = ProductsClient(
            session,
            settings.monitor_source_url,
            page_size=settings.monitor_page_size,
            timeout_s=settings.monitor_timeout_s,
            max_retries=settings.monitor_max_retries,
            backoff_base_s=backoff_base_s,
            sleep=sleep,
        )
        self.history = PollHistory(started_mono=clock())
        self.stale_after_s = STALE_AFTER_INTERVALS * settings.monitor_interval_s

    @property
    def redis(self) -> aioredis.Redis:
        return self._redis

    async def poll_once(self) -> PollReport:
        """Fetch the catalogue, normalize it, publish it. Failures are reported, never raised."""
        started_mono = self._clock()
        started_at = self._wall_clock()
        try:
            catalogue = await self._client.fetch_catalogue()
        except FetchError as exc:
            failed = PollReport(
                PollOutcome.FETCH_FAILED,
                started_at,
                self._clock() - started_mono,
                pages=exc.pages,
                requests=exc.requests,
                error=str(exc),
            )
            return self._finish(failed)

        normalized = normalize(catalogue.items, started_at)
        for rejected in normalized.rejected[:MAX_REJECTIONS_LOGGED]:
            log.warning(
                "upstream item rejected",
                extra={
                    "event": "item_rejected",
                    "index": rejected.index,
                    "product_id": rejected.product_id,
                    "reason": rejected.reason,
                },
            )

        def report(outcome: PollOutcome, *, published: int = 0, error: str | None = None) -> PollReport:
            return PollReport(
                outcome,
                started_at,
                self._clock() - started_mono,
                items_fetched=len(catalogue.items),
                items_rejected=len(normalized.rejected),
                items_published=published,
                pages=catalogue.pages,
                requests=catalogue.requests,
                error=error,
            )

        if not normalized.records:
            error = f"none of the {len(catalogue.items)} items fetched was valid"
            return self._finish(report(PollOutcome.NO_VALID_ITEMS, error=error))
        try:
            await publish(
                self._redis,
                normalized.records,
                list_max=self._settings.monitor_list_max,
                stream_maxlen=self._settings.monitor_stream_maxlen,
            )
        except (RedisError, OSError) as exc:
            # The records are dropped, not queued: the next poll brings fresher prices anyway.
            error = f"redis: {type(exc).__name__}: {exc}"
            return self._finish(report(PollOutcome.PUBLISH_FAILED, error=error))
        return self._finish(report(PollOutcome.OK, published=len(normalized.records)))

    def _finish(self, report: PollReport) -> PollReport:
        self.history.record(report, self._clock())
        if self.metrics is not None:
            self.metrics.record(report, self._wall_clock().timestamp())
        level = logging.INFO if report.succeeded else logging.WARNING
        log.log(level, "poll finished", extra={"event": "poll", **report.as_json()})
        return report

    async def run(self, stop: asyncio.Event) -> None:
        """Poll at start, then every interval (measured start to start), until `stop` is set."""
        interval = self._settings.monitor_interval_s
        while not stop.is_set():
            started = self._clock()
            poll = asyncio.create_task(self.poll_once())
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not poll.done():
                poll.cancel()
                await asyncio.wait({poll})
                log.info("poll abandoned for shutdown", extra={"event": "poll_abandoned"})
                return
            if (error := poll.exception()) is not None:
                # A bug, not bad data: keep the service up; /health turns unhealthy if it keeps happening.
                log.error("poll crashed", exc_info=error, extra={"event": "poll_crashed"})
            delay = max(0.0, interval - (self._clock() - started))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()


async def serve(settings: RedisSettings, stop: asyncio.Event, metrics: MonitorMetrics | None = None) -> None:
    """Run the poll loop and the HTTP server until `stop` is set, then release everything."""
    redis = connect_redis(settings.redis_url, settings)
    try:
        async with aiohttp.ClientSession() as session:
            monitor = Monitor(settings, redis, session, metrics=metrics)
            app = build_app(monitor.redis, monitor.history, stale_after_s=monitor.stale_after_s)
            runner = web.AppRunner(app, access_log=None)  # probes every few seconds would drown the log
            await runner.setup()
            try:
                await web.TCPSite(runner, settings.monitor_host, settings.monitor_port).start()
                log.info(
                    "monitor started",
                    extra={
                        "event": "started",
                        "http": f"{settings.monitor_host}:{settings.monitor_port}",
                        "source_url": settings.monitor_source_url,
                        "interval_s": settings.monitor_interval_s,
                    },
                )
                await monitor.run(stop)
            finally:
                await runner.cleanup()
    finally:
        await redis.aclose()
    log.info("monitor stopped", extra={"event": "stopped"})


async def _serve_until_signalled(settings: RedisSettings, metrics: MonitorMetrics, endpoint: MetricsEndpoint) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, _request_stop, stop, signum)
    serving = asyncio.create_task(_serve_metrics(endpoint, stop))
    try:
        await serve(settings, stop, metrics)
    finally:
        serving.cancel()
        endpoint.close()


async def _serve_metrics(endpoint: MetricsEndpoint, stop: asyncio.Event) -> None:
    """Bind the metrics port, trying again while it is taken (the monitor polls on meanwhile)."""
    while not stop.is_set() and not endpoint.bind():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RETRY_BIND_S):
                await stop.wait()


def _request_stop(stop: asyncio.Event, signum: int) -> None:
    log.info("shutdown requested", extra={"event": "shutdown", "signal": signal.Signals(signum).name})
    stop.set()


def main(settings: RedisSettings) -> int:
    """Entry point of `bidengine monitor`: runs until SIGTERM/SIGINT, then returns 0. Its metrics are served on
    MONITOR_METRICS_PORT by prometheus-client's thread (`telemetry.metrics`), next to /health on MONITOR_PORT.

    A poll runs every few minutes, so METRICS_ENABLED=false changes nothing here: the poll metrics are recorded.
    A metrics port that is taken does not stop the monitor: it is tried again every RETRY_BIND_S."""
    metrics = MonitorMetrics()
    endpoint = MetricsEndpoint(metrics.registry, settings.metrics_host, settings.monitor_metrics_port, role="monitor")
    try:
        asyncio.run(_serve_until_signalled(settings, metrics, endpoint))
    except OSError as exc:
        # Typically the HTTP port is taken; nothing was published, so a plain failure exit is right.
        log.error("monitor could not start", extra={"event": "start_failed", "error": str(exc)})
        return 1
    return 0
