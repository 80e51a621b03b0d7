"""The bridge against a real Redis: poisoned entries are isolated by bisection, left pending, and dead-lettered at
their last delivery; outages are retried and never count against an entry; a source started while Redis is
down consumes once it is up."""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError

from processors.app import create_app
from processors.bridge import BatchRunner, group_agent
from processors.heartbeat import Heartbeat
from processors.metrics import StreamConsumerMetrics
from processors.transient import is_postgres_transient, is_transient
from redis_streams.groups import Batch, GroupConfig, GroupReader, StreamEntry
from redis_streams.pipe import execute_packed
from redis_streams.retry import Backoff
from schema.events import DeadLetter
from tests.servers import RedisServer
from tests.support import group_config_for_tests

STREAM = "test:bridge"
DEAD = "test:bridge:dead"


class Poisoned(Exception):
    pass


def config(**overrides: object) -> GroupConfig:
    options: dict[str, object] = {
        "batch_size": 100,
        "block_ms": 10,
        "claim_idle_ms": 0,
        "backoff": Backoff(0.01, 0.02),
        "max_deliveries": 3,
        "dead_letter_stream": DEAD,
    }
    options.update(overrides)
    return group_config_for_tests(STREAM, "g", "c", **options)


class Handler:
    """Fails, as a bug would, on any batch holding a poisoned entry; records what it was given."""

    def __init__(self, poisoned: set[str]) -> None:
        self.poisoned = poisoned
        self.calls: list[list[str]] = []
        self.handled: list[str] = []

    async def __call__(self, batch: Batch) -> None:
        self.calls.append([entry.fields["n"] for entry in batch])
        if any(entry.fields["n"] in self.poisoned for entry in batch):
            raise Poisoned("cannot handle it")
        self.handled.extend(entry.fields["n"] for entry in batch)


async def start(redis: aioredis.Redis, count: int, **overrides: object) -> tuple[GroupReader, Batch]:
    reader = GroupReader(redis, config(**overrides))
    await reader.ensure_group()
    for n in range(count):
        await redis.xadd(STREAM, {"n": str(n)})
    return reader, await reader.read()


async def pending_counts(redis: aioredis.Redis) -> dict[str, int]:
    rows = await redis.xpending_range(STREAM, "g", min="-", max="+", count=100)
    return {row["message_id"]: row["times_delivered"] for row in rows}


def runner(
    reader: GroupReader,
    handler: Handler,
    heartbeat: Heartbeat | None = None,
    metrics: StreamConsumerMetrics | None = None,
) -> BatchRunner:
    return BatchRunner(
        reader, handler, heartbeat=heartbeat or Heartbeat(None), is_transient=is_transient, metrics=metrics
    )


def stream_metrics() -> tuple[StreamConsumerMetrics, CollectorRegistry]:
    registry = CollectorRegistry()
    return StreamConsumerMetrics(registry, group=(STREAM, "g"), dead_letter_stream=DEAD), registry


def counted(registry: CollectorRegistry) -> tuple[float | None, float | None]:
    """(entries redelivered, dead letters written) as the agent's /metrics shows them."""
    return (
        registry.get_sample_value("bidengine_stream_redeliveries_total", {"stream": STREAM, "group": "g"}),
        registry.get_sample_value("bidengine_dead_letters_total", {"stream": DEAD}),
    )


async def test_one_poisoned_entry_is_isolated_and_everything_else_handled(redis: aioredis.Redis) -> None:
    reader, batch = await start(redis, 16)
    handler = Handler({"11"})
    await runner(reader, handler).run(batch)

    assert sorted(handler.handled, key=int) == [str(n) for n in range(16) if n != 11]
    # 16 -> 8 -> 4 -> 2 -> 1: each level one failing half and one good half, then the single entry.
    assert len(handler.calls) <= 2 * math.ceil(math.log2(16)) + 1
    assert ["11"] in handler.calls
    poisoned_id = batch[11].id
    assert await pending_counts(redis) == {poisoned_id: 1}  # left pending, delivered once so far
    assert poisoned_id not in reader._in_flight  # so XAUTOCLAIM may deliver it again
    assert await redis.xlen(DEAD) == 0


async def test_two_poisoned_entries_are_both_found(redis: aioredis.Redis) -> None:
    reader, batch = await start(redis, 10)
    handler = Handler({"0", "9"})
    await runner(reader, handler).run(batch)
    assert sorted(handler.handled, key=int) == [str(n) for n in range(1, 9)]
    assert set(await pending_counts(redis)) == {batch[0].id, batch[9].id}


async def test_a_failing_entry_is_dead_lettered_at_its_last_delivery_and_acknowledged(redis: aioredis.Redis) -> None:
    reader, batch = await start(redis, 4)
    handler = Handler({"2"})
    metrics, registry = stream_metrics()
    bridge = runner(reader, handler, metrics=metrics)
    await bridge.run(batch)
    for delivery in (2, 3):
        redelivered = await reader.reclaim()  # XAUTOCLAIM: the delivery count grows in Redis
        assert [entry.fields["n"] for entry in redelivered] == ["2"]
        if delivery < 3:
            await bridge.run(redelivered)
            assert await pending_counts(redis) == {batch[2].id: delivery}
    await bridge.run(redelivered)

    assert await pending_counts(redis) == {}
    [(_, fields)] = await redis.xrange(DEAD)
    letter = DeadLetter.from_fields(fields)
    assert letter == DeadLetter(batch[2].id, STREAM, "Poisoned: cannot handle it", {"n": "2"}, group="g", deliveries=3)
    assert await reader.reclaim() == []  # acknowledged: never delivered again
    # Bisection handed the batch of 4 (then 2) again: 4 + 2 entries; the reclaimed single entry is not split.
    assert counted(registry) == (6, 1)


