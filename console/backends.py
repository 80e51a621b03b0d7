"""The console's two backends, Redis and PostgreSQL, each call bounded by one deadline.

A page never waits on a backend for longer than `CONSOLE_BACKEND_TIMEOUT_S`: every read runs under
`asyncio.timeout`, the Redis client has socket timeouts and no retries, and PostgreSQL also gets a
`statement_timeout` so the server stops work nobody waits for. A failure becomes a `BackendUnavailable` with a
sentence for the page ("Redis did not answer within 2.0 s"), never a 500 or a hang.

The PostgreSQL pool is created with no connections, so the console starts (and serves its Redis pages) while
PostgreSQL is away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import asyncpg
from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from schema.settings import Settings

T = TypeVar("T")


class BackendUnavailable(Exception):
    """Redis or PostgreSQL did not answer in time, or answered with an error: `str()` is for the page."""

    def __init__(self, backend: str, message: str) -> None:
        super().__init__(f"{backend} {message}")
        self.backend = backend


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """One bounded read: its value, or the sentence explaining why there is none."""

    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def connect_redis(url: str, settings: Settings) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=settings.console_redis_max_connections,
        timeout=settings.console_backend_timeout_s,  # waiting for a free connection
        socket_connect_timeout=settings.console_backend_timeout_s,
        socket_timeout=settings.console_backend_timeout_s,
        # No retries: a page that failed says so; the next request gets a fresh connection.
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis(connection_pool=pool)


async def create_pool(url: str, settings: Settings) -> asyncpg.Pool:
    timeout_ms = int(settings.console_backend_timeout_s * 1000)
    pool = await asyncpg.create_pool(
        url,
        min_size=0,
        max_size=settings.console_db_pool_size,
        timeout=settings.console_backend_timeout_s,  # connecting
        command_timeout=settings.console_backend_timeout_s,
        server_settings={
            "statement_timeout": str(timeout_ms),
            "idle_in_transaction_session_timeout": str(max(timeout_ms, 10_000)),
            "application_name": "bidengine-console",
            # Plans per execution: a generic plan cannot see which time slice a bound parameter selects.
            "plan_cache_mode": "force_custom_plan",
        },
    )
    assert pool is not None
    return pool


class Backends:
    """The clients and the deadline every page applies to them."""

    def __init__(self, redis: aioredis.Redis, pool: asyncpg.Pool, timeout_s: float) -> None:
        self.redis = redis
        self.pool = pool
        self.timeout_s = timeout_s

    async def redis_call(self, read: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await read(self.redis)
        except TimeoutError:
            raise BackendUnavailable("Redis", f"did not answer within {self.timeout_s:g} s") from None
        except (RedisError, OSError) as exc:
            raise BackendUnavailable("Redis", f"is unavailable: {_short(exc)}") from exc

    async def db_call(self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.pool.acquire() as conn:
                    return await read(conn)
        except TimeoutError:
            raise BackendUnavailable("PostgreSQL", f"did not answer within {self.timeout_s:g} s") from None
        except asyncpg.QueryCanceledError:
            raise BackendUnavailable("PostgreSQL", f"did not answer within {self.timeout_s:g} s") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise BackendUnavailable("PostgreSQL", f"is unavailable: {_short(exc)}") from exc

    async def redis_outcome(self, read: Callable[[aioredis.Redis], Awaitable[T]]) -> Outcome[T]:
        try:
            return Outcome(await self.redis_call(read))
        except BackendUnavailable as exc:
            return Outcome(error=str(exc))

    async def db_outcome(self, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> Outcome[T]:
        try:
            return Outcome(await self.db_call(read))
        except BackendUnavailable as exc:
            return Outcome(error=str(exc))

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pool.close()


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def any_error(*outcomes: Outcome[Any]) -> bool:
    return any(not outcome.ok for outcome in outcomes)
