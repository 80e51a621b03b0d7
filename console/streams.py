"""Typed stream range reads (the console's client decodes responses, so ids and fields are str)."""

from __future__ import annotations

from typing import Any

from redis import asyncio as aioredis

Entry = tuple[str, dict[str, str]]


def _entries(raw: Any) -> list[Entry]:
    return [(str(entry_id), dict(fields or {})) for entry_id, fields in raw or []]


async def newest(redis: aioredis.Redis, stream: str, *, count: int, before: str | None = None) -> list[Entry]:
    """Up to `count` entries, newest first, strictly older than `before` when given."""
    return _entries(await redis.xrevrange(stream, max=f"({before}" if before else "+", min="-", count=count))


async def after(redis: aioredis.Redis, stream: str, *, count: int, start: str) -> list[Entry]:
    """Up to `count` entries, oldest first, from `start` (an id, `(id` for strictly after, or a millisecond time)."""
    return _entries(await redis.xrange(stream, min=start, max="+", count=count))


async def one(redis: aioredis.Redis, stream: str, entry_id: str) -> Entry | None:
    found = _entries(await redis.xrange(stream, min=entry_id, max=entry_id, count=1))
    return found[0] if found else None
