"""What the monitor knows about its own polls, and the health verdict built from it.

Healthy means: Redis answers, and a poll succeeded recently enough (`stale_after_s`; before the first
success, the grace period counts from start). A few failed polls in a row are tolerated because the source
is someone else's service; a monitor whose data keeps getting older is reported so it can be looked at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from schema.competitor import iso_utc


class PollOutcome(StrEnum):
    OK = "ok"
    FETCH_FAILED = "fetch_failed"  # the source did not give a full catalogue, even after retries
    NO_VALID_ITEMS = "no_valid_items"  # a catalogue arrived but not one item validated
    PUBLISH_FAILED = "publish_failed"  # Redis did not take the records


@dataclass(frozen=True, slots=True)
class PollReport:
    outcome: PollOutcome
    started_at: datetime
    duration_s: float
    items_fetched: int = 0
    items_rejected: int = 0
    items_published: int = 0
    pages: int = 0
    requests: int = 0
    error: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.outcome is PollOutcome.OK

    def as_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome.value,
            "started_at": iso_utc(self.started_at),
            "duration_ms": round(self.duration_s * 1000, 1),
            "items_fetched": self.items_fetched,
            "items_rejected": self.items_rejected,
            "items_published": self.items_published,
            "pages": self.pages,
            "requests": self.requests,
            "error": self.error,
        }


@dataclass(slots=True)
class PollHistory:
    """Running record of polls. Times named `*_mono` come from a monotonic clock (immune to clock steps)."""

    started_mono: float
    last_poll: PollReport | None = None
    last_success: PollReport | None = None
    last_success_mono: float | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    polls: int = 0
    polls_failed: int = 0
    items_rejected: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, report: PollReport, finished_mono: float) -> None:
        self.polls += 1
        self.items_rejected += report.items_rejected
        self.counts[report.outcome.value] = self.counts.get(report.outcome.value, 0) + 1
        self.last_poll = report
        if report.succeeded:
            self.last_success = report
            self.last_success_mono = finished_mono
            self.consecutive_failures = 0
        else:
            self.polls_failed += 1
            self.consecutive_failures += 1
            self.last_error = report.error

    def seconds_without_success(self, now_mono: float) -> float:
        since = self.started_mono if self.last_success_mono is None else self.last_success_mono
        return now_mono - since


@dataclass(frozen=True, slots=True)
class Health:
    healthy: bool
    reasons: list[str]
    body: dict[str, Any]

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503


def evaluate(
    history: PollHistory,
    *,
    redis_reachable: bool,
    redis_error: str | None,
    now_mono: float,
    now: datetime,
    stale_after_s: float,
) -> Health:
    reasons: list[str] = []
    if not redis_reachable:
        reasons.append(f"redis unreachable: {redis_error}")
    without_success = history.seconds_without_success(now_mono)
    if without_success > stale_after_s:
        since = "start" if history.last_success is None else "the last successful poll"
        reasons.append(f"no successful poll for {without_success:.0f} s since {since} (limit {stale_after_s:.0f} s)")
    healthy = not reasons
    body: dict[str, Any] = {
        "status": "ok" if healthy else "unhealthy",
        "reasons": reasons,
        "time": iso_utc(now),
        "redis": {"reachable": redis_reachable, "error": redis_error},
        "last_poll": None if history.last_poll is None else history.last_poll.as_json(),
        "last_success_at": None if history.last_success is None else iso_utc(history.last_success.started_at),
        "last_error": history.last_error,
        "consecutive_failures": history.consecutive_failures,
        "polls": {"total": history.polls, "failed": history.polls_failed, "by_outcome": dict(history.counts)},
        "items_rejected_total": history.items_rejected,
    }
    return Health(healthy, reasons, body)
