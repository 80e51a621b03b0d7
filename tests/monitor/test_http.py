"""`GET /health` and `GET /prices`: status codes a probe and a consumer can rely on."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bidengine.embedded import free_port
from monitor.fake_api import Fault, RunningFakeApi
from monitor.http import MAX_PRICES_LIMIT
from tests.monitor.conftest import Clock, HttpClientFactory, MonitorFactory


async def test_healthy_before_the_first_poll_within_the_grace_period(
    make_monitor: MonitorFactory, http_client: HttpClientFactory
) -> None:
    client = await http_client(make_monitor())

    response = await client.get("/health")
    body = await response.json()

    assert response.status == 200
    assert body["status"] == "ok"
    assert body["redis"]["reachable"] is True
    assert body["last_poll"] is None


async def test_health_reports_the_last_poll(make_monitor: MonitorFactory, http_client: HttpClientFactory) -> None:
    monitor = make_monitor()
    client = await http_client(monitor)
    await monitor.poll_once()

    response = await client.get("/health")
    body = await response.json()

    assert response.status == 200
    assert body["last_poll"]["outcome"] == "ok"
    assert body["last_poll"]["items_fetched"] == 200
    assert body["last_poll"]["duration_ms"] >= 0
    assert body["last_success_at"] == body["last_poll"]["started_at"]
    assert body["last_error"] is None


async def test_a_failed_poll_is_tolerated_until_polls_fail_for_too_long(
    make_monitor: MonitorFactory, http_client: HttpClientFactory, fake_api: RunningFakeApi, clock: Clock
) -> None:
    monitor = make_monitor(monitor_interval_s=60.0, monitor_max_retries=0)
    client = await http_client(monitor)
    await monitor.poll_once()
    fake_api.faults.always = Fault.SERVER_ERROR

    clock.now += 100.0
    await monitor.poll_once()
    tolerated = await client.get("/health")
    clock.now += 100.0  # 200 s without success > 3 intervals of 60 s
    await monitor.poll_once()
    failing = await client.get("/health")
    body = await failing.json()

    assert tolerated.status == 200
    assert (await tolerated.json())["last_error"].endswith("(attempt 1)")
    assert failing.status == 503
    assert body["status"] == "unhealthy"
    assert body["consecutive_failures"] == 2
    assert "no successful poll" in body["reasons"][0]
    assert "HTTP 500" in body["last_error"]


async def test_unhealthy_when_no_poll_ever_succeeded_past_the_grace_period(
    make_monitor: MonitorFactory, http_client: HttpClientFactory, clock: Clock
) -> None:
    monitor = make_monitor(monitor_interval_s=10.0)
    client = await http_client(monitor)

    clock.now += 31.0

    assert (await client.get("/health")).status == 503


async def test_unhealthy_when_redis_is_unreachable(
    make_monitor: MonitorFactory, http_client: HttpClientFactory
) -> None:
    client = await http_client(make_monitor(redis_url=f"redis://127.0.0.1:{free_port()}/0"))

    response = await client.get("/health")
    body = await response.json()

    assert response.status == 503
    assert body["redis"]["reachable"] is False
    assert "redis unreachable" in body["reasons"][0]


async def test_prices_returns_the_newest_records(make_monitor: MonitorFactory, http_client: HttpClientFactory) -> None:
    monitor = make_monitor()
    client = await http_client(monitor)
    await monitor.poll_once()

    default = await (await client.get("/prices")).json()
    three = await (await client.get("/prices?limit=3")).json()

    assert (default["limit"], default["count"]) == (10, 10)
    assert [r["productId"] for r in three["prices"]] == [1, 2, 3]
    assert set(three["prices"][0]) >= {"productId", "price", "brand", "timestamp", "source"}


async def test_prices_skips_foreign_list_elements(
    make_monitor: MonitorFactory, http_client: HttpClientFactory, redis: aioredis.Redis
) -> None:
    monitor = make_monitor()
    client = await http_client(monitor)
    await monitor.poll_once()
    await redis.lpush("competitor_prices", "not json", "[1, 2]")

    response = await client.get("/prices?limit=4")
    body = await response.json()

    assert response.status == 200
    assert [r["productId"] for r in body["prices"]] == [1, 2]


@pytest.mark.parametrize("bad", ["abc", "0", "-5", "1.5", ""])
async def test_prices_rejects_a_bad_limit(
    make_monitor: MonitorFactory, http_client: HttpClientFactory, bad: str
) -> None:
    client = await http_client(make_monitor())

    response = await client.get("/prices", params={"limit": bad})

    assert response.status == 400
    assert "limit must be a whole number" in (await response.json())["error"]


async def test_prices_caps_a_large_limit(make_monitor: MonitorFactory, http_client: HttpClientFactory) -> None:
    monitor = make_monitor()
    client = await http_client(monitor)
    for _ in range(6):
        await monitor.poll_once()

    response = await client.get("/prices?limit=100000")
    body = await response.json()

    assert response.status == 200
    assert body["limit"] == MAX_PRICES_LIMIT
    assert body["count"] == MAX_PRICES_LIMIT


async def test_prices_is_503_when_redis_is_unreachable(
    make_monitor: MonitorFactory, http_client: HttpClientFactory
) -> None:
    client = await http_client(make_monitor(redis_url=f"redis://127.0.0.1:{free_port()}/0"))

    response = await client.get("/prices")

    assert response.status == 503
    assert "redis unavailable" in (await response.json())["error"]
