"""What the gateway knows of Redis, PostgreSQL and the pricing group, refreshed in the background.

Requests read the last observation instead of probing the backends themselves, so a backend that is down
costs a request nothing but a quick 503.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from redis_streams.groups import group_lag
from schema import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendStatus:
    redis: bool
    postgres: bool
    pricing_lag: int | None

    def problem(self, max_lag: int) -> str | None:
        if not self.redis:
            return "Redis is unreachable"
        if not self.postgres:
            return "PostgreSQL is unreachable"
        if self.pricing_lag is not None and self.pricing_lag > max_lag:
            return f"the pricing agents are {self.pricing_lag} bids behind"
        return None


class BackendMonitor:
    def __init__(self, redis: aioredis.Redis, database_url: str, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.database_url = database_url
        self.interval_s = interval_s
        self.status = BackendStatus(redis=False, postgres=False, pricing_lag=None)
        self._connection: asyncpg.Connection | None = None

    async def check(self) -> BackendStatus:
        redis_ok, lag = await self._check_redis()
        self.status = BackendStatus(redis=redis_ok, postgres=await self._check_postgres(), pricing_lag=lag)
        return self.status

    async def run(self) -> None:
        while True:
            previous = self.status
            status = await self.check()
            if status != previous and (status.redis, status.postgres) != (previous.redis, previous.postgres):
                log.warning("backends: redis=%s postgres=%s", status.redis, status.postgres)
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def _check_redis(self) -> tuple[bool, int | None]:
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=self.interval_s)
            return True, await group_lag(self.redis, keys.BID_REQUESTS, keys.PRICING_GROUP)
        except (RedisError, OSError, TimeoutError):
            return False, None

    async def _check_postgres(self) -> bool:
        try:
            if self._connection is None or self._connection.is_closed():
                self._connection = await asyncpg.connect(self.database_url, timeout=self.interval_s)
            await self._connection.fetchval("SELECT 1", timeout=self.interval_s)
            return True
        except (asyncpg.PostgresError, OSError, TimeoutError, asyncpg.InterfaceError):
            if self._connection is not None:
                self._connection.terminate()
                self._connection = None
            return False
