"""Reading the audit aggregates back: the days of a window, the rolling totals and the top products."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from redis import asyncio as aioredis

from schema.audit import (
    PRODUCT_KINDS,
    WINDOW_DAYS,
    AuditStats,
    Totals,
    decode_day,
    decode_products,
    most_flagged,
    product_field,
    window_days,
)
from schema.keys import audit_day_key, audit_products_key


async def audit_stats(
    redis: aioredis.Redis,
    *,
    now: datetime | None = None,
    days: int = WINDOW_DAYS,
    product_ids: Iterable[int] | None = None,
    top: int = 10,
) -> AuditStats:
    """Read the aggregates of the `days` UTC days ending today (today included, so it is partial).

    With `product_ids`, returns those products; otherwise the `top` products by flagged bids (reading every
    product of the window: meant for the CLI and dashboards, not for a hot path).
    """
    as_of = now or datetime.now(UTC)
    span = window_days(as_of, days)
    wanted = list(product_ids) if product_ids is not None else None
    wanted_fields = [product_field(p, kind) for p in wanted or () for kind in PRODUCT_KINDS]
    async with redis.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hgetall(audit_day_key(day))
        for day in span:
            if wanted is None:
                pipe.hgetall(audit_products_key(day))
            elif wanted_fields:
                pipe.hmget(audit_products_key(day), wanted_fields)
        replies: list[Any] = await pipe.execute()

    day_replies, product_replies = replies[: len(span)], replies[len(span) :]
    day_stats = tuple(decode_day(day, reply) for day, reply in zip(span, day_replies, strict=True))
    if wanted is None:
        products = most_flagged(decode_products(product_replies), top)
    else:
        # HMGET answers values in the order asked: name them back.
        found = decode_products(dict(zip(wanted_fields, values, strict=True)) for values in product_replies)
        products = {p: found.get(p, Totals()) for p in wanted}
    rolling = Totals()
    for stats in day_stats:
        rolling = rolling + stats.overall
    return AuditStats(as_of=as_of, days=day_stats, rolling=rolling, products=products)
