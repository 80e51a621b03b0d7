"""The consumer-group state collector against a real Redis: lag, pending, live consumers, dead letters, and a
Redis that does not answer. Consumers are driven by hand (XREADGROUP, XACK), so every count is exact."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from processors.group_metrics import GroupStateCollector, connect
from schema import keys

STREAM, GROUP = keys.BID_REQUESTS, keys.PRICING_GROUP


@pytest.fixture
def client(redis: aioredis.Redis, redis_url: str) -> Iterator[sync_redis.Redis]:
    """A synchronous client on the test database (the async `redis` fixture has just flushed it)."""
    sync = connect(redis_url)
    yield sync
    sync.close()


def exposition(collector: GroupStateCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def series(name: str, stream: str = STREAM, group: str = GROUP) -> str:
    return f'{name}{{group="{group}",stream="{stream}"}}'


def test_missing_streams_report_no_consumer_and_no_backlog(client: sync_redis.Redis) -> None:
    samples = exposition(GroupStateCollector(client, live_idle_ms=60_000))
    assert samples["bidengine_stream_state_up"] == 1
    assert samples[series("bidengine_stream_group_consumers")] == 0
    assert samples[series("bidengine_stream_group_consumers", keys.BIDS_PRICED, keys.AUDIT_GROUP)] == 0
    assert series("bidengine_stream_group_lag") not in samples, "no group: the lag is unknown, not 0"
    assert samples[f'bidengine_dead_letter_entries{{stream="{keys.BIDS_DEAD_LETTER}"}}'] == 0


def read_ids(client: sync_redis.Redis, consumer: str, count: int) -> list[str]:
    reply = client.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=count)
    if not reply:  # nothing new: the read still counts as the consumer's interaction
        return []
    entries = reply[STREAM][0] if isinstance(reply, dict) else reply[0][1]  # RESP3 map or RESP2 list
    return [entry_id for entry_id, _ in entries]


def test_lag_pending_and_live_consumers(client: sync_redis.Redis) -> None:
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(10):
        client.xadd(STREAM, {"n": str(i)})
    first = read_ids(client, "pricing-a", 4)
    client.xack(STREAM, GROUP, first[0])  # a holds 3
    client.xack(STREAM, GROUP, *read_ids(client, "pricing-b", 6))  # b finished its 6: nothing undelivered

    samples = exposition(GroupStateCollector(client, live_idle_ms=60_000))
    assert samples[series("bidengine_stream_group_pending")] == 3
    assert samples[series("bidengine_stream_group_lag")] == 3
    assert samples[series("bidengine_stream_group_consumers")] == 2

    client.xadd(STREAM, {"n": "late"})  # delivered to nobody yet
    samples = exposition(GroupStateCollector(client, live_idle_ms=60_000))
    redis_major = int(str(client.info("server")["redis_version"]).split(".")[0])
    # Redis 7 counts the undelivered entry (`lag`); 6.2 reports no lag, so pending only.
    assert samples[series("bidengine_stream_group_lag")] == (4 if redis_major >= 7 else 3)
    assert samples[series("bidengine_stream_group_pending")] == 3


def test_idle_consumers_are_not_live(client: sync_redis.Redis) -> None:
    """A consumer idle for longer than the threshold is not counted; one that was just given an entry is.

    Before Redis 7.2 only a read that returns entries resets a consumer's idle time (7.2+ also counts an empty
    read): the collector's count is exact for an agent at work, and may fall to 0 on a quiet stream, which is
    why the alert on it also requires a backlog (docs/runbook.md).

    The server's idle time of the silent consumer is at least the time measured here since its read returned;
    that of the reading one at most the time measured around its read and the collection. A machine too
    stalled to collect within the threshold just tries again.
    """
    threshold_ms = 200
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    client.xadd(STREAM, {"n": "0"})
    assert read_ids(client, "pricing-silent", 1)
    silent_since = time.monotonic()
    while time.monotonic() - silent_since <= threshold_ms / 1000:
        time.sleep(0.05)
    collector = GroupStateCollector(client, live_idle_ms=threshold_ms)
    assert exposition(collector)[series("bidengine_stream_group_consumers")] == 0
    for _attempt in range(50):
        client.xadd(STREAM, {"n": "1"})
        started = time.monotonic()
        assert read_ids(client, "pricing-live", 1)
        live = exposition(collector)[series("bidengine_stream_group_consumers")]
        if time.monotonic() - started < threshold_ms / 1000:
            assert live == 1
            break
    else:
        pytest.fail("could not read and collect within 200 ms in 50 attempts")
    assert (
        exposition(GroupStateCollector(client, live_idle_ms=3_600_000))[series("bidengine_stream_group_consumers")] == 2
    )


def test_dead_letter_length(client: sync_redis.Redis) -> None:
    for i in range(3):
        client.xadd(keys.BIDS_DEAD_LETTER, {"entry_id": f"1-{i}", "reason": "test"})
    samples = exposition(GroupStateCollector(client, live_idle_ms=60_000, dead_letter_streams=[keys.BIDS_DEAD_LETTER]))
    assert samples[f'bidengine_dead_letter_entries{{stream="{keys.BIDS_DEAD_LETTER}"}}'] == 3


def test_unreachable_redis_is_reported_not_raised() -> None:
    collector = GroupStateCollector(connect("redis://127.0.0.1:1/0"), live_idle_ms=60_000)
    samples = exposition(collector)
    assert samples == {"bidengine_stream_state_up": 0}, "no stale or made-up values while Redis is away"


def test_registering_does_not_query_redis() -> None:
    class Refusing(sync_redis.Redis):
        def pipeline(self, *args: object, **kwargs: object) -> sync_redis.client.Pipeline:  # type: ignore[override]
            raise AssertionError("describe() queried Redis")

    CollectorRegistry().register(GroupStateCollector(Refusing(), live_idle_ms=1))
