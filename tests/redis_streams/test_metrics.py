"""The consumer-group state collector against a real Redis: lag, pending, live consumers (the presence sets),
dead letters, and a Redis that does not answer. Consumers are driven by hand (XREADGROUP, XACK, announcements
with Redis's own clock), so every count is exact."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from redis_streams.metrics import GroupStateCollector, connect
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
    samples = exposition(GroupStateCollector(client, alive_ms=60_000))
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


def announce(client: sync_redis.Redis, consumer: str, *, age_ms: int = 0, group: str = GROUP) -> None:
    """`consumer` announced itself `age_ms` ago on Redis's clock, as a reading agent does (redis_streams.groups)."""
    seconds, micros = client.time()
    client.zadd(keys.consumers_key(group), {consumer: seconds * 1000 + micros // 1000 - age_ms})


def test_lag_pending_and_live_consumers(client: sync_redis.Redis) -> None:
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    for i in range(10):
        client.xadd(STREAM, {"n": str(i)})
    first = read_ids(client, "pricing-a", 4)
    client.xack(STREAM, GROUP, first[0])  # a holds 3
    client.xack(STREAM, GROUP, *read_ids(client, "pricing-b", 6))  # b finished its 6: nothing undelivered
    announce(client, "pricing-a")
    announce(client, "pricing-b")

    samples = exposition(GroupStateCollector(client, alive_ms=60_000))
    assert samples[series("bidengine_stream_group_pending")] == 3
    assert samples[series("bidengine_stream_group_lag")] == 3
    assert samples[series("bidengine_stream_group_consumers")] == 2
    assert samples[series("bidengine_stream_group_consumers", keys.BIDS_PRICED, keys.AUDIT_GROUP)] == 0

    client.xadd(STREAM, {"n": "late"})  # delivered to nobody yet
    samples = exposition(GroupStateCollector(client, alive_ms=60_000))
    redis_major = int(str(client.info("server")["redis_version"]).split(".")[0])
    # Redis 7 counts the undelivered entry (`lag`); 6.2 reports no lag, so pending only.
    assert samples[series("bidengine_stream_group_lag")] == (4 if redis_major >= 7 else 3)
    assert samples[series("bidengine_stream_group_pending")] == 3


def test_silent_consumers_are_not_live(client: sync_redis.Redis) -> None:
    """Live means announced within `alive_ms` on Redis's clock (the gateway's CONSUMER_ALIVE_MS rule), whatever
    XINFO CONSUMERS says: an agent blocked on a quiet stream still announces itself after each empty read."""
    client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    announce(client, "pricing-live", age_ms=1_000)
    announce(client, "pricing-silent", age_ms=10_000)
    announce(client, "audit-live", group=keys.AUDIT_GROUP)
    samples = exposition(GroupStateCollector(client, alive_ms=5_000))
    assert samples[series("bidengine_stream_group_consumers")] == 1
    # The audit group's stream does not exist yet: its consumer is live, its lag unknown.
    assert samples[series("bidengine_stream_group_consumers", keys.BIDS_PRICED, keys.AUDIT_GROUP)] == 1
    assert series("bidengine_stream_group_lag", keys.BIDS_PRICED, keys.AUDIT_GROUP) not in samples
    assert exposition(GroupStateCollector(client, alive_ms=60_000))[series("bidengine_stream_group_consumers")] == 2


def test_dead_letter_lengths(client: sync_redis.Redis) -> None:
    """Every dead-letter stream schema/keys.py names is watched, by default."""
    for i in range(3):
        client.xadd(keys.BIDS_DEAD_LETTER, {"entry_id": f"1-{i}", "reason": "test"})
    client.xadd(keys.AUDIT_DEAD_LETTER, {"entry_id": "1-0", "reason": "test"})
    samples = exposition(GroupStateCollector(client, alive_ms=60_000))
    assert samples[f'bidengine_dead_letter_entries{{stream="{keys.BIDS_DEAD_LETTER}"}}'] == 3
    assert samples[f'bidengine_dead_letter_entries{{stream="{keys.AUDIT_DEAD_LETTER}"}}'] == 1
    assert set(keys.DEAD_LETTER_STREAMS) == {keys.BIDS_DEAD_LETTER, keys.AUDIT_DEAD_LETTER}


def test_unreachable_redis_is_reported_not_raised() -> None:
    collector = GroupStateCollector(connect("redis://127.0.0.1:1/0"), alive_ms=60_000)
    samples = exposition(collector)
    assert samples == {"bidengine_stream_state_up": 0}, "no stale or made-up values while Redis is away"


def test_registering_does_not_query_redis() -> None:
    class Refusing(sync_redis.Redis):
        def pipeline(self, *args: object, **kwargs: object) -> sync_redis.client.Pipeline:  # type: ignore[override]
            raise AssertionError("describe() queried Redis")

    CollectorRegistry().register(GroupStateCollector(Refusing(), alive_ms=1))
