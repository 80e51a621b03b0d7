"""Read-only stream facts every role may ask of Redis (the gateway for back-pressure, the agents for probes)."""

from __future__ import annotations

import contextlib

from redis import asyncio as aioredis
from redis.exceptions import ResponseError


async def group_lag(redis: aioredis.Redis, stream: str, group: str) -> int | None:
    """Entries of `stream` the group has not finished: not yet delivered (Redis 7 `lag`) plus pending.

    None when the stream or the group does not exist yet. Redis 6.2 reports no `lag`: pending only.
    """
    with contextlib.suppress(ResponseError):
        for info in await redis.xinfo_groups(stream):
            if info["name"] == group:
                lag = info.get("lag")
                return int(info["pending"]) + (int(lag) if lag is not None else 0)
    return None
