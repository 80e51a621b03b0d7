"""Reading the audit agent's outputs: `audit:flags`, `audit:reports` and the daily aggregates.

The formats are the contracts in `schema.events` (AuditFlag, AuditReportSummary) and `schema.audit` (the
aggregates' keys and fields); the console reads them through Redis only and never imports the audit agent. It
decodes leniently, field by field, where `schema.events` would reject a whole entry: on-call must see an odd
entry (as text) rather than lose it. Every read is bounded: a COUNT on stream ranges, and at most
`CONSOLE_AGGREGATES_MAX_PRODUCTS` product counters read to rank the top products.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from redis import asyncio as aioredis

from console import streams
from schema.audit import (
    DEVIATION_CENTS,
    FLAGGED,
    FLAGGED_DEVIATION_CENTS,
    PRODUCT_KINDS,
    REVIEWED,
    WINDOW_DAYS,
    product_field,
)
from schema.keys import AUDIT_FLAGS, AUDIT_REPORTS, audit_day_key, audit_products_key


@dataclass(frozen=True, slots=True)
class Flag:
    """One `audit:flags` entry. Text fields are kept as written (the page escapes them)."""

    entry_id: str
    bid_id: int | None
    product_id: int | None
    request_id: str
    current_cpc: str
    adjusted_cpc: str
    deviation: str
    deviation_pct: str
    calculated_at: str
    flagged_at: str

    @classmethod
    def of(cls, entry_id: str, fields: Mapping[str, str]) -> Flag:
        return cls(
            entry_id=entry_id,
            bid_id=_int(fields.get("bid_id")),
            product_id=_int(fields.get("product_id")),
            request_id=fields.get("request_id", ""),
            current_cpc=fields.get("current_cpc", ""),
            adjusted_cpc=fields.get("adjusted_cpc", ""),
            deviation=fields.get("deviation", ""),
            deviation_pct=fields.get("deviation_pct", ""),
            calculated_at=fields.get("calculated_at", ""),
            flagged_at=fields.get("flagged_at", ""),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "bid_id": self.bid_id,
            "product_id": self.product_id,
            "request_id": self.request_id,
            "current_cpc": self.current_cpc,
            "adjusted_cpc": self.adjusted_cpc,
            "deviation": self.deviation,
            "deviation_pct": self.deviation_pct,
            "calculated_at": self.calculated_at,
            "flagged_at": self.flagged_at,
        }


def _int(raw: str | None) -> int | None:
    if raw is None or not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    return int(raw)


@dataclass(frozen=True, slots=True)
class FlagPage:
    flags: list[Flag]
    older: str | None  # entry id to continue from (exclusive), when more may exist
    scanned: int  # entries read to fill the page (more than the page with a product filter)


async def newest_flags(
    redis: aioredis.Redis, *, limit: int, before: str | None, product_id: int | None, scan: int
) -> FlagPage:
    """Newest flags first, optionally only one product's (reading at most `scan` entries to find them)."""
    found: list[Flag] = []
    scanned = 0
    cursor = before
    budget = limit if product_id is None else max(scan, limit)
    while scanned < budget:
        count = min(budget - scanned, 500) if product_id is not None else limit
        entries = await streams.newest(redis, AUDIT_FLAGS, count=count, before=cursor)
        for entry_id, fields in entries:
            scanned += 1
            flag = Flag.of(entry_id, fields)
            if product_id is None or flag.product_id == product_id:
                found.append(flag)
                if len(found) == limit:
                    return FlagPage(found, entry_id, scanned)
        if len(entries) < count:
            return FlagPage(found, None, scanned)  # the stream's oldest entry was reached
        cursor = entries[-1][0]
    return FlagPage(found, cursor, scanned)  # the scan bound was reached: older flags may match


async def flags_after(redis: aioredis.Redis, after: str, *, limit: int) -> list[Flag]:
    """Flags appended after entry `after` (oldest first): what a live page adds."""
    entries = await streams.after(redis, AUDIT_FLAGS, count=limit, start=f"({after}")
    return [Flag.of(entry_id, fields) for entry_id, fields in entries]


