"""Builders shared by the audit tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

import redis.asyncio as aioredis

from processors.audit import AuditBatchResult, audit_batch
from processors.audit_stats import audit_stats
from processors.audit_store import AuditStore
from redis_streams.groups import Batch, GroupConfig, StreamEntry
from redis_streams.retry import Backoff
from schema.events import PricedBid
from schema.keys import AUDIT_FLAGS, AUDIT_GROUP, BIDS_PRICED
from schema.settings import Settings
from tests.support import group_config_for_tests

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def priced(
    bid_id: int,
    current: str,
    adjusted: str,
    *,
    product_id: int = 7,
    at: datetime = NOW,
) -> PricedBid:
    return PricedBid(
        bid_id=bid_id,
        request_id=str(uuid.UUID(int=bid_id)),
        product_id=product_id,
        current_cpc=Decimal(current),
        target_roas=Decimal("4.0"),
        adjusted_cpc=Decimal(adjusted),
        calculated_at=at,
    )


def entry(bid: PricedBid, entry_id: str | None = None) -> StreamEntry:
    return StreamEntry(entry_id or f"{bid.bid_id}-0", bid.to_fields())


def entries(bids: Iterable[PricedBid]) -> list[StreamEntry]:
    return [entry(b) for b in bids]


def store(redis: aioredis.Redis) -> AuditStore:
    return AuditStore(redis, flags_maxlen=Settings().audit_flags_maxlen)


async def review(
    redis: aioredis.Redis, batch: Iterable[StreamEntry], *, now: datetime = NOW, acknowledge: Batch | None = None
) -> AuditBatchResult:
    return await audit_batch(batch, store=store(redis), now=now, acknowledge=acknowledge)


async def flags(redis: aioredis.Redis) -> list[dict[str, str]]:
    return [fields for _, fields in await redis.xrange(AUDIT_FLAGS)]


async def flagged_ids(redis: aioredis.Redis) -> list[int]:
    return sorted(int(f["bid_id"]) for f in await flags(redis))


async def reviewed_and_flagged(redis: aioredis.Redis, *, now: datetime = NOW) -> tuple[int, int]:
    stats = await audit_stats(redis, now=now)
    return stats.rolling.reviewed, stats.rolling.flagged


async def publish(redis: aioredis.Redis, bids: Iterable[PricedBid]) -> list[str]:
    """Append the bids to bids:priced as the pricing agent does; their entry ids."""
    return [await redis.xadd(BIDS_PRICED, bid.to_fields()) for bid in bids]


def audit_group(consumer: str, **overrides: object) -> GroupConfig:
    options: dict[str, object] = {"batch_size": 500, "block_ms": 10, "claim_idle_ms": 0, "backoff": Backoff(0.0, 0.0)}
    return group_config_for_tests(BIDS_PRICED, AUDIT_GROUP, consumer, **(options | overrides))
