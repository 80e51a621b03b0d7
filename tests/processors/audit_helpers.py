"""Builders shared by the audit tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

from schema.events import PricedBid

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def priced(
    bid_id: int,
    current: str,
    adjusted: str,
    *,
    product_id: int = 7,
    at: datetime = NOW,
) -> PricedBid:
    return PricedBid(
        bid_id=bid_id,
        request_id=str(uuid.UUID(int=bid_id)),
        product_id=product_id,
        current_cpc=Decimal(current),
        target_roas=Decimal("4.0"),
        adjusted_cpc=Decimal(adjusted),
        calculated_at=at,
    )


def entry(bid: PricedBid) -> tuple[str, dict[str, str]]:
    return (f"{bid.bid_id}-0", bid.to_fields())
