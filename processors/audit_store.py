"""The audit agent's windowed aggregates in Redis: per UTC day, per product and overall, counted once per bid.

Layout (one UTC day `D`, the day of the bid's `calculated_at`, so a late or redelivered event lands in the
day it belongs to):

* `audit:seen:{D}`           set of bid ids already counted for that day
* `audit:agg:{D}`            hash: reviewed, flagged, deviation_cents, flagged_deviation_cents
* `audit:agg:{D}:products`   hash: `<product>:r`, `<product>:f`, `<product>:d` (reviewed, flagged, cents)

One Lua script marks the bid seen (SADD), bumps the counters and, for a flagged bid, appends the flag to
`audit:flags`: all or nothing, so neither a redelivery nor a second agent process handling the same entry
concurrently can count a bid twice or emit its flag twice, and a crash can never leave a bid counted but
unflagged. The braces make the day the cluster hash tag, so a day's keys share a slot.

Money is summed in integer cents (HINCRBY): every stored amount has two decimals, so the totals are exact,
which HINCRBYFLOAT would not guarantee.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from redis import asyncio as aioredis

from schema.keys import AUDIT_AGGREGATE_PREFIX, AUDIT_FLAGS, AUDIT_SEEN_PREFIX

WINDOW_DAYS = 7
# Events for days older than this count nowhere: they are outside every window `audit_stats` serves.
MAX_EVENT_AGE_DAYS = WINDOW_DAYS + 1
# Outlives MAX_EVENT_AGE_DAYS from the last write to a day, so any redelivery of a counted bid either still
# finds its "seen" marker or is old enough to be ignored: a bid can never be counted twice.
DAY_TTL_S = (MAX_EVENT_AGE_DAYS + 2) * 86_400
FLAGS_MAXLEN = 100_000

_RECORD = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then
  return 0
end
local ttl = tonumber(ARGV[5])
local product = ARGV[2]
local flagged = ARGV[3] == '1'
local cents = tonumber(ARGV[4])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('HINCRBY', KEYS[2], 'reviewed', 1)
redis.call('HINCRBY', KEYS[2], 'deviation_cents', cents)
redis.call('HINCRBY', KEYS[3], product .. ':r', 1)
redis.call('HINCRBY', KEYS[3], product .. ':d', cents)
if flagged then
  redis.call('HINCRBY', KEYS[2], 'flagged', 1)
  redis.call('HINCRBY', KEYS[2], 'flagged_deviation_cents', cents)
  redis.call('HINCRBY', KEYS[3], product .. ':f', 1)
  local flag = {}
  for i = 7, #ARGV do
    flag[#flag + 1] = ARGV[i]
  end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', unpack(flag))
end
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
return 1
"""


def seen_key(day: date) -> str:
    return f"{AUDIT_SEEN_PREFIX}{{{day.isoformat()}}}"


def day_key(day: date) -> str:
    return f"{AUDIT_AGGREGATE_PREFIX}{{{day.isoformat()}}}"


def products_key(day: date) -> str:
    return f"{day_key(day)}:products"


@dataclass(frozen=True, slots=True)
class Observation:
    """One reviewed bid, ready to be recorded."""

    bid_id: int
    product_id: int
    day: date
    flagged: bool
    deviation_cents: int  # |adjusted - current| in cents
    flag_fields: Mapping[str, str] = field(default_factory=dict)  # the audit:flags entry, when flagged


class AuditStore:
    """Records observations atomically; one instance per Redis client (it holds the registered script)."""

    def __init__(self, redis: aioredis.Redis, *, flags_maxlen: int = FLAGS_MAXLEN) -> None:
        self.redis = redis
        self.flags_maxlen = flags_maxlen
        self._record = redis.register_script(_RECORD)

    async def record(self, observations: Iterable[Observation]) -> list[bool]:
        """Record each observation once; True for those seen for the first time (counted, flag emitted)."""
        pending = list(observations)
        if not pending:
            return []
        # One round trip for the batch; each script call is still atomic on its own.
        async with self.redis.pipeline(transaction=False) as pipe:
            for obs in pending:
                flag_args = [item for pair in obs.flag_fields.items() for item in pair]
                await self._record(
                    keys=[seen_key(obs.day), day_key(obs.day), products_key(obs.day), AUDIT_FLAGS],
                    args=[
                        obs.bid_id,
                        obs.product_id,
                        "1" if obs.flagged else "0",
                        obs.deviation_cents,
                        DAY_TTL_S,
                        self.flags_maxlen,
                        *flag_args,
                    ],
                    client=pipe,
                )
            results: list[Any] = await pipe.execute()
        return [int(result) == 1 for result in results]


