"""Realistic console data written the way the other roles write it (fields per docs/streams.md, docs/audit.md)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from redis import asyncio as aioredis

from schema.competitor import CompetitorPrice
from schema.keys import AUDIT_FLAGS, AUDIT_REPORTS, BID_REQUESTS, BIDS_DEAD_LETTER, COMPETITOR_PRICES_LIST

HOSTILE = "<script>alert(1)</script>"


def flag_fields(
    bid_id: int, product_id: int, current: str, adjusted: str, at: datetime, **overrides: str
) -> dict[str, str]:
    cur, adj = Decimal(current), Decimal(adjusted)
    pct = "inf" if cur == 0 else f"{((adj - cur) * 100 / cur).quantize(Decimal('0.01')):+}"
    fields = {
        "bid_id": str(bid_id),
        "request_id": str(uuid.uuid4()),
        "product_id": str(product_id),
        "current_cpc": current,
        "adjusted_cpc": adjusted,
        "deviation": f"{adj - cur:+}",
        "deviation_pct": pct,
        "calculated_at": at.isoformat(),
        "flagged_at": (at + timedelta(milliseconds=40)).isoformat(),
    }
    fields.update(overrides)
    return fields


async def add_flag(redis: aioredis.Redis, fields: dict[str, str]) -> str:
    return str(await redis.xadd(AUDIT_FLAGS, fields))  # type: ignore[arg-type]


async def insert_bid(
    db: asyncpg.Pool | asyncpg.Connection,
    product_id: int,
    *args: str,
    at: datetime | None = None,
    request_id: uuid.UUID | None = None,
) -> asyncpg.Record:
    current, roas, adjusted = args
    return await _insert_bid(db, product_id, current, roas, adjusted, at, request_id)


async def _insert_bid(  # noqa: PLR0917 - the row's columns, in order
    db: asyncpg.Pool | asyncpg.Connection,
    product_id: int,
    current: str,
    roas: str,
    adjusted: str,
    at: datetime | None = None,
    request_id: uuid.UUID | None = None,
) -> asyncpg.Record:
    row = await db.fetchrow(
        "INSERT INTO bidding_productbid (product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id)"
        " VALUES ($1, $2, $3, $4, coalesce($5, now()), $6) RETURNING id, calculated_at, request_id",
        product_id,
        Decimal(current),
        Decimal(roas),
        Decimal(adjusted),
        at,
        request_id or uuid.uuid4(),
    )
    assert row is not None
    return row


async def add_report(redis: aioredis.Redis, generated_at: datetime, reviewed: int, flagged: int) -> str:
    fields = {
        "title": "DAILY BUDGET AUDIT REPORT",
        "generated_at": generated_at.isoformat(),
        "window_start": (generated_at - timedelta(days=7)).isoformat(),
        "window_end": generated_at.isoformat(),
        "reviewed": str(reviewed),
        "flagged": str(flagged),
        "deviation_total": "1234.56",
        "flagged_deviation_total": "987.65",
    }
    return str(await redis.xadd(AUDIT_REPORTS, fields))  # type: ignore[arg-type]


async def add_aggregates(redis: aioredis.Redis, day: datetime, products: dict[int, tuple[int, int, int]]) -> None:
    key = f"audit:agg:{{{day.date().isoformat()}}}"
    reviewed = sum(r for r, _, _ in products.values())
    flagged = sum(f for _, f, _ in products.values())
    cents = sum(d for _, _, d in products.values())
    await redis.hset(
        key,
        mapping={
            "reviewed": reviewed,
            "flagged": flagged,
            "deviation_cents": cents,
            "flagged_deviation_cents": cents // 2,
        },
    )
    mapping: dict[str, Any] = {}
    for product, (r, f, d) in products.items():
        mapping[f"{product}:r"], mapping[f"{product}:f"], mapping[f"{product}:d"] = r, f, d
    await redis.hset(f"{key}:products", mapping=mapping)


def price(product_id: int, value: float, at: datetime, name: str | None = None) -> str:
    return CompetitorPrice(
        productId=product_id,
        productName=name or f"Product {product_id}",
        brand=None if product_id % 3 == 0 else "Acme",
        category="beauty",
        price=value,
        discountPercentage=5.0,
        rating=4.5,
        stock=10,
        timestamp=at,
    ).to_json()


async def add_polls(redis: aioredis.Redis, polls: list[tuple[datetime, dict[int, float]]]) -> None:
    """Polls oldest first, pushed as the monitor does (newest poll at the head, in source order)."""
    for at, prices in polls:
        payloads = [price(pid, value, at) for pid, value in prices.items()]
        await redis.lpush(COMPETITOR_PRICES_LIST, *reversed(payloads))


def request_fields(product_id: int, current: float, roas: float, request_id: str | None = None) -> dict[str, str]:
    return {
        "request_id": request_id or str(uuid.uuid4()),
        "reply_to": "bids:replies:gone-gateway",
        "reply_id": "1",
        "product_id": str(product_id),
        "current_cpc": repr(current),
        "target_roas": repr(roas),
    }


async def add_dead_letter(redis: aioredis.Redis, original: dict[str, str], reason: str) -> str:
    fields = {"entry_id": "1700000000000-0", "stream": BID_REQUESTS, "reason": reason, "fields": json.dumps(original)}
    return str(await redis.xadd(BIDS_DEAD_LETTER, fields))  # type: ignore[arg-type]


async def seed_everything(redis: aioredis.Redis, db: asyncpg.Pool, now: datetime | None = None) -> dict[str, Any]:
    """A bit of everything, for page tests and screenshots."""
    now = now or datetime.now(UTC)
    rows = []
    for i in range(12):
        current = f"{1 + i * 0.25:.2f}"
        roas = "150" if i % 3 else "110"
        adjusted = f"{Decimal(current) * Decimal(roas) / 100:.2f}"
        rows.append(await insert_bid(db, 100 + i % 4, current, roas, adjusted, at=now - timedelta(minutes=12 - i)))
    for row in rows[1::3]:
        await add_flag(redis, flag_fields(row["id"], 101, "1.25", "1.88", row["calculated_at"]))
    await add_report(redis, now - timedelta(days=1), 15234, 4120)
    await add_report(redis, now - timedelta(minutes=5), 16001, 4388)
    for days_ago in range(7):
        await add_aggregates(
            redis,
            now - timedelta(days=days_ago),
            {101: (500 + days_ago, 130, 9100), 102: (320, 80, 5000), 103: (90, 2, 300)},
        )
    await add_polls(
        redis,
        [
            (now - timedelta(minutes=10), {1: 9.99, 2: 19.99, 3: 4.5, 4: 100.0}),
            (now - timedelta(minutes=5), {1: 9.49, 2: 19.99, 3: 5.0, 5: 12.0}),
        ],
    )
    await add_dead_letter(redis, request_fields(104, 1.5, 150.0), "not stored: new row violates check constraint")
    return {"bids": rows}
