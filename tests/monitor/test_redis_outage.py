"""Redis going away and coming back: the monitor keeps polling, says it is unhealthy, and reconnects."""

from __future__ import annotations

import json

from redis import Redis as SyncRedis

from monitor.health import PollOutcome
from schema.keys import COMPETITOR_PRICES_LIST
from tests.monitor.conftest import HttpClientFactory, MonitorFactory
from tests.servers import RedisServer


async def test_polls_survive_a_redis_restart_and_publish_again(
    make_monitor: MonitorFactory, http_client: HttpClientFactory, own_redis: RedisServer
) -> None:
    monitor = make_monitor(redis_url=own_redis.url())
    client = await http_client(monitor)
    assert (await monitor.poll_once()).outcome is PollOutcome.OK

    own_redis.stop()
    during = await monitor.poll_once()
    health_during = await client.get("/health")
    live_during = await client.get("/live")  # liveness: no restart for an outage a restart cannot cure

    own_redis.start()  # same port, empty (no persistence)
    after = await monitor.poll_once()
    health_after = await client.get("/health")

    assert during.outcome is PollOutcome.PUBLISH_FAILED
    assert during.items_fetched == 200  # the source was still read; only the publish failed
    assert "redis" in (during.error or "")
    assert health_during.status == 503
    assert live_during.status == 200
    assert (await health_during.json())["redis"]["reachable"] is False
    assert after.outcome is PollOutcome.OK
    assert health_after.status == 200
    with SyncRedis(port=own_redis.port, decode_responses=True) as direct:
        stored = [json.loads(p)["productId"] for p in direct.lrange(COMPETITOR_PRICES_LIST, 0, -1)]
    assert stored == list(range(1, 201))
