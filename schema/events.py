"""The events carried by the bid streams, and their encoding as flat Redis stream fields.

Every field is a UTF-8 string so consumers in any language can read the streams without our code.
Money is a decimal string with exactly two places ("2.25"); floats sent by bidders travel as `repr`
strings, which round-trip exactly, so the pricing agent computes on the very value the bidder sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
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
    return f"{value.quantize(_CENT)}"


_CENT = Decimal("0.01")


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
            "target_roas": str(self.target_roas),
            "adjusted_cpc": money(self.adjusted_cpc),
            "calculated_at": self.calculated_at.isoformat(),
        }

    @classmethod
    def from_fields(cls, fields: Fields) -> PricedBid:
        try:
            return cls(
                bid_id=int(_get(fields, "bid_id")),
                request_id=_get(fields, "request_id"),
                product_id=int(_get(fields, "product_id")),
                current_cpc=Decimal(_get(fields, "current_cpc")),
                target_roas=Decimal(_get(fields, "target_roas")),
                adjusted_cpc=Decimal(_get(fields, "adjusted_cpc")),
                calculated_at=datetime.fromisoformat(_get(fields, "calculated_at")),
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
