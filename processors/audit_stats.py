"""Reading the audit aggregates back: the days of a window, the rolling totals and the top products.

One pipelined read (not a hot path: the CLI and dashboards). Every reply is looked up by the key it answers,
never by its position, and HMGET's values are named back by the fields asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    overall_keys = [audit_day_key(day) for day in span]
    product_keys = [audit_products_key(day) for day in span] if wanted is None or wanted_fields else []

    async with redis.pipeline(transaction=False) as pipe:
        for key in overall_keys:
            pipe.hgetall(key)
        for key in product_keys:
            if wanted is None:
                pipe.hgetall(key)
            else:
                pipe.hmget(key, wanted_fields)
        replies: list[Any] = await pipe.execute()
    by_key: dict[str, Any] = dict(zip([*overall_keys, *product_keys], replies, strict=True))

    day_stats = tuple(decode_day(day, by_key[key]) for day, key in zip(span, overall_keys, strict=True))
    product_hashes: list[Mapping[str, str | None]] = (
        [by_key[key] for key in product_keys]
        if wanted is None
        else [dict(zip(wanted_fields, by_key[key], strict=True)) for key in product_keys]
    )
    found = decode_products(product_hashes)
    products = most_flagged(found, top) if wanted is None else {p: found.get(p, Totals()) for p in wanted}
    rolling = Totals()
    for stats in day_stats:
        rolling = rolling + stats.overall
    return AuditStats(as_of=as_of, days=day_stats, rolling=rolling, products=products)