async def last_flag_id(redis: aioredis.Redis) -> str:
    entries = await streams.newest(redis, AUDIT_FLAGS, count=1)
    return entries[0][0] if entries else "0-0"


async def flag_of_bid(redis: aioredis.Redis, bid_id: int, calculated_at: datetime, *, scan: int) -> Flag | None:
    """The flag of one bid, searched from a minute before its `calculated_at` (flags follow their bids)."""
    start_ms = int(calculated_at.timestamp() * 1000) - 60_000
    cursor = str(max(start_ms, 0))
    read = 0
    while read < scan:
        count = min(500, scan - read)
        entries = await streams.after(redis, AUDIT_FLAGS, count=count, start=cursor)
        for entry_id, fields in entries:
            if _int(fields.get("bid_id")) == bid_id:
                return Flag.of(entry_id, fields)
        read += len(entries)
        if len(entries) < count:
            return None
        cursor = f"({entries[-1][0]}"
    return None


@dataclass(frozen=True, slots=True)
class Report:
    """One `audit:reports` entry: the summary of a daily budget audit."""

    entry_id: str
    fields: dict[str, str]

    def get(self, name: str) -> str:
        return self.fields.get(name, "")

    @property
    def generated_at(self) -> datetime | None:
        return parse_time(self.get("generated_at"))

    def text(self) -> str:
        """The report's header as `bidengine audit-report` prints it (or the text the entry carries)."""
        if self.get("text"):
            return self.get("text")
        reviewed, flagged = _int(self.get("reviewed")) or 0, _int(self.get("flagged")) or 0
        rate = 100 * flagged / reviewed if reviewed else 0.0
        return "\n".join(
            [
                self.get("title") or "DAILY BUDGET AUDIT REPORT",
                f"generated at:  {self.get('generated_at')}",
                f"window:        {self.get('window_start')} .. {self.get('window_end')}",
                "rule:          |adjusted_cpc - current_cpc| > 20% of current_cpc",
                f"bids reviewed: {self.get('reviewed')}",
                f"bids flagged:  {self.get('flagged')} ({rate:.2f}%)",
                f"total deviation (all bids):     {self.get('deviation_total')}",
                f"total deviation (flagged bids): {self.get('flagged_deviation_total')}",
            ]
        )


async def reports(redis: aioredis.Redis, *, limit: int, before: str | None) -> tuple[list[Report], str | None]:
    entries = await streams.newest(redis, AUDIT_REPORTS, count=limit + 1, before=before)
    page = [Report(entry_id, fields) for entry_id, fields in entries[:limit]]
    return page, (page[-1].entry_id if len(entries) > limit else None)


async def report(redis: aioredis.Redis, entry_id: str) -> Report | None:
    found = await streams.one(redis, AUDIT_REPORTS, entry_id)
    return Report(*found) if found else None


def parse_time(raw: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(raw)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- Aggregates (docs/audit.md: audit:agg:{D} and audit:agg:{D}:products) --------------------------------------


day_key = audit_day_key
products_key = audit_products_key


@dataclass(frozen=True, slots=True)
class Totals:
    reviewed: int = 0
    flagged: int = 0
    deviation_cents: int = 0
    flagged_deviation_cents: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.reviewed + other.reviewed,
            self.flagged + other.flagged,
            self.deviation_cents + other.deviation_cents,
            self.flagged_deviation_cents + other.flagged_deviation_cents,
        )

    @property
    def deviation(self) -> Decimal:
        return Decimal(self.deviation_cents).scaleb(-2)

    @property
    def flagged_deviation(self) -> Decimal:
        return Decimal(self.flagged_deviation_cents).scaleb(-2)

    @property
    def flagged_pct(self) -> str:
        return f"{100 * self.flagged / self.reviewed:.2f}" if self.reviewed else "0.00"


