"""Idempotency under concurrency: every request under one key is answered on its own, in any interleaving.

What must hold: every request whose body is the stored bid's gets 200 with that bid's id and price; every other
gets 422 (and neither the id nor the price of the stored bid); exactly one row exists per key. Within a batch,
across batches, across agents, across redelivery and reclaim.

The interleavings are made, never hoped for:
* the real `PricingHandler` on real Redis and PostgreSQL, fed batches read from the group, so the test decides
  which requests share a batch and in which order (every test asserts the batch holds what it meant);
* across agents, one transaction holds the row of a request id uncommitted (another handler's, or the test's)
  and the test waits until PostgreSQL reports the handler's INSERT waiting on it before it commits;
* end to end, the pricing agent is paused with SIGSTOP (after its pending blocking read has expired), the
  requests are fired from threads until all are on the stream, then SIGCONT: one read takes them all.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from legacy import calculate_adjusted_cpc
from processors.pricing import PricingHandler
from redis_streams.groups import Batch, GroupReader
from schema import keys
from schema.database import BIDS_TABLE
from schema.events import BidReply, BidRequested, decode_replies, money
from schema.idempotency import request_fingerprint
from tests.pipeline.conftest import Pipeline
from tests.support import group_config_for_tests

REPLIES = "bids:replies:test"
DEADLINE_S = 30.0  # a fail-safe for waits on a state; no test relies on anything happening within a time


def request(
    request_id: str, reply_id: str, product_id: int, current_cpc: float, target_roas: float = 150.0
) -> BidRequested:
    return BidRequested(request_id, REPLIES, reply_id, product_id, current_cpc, target_roas)


def price(current_cpc: float, target_roas: float = 150.0) -> str:
    return money(calculate_adjusted_cpc(current_cpc, target_roas))


async def feed(
    redis: aioredis.Redis, entries: Sequence[BidRequested | dict[str, str]], consumer: str = "agent"
) -> Batch:
    """Append the entries to `bids:requests` and read them back as one batch of `consumer`, in stream order."""
    for entry in entries:
        fields = entry.to_fields() if isinstance(entry, BidRequested) else entry
        await redis.xadd(keys.BID_REQUESTS, fields)  # type: ignore[arg-type]
    reader = GroupReader(
        redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, consumer, batch_size=10_000)
    )
    await reader.ensure_group()
    batch = await reader.read()
    expected = [e.reply_id if isinstance(e, BidRequested) else e["reply_id"] for e in entries]
    assert [entry.fields["reply_id"] for entry in batch] == expected, "the batch must hold exactly these entries"
    return batch


def handler(db: asyncpg.Pool | HeldCommit, redis: aioredis.Redis) -> PricingHandler:
    return PricingHandler(db, redis, reply_stream_maxlen=100_000)  # type: ignore[arg-type]


async def replies(redis: aioredis.Redis) -> dict[str, list[BidReply]]:
    """Every reply sent so far, by reply id (a request handled twice has two)."""
    answers: dict[str, list[BidReply]] = defaultdict(list)
    for _, fields in await redis.xrange(REPLIES):
        for reply in decode_replies(fields):
            answers[reply.reply_id].append(reply)
    return answers


async def only_reply(redis: aioredis.Redis) -> dict[str, BidReply]:
    answers = await replies(redis)
    assert all(len(sent) == 1 for sent in answers.values()), answers
    return {reply_id: sent[0] for reply_id, sent in answers.items()}


def assert_bid(reply: BidReply, bid_id: int, current_cpc: float, target_roas: float = 150.0) -> None:
    assert (reply.bid_id, reply.adjusted_cpc, reply.error) == (bid_id, price(current_cpc, target_roas), None)


def assert_conflict(reply: BidReply) -> None:
    # Not the stored bid's price, not its id: nothing of another request's bid reaches this one.
    assert (reply.bid_id, reply.adjusted_cpc, reply.error) == (None, None, BidReply.IDEMPOTENCY_CONFLICT)


async def rows_of(db: asyncpg.Pool, request_id: str) -> list[asyncpg.Record]:
    return list(await db.fetch(f"SELECT * FROM {BIDS_TABLE} WHERE request_id = $1", uuid.UUID(request_id)))


async def the_row(db: asyncpg.Pool, request_id: str, current_cpc: float, target_roas: float = 150.0) -> int:
    """The id of the one row stored for `request_id`, after checking it holds this body and its fingerprint."""
    rows = await rows_of(db, request_id)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["current_cpc"] == Decimal(repr(current_cpc)).quantize(Decimal("0.01"))
    assert row["target_roas"] == Decimal(repr(target_roas))
    assert row["request_fingerprint"] == request_fingerprint(row["product_id"], current_cpc, target_roas)
    bid_id: int = row["id"]
    return bid_id


async def priced_bid_ids(redis: aioredis.Redis) -> list[int]:
    return [int(fields["bid_id"]) for _, fields in await redis.xrange(keys.BIDS_PRICED)]


# --- one batch ------------------------------------------------------------------------------------------------


async def test_one_key_with_twenty_bodies_among_unkeyed_bids_in_one_batch(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """Finding 1: the first body in stream order is stored and answered; the 19 others are conflicts."""
    key = str(uuid.uuid4())
    keyed = [request(key, f"k{cpc}", 7, float(cpc)) for cpc in range(1, 21)]
    unkeyed = [request(str(uuid.uuid4()), f"u{i}", 100 + i, 0.5 + i / 10, 120.0) for i in range(24)]
    entries = keyed + unkeyed
    random.Random(9).shuffle(entries)
    first = next(e for e in entries if e.request_id == key)
    assert first.current_cpc != 1.0  # not simply the first body sent

    await handler(db, redis)(await feed(redis, entries))

    answers = await only_reply(redis)
    assert len(answers) == 44
    bid_id = await the_row(db, key, first.current_cpc)
    assert_bid(answers[first.reply_id], bid_id, first.current_cpc)
    for other in keyed:
        if other is not first:
            assert_conflict(answers[other.reply_id])
    unkeyed_ids = set()
    for bid in unkeyed:
        reply = answers[bid.reply_id]
        assert_bid(reply, await the_row(db, bid.request_id, bid.current_cpc, 120.0), bid.current_cpc, 120.0)
        unkeyed_ids.add(reply.bid_id)
    assert len(unkeyed_ids) == 24
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 25
    # bids:priced: once per stored bid of the batch.
    assert sorted(await priced_bid_ids(redis)) == sorted([bid_id, *unkeyed_ids])


async def test_retries_and_conflicts_in_the_batch_that_stores_the_bid(redis: aioredis.Redis, db: asyncpg.Pool) -> None:
    """No row yet: B comes first in the stream, so B is stored; B's retries replay it, every A is a conflict."""
    key = str(uuid.uuid4())
    bodies = {"A": 3.0, "B": 4.0}
    order = "BAABABBAAB"
    entries = [request(key, f"{body}{i}", 8, bodies[body]) for i, body in enumerate(order)]
    entries.insert(3, request(str(uuid.uuid4()), "other", 8, 3.0))  # the same body without the key: its own bid

    await handler(db, redis)(await feed(redis, entries))

    answers = await only_reply(redis)
    bid_id = await the_row(db, key, bodies["B"])
    for entry in entries:
        if entry.request_id != key:
            assert_bid(answers[entry.reply_id], await the_row(db, entry.request_id, 3.0), 3.0)
        elif entry.current_cpc == bodies["B"]:
            assert_bid(answers[entry.reply_id], bid_id, bodies["B"])
        else:
            assert_conflict(answers[entry.reply_id])
    assert (await priced_bid_ids(redis)).count(bid_id) == 1


