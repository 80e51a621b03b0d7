"""The competitor monitor's Prometheus metrics (catalogue: docs/metrics.md), on MONITOR_METRICS_PORT.

A poll runs every MONITOR_INTERVAL_S (300 s by default), so the interesting numbers are outcomes and the time of
the last success, not rates. Labels are bounded: `outcome` is one of `PollOutcome`.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from monitor.health import PollOutcome, PollReport
from telemetry.metrics import role_registry

# A poll fetches a few pages (each bounded by MONITOR_TIMEOUT_S, 10 s, with retries) and writes one transaction.
POLL_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class MonitorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else role_registry()
        self.polls = Counter(
            "bidengine_monitor_polls",
            "Polls of the competitor source, by outcome (ok, fetch_failed, no_valid_items, publish_failed).",
            ("outcome",),
            registry=self.registry,
        )
        self.poll_duration = Histogram(
            "bidengine_monitor_poll_duration_seconds",
            "Time one poll took: fetching every page, normalizing, publishing.",
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.items_published = Counter(
            "bidengine_monitor_items_published",
            "Competitor price records published (list competitor_prices and its stream).",
            registry=self.registry,
        )
        self.items_rejected = Counter(
            "bidengine_monitor_items_rejected",
            "Items of the source that failed validation and were not published.",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "bidengine_monitor_last_success_timestamp_seconds",
            "Unix time at which the last successful poll finished (0 until the first one).",
            registry=self.registry,
        )
        self.polls_by_outcome = {outcome: self.polls.labels(outcome.value) for outcome in PollOutcome}

    def record(self, report: PollReport, finished_at: float) -> None:
        """One poll finished (`finished_at`: Unix time)."""
        self.polls_by_outcome[report.outcome].inc()
        self.poll_duration.observe(report.duration_s)
        self.items_published.inc(report.items_published)
        self.items_rejected.inc(report.items_rejected)
        if report.succeeded:
            self.last_success.set(finished_at)
