"""Competitor prices: the newest poll in `competitor_prices` and what changed since the one before.

Every record of one poll carries the poll's `timestamp` and the list holds polls newest first, so the first
run of equal timestamps is the latest poll and the next run the previous one. At most
`CONSOLE_COMPETITORS_READ` elements are read; when the previous poll does not fit in them (or was trimmed
from the list), the page says its comparison is partial.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from redis import asyncio as aioredis

from schema.competitor import CompetitorPrice
from schema.keys import COMPETITOR_PRICES_LIST


@dataclass(frozen=True, slots=True)
class Change:
    record: CompetitorPrice
    previous_price: float | None  # None: not in the previous poll (new product)

    @property
    def delta_pct(self) -> str:
        if self.previous_price is None or self.previous_price == 0:
            return ""
        return f"{(self.record.price - self.previous_price) * 100 / self.previous_price:+.2f}"


@dataclass(frozen=True, slots=True)
class Competitors:
    latest_at: datetime | None
    previous_at: datetime | None
    latest: list[CompetitorPrice]
    changes: list[Change]  # price changes and new products, largest move first
    removed: list[CompetitorPrice]  # in the previous poll, not in the latest
    previous_complete: bool
    invalid: int  # elements that are not competitor price records


async def latest_polls(redis: aioredis.Redis, *, read: int) -> Competitors:
    raw: list[Any] = await redis.lrange(COMPETITOR_PRICES_LIST, 0, read - 1)
    polls: list[list[CompetitorPrice]] = []
    invalid = 0
    reached_end = len(raw) < read
    for payload in raw:
        try:
            record = CompetitorPrice.from_json(payload)
        except (ValidationError, ValueError):
            invalid += 1
            continue
        if polls and polls[-1][0].timestamp == record.timestamp:
            polls[-1].append(record)
        elif len(polls) < 3:
            polls.append([record])
        else:
            break
    latest = polls[0] if polls else []
    previous = polls[1] if len(polls) > 1 else []
    # The previous poll is whole when a third one starts after it in what was read, or the list ended.
    previous_complete = bool(previous) and (len(polls) > 2 or reached_end)
    before = {r.productId: r for r in previous}
    changes = [
        Change(r, before[r.productId].price if r.productId in before else None)
        for r in latest
        if r.productId not in before or before[r.productId].price != r.price
    ]
    if not previous:
        changes = []
    changes.sort(key=lambda c: -abs(float(c.delta_pct)) if c.delta_pct else 0.0)
    now_ids = {r.productId for r in latest}
    removed = [r for r in previous if r.productId not in now_ids] if previous_complete else []
    return Competitors(
        latest_at=latest[0].timestamp if latest else None,
        previous_at=previous[0].timestamp if previous else None,
        latest=latest,
        changes=changes,
        removed=removed,
        previous_complete=previous_complete,
        invalid=invalid,
    )


async def latest_poll_at(redis: aioredis.Redis) -> datetime | None:
    for payload in await redis.lrange(COMPETITOR_PRICES_LIST, 0, 0):
        try:
            return CompetitorPrice.from_json(payload).timestamp
        except (ValidationError, ValueError):
            return None
    return None