async def test_outages_are_retried_and_never_count_against_the_entries(redis: aioredis.Redis) -> None:
    reader, batch = await start(redis, 5, max_deliveries=1)  # one failure of an entry's own would bury it
    failures = [ConnectionError("Redis away"), OSError("refused"), asyncpg.exceptions.AdminShutdownError("bye")]
    calls: list[int] = []
    heartbeat = Heartbeat(None)
    problems: list[list[str]] = []

    async def handler(entries: Batch) -> None:
        calls.append(len(entries))
        problems.append(heartbeat.problems)
        if failures:
            raise failures.pop(0)

    metrics, registry = stream_metrics()
    await BatchRunner(reader, handler, heartbeat=heartbeat, is_transient=is_transient, metrics=metrics).run(batch)
    assert calls == [5, 5, 5, 5]  # the whole batch each time: no bisection for an outage
    assert counted(registry) == (15, 0)  # handed again three times
    assert problems[1]  # not ready while it lasts
    assert "ConnectionError: Redis away" in problems[1][0]
    assert heartbeat.ready
    assert await pending_counts(redis) == {}
    assert await redis.xlen(DEAD) == 0


async def test_entries_re_read_after_a_restart_are_marked_redelivered(redis: aioredis.Redis) -> None:
    """A consumer restarted under its name re-reads its own pending entries first: the source counts them."""
    _, batch = await start(redis, 3)
    assert batch.redelivered is False
    restarted = GroupReader(redis, config())
    again = await restarted.read()
    assert [entry.id for entry in again] == [entry.id for entry in batch]
    assert again.redelivered is True
    await redis.xadd(STREAM, {"n": "new"})
    assert (await restarted.read()).redelivered is False  # its own pending list is done: new entries


async def test_batches_acknowledged_in_the_handlers_own_transaction(redis: aioredis.Redis) -> None:
    """The pricing agent's way: each (half) batch is acknowledged in the handler's MULTI/EXEC."""
    reader, batch = await start(redis, 6)

    async def handler(entries: Batch) -> None:
        if any(entry.fields["n"] == "3" for entry in entries):
            raise Poisoned("no")
        await execute_packed(redis, [("SET", f"done:{entries[0].id}", "1"), entries.ack_command()], transaction=True)
        entries.mark_acknowledged()

    await BatchRunner(reader, handler, heartbeat=Heartbeat(None)).run(batch)
    assert set(await pending_counts(redis)) == {batch[3].id}
    assert reader._in_flight == set()


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
        (asyncpg.exceptions.CannotConnectNowError("the database system is starting up"), True),
        (asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"), True),
        (asyncpg.exceptions.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), True),
        (asyncpg.exceptions.DeadlockDetectedError("deadlock detected"), True),
        (asyncpg.InterfaceError("cannot perform operation: connection is closed"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (TimeoutError(), True),  # command_timeout
        (asyncpg.exceptions.UniqueViolationError("duplicate key"), False),
        (asyncpg.exceptions.NumericValueOutOfRangeError("numeric field overflow"), False),
        (asyncpg.InterfaceError("the server expects 5 arguments for this query, 4 were passed"), False),
        (KeyError("reply_to"), False),
    ],
)
def test_which_postgres_errors_are_transient(error: BaseException, transient: bool) -> None:
    assert is_postgres_transient(error) is transient


async def test_a_source_started_while_redis_is_down_consumes_once_it_is_up(redis_server: RedisServer) -> None:
    client = aioredis.Redis.from_url(redis_server.url(), decode_responses=True)  # nothing listens there yet
    app = create_app("test-bridge-outage")
    seen: list[StreamEntry] = []
    got_all = asyncio.Event()

    async def handler(batch: Batch) -> None:
        seen.extend(batch)
        if len(seen) >= 3:
            got_all.set()

    heartbeat = Heartbeat(None)
    group_agent(app, client, config(claim_idle_ms=60_000), handler, name="outage", heartbeat=heartbeat)
    await app.start()  # no Redis: starts anyway
    try:
        await wait_for(lambda: not heartbeat.ready)
        assert any("reading test:bridge" in problem for problem in heartbeat.problems), heartbeat.problems
        redis_server.start()
        await wait_for(lambda: heartbeat.ready)
        for n in range(3):
            await client.xadd(STREAM, {"n": str(n)})
        await asyncio.wait_for(got_all.wait(), timeout=20)
        assert [entry.fields["n"] for entry in seen] == ["0", "1", "2"]
    finally:
        await app.stop()
        await client.aclose()


async def wait_for(condition: object, timeout_s: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.02)


async def test_a_failing_entry_whose_group_vanished_is_let_go(redis: aioredis.Redis) -> None:
    """Redis restarted empty while the entry was being handled: nothing is pending any more, nothing to bury."""
    reader, batch = await start(redis, 1)

    async def handler(_entries: Batch) -> None:
        await redis.xgroup_destroy(STREAM, "g")
        raise Poisoned("no")

    await asyncio.wait_for(BatchRunner(reader, handler, heartbeat=Heartbeat(None)).run(batch), timeout=10)
    assert reader._in_flight == set()
    assert await redis.xlen(DEAD) == 0
