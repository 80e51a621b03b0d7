"""The pricing agent's work on one batch of `bids:requests`: price, store in one transaction, then reply.

Order matters and is the durability contract: rows are committed first; only then, in one MULTI/EXEC, are
replies sent to each gateway, the stored bids published on `bids:priced` and the entries acknowledged.
A crash anywhere before that redelivers the batch, and the unique
`request_id` turns the second insert into a lookup of the row already stored: at-least-once delivery,
exactly-once effect.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
from redis import asyncio as aioredis

from legacy import InvalidArgumentError, calculate_adjusted_cpc
from redis_streams.groups import Batch, StreamEntry
from redis_streams.pipe import Command, execute_packed, xadd
from schema import keys
from schema.database import BIDS_TABLE
from schema.events import BidReply, BidRequested, DeadLetter, EventDecodeError, PricedBid, encode_replies, money
from schema.settings import Settings

log = logging.getLogger(__name__)

# One statement per batch: insert what is new, and return the stored row for every request id, new or not.
# The second SELECT sees the snapshot taken before the INSERT, so it returns only rows stored earlier
# (a redelivery, or a retry with the same Idempotency-Key), flagged when they differ from this request.
STORE_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::float8[], $4::float8[], $5::float8[])
        AS t(request_id, product_id, current_cpc, target_roas, adjusted_cpc)
), inserted AS (
    INSERT INTO {BIDS_TABLE} (request_id, product_id, current_cpc, target_roas, adjusted_cpc)
    SELECT request_id, product_id, current_cpc, target_roas, adjusted_cpc FROM input
    ON CONFLICT (request_id) DO NOTHING
    RETURNING id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at
)
SELECT *, true AS same_request FROM inserted
UNION ALL
SELECT DISTINCT ON (b.id) b.id, b.request_id, b.product_id, b.current_cpc, b.target_roas, b.adjusted_cpc,
       b.calculated_at,
       (b.product_id = i.product_id AND b.current_cpc = i.current_cpc::numeric(12, 2)
        AND b.target_roas = i.target_roas::numeric(12, 4)) AS same_request
FROM {BIDS_TABLE} b JOIN input i USING (request_id)
"""

# Rows another agent committed while our INSERT waited on them are not in our snapshot: look them up after.
FETCH_STORED_SQL = f"""
SELECT id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at
FROM {BIDS_TABLE} WHERE request_id = ANY($1::uuid[])
"""


@dataclass(frozen=True, slots=True)
class PricedRequest:
    entry: StreamEntry
    event: BidRequested
    adjusted_cpc: float


@dataclass(frozen=True, slots=True)
class StoredRow:
    bid: PricedBid
    same_request: bool


def _priced_bid(row: asyncpg.Record) -> PricedBid:
    calculated_at: datetime = row["calculated_at"]
    current_cpc: Decimal = row["current_cpc"]
    target_roas: Decimal = row["target_roas"]
    adjusted_cpc: Decimal = row["adjusted_cpc"]
    return PricedBid(
        bid_id=row["id"],
        request_id=str(row["request_id"]),
        product_id=row["product_id"],
        current_cpc=current_cpc,
        target_roas=target_roas,
        adjusted_cpc=adjusted_cpc,
        calculated_at=calculated_at,
    )


