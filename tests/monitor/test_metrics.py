"""The monitor's /metrics, scraped over HTTP after real polls of the fake products API: polls by outcome,
items published and rejected, the time of the last successful poll."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from monitor.fake_api import Fault, RunningFakeApi, is_broken_by_bad_items
from monitor.health import PollOutcome
from monitor.metrics import MonitorMetrics
from telemetry.metrics import serve_metrics
from tests.metrics_scrape import exposed_labels, moved, scrape
from tests.monitor.conftest import MonitorFactory
from tests.test_metrics import documented_metrics


@pytest.fixture
def served() -> Iterator[tuple[MonitorMetrics, str]]:
    metrics = MonitorMetrics()
    server, _ = serve_metrics(metrics.registry, "127.0.0.1", 0, role="monitor")
    yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


async def test_polls_published_and_rejected_items_move_by_what_happened(
    make_monitor: MonitorFactory, fake_api: RunningFakeApi, served: tuple[MonitorMetrics, str]
) -> None:
    metrics, url = served
    monitor = make_monitor()
    monitor.metrics = metrics
    before = scrape(url)
    assert before['bidengine_monitor_polls_total{outcome="ok"}'] == 0
    assert before["bidengine_monitor_last_success_timestamp_seconds"] == 0

    started = time.time()
    assert (await monitor.poll_once()).outcome is PollOutcome.OK  # 200 items, all valid
    fake_api.faults.always = Fault.BAD_ITEMS
    broken = sum(1 for product in fake_api.products if is_broken_by_bad_items(product))
    assert (await monitor.poll_once()).outcome is PollOutcome.OK
    fake_api.faults.always = Fault.SERVER_ERROR
    assert (await monitor.poll_once()).outcome is PollOutcome.FETCH_FAILED
    after = scrape(url)

    assert broken > 0
    delta = moved(before, after)
    counters = {name: value for name, value in delta.items() if "_total" in name}
    assert counters == {
        'bidengine_monitor_polls_total{outcome="ok"}': 2,
        'bidengine_monitor_polls_total{outcome="fetch_failed"}': 1,
        "bidengine_monitor_items_published_total": 200 + 200 - broken,
        "bidengine_monitor_items_rejected_total": broken,
    }
    assert delta["bidengine_monitor_poll_duration_seconds_count"] == 3
    documented = documented_metrics()
    for name, exposed in exposed_labels(url).items():
        assert documented.get(name) == exposed, f"docs/metrics.md on {name}"
    # The last success is the second poll's end, not the failed third one's.
    assert started <= after["bidengine_monitor_last_success_timestamp_seconds"] <= time.time()