@pytest.mark.parametrize("conflict_first", [True, False], ids=["conflict-first", "retry-first"])
async def test_retries_and_conflicts_in_one_batch_after_the_row_exists(
    redis: aioredis.Redis, db: asyncpg.Pool, conflict_first: bool
) -> None:
    """Finding 2: A is stored; then 10 x A and 10 x B in one batch: every A replays A, every B is a conflict."""
    key = str(uuid.uuid4())
    await handler(db, redis)(await feed(redis, [request(key, "stored", 9, 2.5)]))
    bid_id = await the_row(db, key, 2.5)

    retries = [request(key, f"A{i}", 9, 2.5) for i in range(10)]
    conflicts = [request(key, f"B{i}", 9, 7.25) for i in range(10)]
    unkeyed = [request(str(uuid.uuid4()), f"u{i}", 300 + i, 1.0 + i) for i in range(5)]
    entries = retries + conflicts + unkeyed
    random.Random(2).shuffle(entries)
    first_keyed = next(e for e in entries if e.request_id == key)
    if (first_keyed.current_cpc == 7.25) != conflict_first:  # put the wanted kind first in the stream
        swap = next(e for e in entries if e.request_id == key and e.current_cpc != first_keyed.current_cpc)
        i, j = entries.index(first_keyed), entries.index(swap)
        entries[i], entries[j] = swap, first_keyed

    await handler(db, redis)(await feed(redis, entries, consumer="agent-2"))

    answers = await only_reply(redis)
    for retry in retries:
        assert_bid(answers[retry.reply_id], bid_id, 2.5)
    for conflict in conflicts:
        assert_conflict(answers[conflict.reply_id])
    for bid in unkeyed:
        assert_bid(answers[bid.reply_id], await the_row(db, bid.request_id, bid.current_cpc), bid.current_cpc)
    assert await the_row(db, key, 2.5) == bid_id
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 6