class PricingHandler:
    """Prices and stores a batch of bid requests; see the module docstring for the order of effects."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        reply_stream_maxlen: int,
        reply_stream_ttl_s: int = Settings.reply_stream_ttl_s,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.reply_stream_maxlen = reply_stream_maxlen
        self.reply_stream_ttl_s = reply_stream_ttl_s

    async def __call__(self, batch: Batch) -> None:
        started = time.perf_counter()
        priced, dead = self._price(batch)
        try:
            stored = await self._store(priced) if priced else {}
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            # One row the gateway should have refused must not block the stream: store row by row and
            # dead-letter the ones PostgreSQL rejects. Connection errors are not caught: the batch is retried.
            log.exception("batch insert rejected by PostgreSQL; storing its %d rows one by one", len(priced))
            stored, rejected = await self._store_one_by_one(priced)
            dead.extend(rejected)
            priced = [p for p in priced if p.event.request_id in stored]
        await self._publish(priced, stored, dead, ack=batch.ack_command())
        batch.mark_acknowledged()
        log.debug("batch of %d priced in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    def _price(self, batch: Batch) -> tuple[list[PricedRequest], list[tuple[StreamEntry, str, BidRequested | None]]]:
        priced: list[PricedRequest] = []
        dead: list[tuple[StreamEntry, str, BidRequested | None]] = []
        for entry in batch:
            try:
                event = BidRequested.from_fields(entry.fields)
            except EventDecodeError as exc:
                dead.append((entry, f"undecodable event: {exc}", None))
                continue
            try:
                adjusted = calculate_adjusted_cpc(event.current_cpc, event.target_roas)
            except InvalidArgumentError as exc:
                # The gateway validates first, so this is a producer bug: keep the entry for on-call.
                dead.append((entry, str(exc), event))
                continue
            priced.append(PricedRequest(entry, event, adjusted))
        return priced, dead

    async def _store(self, priced: Sequence[PricedRequest]) -> dict[str, StoredRow]:
        request_ids = [p.event.request_id for p in priced]
        # One statement is one transaction (all rows or none): no BEGIN/COMMIT round trips needed.
        rows = await self.pool.fetch(
            STORE_BATCH_SQL,
            request_ids,
            [p.event.product_id for p in priced],
            [p.event.current_cpc for p in priced],
            [p.event.target_roas for p in priced],
            [p.adjusted_cpc for p in priced],
        )
        stored = {str(row["request_id"]): StoredRow(_priced_bid(row), row["same_request"]) for row in rows}
        missing = [rid for rid in set(request_ids) if rid not in stored]
        if missing:
            for row in await self.pool.fetch(FETCH_STORED_SQL, missing):
                stored[str(row["request_id"])] = StoredRow(_priced_bid(row), False)
        return stored

    async def _store_one_by_one(
        self, priced: Sequence[PricedRequest]
    ) -> tuple[dict[str, StoredRow], list[tuple[StreamEntry, str, BidRequested | None]]]:
        stored: dict[str, StoredRow] = {}
        rejected: list[tuple[StreamEntry, str, BidRequested | None]] = []
        for request in priced:
            try:
                stored.update(await self._store([request]))
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                rejected.append((request.entry, f"not stored: {exc}", request.event))
        return stored, rejected

    async def _publish(
        self,
        priced: Sequence[PricedRequest],
        stored: dict[str, StoredRow],
        dead: Sequence[tuple[StreamEntry, str, BidRequested | None]],
        *,
        ack: Command,
    ) -> None:
        replies: dict[str, list[BidReply]] = defaultdict(list)
        commands: list[Command] = []
        published: set[int] = set()
        for request in priced:
            row = stored[request.event.request_id]
            if row.same_request:
                reply = BidReply(request.event.reply_id, row.bid.bid_id, money(row.bid.adjusted_cpc))
            else:
                reply = BidReply(request.event.reply_id, row.bid.bid_id, error=BidReply.IDEMPOTENCY_CONFLICT)
            replies[request.event.reply_to].append(reply)
            if row.bid.bid_id not in published:
                published.add(row.bid.bid_id)
                commands.append(xadd(keys.BIDS_PRICED, row.bid.to_fields()))
        for entry, reason, event in dead:
            log.error("dead-lettering %s: %s", entry.id, reason)
            dead_letter = DeadLetter(entry.id, keys.BID_REQUESTS, reason, entry.fields)
            commands.append(xadd(keys.BIDS_DEAD_LETTER, dead_letter.to_fields()))
            if event is not None:
                replies[event.reply_to].append(BidReply(event.reply_id, error=BidReply.REJECTED))
        for reply_to, answers in replies.items():
            commands.append(xadd(reply_to, encode_replies(answers), maxlen=self.reply_stream_maxlen))
            # A late reply to a gateway that died re-creates its expired stream: give it the gateway's expiry again.
            commands.append(("EXPIRE", reply_to, self.reply_stream_ttl_s))
        commands.append(ack)
        # MULTI/EXEC: the replies, the priced events and the acknowledgement happen together or not at all,
        # so a crash after the commit redelivers the batch without having published any of it.
        await execute_packed(self.redis, commands, transaction=True)
