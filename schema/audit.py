"""The audit agent's windowed aggregates in Redis: their layout, and the typed view every reader decodes them to.

Per UTC day `D` (the day of the bid's `calculated_at`), keys from `schema.keys`:

* `audit:agg:{D}`           hash with `DAY_FIELDS`: reviewed, flagged, deviation_cents, flagged_deviation_cents
* `audit:agg:{D}:products`  hash with `product_field(p, kind)` = `<product>:r|f|d` (reviewed, flagged, cents)

Money is kept in integer cents (every stored amount has two decimals, so the totals are exact). The audit
agent writes these; `bidengine audit-stats` and the console read them through `decode_day` / `decode_products`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

WINDOW_DAYS: Final = 7

REVIEWED: Final = "reviewed"
FLAGGED: Final = "flagged"
DEVIATION_CENTS: Final = "deviation_cents"
FLAGGED_DEVIATION_CENTS: Final = "flagged_deviation_cents"
DAY_FIELDS: Final = (REVIEWED, FLAGGED, DEVIATION_CENTS, FLAGGED_DEVIATION_CENTS)

# Per-product counter kinds, in the order `Totals` holds them.
PRODUCT_KINDS: Final = ("r", "f", "d")


def product_field(product_id: int, kind: str) -> str:
    return f"{product_id}:{kind}"


def cents(value: int) -> Decimal:
    return Decimal(value).scaleb(-2)


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


def window_days(now: datetime, days: int = WINDOW_DAYS) -> list[date]:
    """The `days` UTC days ending today, oldest first."""
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=offset) for offset in range(days - 1, -1, -1)]


def decode_day(day: date, fields: Mapping[str, str]) -> DayStats:
    """A day's overall hash (HGETALL; missing fields are zero)."""
    return DayStats(
        day=day,
        overall=Totals(
            int(fields.get(REVIEWED, 0)), int(fields.get(FLAGGED, 0)), cents(int(fields.get(DEVIATION_CENTS, 0)))
        ),
        flagged_deviation_total=cents(int(fields.get(FLAGGED_DEVIATION_CENTS, 0))),
    )


def decode_products(hashes: Iterable[Mapping[str, str | None]]) -> dict[int, Totals]:
    """Per-product totals summed over several days' product hashes (HGETALL or the fields asked for)."""
    counters: dict[int, list[int]] = {}
    for fields in hashes:
        for name, value in fields.items():
            if value is None:
                continue
            product, _, kind = name.partition(":")
            counters.setdefault(int(product), [0, 0, 0])[PRODUCT_KINDS.index(kind)] += int(value)
    return {p: Totals(c[0], c[1], cents(c[2])) for p, c in counters.items()}


def most_flagged(totals: Mapping[int, Totals], top: int) -> dict[int, Totals]:
    """The `top` products by flagged bids, then by reviewed bids, then by id."""
    ranked = sorted(totals.items(), key=lambda item: (-item[1].flagged, -item[1].reviewed, item[0]))
    return dict(ranked[:top])
