"""The pipeline's state in Redis: each stream's consumer groups (lag, pending, consumers) and its length.

Lag is Redis 7's `lag` (entries not yet delivered to the group) plus the group's pending entries, as the
gateway's back-pressure counts it; Redis 6.2 reports no `lag`, so only pending entries are known there and
the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis
from redis.exceptions import ResponseError

from schema.keys import (
    AUDIT_FLAGS,
    AUDIT_REPORTS,
    BID_REQUESTS,
    BIDS_PRICED,
    COMPETITOR_PRICES_STREAM,
    DEAD_LETTER_STREAMS,
)

STREAMS = (BID_REQUESTS, BIDS_PRICED, AUDIT_FLAGS, AUDIT_REPORTS, COMPETITOR_PRICES_STREAM, *DEAD_LETTER_STREAMS)


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    pending: int
    idle_ms: int
    inactive_ms: int | None  # since its last successful read (Redis 7.2+)


@dataclass(frozen=True, slots=True)
class Group:
    stream: str
    name: str
    pending: int
    undelivered: int | None  # None on Redis < 7
    last_delivered: str
    consumers: list[Consumer]
    consumers_total: int

    @property
    def lag(self) -> int:
        return self.pending + (self.undelivered or 0)


@dataclass(frozen=True, slots=True)
class StreamState:
    name: str
    length: int
    groups: list[Group]


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


async def stream_state(redis: aioredis.Redis, stream: str, *, max_consumers: int) -> StreamState:
    length = int(await redis.xlen(stream))
    groups: list[Group] = []
    try:
        infos: list[dict[str, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:  # no such stream yet
        infos = []
    for info in infos:
        consumers_raw: list[dict[str, Any]] = await redis.xinfo_consumers(stream, info["name"])
        consumers = sorted(
            (
                Consumer(
                    name=str(c["name"]),
                    pending=int(c.get("pending", 0)),
                    idle_ms=int(c.get("idle", 0)),
                    inactive_ms=_int(c.get("inactive")),
                )
                for c in consumers_raw
            ),
            key=lambda c: c.idle_ms,
        )
        groups.append(
            Group(
                stream=stream,
                name=str(info["name"]),
                pending=int(info.get("pending", 0)),
                undelivered=_int(info.get("lag")),
                last_delivered=str(info.get("last-delivered-id", "")),
                consumers=consumers[:max_consumers],
                consumers_total=len(consumers),
            )
        )
    return StreamState(stream, length, groups)


async def pipeline_state(redis: aioredis.Redis, *, max_consumers: int) -> list[StreamState]:
    return [await stream_state(redis, stream, max_consumers=max_consumers) for stream in STREAMS]