async def test_verdicts_hold_across_batches(redis: aioredis.Redis, db: asyncpg.Pool) -> None:
    key = str(uuid.uuid4())
    batches = [["A"], ["B", "A"], ["A", "B", "A"], ["B"]]
    bodies = {"A": 1.25, "B": 1.26}
    for n, batch in enumerate(batches):
        entries = [request(key, f"{n}-{i}-{body}", 10, bodies[body]) for i, body in enumerate(batch)]
        await handler(db, redis)(await feed(redis, entries, consumer=f"agent-{n}"))
    answers = await only_reply(redis)
    bid_id = await the_row(db, key, bodies["A"])
    assert len(answers) == 7
    for reply_id, reply in answers.items():
        if reply_id.endswith("A"):
            assert_bid(reply, bid_id, bodies["A"])
        else:
            assert_conflict(reply)
    # Published once by each batch that answered the bid; the batch of conflicts alone published nothing.
    assert await priced_bid_ids(redis) == [bid_id] * 3


# --- what "the same request" means ----------------------------------------------------------------------------


@pytest.mark.parametrize("same_batch", [False, True], ids=["later-batch", "same-batch"])
async def test_a_sub_cent_difference_is_another_request(
    redis: aioredis.Redis, db: asyncpg.Pool, same_batch: bool
) -> None:
    """Finding 3: 1.001 and 1.004 are both stored as 1.00, yet they are two requests (their prices differ too)."""
    key = str(uuid.uuid4())
    stored, other, rounded = (
        request(key, "1.001", 11, 1.001),
        request(key, "1.004", 11, 1.004),
        request(key, "1.0", 11, 1.0),
    )
    again = request(key, "1.001-again", 11, 1.001)
    if same_batch:
        await handler(db, redis)(await feed(redis, [stored, other, rounded, again]))
    else:
        for n, entry in enumerate([stored, other, rounded, again]):
            await handler(db, redis)(await feed(redis, [entry], consumer=f"agent-{n}"))
    answers = await only_reply(redis)
    bid_id = await the_row(db, key, 1.001)
    assert price(1.001) != price(1.004)  # 1.50 vs 1.51: answering 1.004 with the stored bid gives a wrong price
    assert_bid(answers["1.001"], bid_id, 1.001)
    assert_bid(answers["1.001-again"], bid_id, 1.001)
    assert_conflict(answers["1.004"])
    assert_conflict(answers["1.0"])


