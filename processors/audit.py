"""The audit agent: flags priced bids whose adjusted CPC moved more than 20% away from the current CPC.

It reads `bids:priced` through its own consumer group (`audit`), so it never competes with other consumers
of that stream. For every bid it updates the windowed aggregates and, for a flagged bid, appends one entry to
`audit:flags`, both exactly once per bid however often the entry is delivered, and acknowledges the batch in
the same Redis script (`processors.audit_store`: the state, and why it is exactly once).

Threshold: flagged when `|adjusted - current| > 20% of current`, exactly, on the stored two-decimal amounts:
in integer cents that is `5 * |a - c| > c`, with no rounding anywhere (exactly 20% is not flagged). At
`current = 0` the same rule gives: flagged whenever the adjusted CPC is above zero (any spend from a zero bid
is an unbounded relative move), not flagged at 0 -> 0; the relative deviation is then undefined and reported
as "inf".

Cost: the hot path decodes only the fields it needs, in integer cents (`schema.audit.audited_bid`), builds no
object per bid, and sends the whole batch in one script call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import asyncio as aioredis

from processors.audit_store import AuditStore, Recording
from processors.metrics import AuditMetrics
from redis_streams.groups import Batch, StreamEntry
from schema.audit import MAX_EVENT_AGE_DAYS, audited_bid, flag_values
from schema.events import EventDecodeError
from schema.keys import BIDS_PRICED
from telemetry.logs import REQUEST_ID

log = logging.getLogger(__name__)

THRESHOLD_PERCENT = 20


def is_flagged(current_cents: int, adjusted_cents: int) -> bool:
    """|adjusted - current| > THRESHOLD_PERCENT% of current, exactly (integer cents)."""
    return 100 * abs(adjusted_cents - current_cents) > THRESHOLD_PERCENT * current_cents


@dataclass(frozen=True, slots=True)
class AuditBatchResult:
    counted: int = 0  # bids seen for the first time
    flagged: int = 0  # of those, flagged (one audit:flags entry each)
    duplicates: int = 0  # already counted: redeliveries, or handled concurrently by another process
    too_old: int = 0  # older than every window: acknowledged, counted nowhere
    invalid: int = 0  # undecodable entries: logged and acknowledged, since a retry cannot fix them


async def audit_batch(
    entries: Iterable[StreamEntry],
    *,
    store: AuditStore,
    now: datetime | None = None,
    acknowledge: Batch | None = None,
) -> AuditBatchResult:
    """Review `bids:priced` entries: aggregates and flags, once per bid, then acknowledge `acknowledge`'s
    entries in the same script. Safe to call again with the same entries."""
    now = now or datetime.now(UTC)
    oldest_day = (now.astimezone(UTC).date() - timedelta(days=MAX_EVENT_AGE_DAYS)).isoformat()
    recording = Recording()
    add = recording.add
    invalid = too_old = 0
    for entry in entries:
        try:
            bid = audited_bid(entry.fields)
        except EventDecodeError as exc:
            invalid += 1
            log.error(
                "skipping undecodable %s entry %s: %s",
                BIDS_PRICED,
                entry.id,
                exc,
                extra={REQUEST_ID: entry.fields.get("request_id")},
            )
            continue
        bid_id, _, product_id, current, _, adjusted, _, day, _ = bid
        if day < oldest_day:  # ISO dates order as strings
            too_old += 1
            continue
        flag = flag_values(bid) if is_flagged(current, adjusted) else None
        add(bid_id, day, product_id, abs(adjusted - current), flag)
    recorded = await store.record(recording, flagged_at=now.isoformat(), acknowledge=acknowledge)
    return AuditBatchResult(
        counted=recorded.counted,
        flagged=recorded.flagged,
        duplicates=len(recording) - recorded.counted,
        too_old=too_old,
        invalid=invalid,
    )


class AuditHandler:
    """Reviews a batch from the audit group and acknowledges it in the same script (the bridge then does not)."""

    def __init__(self, redis: aioredis.Redis, *, flags_maxlen: int, metrics: AuditMetrics | None = None) -> None:
        self.store = AuditStore(redis, flags_maxlen=flags_maxlen)
        self.metrics = metrics  # None: nothing recorded (METRICS_ENABLED=false, or a test)

    async def __call__(self, batch: Batch) -> None:
        result = await audit_batch(batch, store=self.store, acknowledge=batch)
        batch.mark_acknowledged()
        metrics = self.metrics
        if metrics is not None:
            if result.counted:
                metrics.bids_reviewed.inc(result.counted)
            if result.flagged:
                metrics.bids_flagged.inc(result.flagged)
            if result.duplicates:
                metrics.duplicates_skipped.inc(result.duplicates)
        if result.flagged:
            log.info("audit: %d bids reviewed, %d flagged", result.counted, result.flagged)
