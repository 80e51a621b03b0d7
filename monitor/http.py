"""The monitor's HTTP face: `GET /health` for readiness and people, `GET /live` for liveness, `GET /prices?limit=N`
for the latest records.

`/live` answers 200 whenever the process serves HTTP, whatever Redis or the source do: restarting the monitor
cures neither a Redis outage nor a failing products API (it polls again by itself), so only a hung process
should fail its liveness probe. `/health` is the truth about the data (503 while Redis is away or polls fail).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from monitor.health import PollHistory, evaluate
from monitor.publisher import latest

DEFAULT_PRICES_LIMIT: Final = 10
MAX_PRICES_LIMIT: Final = 1000
# A probe must answer quickly even when Redis hangs; a ping slower than this counts as unreachable.
REDIS_PING_TIMEOUT_S: Final = 1.0


def build_app(
    redis: aioredis.Redis,
    history: PollHistory,
    *,
    stale_after_s: float,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> web.Application:
    async def health(_request: web.Request) -> web.Response:
        reachable, error = await _ping(redis)
        verdict = evaluate(
            history,
            redis_reachable=reachable,
            redis_error=error,
            now_mono=clock(),
            now=wall_clock(),
            stale_after_s=stale_after_s,
        )
        return web.json_response(verdict.body, status=verdict.http_status)

    async def live(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def prices(request: web.Request) -> web.Response:
        raw = request.query.get("limit", str(DEFAULT_PRICES_LIMIT))
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if limit < 1:
            return _error(400, f"limit must be a whole number from 1 to {MAX_PRICES_LIMIT}, got {raw!r}")
        limit = min(limit, MAX_PRICES_LIMIT)  # larger asks are served, capped, rather than refused
        try:
            records = await latest(redis, limit)
        except (RedisError, OSError) as exc:
            return _error(503, f"redis unavailable: {exc}")
        return web.json_response({"limit": limit, "count": len(records), "prices": records})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/live", live)
    app.router.add_get("/prices", prices)
    return app


async def _ping(redis: aioredis.Redis) -> tuple[bool, str | None]:
    try:
        async with asyncio.timeout(REDIS_PING_TIMEOUT_S):
            await redis.ping()
    except TimeoutError:
        return False, f"no answer to PING within {REDIS_PING_TIMEOUT_S} s"
    except (RedisError, OSError) as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, None


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