@dataclass(frozen=True, slots=True)
class Totals:
    reviewed: int = 0
    flagged: int = 0
    deviation_total: Decimal = Decimal("0.00")  # sum of |adjusted - current| over the reviewed bids

    def __add__(self, other: Totals) -> Totals:
        return Totals(
            self.reviewed + other.reviewed,
            self.flagged + other.flagged,
            self.deviation_total + other.deviation_total,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"reviewed": self.reviewed, "flagged": self.flagged, "deviation_total": str(self.deviation_total)}


@dataclass(frozen=True, slots=True)
class DayStats:
    day: date
    overall: Totals
    flagged_deviation_total: Decimal


@dataclass(frozen=True, slots=True)
class AuditStats:
    """The windowed aggregates: each UTC day of the window, the rolling window, and per product over it."""

    as_of: datetime
    days: tuple[DayStats, ...]  # oldest first; the last one is today (partial)
    rolling: Totals  # over `days`
    products: dict[int, Totals]  # over `days`: the requested products, or the most flagged ones

    @property
    def today(self) -> DayStats:
        return self.days[-1]

    def as_dict(self) -> dict[str, Any]:
        return {
            "as_of": self.as_of.isoformat(),
            "days": [
                {
                    "day": d.day.isoformat(),
                    **d.overall.as_dict(),
                    "flagged_deviation_total": str(d.flagged_deviation_total),
                }
                for d in self.days
            ],
            "rolling": {"days": len(self.days), **self.rolling.as_dict()},
            "products": {str(p): t.as_dict() for p, t in self.products.items()},
        }


def _cents(value: int) -> Decimal:
    return Decimal(value).scaleb(-2)


def window_days(now: datetime, days: int = WINDOW_DAYS) -> list[date]:
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


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
    async with redis.pipeline(transaction=False) as pipe:
        for day in span:
            pipe.hgetall(day_key(day))
            if wanted is None:
                pipe.hgetall(products_key(day))
            elif wanted:
                pipe.hmget(products_key(day), [f"{p}:{kind}" for p in wanted for kind in "rfd"])
            else:
                pipe.hgetall(day_key(day))  # keeps the reply layout uniform; ignored
        replies: list[Any] = await pipe.execute()

    day_stats: list[DayStats] = []
    per_product: dict[int, list[int]] = {}
    for index, day in enumerate(span):
        overall: dict[str, str] = replies[2 * index]
        products_reply = replies[2 * index + 1]
        day_stats.append(
            DayStats(
                day=day,
                overall=Totals(
                    int(overall.get("reviewed", 0)),
                    int(overall.get("flagged", 0)),
                    _cents(int(overall.get("deviation_cents", 0))),
                ),
                flagged_deviation_total=_cents(int(overall.get("flagged_deviation_cents", 0))),
            )
        )
        if wanted is None:
            for name, value in products_reply.items():
                product, _, kind = name.partition(":")
                counters = per_product.setdefault(int(product), [0, 0, 0])
                counters["rfd".index(kind)] += int(value)
        elif wanted:
            for position, value in enumerate(products_reply):
                counters = per_product.setdefault(wanted[position // 3], [0, 0, 0])
                counters[position % 3] += int(value or 0)

    totals = {p: Totals(c[0], c[1], _cents(c[2])) for p, c in per_product.items()}
    if wanted is None:
        ranked = sorted(totals.items(), key=lambda item: (-item[1].flagged, -item[1].reviewed, item[0]))
        totals = dict(ranked[:top])
    else:
        totals = {p: totals.get(p, Totals()) for p in wanted}
    rolling = Totals()
    for stats in day_stats:
        rolling = rolling + stats.overall
    return AuditStats(as_of=as_of, days=tuple(day_stats), rolling=rolling, products=totals)


def format_stats(stats: AuditStats) -> str:
    lines = [f"AUDIT AGGREGATES (as of {stats.as_of.isoformat()}, UTC days)"]
    lines.append(f"{'day':<12}{'reviewed':>12}{'flagged':>10}{'deviation':>16}{'flagged dev.':>16}")
    for d in stats.days:
        lines.append(
            f"{d.day.isoformat():<12}{d.overall.reviewed:>12,}{d.overall.flagged:>10,}"
            f"{d.overall.deviation_total:>16,}{d.flagged_deviation_total:>16,}"
        )
    r = stats.rolling
    lines.append(
        f"{'rolling ' + str(len(stats.days)) + 'd':<12}{r.reviewed:>12,}{r.flagged:>10,}{r.deviation_total:>16,}"
    )
    if stats.products:
        lines.append("")
        lines.append(f"{'product':<12}{'reviewed':>12}{'flagged':>10}{'deviation':>16}")
        for product, t in stats.products.items():
            lines.append(f"{product:<12}{t.reviewed:>12,}{t.flagged:>10,}{t.deviation_total:>16,}")
    return "\n".join(lines)