@dataclass(frozen=True, slots=True)
class Aggregates:
    as_of: datetime
    days: list[tuple[date, Totals]]  # oldest first; the last is today (partial)
    rolling: Totals
    products: list[tuple[int, Totals]]  # most flagged first (or the products asked for)
    products_complete: bool  # False when there were too many product counters to rank them all
    product_fields: int = 0

    @property
    def today(self) -> Totals:
        return self.days[-1][1]


def _count(raw: Any) -> int:
    try:
        return int(raw or 0)
    except (TypeError, ValueError):
        return 0


def _totals(raw: Mapping[str, str]) -> Totals:
    return Totals(
        _count(raw.get(REVIEWED)),
        _count(raw.get(FLAGGED)),
        _count(raw.get(DEVIATION_CENTS)),
        _count(raw.get(FLAGGED_DEVIATION_CENTS)),
    )


async def today_totals(redis: aioredis.Redis, now: datetime | None = None) -> Totals:
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    raw: Any = await redis.hgetall(day_key(today))
    return _totals(raw)


async def aggregates(
    redis: aioredis.Redis,
    *,
    now: datetime | None = None,
    product_ids: list[int] | None = None,
    top: int = 10,
    max_product_fields: int,
) -> Aggregates:
    """Today and the rolling 7 UTC days, overall and per product, as `bidengine audit-stats` shows them."""
    as_of = now or datetime.now(UTC)
    today = as_of.astimezone(UTC).date()
    span = [today - timedelta(days=offset) for offset in range(WINDOW_DAYS - 1, -1, -1)]
    async with redis.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hgetall(day_key(day))
            pipe.hlen(products_key(day))
        replies: list[Any] = await pipe.execute()
    days = [(day, _totals(replies[2 * i])) for i, day in enumerate(span)]
    lengths = [_count(replies[2 * i + 1]) for i in range(len(span))]
    rolling = Totals()
    for _, totals in days:
        rolling = rolling + totals

    if product_ids:
        ranked, complete = await _products_asked(redis, span, product_ids[:top]), True
    else:
        ranked, complete = await _top_products(redis, span, lengths, max_product_fields, top)
    products = [(p, Totals(c[0], c[1], c[2])) for p, c in ranked]
    return Aggregates(
        as_of=as_of,
        days=days,
        rolling=rolling,
        products=products,
        products_complete=complete,
        product_fields=sum(lengths),
    )


async def _products_asked(redis: aioredis.Redis, span: list[date], wanted: list[int]) -> list[tuple[int, list[int]]]:
    per_product: dict[int, list[int]] = {p: [0, 0, 0] for p in wanted}
    async with redis.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hmget(products_key(day), [product_field(p, kind) for p in wanted for kind in PRODUCT_KINDS])
        replies: list[Any] = await pipe.execute()
    for values in replies:
        for position, value in enumerate(values):
            per_product[wanted[position // 3]][position % 3] += _count(value)
    return list(per_product.items())


async def _top_products(
    redis: aioredis.Redis, span: list[date], lengths: list[int], budget: int, top: int
) -> tuple[list[tuple[int, list[int]]], bool]:
    """Rank products by flags; reads every product counter of the days (newest first) that fit in `budget`."""
    included: list[date] = []
    complete = True
    for day, length in reversed(list(zip(span, lengths, strict=True))):
        if length > budget:
            complete = False
            break
        budget -= length
        if length:
            included.append(day)
    replies: list[Any] = []
    if included:
        async with redis.pipeline(transaction=False) as pipe:
            for day in included:
                pipe.hgetall(products_key(day))
            replies = await pipe.execute()
    per_product: dict[int, list[int]] = {}
    for values in replies:
        for name, value in values.items():
            product, _, kind = name.partition(":")
            if product.isdigit() and kind in PRODUCT_KINDS:
                per_product.setdefault(int(product), [0, 0, 0])[PRODUCT_KINDS.index(kind)] += _count(value)
    ranked = sorted(per_product.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))
    return ranked[:top], complete


def money(raw: str) -> str:
    """A decimal amount as written, or the raw text when it is not one (shown escaped either way)."""
    try:
        return f"{Decimal(raw):,}"
    except (InvalidOperation, ValueError):
        return raw
