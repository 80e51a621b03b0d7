"""The Prometheus plumbing every role shares: its registry and, for the roles without an HTTP port of their
own (the agents, the monitor), the server of `/metrics` (docs/metrics.md).

The server is prometheus-client's own HTTP server, in a daemon thread of the role's process: a scrape (and a
collector that reads Redis at scrape time, `redis_streams.metrics`) never runs on the role's event loop, so a
slow scrape cannot delay a bid, and a busy event loop cannot make a scrape time out.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)


def role_registry() -> CollectorRegistry:
    """A registry with the process, platform and garbage-collector metrics every role exposes."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, *, role: str
) -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` at `http://host:port/metrics` from a daemon thread; raises OSError if the port is taken."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info(
        "%s serves /metrics on http://%s:%d/metrics",
        role,
        host,
        server.server_port,
        extra={"event": "metrics_started", "metrics": f"{host}:{server.server_port}"},
    )
    return server, thread


# How often a role whose metrics port is taken tries it again.
RETRY_BIND_S = 10.0


class MetricsEndpoint:
    """A role's /metrics server that never stops the role: a port that is taken (another process on this host,
    a second agent started beside the first) is logged once, as an error, and tried again every RETRY_BIND_S by
    the role's own loop (`bind()`) while the role works on; Prometheus meanwhile sees the target down (the chart's
    alert on it says so)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int, *, role: str) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.role = role
        self.server: WSGIServer | None = None
        self._refused = False

    def bind(self) -> bool:
        """Serve if not serving yet; True once serving."""
        if self.server is None:
            try:
                self.server, _ = serve_metrics(self.registry, self.host, self.port, role=self.role)
            except OSError as exc:
                if not self._refused:
                    log.error(
                        "%s cannot serve /metrics on %s:%d (%s); it works on and tries again every %.0f s",
                        self.role,
                        self.host,
                        self.port,
                        exc,
                        RETRY_BIND_S,
                        extra={"event": "metrics_port_taken"},
                    )
                self._refused = True
        return self.server is not None

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# --- hot-path metrics --------------------------------------------------------------------------------------
# prometheus-client's own counters and histograms take a lock on every update (measured here: ~3.5 us per
# Counter.inc, ~6 us per Histogram.observe, a tenth of a bid's CPU for three of them). The gateway records a
# few per request, so its per-request metrics are these instead: plain attributes updated by the one thread
# that runs the event loop, read by the scrape thread (the GIL keeps each read and write whole; a histogram's
# count is derived from its buckets when scraped, so count and buckets always agree). Each labelled child is
# made once, on the first event with its labels, and kept: the hot path looks up nothing but its own dict.


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class HistogramChild:
    __slots__ = ("_bisect", "bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # bisect_left: a value equal to a bound is counted in that bound's bucket (`le` is inclusive).
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


_Child = TypeVar("_Child", CounterChild, HistogramChild)


class _Family(Generic[_Child]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.children: dict[tuple[str, ...], _Child] = {}
        self._lock = threading.Lock()  # only to make a child: never taken on an update

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} has labels {self.labelnames}, got {values}")
        child = self.children.get(values)
        if child is None:
            with self._lock:
                child = self.children.setdefault(values, self._new_child())
        return child


class HotCounter(_Family[CounterChild]):
    def _new_child(self) -> CounterChild:
        return CounterChild()

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            family.add_metric(values, child.value)
        return family


class HotHistogram(_Family[HistogramChild]):
    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], *, buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labelnames)
        self.bounds = tuple(sorted(buckets))

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self.bounds)

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in list(self.children.items()):
            counts = list(child.counts)
            cumulative, total = [], 0
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                total += count
                cumulative.append((floatToGoString(bound), float(total)))  # type: ignore[no-untyped-call]
            family.add_metric(values, cumulative, sum_value=child.sum)
        return family


class HotMetrics(Collector):
    """The hot-path families of one registry (register it once: `registry.register(hot)`)."""

    def __init__(self) -> None:
        self.families: list[HotCounter | HotHistogram] = []

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> HotCounter:
        family = HotCounter(name, documentation, labelnames)
        self.families.append(family)
        return family

    def histogram(
        self, name: str, documentation: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> HotHistogram:
        family = HotHistogram(name, documentation, labelnames, buckets=buckets)
        self.families.append(family)
        return family

    def collect(self) -> Iterable[Metric]:
        return [family.collect() for family in self.families]
