"""The agents' Prometheus metrics (catalogue: docs/metrics.md).

Each agent process builds one registry (`PricingMetrics` / `AuditMetrics`), served on its own metrics
port (PRICING_METRICS_PORT, AUDIT_METRICS_PORT on METRICS_HOST) by prometheus-client's HTTP server thread, so
a scrape never runs on the event loop. Both agents read a consumer group through the same bridge, so the
bridge's metrics (`StreamConsumerMetrics`) are in both registries; the consumer-group state every agent also
exposes is collected from Redis at scrape time (`redis_streams.metrics`). Everything here is recorded once per
batch, not per bid, so prometheus-client's own (locked) metrics cost nothing that matters. Label values are
bounded: stream and group names, outcomes; never a product id or request id.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any, Final

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from schema import keys
from telemetry.metrics import role_registry

# Bids per batch: from a lone bid on a quiet stream up to PRICING_BATCH_SIZE (1000 by default) and beyond.
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# One INSERT ... SELECT FROM unnest() per batch: ~1.4 ms per 100 rows, ~12 ms per 1000 (docs/benchmarks.md).
STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# What the pricing agent answered a gateway for one bid (the `outcome` label of bidengine_pricing_replies_total):
# stored now; already stored under this request id (a redelivery or a retry with the same Idempotency-Key);
# the Idempotency-Key was used for a different bid (422); the bid could not be priced or stored (dead letter).
REPLY_OUTCOMES: Final = ("stored", "replayed", "conflict", "rejected")

# Stream/group pairs and dead-letter streams of each agent, so their series exist (at 0) from the start.
PRICING_GROUP: Final = (keys.BID_REQUESTS, keys.PRICING_GROUP)
AUDIT_GROUP: Final = (keys.BIDS_PRICED, keys.AUDIT_GROUP)


class StreamConsumerMetrics:
    """What the consumer-group bridge does with entries, in either agent."""

    def __init__(self, registry: CollectorRegistry, *, group: tuple[str, str], dead_letter_stream: str) -> None:
        self.reclaimed = Counter(
            "bidengine_stream_reclaimed",
            "Entries taken over with XAUTOCLAIM from a consumer idle longer than CLAIM_IDLE_MS.",
            ("stream", "group"),
            registry=registry,
        )
        self.redeliveries = Counter(
            "bidengine_stream_redeliveries",
            "Entries handed to the handler again: re-read from this consumer's pending list after a restart, "
            "or retried after the handler failed.",
            ("stream", "group"),
            registry=registry,
        )
        self.dead_letters = Counter(
            "bidengine_dead_letters",
            "Entries written to a dead-letter stream by this process (label: the dead-letter stream).",
            ("stream",),
            registry=registry,
        )
        # This process reads one group and writes one dead-letter stream: its children, bound once.
        self.reclaimed_entries = self.reclaimed.labels(*group)
        self.redelivered_entries = self.redeliveries.labels(*group)
        self.dead_letter = self.dead_letters.labels(dead_letter_stream)


class PricingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else role_registry()
        self.stream = StreamConsumerMetrics(
            self.registry, group=PRICING_GROUP, dead_letter_stream=keys.BIDS_DEAD_LETTER
        )
        self.batches = Counter(
            "bidengine_pricing_batches",
            "Batches of bids:requests handled (priced, stored, replied and acknowledged).",
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "bidengine_pricing_batch_size",
            "Bids per handled batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.store_duration = Histogram(
            "bidengine_pricing_store_duration_seconds",
            "Time to store one batch in PostgreSQL: the single INSERT statement and its commit.",
            buckets=STORE_BUCKETS,
            registry=self.registry,
        )
        self.replies = Counter(
            "bidengine_pricing_replies",
            "Replies published to gateways, one per bid, by outcome.",
            ("outcome",),
            registry=self.registry,
        )
        self.replies_by_outcome = {outcome: self.replies.labels(outcome) for outcome in REPLY_OUTCOMES}


class LastReportCollector(Collector):
    """The time of the newest daily budget audit: the id (ms) of the newest `audit:reports` entry, read from Redis
    when Prometheus scrapes (in the metrics server's thread), so no restart and no other audit agent's run is
    missed. 0 when none was ever published; no sample while Redis does not answer (`bidengine_stream_state_up`
    says so)."""

    def __init__(self, client: redis.Redis | None) -> None:
        self.client = client

    def describe(self) -> Iterable[Metric]:
        return [self._family()]  # registering must not query Redis

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        if self.client is not None:
            with contextlib.suppress(RedisError, OSError):
                newest: Any = self.client.xrevrange(keys.AUDIT_REPORTS, count=1)
                family.add_metric((), int(str(newest[0][0]).split("-")[0]) / 1000 if newest else 0)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "bidengine_audit_report_last_success_timestamp_seconds",
            "Unix time of the newest daily budget audit published to audit:reports (0 when none ever was).",
        )


class AuditMetrics:
    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        dead_letter_stream: str = keys.AUDIT_DEAD_LETTER,
        reports_client: redis.Redis | None = None,
    ) -> None:
        self.registry = registry if registry is not None else role_registry()
        self.stream = StreamConsumerMetrics(self.registry, group=AUDIT_GROUP, dead_letter_stream=dead_letter_stream)
        self.bids_reviewed = Counter(
            "bidengine_audit_bids_reviewed",
            "Priced bids reviewed for the first time (aggregated, and flagged when they moved more than 20%).",
            registry=self.registry,
        )
        self.bids_flagged = Counter(
            "bidengine_audit_bids_flagged",
            "Reviewed bids whose adjusted CPC moved more than 20% from the current CPC (one audit:flags entry each).",
            registry=self.registry,
        )
        self.duplicates_skipped = Counter(
            "bidengine_audit_duplicates_skipped",
            "bids:priced entries skipped because the bid was already reviewed (redelivery).",
            registry=self.registry,
        )
        self.registry.register(LastReportCollector(reports_client))
