"""The shared Prometheus plumbing: the hot-path families as Prometheus reads them, and a metrics port that is
taken, which never stops a role."""

from __future__ import annotations

import logging
import socket
import threading

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from telemetry.metrics import HotMetrics, MetricsEndpoint, role_registry
from tests.metrics_scrape import scrape


def test_hot_counters_and_histograms_read_as_prometheus_families() -> None:
    registry = role_registry()
    hot = HotMetrics()
    requests = hot.counter("bidengine_things", "Things.", ("kind",))
    duration = hot.histogram("bidengine_thing_duration_seconds", "Time.", ("kind",), buckets=(0.01, 0.1, 1.0))
    registry.register(hot)
    child = requests.labels("a")
    assert requests.labels("a") is child, "a child is made once and kept"
    child.inc()
    child.inc(2)
    for value in (0.005, 0.01, 0.05, 5.0):  # a value equal to a bound is in that bound's bucket (le)
        duration.labels("a").observe(value)

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["bidengine_things"].type == "counter"
    assert [(s.name, s.labels, s.value) for s in families["bidengine_things"].samples] == [
        ("bidengine_things_total", {"kind": "a"}, 3.0)
    ]
    histogram = families["bidengine_thing_duration_seconds"]
    assert histogram.type == "histogram"
    by_name = {(s.name, s.labels.get("le")): s.value for s in histogram.samples}
    assert by_name == {
        ("bidengine_thing_duration_seconds_bucket", "0.01"): 2,
        ("bidengine_thing_duration_seconds_bucket", "0.1"): 3,
        ("bidengine_thing_duration_seconds_bucket", "1.0"): 3,
        ("bidengine_thing_duration_seconds_bucket", "+Inf"): 4,
        ("bidengine_thing_duration_seconds_count", None): 4,
        ("bidengine_thing_duration_seconds_sum", None): pytest.approx(5.065),
    }
    with pytest.raises(ValueError, match="has labels"):
        requests.labels()


def test_children_made_from_two_threads_are_one() -> None:
    family = HotMetrics().counter("bidengine_raced", "Raced.", ("kind",))
    made: list[object] = []
    threads = [threading.Thread(target=lambda: made.append(family.labels("x"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(child) for child in made}) == 1


def test_a_taken_port_is_logged_once_and_bound_once_free(caplog: pytest.LogCaptureFixture) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    endpoint = MetricsEndpoint(role_registry(), "127.0.0.1", port, role="test-role")
    with caplog.at_level(logging.INFO, logger="telemetry.metrics"):
        assert endpoint.bind() is False
        assert endpoint.bind() is False
        taken = [r for r in caplog.records if getattr(r, "event", None) == "metrics_port_taken"]
        assert len(taken) == 1, "logged once, not once per attempt"
        holder.close()
        assert endpoint.bind() is True
    try:
        assert "process_cpu_seconds_total" in scrape(f"http://127.0.0.1:{port}/metrics")
        assert endpoint.bind() is True  # already serving: nothing more happens
    finally:
        endpoint.close()
