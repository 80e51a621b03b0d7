"""The audit agent: flags priced bids whose adjusted CPC moved more than 20% away from the current CPC.

It reads `bids:priced` through its own consumer group (`audit`), so it never competes with other consumers
of that stream. For every bid it updates the windowed aggregates (see `audit_store`) and, for a flagged bid,
appends one entry to `audit:flags`, both exactly once per bid however often the entry is delivered.

Threshold: flagged when `|adjusted - current| > 0.20 * current`, in exact decimal arithmetic on the stored
two-decimal amounts (exactly 20% is not flagged). At `current = 0` the same rule gives: flagged whenever the
adjusted CPC is above zero (any spend from a zero bid is an unbounded relative move), not flagged at 0 -> 0;
the relative deviation is then undefined and reported as "inf".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from redis import asyncio as aioredis

from processors.audit_store import MAX_EVENT_AGE_DAYS, AuditStore, Observation
from redis_streams.groups import Batch
from schema.events import AuditFlag, EventDecodeError, PricedBid
from schema.keys import BIDS_PRICED

log = logging.getLogger(__name__)

THRESHOLD = Decimal("0.20")
CENT = Decimal("0.01")

Entry = tuple[str, Mapping[str, str]]


def is_flagged(current_cpc: Decimal, adjusted_cpc: Decimal) -> bool:
    return abs(adjusted_cpc - current_cpc) > THRESHOLD * current_cpc


def deviation_pct(current_cpc: Decimal, adjusted_cpc: Decimal) -> Decimal | None:
    """Signed relative move in percent, two decimals; None when the current CPC is 0 (undefined)."""
    if current_cpc == 0:
        return None
    return ((adjusted_cpc - current_cpc) * 100 / current_cpc).quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Review:
    bid: PricedBid
    flagged: bool
    deviation: Decimal  # adjusted - current, signed
    deviation_pct: Decimal | None

    @classmethod
    def of(cls, bid: PricedBid) -> Review:
        # The stored amounts are numeric(12, 2); judge exactly those, whatever the event's spelling.
        current = bid.current_cpc.quantize(CENT, rounding=ROUND_HALF_UP)
        adjusted = bid.adjusted_cpc.quantize(CENT, rounding=ROUND_HALF_UP)
        return cls(
            bid=bid,
            flagged=is_flagged(current, adjusted),
            deviation=adjusted - current,
            deviation_pct=deviation_pct(current, adjusted),
        )

    def flag(self, flagged_at: datetime) -> AuditFlag:
        return AuditFlag(
            bid_id=self.bid.bid_id,
            request_id=self.bid.request_id,
            product_id=self.bid.product_id,
            current_cpc=self.bid.current_cpc,
            adjusted_cpc=self.bid.adjusted_cpc,
            deviation=self.deviation,
            deviation_pct=self.deviation_pct,
            calculated_at=self.bid.calculated_at,
            flagged_at=flagged_at,
        )


@dataclass(frozen=True, slots=True)
class AuditBatchResult:
    counted: int = 0  # bids seen for the first time
    flagged: int = 0  # of those, flagged (one audit:flags entry each)
    duplicates: int = 0  # already counted: redeliveries, or handled concurrently by another process
    too_old: int = 0  # older than every window: acknowledged, counted nowhere
    invalid: int = 0  # undecodable entries: logged and acknowledged, since a retry cannot fix them


def _utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        # The pricing agent writes aware timestamps; a naive one is taken as UTC rather than dropped.
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).date()


async def audit_batch(
    entries: Iterable[Entry],
    *,
    store: AuditStore,
    now: datetime | None = None,
) -> AuditBatchResult:
    """Review a batch of `bids:priced` entries: aggregates and flags, once per bid; safe to call again."""
    now = now or datetime.now(UTC)
    oldest_day = now.date() - timedelta(days=MAX_EVENT_AGE_DAYS)
    observations: list[Observation] = []
    invalid = too_old = 0
    for entry_id, fields in entries:
        try:
            bid = PricedBid.from_fields(fields)
        except EventDecodeError as exc:
            invalid += 1
            log.error("skipping undecodable %s entry %s: %s", BIDS_PRICED, entry_id, exc)
            continue
        day = _utc_day(bid.calculated_at)
        if day < oldest_day:
            too_old += 1
            continue
        review = Review.of(bid)
        observations.append(
            Observation(
                bid_id=bid.bid_id,
                product_id=bid.product_id,
                day=day,
                flagged=review.flagged,
                deviation_cents=int(abs(review.deviation) * 100),
                flag_fields=review.flag(now).to_fields() if review.flagged else {},
            )
        )
    first_seen = await store.record(observations)
    counted = sum(first_seen)
    flagged = sum(1 for obs, new in zip(observations, first_seen, strict=True) if new and obs.flagged)
    return AuditBatchResult(
        counted=counted,
        flagged=flagged,
        duplicates=len(observations) - counted,
        too_old=too_old,
        invalid=invalid,
    )


class AuditHandler:
    """Reviews a batch from the audit group (the bridge acknowledges it after this returns)."""

    def __init__(self, redis: aioredis.Redis, *, flags_maxlen: int) -> None:
        self.store = AuditStore(redis, flags_maxlen=flags_maxlen)

    async def __call__(self, batch: Batch) -> None:
        result = await audit_batch([(entry.id, entry.fields) for entry in batch], store=self.store)
        if result.flagged:
            log.info("audit: %d bids reviewed, %d flagged", result.counted, result.flagged)