async def test_one_value_written_differently_on_the_stream_is_one_request(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """The comparison is on the doubles, not their text: "2", "2.0", "2.00", "2e0" (and -0.0 / 0.0) are equal."""
    key, zero_key = str(uuid.uuid4()), str(uuid.uuid4())
    base = {"request_id": key, "reply_to": REPLIES, "product_id": "12", "target_roas": "150.0"}
    spellings = ["2.0", "2", "2.00", "2e0", "20e-1"]
    entries = [{**base, "reply_id": f"two-{text}", "current_cpc": text} for text in spellings]
    entries.append({**base, "reply_id": "other-roas", "current_cpc": "2.0", "target_roas": "150.00001"})
    zero = {**base, "request_id": zero_key, "target_roas": "1.5e2"}
    entries += [{**zero, "reply_id": f"zero-{text}", "current_cpc": text} for text in ["0.0", "-0.0", "0", "-0"]]

    await handler(db, redis)(await feed(redis, entries))

    answers = await only_reply(redis)
    bid_id, zero_bid_id = await the_row(db, key, 2.0), await the_row(db, zero_key, 0.0)
    for text in spellings:
        assert_bid(answers[f"two-{text}"], bid_id, 2.0)
    # 150.00001 is stored as 150.0000 but is another value: another request.
    assert_conflict(answers["other-roas"])
    for text in ["0.0", "-0.0", "0", "-0"]:
        assert_bid(answers[f"zero-{text}"], zero_bid_id, 0.0)


async def test_rows_stored_before_fingerprints_are_compared_by_their_stored_values(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """Migration 0003 leaves older rows without a fingerprint: a retry is then compared by the stored values."""
    key = str(uuid.uuid4())
    bid_id = await db.fetchval(
        f"INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc)"
        " VALUES ($1, 13, 1.00, 150, 1.50) RETURNING id",
        uuid.UUID(key),
    )
    entries = [
        request(key, "same", 13, 1.0),
        request(key, "rounds-to-same", 13, 1.001, 150.00001),  # the old rule: equal once stored
        request(key, "rounds-half-up", 13, 0.995),  # numeric(12, 2) rounds 0.995 to 1.00, as the INSERT would
        request(key, "other-cpc", 13, 1.01),
        request(key, "other-product", 14, 1.0),
        request(key, "other-roas", 13, 1.0, 150.0001),
        request(str(uuid.uuid4()), "unkeyed", 13, 1.0),
    ]
    await handler(db, redis)(await feed(redis, entries))
    answers = await only_reply(redis)
    for reply_id in ["same", "rounds-to-same", "rounds-half-up"]:
        assert answers[reply_id].bid_id == bid_id
        assert answers[reply_id].adjusted_cpc == "1.50"  # the stored bid's price
    for reply_id in ["other-cpc", "other-product", "other-roas"]:
        assert_conflict(answers[reply_id])
    assert answers["unkeyed"].bid_id != bid_id
    [row] = await rows_of(db, key)
    assert row["request_fingerprint"] is None  # answering does not rewrite the old row


async def test_a_batch_falling_back_to_row_by_row_keeps_its_verdicts(redis: aioredis.Redis, db: asyncpg.Pool) -> None:
    """A row PostgreSQL refuses sends the batch down the row-by-row path: the verdicts stay per request."""
    key = str(uuid.uuid4())
    entries = [
        request(key, "too-large", 15, 1e11),  # the first under the key, but numeric(12, 2) cannot hold it
        request(key, "A", 15, 1.5),
        request(key, "B", 15, 1.75),
        request(key, "A-again", 15, 1.5),
        request(str(uuid.uuid4()), "unkeyed", 16, 1.5),
    ]
    await handler(db, redis)(await feed(redis, entries))
    answers = await only_reply(redis)
    assert answers["too-large"] == BidReply("too-large", error=BidReply.REJECTED)
    bid_id = await the_row(db, key, 1.5)
    assert_bid(answers["A"], bid_id, 1.5)
    assert_bid(answers["A-again"], bid_id, 1.5)
    assert_conflict(answers["B"])
    assert answers["unkeyed"].error is None
    assert await redis.xlen(keys.BIDS_DEAD_LETTER) == 1


async def test_a_request_id_spelled_in_upper_case_is_the_same_request_id(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """PostgreSQL reads any spelling of a UUID; the agent must still find the row it answers with."""
    key = str(uuid.uuid4())
    entries = [request(key.upper(), "upper", 23, 1.0), request(key, "lower", 23, 1.0), request(key, "other", 23, 2.0)]
    await handler(db, redis)(await feed(redis, entries))
    answers = await only_reply(redis)
    bid_id = await the_row(db, key, 1.0)
    assert_bid(answers["upper"], bid_id, 1.0)
    assert_bid(answers["lower"], bid_id, 1.0)
    assert_conflict(answers["other"])


# --- across agents, redelivery and reclaim --------------------------------------------------------------------


class HeldCommit:
    """A pool for one handler whose batch statement commits only when the test says so.

    The statement runs inside a transaction kept open after it returns: its rows exist, uncommitted, so
    another handler's INSERT of the same request ids waits on them, as it does when two agents store the
    same request at the same moment.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.executed = asyncio.Event()
        self.commit = asyncio.Event()

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async with self.pool.acquire() as connection, connection.transaction():
            rows: list[asyncpg.Record] = await connection.fetch(sql, *args)
            self.executed.set()
            await self.commit.wait()
        return rows


async def wait_for(what: str, condition: Callable[[], Awaitable[Any]]) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"never happened: {what}")
        await asyncio.sleep(0.01)


async def waiting_inserts(db: asyncpg.Pool) -> int:
    """Backends of this database waiting for another transaction to end (our INSERT on an uncommitted row)."""
    count: int = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND wait_event = 'transactionid'"
    )
    return count


async def test_a_reclaimed_entry_stored_by_two_agents_at_once_is_answered_the_same(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """Finding 4: the second agent's INSERT waits for the first's commit, then must replay the bid, not refuse it."""
    key = str(uuid.uuid4())
    first_agent = HeldCommit(db)
    batch = await feed(redis, [request(key, "retry", 17, 2.0), request(str(uuid.uuid4()), "unkeyed", 18, 3.0)], "first")
    stalled = asyncio.create_task(handler(first_agent, redis)(batch))
    await asyncio.wait_for(first_agent.executed.wait(), DEADLINE_S)

    # The first agent looks stalled: a second consumer takes its entries over, with a new conflicting body.
    second = GroupReader(
        redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "second", claim_idle_ms=0)
    )
    reclaimed = await second.reclaim()
    assert [entry.id for entry in reclaimed] == [entry.id for entry in batch]
    conflict = await feed(redis, [request(key, "conflict", 17, 2.5)], "third")
    reclaimed.extend(conflict)
    successor = asyncio.create_task(handler(db, redis)(reclaimed))
    await wait_for("the second agent's INSERT waits on the first's rows", lambda: waiting_inserts(db))
    assert not successor.done()

    first_agent.commit.set()
    await asyncio.wait_for(asyncio.gather(stalled, successor), DEADLINE_S)

    answers = await replies(redis)
    bid_id = await the_row(db, key, 2.0)
    unkeyed_id = await only_row_id(db, 18)
    assert len(answers["retry"]) == len(answers["unkeyed"]) == 2  # each agent answered them
    for reply in answers["retry"]:
        assert_bid(reply, bid_id, 2.0)
    for reply in answers["unkeyed"]:
        assert_bid(reply, unkeyed_id, 3.0)
    [conflict_reply] = answers["conflict"]
    assert_conflict(conflict_reply)
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 2
    assert (await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP))["pending"] == 0


async def only_row_id(db: asyncpg.Pool, product_id: int) -> int:
    rows = await db.fetch(f"SELECT id FROM {BIDS_TABLE} WHERE product_id = $1", product_id)
    assert len(rows) == 1
    bid_id: int = rows[0]["id"]
    return bid_id


@pytest.mark.parametrize("outcome", ["commits-same-body", "commits-other-body", "rolls-back"])
async def test_a_row_committed_while_our_insert_waited(redis: aioredis.Redis, db: asyncpg.Pool, outcome: str) -> None:
    """Another transaction holds the key's row uncommitted; what it does decides, request by request."""
    key = str(uuid.uuid4())
    theirs = 2.0 if outcome == "commits-same-body" else 9.0
    connection = await db.acquire()
    transaction = connection.transaction()
    await transaction.start()
    try:
        other_id = await connection.fetchval(
            f"INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc,"
            " request_fingerprint) VALUES ($1, 19, $2, 150, $3, $4) RETURNING id",
            uuid.UUID(key),
            theirs,
            calculate_adjusted_cpc(theirs, 150.0),
            request_fingerprint(19, theirs, 150.0),
        )
        entries = [
            request(key, "A", 19, 2.0),
            request(str(uuid.uuid4()), "unkeyed", 20, 1.0),
            request(key, "A-again", 19, 2.0),
            request(key, "B", 19, 4.0),
        ]
        ours = asyncio.create_task(handler(db, redis)(await feed(redis, entries)))
        await wait_for("the handler's INSERT waits on the uncommitted row", lambda: waiting_inserts(db))
        assert not ours.done()
        if outcome == "rolls-back":
            await transaction.rollback()
        else:
            await transaction.commit()
    finally:
        await db.release(connection)
    await asyncio.wait_for(ours, DEADLINE_S)

    answers = await only_reply(redis)
    assert_bid(answers["unkeyed"], await only_row_id(db, 20), 1.0)
    if outcome == "commits-other-body":
        assert await the_row(db, key, 9.0) == other_id
        for reply_id in ["A", "A-again", "B"]:
            assert_conflict(answers[reply_id])
        return
    bid_id = await the_row(db, key, 2.0)
    assert (bid_id == other_id) == (outcome == "commits-same-body")
    assert_bid(answers["A"], bid_id, 2.0)
    assert_bid(answers["A-again"], bid_id, 2.0)
    assert_conflict(answers["B"])


async def test_two_agents_storing_the_same_keys_in_opposite_orders_do_not_deadlock(
    redis: aioredis.Redis, db: asyncpg.Pool
) -> None:
    """Agent A holds K1 and waits (on a row the test holds) before K2; agent B stores K2 and K1 meanwhile.

    Were rows inserted in stream order, A would then wait on B's K2 while B waits on A's K1: a deadlock that
    PostgreSQL breaks by failing one batch (retried a second later). Inserted in request id order, A waits on
    nothing of B's.
    """
    k0, k1, k2 = sorted(str(uuid.uuid4()) for _ in range(3))
    connection = await db.acquire()
    transaction = connection.transaction()
    await transaction.start()
    try:
        await connection.execute(
            f"INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc,"
            " request_fingerprint) VALUES ($1, 24, 1, 150, 1.5, $2)",
            uuid.UUID(k0),
            request_fingerprint(24, 1.0, 150.0),
        )
        a_batch = await feed(
            redis, [request(k1, "a1", 25, 1.0), request(k0, "a0", 24, 1.0), request(k2, "a2", 26, 1.0)], "a"
        )
        agent_a = asyncio.create_task(handler(db, redis)(a_batch))
        await wait_for("agent A waits on the test's row", lambda: waiting_inserts(db))
        b_batch = await feed(redis, [request(k2, "b2", 26, 1.0), request(k1, "b1", 25, 1.0)], "b")
        agent_b = asyncio.create_task(handler(db, redis)(b_batch))

        async def b_done_or_waiting() -> bool:
            return agent_b.done() or await waiting_inserts(db) == 2

        await wait_for("agent B has stored its batch or waits", b_done_or_waiting)
        await transaction.commit()
    finally:
        await db.release(connection)
    await asyncio.wait_for(asyncio.gather(agent_a, agent_b), DEADLINE_S)  # raises DeadlockDetectedError if any

    answers = await replies(redis)
    for name, request_id in [("1", k1), ("2", k2)]:
        bid_id = await the_row(db, request_id, 1.0)
        for reply_id in (f"a{name}", f"b{name}"):
            [reply] = answers[reply_id]
            assert_bid(reply, bid_id, 1.0)
    [a0] = answers["a0"]
    assert_bid(a0, await the_row(db, k0, 1.0), 1.0)


class DiesAfterCommit(PricingHandler):
    async def _publish(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("the process died between the commit and the replies")


@pytest.mark.parametrize("how", ["redelivered", "reclaimed"])
async def test_a_batch_handled_again_after_its_commit_gives_the_same_answers(
    redis: aioredis.Redis, db: asyncpg.Pool, how: str
) -> None:
    """The agent committed, then died before replying: the same entries are handled again from the table."""
    key = str(uuid.uuid4())
    entries = [
        request(key, "B", 21, 6.0),
        request(key, "A", 21, 5.0),
        request(str(uuid.uuid4()), "unkeyed", 22, 5.0),
        request(key, "B-again", 21, 6.0),
    ]
    batch = await feed(redis, entries, consumer="first")
    with pytest.raises(ConnectionError):
        await DiesAfterCommit(db, redis, reply_stream_maxlen=1000)(batch)
    assert await redis.xlen(REPLIES) == 0
    if how == "redelivered":  # the same consumer restarts and re-reads its own pending entries
        again = await GroupReader(redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "first")).read()
    else:  # another consumer takes them over with XAUTOCLAIM
        again = await GroupReader(
            redis, group_config_for_tests(keys.BID_REQUESTS, keys.PRICING_GROUP, "second", claim_idle_ms=0)
        ).reclaim()
    assert [entry.id for entry in again] == [entry.id for entry in batch]
    await handler(db, redis)(again)

    answers = await only_reply(redis)
    bid_id = await the_row(db, key, 6.0)
    assert_bid(answers["B"], bid_id, 6.0)
    assert_bid(answers["B-again"], bid_id, 6.0)
    assert_conflict(answers["A"])
    assert answers["unkeyed"].error is None
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}") == 2
    assert (await redis.xpending(keys.BID_REQUESTS, keys.PRICING_GROUP))["pending"] == 0


# --- end to end: the real gateway and agent -------------------------------------------------------------------


Answer = tuple[int, dict[str, Any]]


def post(gateway_url: str, body: bytes, key: str | None) -> Answer:
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    req = urllib.request.Request(f"{gateway_url}/api/bid/", data=body, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=60) as response:  # noqa: S310 - our own local gateway
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def in_one_batch(pipeline: Pipeline, posts: Sequence[tuple[bytes, str | None]]) -> list[Answer]:
    """Send the requests from threads while the pricing agent is paused, so that one read takes them all."""
    redis = aioredis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    agent = pipeline.processes["pricing-agent"]
    db_number = int(pipeline.redis_url.rsplit("/", 1)[1])

    async def agent_not_blocked_in_a_read() -> bool:
        # A read blocked when the agent stops would be answered with the first new entry alone.
        clients = await redis.client_list()
        return not any(c["cmd"] == "xreadgroup" and "b" in c["flags"] and int(c["db"]) == db_number for c in clients)

    last_id = (await redis.xinfo_stream(keys.BID_REQUESTS))["last-generated-id"]
    agent.send_signal(signal.SIGSTOP)
    try:
        await wait_for("the paused agent's blocking read has expired", agent_not_blocked_in_a_read)
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=len(posts)) as threads:
            sent = [loop.run_in_executor(threads, post, pipeline.gateway_url, body, key) for body, key in posts]

            async def all_on_the_stream() -> bool:
                return len(await redis.xrange(keys.BID_REQUESTS, f"({last_id}", "+")) == len(posts)

            await wait_for("every request is on bids:requests", all_on_the_stream)
            agent.send_signal(signal.SIGCONT)
            answers = await asyncio.wait_for(asyncio.gather(*sent), DEADLINE_S * 2)
    finally:
        agent.send_signal(signal.SIGCONT)
        await redis.aclose()
    return list(answers)


async def stream_order(pipeline: Pipeline, request_ids: set[str]) -> list[dict[str, str]]:
    redis = aioredis.Redis.from_url(pipeline.redis_url, decode_responses=True)
    try:
        return [f for _, f in await redis.xrange(keys.BID_REQUESTS) if f["request_id"] in request_ids]
    finally:
        await redis.aclose()


async def assert_stored_by_one_statement(db: asyncpg.Pool, bid_ids: set[int]) -> None:
    """Rows inserted by one batch statement share one transaction id: the requests were in one batch."""
    xmins = await db.fetch(f"SELECT DISTINCT xmin::text FROM {BIDS_TABLE} WHERE id = ANY($1::bigint[])", list(bid_ids))
    assert len(xmins) == 1, "the requests were not stored by one batch"


def body(product_id: Any, current_cpc: Any, target_roas: Any = 150) -> bytes:
    return f'{{"product_id": {product_id}, "current_cpc": {current_cpc}, "target_roas": {target_roas}}}'.encode()


async def test_end_to_end_one_key_twenty_bodies_and_unkeyed_load_in_one_batch(
    pipeline: Pipeline, db: asyncpg.Pool
) -> None:
    key = f"e2e-{uuid.uuid4()}"
    keyed = [(body(31, cpc), key) for cpc in range(1, 21)]
    unkeyed = [(body(400 + i, 1.0 + i / 4), None) for i in range(24)]
    posts = keyed + unkeyed
    random.Random(4).shuffle(posts)

    answers = await in_one_batch(pipeline, posts)

    by_body = {data: answer for (data, _), answer in zip(posts, answers, strict=True)}
    winners = [(data, a) for (data, k), a in zip(posts, answers, strict=True) if k == key and a[0] == 200]
    assert len(winners) == 1, [a for (_, k), a in zip(posts, answers, strict=True) if k == key]
    (won_body, (_, won)) = winners[0]
    cpc = json.loads(won_body)["current_cpc"]
    assert won["adjusted_cpc"] == float(price(cpc))
    rows = await db.fetch(f"SELECT * FROM {BIDS_TABLE} WHERE product_id = 31")
    assert [(r["id"], float(r["current_cpc"])) for r in rows] == [(won["bid_id"], cpc)]
    # The stored body is the first of the key's requests in stream order.
    first = (await stream_order(pipeline, {str(rows[0]["request_id"])}))[0]
    assert float(first["current_cpc"]) == cpc
    for data, _ in keyed:
        if data != won_body:
            status, answer = by_body[data]
            assert status == 422, answer
            assert set(answer) == {"errors"}  # no price, no bid id
            assert "Idempotency-Key" in answer["errors"][0]
    bid_ids = {won["bid_id"]}
    for data, _ in unkeyed:
        status, answer = by_body[data]
        assert status == 200, answer
        assert answer["adjusted_cpc"] == float(price(json.loads(data)["current_cpc"]))
        bid_ids.add(answer["bid_id"])
    assert len(bid_ids) == 25
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE id = ANY($1::bigint[])", list(bid_ids)) == 25
    await assert_stored_by_one_statement(db, bid_ids)


async def test_end_to_end_retries_and_a_conflict_in_one_batch_after_the_bid_is_stored(
    pipeline: Pipeline, db: asyncpg.Pool
) -> None:
    key = f"e2e-{uuid.uuid4()}"
    status, stored = post(pipeline.gateway_url, body(32, 1.5), key)
    assert status == 200
    posts = [(body(32, 1.5), key)] * 10 + [(body(32, 2.5), key)] * 10 + [(body(500 + i, 2.0), None) for i in range(10)]
    random.Random(5).shuffle(posts)

    answers = await in_one_batch(pipeline, posts)

    for (data, k), (status, answer) in zip(posts, answers, strict=True):
        if k is None:
            assert status == 200, answer
            assert answer["adjusted_cpc"] == 3.0
        elif data == body(32, 1.5):
            assert (status, answer) == (200, stored)
        else:
            assert status == 422, answer
            assert set(answer) == {"errors"}
    rows = await db.fetch(f"SELECT id, current_cpc FROM {BIDS_TABLE} WHERE product_id = 32")
    assert [(r["id"], r["current_cpc"]) for r in rows] == [(stored["bid_id"], Decimal("1.50"))]
    new_ids = {answer["bid_id"] for (_, k), (_, answer) in zip(posts, answers, strict=True) if k is None}
    assert len(new_ids) == 10
    await assert_stored_by_one_statement(db, new_ids)


async def test_end_to_end_what_the_same_request_means(pipeline: Pipeline, db: asyncpg.Pool) -> None:
    """As documented: one value however it is written is one request; values that differ by less than a cent are not."""
    key = f"e2e-{uuid.uuid4()}"
    same = [
        body(33, "2"),
        body(33, "2.0"),
        body(33, '"2"'),
        body(33, '"2.00"'),
        body(33, "2e0"),
        body('"33"', "2", "150.0"),
        body("33.0", "2", "1.5e2"),
    ]
    answers = await in_one_batch(pipeline, [(data, key) for data in same])
    assert {status for status, _ in answers} == {200}, answers
    assert len({json.dumps(answer, sort_keys=True) for _, answer in answers}) == 1
    bid_id = answers[0][1]["bid_id"]
    assert answers[0][1]["adjusted_cpc"] == 3.0

    assert post(pipeline.gateway_url, body(33, "2.001"), key)[0] == 422  # stored as 2.00, but another value
    assert post(pipeline.gateway_url, body(33, "2", "150.00001"), key)[0] == 422
    assert post(pipeline.gateway_url, body(33, '" 2 "'), key) == (200, answers[0][1])  # PHP's is_numeric spacing

    zero_key = f"e2e-{uuid.uuid4()}"
    zeros = [post(pipeline.gateway_url, body(35, zero), zero_key) for zero in ["0", "-0", "-0.0", '"-0"', "0e5"]]
    assert {status for status, _ in zeros} == {200}, zeros
    assert len({answer["bid_id"] for _, answer in zeros}) == 1
    assert {answer["adjusted_cpc"] for _, answer in zeros} == {0.0}

    sub_cent = f"e2e-{uuid.uuid4()}"
    status, first = post(pipeline.gateway_url, body(34, 1.001), sub_cent)
    assert (status, first["adjusted_cpc"]) == (200, 1.5)
    status, second = post(pipeline.gateway_url, body(34, 1.004), sub_cent)
    assert status == 422, second  # its own price would be 1.51
    assert [r["id"] for r in await db.fetch(f"SELECT id FROM {BIDS_TABLE} WHERE product_id = 33")] == [bid_id]
    assert await db.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = 34") == 1
