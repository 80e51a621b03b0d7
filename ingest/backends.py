"""What the gateway knows of Redis, PostgreSQL and the pricing agents, refreshed in the background.

Requests read the last observation instead of probing the backends themselves, so a backend that is down
costs a request nothing but a quick 503 with `Retry-After`.

Pricing agents alive. A bid accepted while no pricing agent consumes would wait the full reply timeout for a
504, so the gateway also counts the live pricing agents: each one announces itself in `consumers:pricing`
(a sorted set scored by Redis's clock) at most once a second, from its read loop, after each successful read
(`redis_streams.groups`). One that died, hangs, or whose handler is stuck stops
announcing; once none has for `CONSUMER_ALIVE_MS`, `/ready` and every bid answer 503 "no pricing agent is
alive". `XINFO CONSUMERS` would need no writes, but before Redis 7.2 a consumer's idle time is reset only by
reads that return entries: an agent blocked on a quiet stream looks dead there. Cost: docs/deploy.md.

This loop never dies: every check catches its failures, and an outage is logged when it starts and when it
ends (`redis_streams.retry.Outage`), not once a second.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
from redis import asyncio as aioredis

from redis_streams.groups import group_lag, live_consumers
from redis_streams.retry import Outage, is_redis_transient
from schema import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendStatus:
    redis: bool
    postgres: bool
    pricing_lag: int | None
    pricing_consumers: int | None = None  # live members of the pricing group; None: not known (Redis away)

    def problem(self, max_lag: int) -> str | None:
        refusal = self.refusal(max_lag)
        return None if refusal is None else refusal[1]

    def refusal(self, max_lag: int) -> tuple[str, str] | None:
        """Why bids are refused now: (the 503 counter's `reason`, the message), or None."""
        if not self.redis:
            return "redis", "Redis is unreachable"
        if not self.postgres:
            return "postgres", "PostgreSQL is unreachable"
        if self.pricing_consumers == 0:
            return "no_pricing_consumer", "no pricing agent is alive"
        if self.pricing_lag is not None and self.pricing_lag > max_lag:
            return "pricing_lag", f"the pricing agents are {self.pricing_lag} bids behind"
        return None


class BackendMonitor:
    def __init__(self, redis: aioredis.Redis, database_url: str, *, alive_ms: int, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.database_url = database_url
        self.alive_ms = alive_ms
        self.interval_s = interval_s
        self.status = BackendStatus(redis=False, postgres=False, pricing_lag=None)
        self._connection: asyncpg.Connection | None = None
        self._redis_outage = Outage("the gateway's Redis check", logger=log)
        self._postgres_outage = Outage("the gateway's PostgreSQL check", logger=log)

    async def check(self) -> BackendStatus:
        redis_ok, lag, consumers = await self._check_redis()
        postgres_ok = await self._check_postgres()
        previous = self.status
        self.status = BackendStatus(redis_ok, postgres_ok, lag, consumers)
        if consumers == 0 and previous.pricing_consumers != 0:
            log.warning("no pricing agent is alive: bids are refused (503) until one reads %s", keys.BID_REQUESTS)
        elif consumers and previous.pricing_consumers == 0:
            log.warning("pricing agents alive: %d; bids are accepted", consumers)
        return self.status

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:  # check() handles the backends' failures; this is a bug, which must not stop it
                log.exception("checking the backends failed")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _check_redis(self) -> tuple[bool, int | None, int | None]:
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.interval_s)
            lag = await group_lag(self.redis, keys.BID_REQUESTS, keys.PRICING_GROUP)
            consumers = await live_consumers(self.redis, keys.consumers_key(keys.PRICING_GROUP), alive_ms=self.alive_ms)
        except Exception as exc:
            self._redis_outage.failed(exc, transient=is_redis_transient(exc))
            return False, None, None
        self._redis_outage.recovered()
        return True, lag, consumers

    async def _check_postgres(self) -> bool:
        try:
            if self._connection is None or self._connection.is_closed():
                self._connection = await asyncpg.connect(self.database_url, timeout=self.interval_s)
            await self._connection.fetchval("SELECT 1", timeout=self.interval_s)
        except Exception as exc:
            if self._connection is not None:
                self._connection.terminate()
                self._connection = None
            self._postgres_outage.failed(exc)
            return False
        self._postgres_outage.recovered()
        return True
