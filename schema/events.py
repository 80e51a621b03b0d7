"""Every stream entry the product writes, and its encoding as flat Redis stream fields, both ways.

Every field is a UTF-8 string so consumers in any language can read the streams without our code.
Money is a decimal string with exactly two places ("2.25"); floats sent by bidders travel as `repr`
strings, which round-trip exactly, so the pricing agent computes on the very value the bidder sent.
docs/streams.md documents each field; tests/schema/test_stream_contract.py holds every encoding to it.
(Competitor prices: `schema.competitor`.)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

Fields = Mapping[str, str]


class EventDecodeError(ValueError):
    """A stream entry is missing a field or holds a value of the wrong shape."""


def _get(fields: Fields, name: str) -> str:
    try:
        return fields[name]
    except KeyError:
        raise EventDecodeError(f"missing field {name!r}") from None


def money(value: Decimal | float) -> str:
    """Format an amount with exactly two decimals, as stored in PostgreSQL."""
    if isinstance(value, float):
        value = Decimal(repr(value))
    text = str(value)
    # A numeric(12, 2) read back from PostgreSQL already has exactly two places: its text is the answer (what
    # quantize would give), at a fraction of the cost. Anything else (more or fewer places, an exponent) is
    # quantized.
    if text[-3:-2] == "." and "E" not in text:
        return text
    return f"{value.quantize(_CENT)}"


_CENT = Decimal("0.01")

# Every row one INSERT stores has the same calculated_at (now() is the transaction's time): a batch of priced
# bids formats it once. Only for UTC datetimes (what PostgreSQL's driver returns): two equal ones have the same
# fields and so the same text, which equal datetimes in different zones would not.
_utc_isoformat = functools.lru_cache(maxsize=64)(datetime.isoformat)


def _isoformat(moment: datetime) -> str:
    return _utc_isoformat(moment) if moment.tzinfo is UTC else moment.isoformat()


def plain_decimal(value: Decimal) -> str:
    """A decimal in positional notation without trailing zeros: 150.0000 -> "150", 1.2500 -> "1.25".

    `str(value.normalize())` would write 150 as "1.5E+2".
    """
    text = f"{value:f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _decimal(fields: Fields, name: str) -> Decimal:
    value = Decimal(_get(fields, name))
    if not value.is_finite():
        raise EventDecodeError(f"{name} is not a finite number")
    return value


def _datetime(fields: Fields, name: str) -> datetime:
    return datetime.fromisoformat(_get(fields, name))


@dataclass(frozen=True, slots=True)
class BidRequested:
    """`bids:requests`: a validated bid waiting to be priced and stored (written by the gateway)."""

    request_id: str  # UUID; unique in `bidding_productbid`, so a redelivery or a retry stores nothing new
    reply_to: str  # the reply stream of the gateway process that waits for the answer
    reply_id: str  # the gateway's correlation token for one HTTP request
    product_id: int
    current_cpc: float
    target_roas: float

    def to_fields(self) -> dict[str, str]:
        return {
            "request_id": self.request_id,
            "reply_to": self.reply_to,
            "reply_id": self.reply_id,
            "product_id": str(self.product_id),
            "current_cpc": repr(self.current_cpc),
            "target_roas": repr(self.target_roas),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> BidRequested:
        try:
            return cls(
                request_id=_get(fields, "request_id"),
                reply_to=_get(fields, "reply_to"),
                reply_id=_get(fields, "reply_id"),
                product_id=int(_get(fields, "product_id")),
                current_cpc=float(_get(fields, "current_cpc")),
                target_roas=float(_get(fields, "target_roas")),
            )
        except ValueError as exc:
            raise EventDecodeError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class PricedBid:
    """`bids:priced`: a bid committed to PostgreSQL (written by the pricing agent after the commit)."""

    bid_id: int
    request_id: str
    product_id: int
    current_cpc: Decimal
    target_roas: Decimal
    adjusted_cpc: Decimal
    calculated_at: datetime

    def to_fields(self) -> dict[str, str]:
        return {
            "bid_id": str(self.bid_id),
            "request_id": self.request_id,
            "product_id": str(self.product_id),
            "current_cpc": money(self.current_cpc),
            "target_roas": plain_decimal(self.target_roas),
            "adjusted_cpc": money(self.adjusted_cpc),
            "calculated_at": _isoformat(self.calculated_at),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> PricedBid:
        try:
            return cls(
                bid_id=int(_get(fields, "bid_id")),
                request_id=_get(fields, "request_id"),
                product_id=int(_get(fields, "product_id")),
                current_cpc=_decimal(fields, "current_cpc"),
                target_roas=_decimal(fields, "target_roas"),
                adjusted_cpc=_decimal(fields, "adjusted_cpc"),
                calculated_at=_datetime(fields, "calculated_at"),
            )
        except (ValueError, ArithmeticError) as exc:
            raise EventDecodeError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class BidReply:
    """The answer to one request: the stored bid, or why none was stored.

    Replies travel on `bids:replies:<gateway>`, private to the gateway and the pricing agent: one entry per
    agent batch and gateway, one field per request (`reply_id` -> `bid_id|adjusted_cpc|error`), so a batch
    costs one XADD per gateway instead of one per bid.
    """

    reply_id: str
    bid_id: int | None = None
    adjusted_cpc: str | None = None
    error: str | None = None

    # Error codes a reply may carry.
    IDEMPOTENCY_CONFLICT = "idempotency-conflict"  # the key was used before, for a different bid
    REJECTED = "rejected"  # the agent could not price or store it (details in bids:dead)

    def encode(self) -> str:
        bid_id = "" if self.bid_id is None else str(self.bid_id)
        return f"{bid_id}|{self.adjusted_cpc or ''}|{self.error or ''}"

    @classmethod
    def decode(cls, reply_id: str, value: str) -> BidReply:
        try:
            bid_id, adjusted_cpc, error = value.split("|")
            return cls(reply_id, int(bid_id) if bid_id else None, adjusted_cpc or None, error or None)
        except ValueError as exc:
            raise EventDecodeError(f"malformed reply {value!r}") from exc


def encode_replies(replies: Iterable[BidReply]) -> dict[str, str]:
    """The fields of one reply-stream entry."""
    return {reply.reply_id: reply.encode() for reply in replies}


def decode_replies(fields: Fields) -> list[BidReply]:
    return [BidReply.decode(reply_id, value) for reply_id, value in fields.items()]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """`bids:dead`, `audit:dead`: an entry an agent gave up on, kept with its reason until on-call replays or
    purges it."""

    entry_id: str  # the entry's id in `stream`
    stream: str  # the stream it was read from (where a replay puts it back)
    reason: str
    fields: Mapping[str, str]  # the original entry, unchanged
    group: str = ""  # the consumer group that gave up on it
    # Deliveries of the entry to `group` when it was given up on; 0: at once, the agent knew it could never succeed.
    deliveries: int = 0

    def to_fields(self) -> dict[str, str]:
        return {
            "entry_id": self.entry_id,
            "stream": self.stream,
            "group": self.group,
            "deliveries": str(self.deliveries),
            "reason": self.reason,
            "fields": json.dumps(dict(self.fields), separators=(",", ":")),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> DeadLetter:
        try:
            original = json.loads(_get(fields, "fields"))
        except ValueError as exc:
            raise EventDecodeError(f"fields is not JSON: {exc}") from exc
        if not isinstance(original, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in original.items()
        ):
            raise EventDecodeError("fields is not a JSON object of strings")
        try:
            # Letters written before `group` and `deliveries` existed have neither.
            deliveries = int(fields.get("deliveries", "0"))
        except ValueError as exc:
            raise EventDecodeError(f"deliveries is not a whole number: {exc}") from exc
        return cls(
            _get(fields, "entry_id"),
            _get(fields, "stream"),
            _get(fields, "reason"),
            original,
            group=fields.get("group", ""),
            deliveries=deliveries,
        )


def signed_decimal(value: Decimal) -> str:
    """A signed amount as the audit writes it: "+0.50", "-1.25", "+0.00"."""
    return f"{value:+}"


@dataclass(frozen=True, slots=True)
class AuditFlag:
    """`audit:flags`: a stored bid whose adjusted CPC moved more than the audit threshold (one entry per bid)."""

    bid_id: int
    request_id: str
    product_id: int
    current_cpc: Decimal
    adjusted_cpc: Decimal
    deviation: Decimal  # adjusted - current, two decimals
    deviation_pct: Decimal | None  # signed percent, two decimals; None when current_cpc is 0 ("inf")
    calculated_at: datetime
    flagged_at: datetime

    def to_fields(self) -> dict[str, str]:
        return {
            "bid_id": str(self.bid_id),
            "request_id": self.request_id,
            "product_id": str(self.product_id),
            "current_cpc": money(self.current_cpc),
            "adjusted_cpc": money(self.adjusted_cpc),
            "deviation": signed_decimal(self.deviation),
            "deviation_pct": "inf" if self.deviation_pct is None else signed_decimal(self.deviation_pct),
            "calculated_at": self.calculated_at.isoformat(),
            "flagged_at": self.flagged_at.isoformat(),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> AuditFlag:
        try:
            pct = _get(fields, "deviation_pct")
            return cls(
                bid_id=int(_get(fields, "bid_id")),
                request_id=_get(fields, "request_id"),
                product_id=int(_get(fields, "product_id")),
                current_cpc=_decimal(fields, "current_cpc"),
                adjusted_cpc=_decimal(fields, "adjusted_cpc"),
                deviation=_decimal(fields, "deviation"),
                deviation_pct=None if pct == "inf" else _decimal(fields, "deviation_pct"),
                calculated_at=_datetime(fields, "calculated_at"),
                flagged_at=_datetime(fields, "flagged_at"),
            )
        except (ValueError, ArithmeticError) as exc:
            raise EventDecodeError(str(exc)) from exc


@dataclass(frozen=True, slots=True)
class AuditReportSummary:
    """`audit:reports`: the summary of one daily budget audit (the full text goes to the report's output)."""

    TITLE = "DAILY BUDGET AUDIT REPORT"

    generated_at: datetime
    window_start: datetime
    reviewed: int
    flagged: int
    deviation_total: Decimal  # sum of |adjusted - current| over the reviewed bids
    flagged_deviation_total: Decimal  # the same over the flagged bids

    def to_fields(self) -> dict[str, str]:
        return {
            "title": self.TITLE,
            "generated_at": self.generated_at.isoformat(),
            "window_start": self.window_start.isoformat(),
            "window_end": self.generated_at.isoformat(),
            "reviewed": str(self.reviewed),
            "flagged": str(self.flagged),
            "deviation_total": money(self.deviation_total),
            "flagged_deviation_total": money(self.flagged_deviation_total),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> AuditReportSummary:
        try:
            return cls(
                generated_at=_datetime(fields, "generated_at"),
                window_start=_datetime(fields, "window_start"),
                reviewed=int(_get(fields, "reviewed")),
                flagged=int(_get(fields, "flagged")),
                deviation_total=_decimal(fields, "deviation_total"),
                flagged_deviation_total=_decimal(fields, "flagged_deviation_total"),
            )
        except (ValueError, ArithmeticError) as exc:
            raise EventDecodeError(str(exc)) from exc
