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
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from redis import asyncio as aioredis

from processors.audit_store import MAX_EVENT_AGE_DAYS, AuditStore, Observation
from schema.events import EventDecodeError, PricedBid, money
from schema.keys import AUDIT_GROUP, BIDS_PRICED
from schema.settings import Settings

if TYPE_CHECKING:
    from processors.app import StreamsApp

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


def format_pct(value: Decimal | None) -> str:
    return "inf" if value is None else f"{value:+}"


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

    def flag_fields(self, flagged_at: datetime) -> dict[str, str]:
        return {
            "bid_id": str(self.bid.bid_id),
            "request_id": self.bid.request_id,
            "product_id": str(self.bid.product_id),
            "current_cpc": money(self.bid.current_cpc),
            "adjusted_cpc": money(self.bid.adjusted_cpc),
            "deviation": f"{self.deviation:+}",
            "deviation_pct": format_pct(self.deviation_pct),
            "calculated_at": self.bid.calculated_at.isoformat(),
            "flagged_at": flagged_at.isoformat(),
        }


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
    redis: aioredis.Redis,
    entries: Iterable[Entry],
    *,
    store: AuditStore | None = None,
    now: datetime | None = None,
) -> AuditBatchResult:
    """Review a batch of `bids:priced` entries: aggregates and flags, once per bid; safe to call again."""
    store = store or AuditStore(redis)
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
                flag_fields=review.flag_fields(now) if review.flagged else {},
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


def make_handler(redis: aioredis.Redis) -> Callable[[Iterable[Any]], Awaitable[None]]:
    """Adapt `audit_batch` to the stream bridge, whose entries carry `.id` and `.fields`."""
    store = AuditStore(redis)

    async def handle(batch: Iterable[Any]) -> None:
        result = await audit_batch(redis, [(entry.id, entry.fields) for entry in batch], store=store)
        if result.flagged:
            log.info("audit: %d bids reviewed, %d flagged", result.counted, result.flagged)

    return handle


def register_daily_report(app: Any, settings: Settings, redis: aioredis.Redis) -> Callable[[], Awaitable[None]]:
    """Schedule the daily budget audit on the app at `settings.audit_report_cron` (UTC)."""
    from processors.audit_report import run_scheduled_report

    async def daily_budget_audit() -> None:
        if not settings.database_url:
            log.error("daily budget audit skipped: DATABASE_URL is not set")
            return
        try:
            await run_scheduled_report(settings.database_url, redis)
        except Exception:
            # A failed run must not stop the crontab loop: tomorrow's run, and the CLI, still work.
            log.exception("daily budget audit failed")

    result: Callable[[], Awaitable[None]] = app.crontab(settings.audit_report_cron, timezone=UTC)(daily_budget_audit)
    return result


def build_audit_app(settings: Settings, *, consumer: str | None = None) -> StreamsApp:
    """The audit worker: the `audit` group on `bids:priced` -> flags and aggregates, plus the daily report."""
    from processors.app import create_app
    from processors.heartbeat import heartbeat_path
    from processors.redis_streams import GroupConfig, default_consumer_name, group_agent

    if not settings.redis_url or not settings.database_url:
        raise SystemExit("REDIS_URL and DATABASE_URL are required (`bidengine run` starts embedded servers)")
    app = create_app("bidengine-audit")
    redis = aioredis.Redis.from_url(settings.redis_url, decode_responses=True)
    group_agent(
        app,
        redis,
        GroupConfig(
            stream=BIDS_PRICED,
            group=AUDIT_GROUP,
            consumer=consumer or default_consumer_name("audit"),
            batch_size=settings.audit_batch_size,
            claim_idle_ms=settings.claim_idle_ms,
            heartbeat_file=heartbeat_path("audit-agent"),
        ),
        make_handler(redis),
        name="audit_bids",
    )
    register_daily_report(app, settings, redis)
    return app
