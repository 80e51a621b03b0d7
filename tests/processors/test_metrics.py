"""The audit agent's last-report gauge, read from Redis at scrape time: 0 before any report, the newest report's
time after, absent (not stale) while Redis does not answer."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from processors.metrics import AuditMetrics
from redis_streams.metrics import connect
from schema import keys

GAUGE = "bidengine_audit_report_last_success_timestamp_seconds"


@pytest.fixture
def client(redis: aioredis.Redis, redis_url: str) -> Iterator[sync_redis.Redis]:
    sync = connect(redis_url)
    yield sync
    sync.close()


def test_the_newest_report_time_is_read_at_scrape_time(client: sync_redis.Redis) -> None:
    metrics = AuditMetrics(reports_client=client)
    assert metrics.registry.get_sample_value(GAUGE) == 0  # none was ever published
    client.xadd(keys.AUDIT_REPORTS, {"day": "2026-11-30"}, id="1764482400000-0")
    client.xadd(keys.AUDIT_REPORTS, {"day": "2026-12-01"}, id="1764568800123-0")
    # Published by any audit agent, before or after this one started: the newest entry counts.
    assert metrics.registry.get_sample_value(GAUGE) == 1764568800.123


def test_no_sample_while_redis_does_not_answer() -> None:
    metrics = AuditMetrics(reports_client=connect("redis://127.0.0.1:1/0"))
    assert metrics.registry.get_sample_value(GAUGE) is None
