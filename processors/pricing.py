"""The pricing agent's work on one batch of `bids:requests`: price, store in one transaction, then reply.

Order matters and is the durability contract: rows are committed first; only then, in one MULTI/EXEC, are
replies sent to each gateway, the stored bids published on `bids:priced` and the entries acknowledged.
A crash anywhere before that redelivers the batch, and the unique
`request_id` turns the second insert into a lookup of the row already stored: at-least-once delivery,
exactly-once effect.

Idempotency (the bidder's `Idempotency-Key` becomes the request id): every request is answered on its own.
Among the requests of a batch that share a request id, the first in stream order is inserted if no row exists;
then each request is compared with the row stored for its id, by request fingerprint (`schema.idempotency`):
equal, it gets that bid's id and price; different, an idempotency conflict (no id, no price). It does not
matter whether the row was inserted by this statement, stored earlier, or committed by another agent while
our INSERT waited on it (a reclaimed entry handled twice): the same comparison decides.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg
from redis import asyncio as aioredis

from legacy import calculate_adjusted_cpc
from processors.metrics import REPLY_OUTCOMES, PricingMetrics
from redis_streams.groups import Batch, StreamEntry
from redis_streams.pipe import Command, execute_packed, xadd
from schema import keys
from schema.database import BIDS_ID_SEQUENCE, BIDS_TABLE, REQUEST_LEDGER
from schema.events import BidReply, BidRequested, DeadLetter, EventDecodeError, PricedBid, encode_replies
from schema.idempotency import request_fingerprint
from schema.settings import Settings
from telemetry.logs import REQUEST_ID

log = logging.getLogger(__name__)

# One statement per batch: claim each new request id in the ledger, insert the bids of the ids claimed, and
# return the ledger row of every request id stored earlier. The input holds each request id once (the first
# request of the batch that carries it, in stream order), so no row is chosen arbitrarily. The ledger's primary
# key makes request ids unique (the bids table is partitioned by day, where a unique index must include the
# day); a bid is inserted only for an id this statement claimed, with the id and time the ledger got, so the
# two never disagree. The last SELECT sees the snapshot taken before the INSERTs, so it returns only ids stored
# earlier (a redelivery, or a retry with the same Idempotency-Key); their bids are read by STORED_BIDS_SQL.
# Whether a request is the one a row was stored for is decided afterwards, request by request, on the request
# fingerprints. The statement reads no partition of the bids table (the INSERT locks only today's), so
# maintenance on closed days never waits for it, nor it for maintenance.
# Ids are claimed in request id order: two agents whose batches share request ids then wait on each other in
# one direction only, instead of deadlocking (A holds K1 and waits for K2 while B holds K2 and waits for K1).
STORE_BATCH_SQL = f"""
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::float8[], $4::float8[], $5::float8[], $6::bigint[])
        AS t(request_id, product_id, current_cpc, target_roas, adjusted_cpc, request_fingerprint)
), claimed AS (
    INSERT INTO {REQUEST_LEDGER} (request_id, bid_id, calculated_at)
    SELECT request_id, nextval('{BIDS_ID_SEQUENCE}'), now() FROM input
    ORDER BY request_id
    ON CONFLICT (request_id) DO NOTHING
    RETURNING request_id, bid_id, calculated_at
), inserted AS (
    INSERT INTO {BIDS_TABLE}
        (id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_fingerprint)
    SELECT c.bid_id, c.request_id, i.product_id, i.current_cpc, i.target_roas, i.adjusted_cpc, c.calculated_at,
           i.request_fingerprint
    FROM claimed c JOIN input i USING (request_id)
    RETURNING id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_fingerprint
)
SELECT id, request_id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_fingerprint,
       true AS inserted
FROM inserted
UNION ALL
SELECT l.bid_id, l.request_id, NULL, NULL, NULL, NULL, l.calculated_at, NULL, false
FROM {REQUEST_LEDGER} l JOIN input USING (request_id)
"""

# The bids of request ids stored earlier, by the (id, calculated_at) their ledger rows point at: each lookup
# is pruned to its bid's partition at execution time.
STORED_BIDS_SQL = f"""
SELECT b.id, b.request_id, b.product_id, b.current_cpc, b.target_roas, b.adjusted_cpc, b.calculated_at,
       b.request_fingerprint, false AS inserted
FROM unnest($1::bigint[], $2::timestamptz[]) AS t(bid_id, calculated_at)
CROSS JOIN LATERAL (
    SELECT * FROM {BIDS_TABLE} b WHERE b.id = t.bid_id AND b.calculated_at = t.calculated_at
) b
"""

# Rows another agent committed while our INSERT waited on them are not in our snapshot: look them up after.
FETCH_STORED_SQL = f"""
SELECT bid_id AS id, calculated_at FROM {REQUEST_LEDGER} WHERE request_id = ANY($1::uuid[])
"""

# Rows stored before request fingerprints existed (migration 0003) have none: a request is then compared by
# its values as the columns would store them, converted by PostgreSQL itself (the same casts as the INSERT).
AS_STORED_SQL = """
SELECT current_cpc::numeric(12, 2) AS current_cpc, target_roas::numeric(12, 4) AS target_roas
FROM unnest($1::float8[], $2::float8[]) WITH ORDINALITY AS t(current_cpc, target_roas, position)
ORDER BY position
"""


@dataclass(frozen=True, slots=True)
class PricedRequest:
    entry: StreamEntry
    event: BidRequested
    adjusted_cpc: float
    fingerprint: int


@dataclass(frozen=True, slots=True)
class StoredRow:
    bid: PricedBid
    request_fingerprint: int | None  # None: stored before fingerprints existed
    inserted: bool = False  # stored by this batch's statement (else: earlier, or by another agent meanwhile)


def _stored_row(row: asyncpg.Record) -> StoredRow:
    calculated_at: datetime = row["calculated_at"]
    current_cpc: Decimal = row["current_cpc"]
    target_roas: Decimal = row["target_roas"]
    adjusted_cpc: Decimal = row["adjusted_cpc"]
    bid = PricedBid(
        bid_id=row["id"],
        request_id=str(row["request_id"]),
        product_id=row["product_id"],
        current_cpc=current_cpc,
        target_roas=target_roas,
        adjusted_cpc=adjusted_cpc,
        calculated_at=calculated_at,
    )
    return StoredRow(bid, row["request_fingerprint"], bool(row.get("inserted", False)))


def _by_request_id(rows: Iterable[asyncpg.Record]) -> dict[str, StoredRow]:
    return {stored.bid.request_id: stored for stored in map(_stored_row, rows)}


class PricingHandler:
    """Prices and stores a batch of bid requests; see the module docstring for the order of effects."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: aioredis.Redis,
        *,
        reply_stream_maxlen: int,
        reply_stream_ttl_s: int = Settings.reply_stream_ttl_s,
        metrics: PricingMetrics | None = None,
    ) -> None:
        self.metrics = metrics  # None: nothing recorded (METRICS_ENABLED=false, or a test)
        self.pool = pool
        self.redis = redis
        self.reply_stream_maxlen = reply_stream_maxlen
        self.reply_stream_ttl_s = reply_stream_ttl_s

    async def __call__(self, batch: Batch) -> None:
        started = time.perf_counter()
        priced, dead = self._price(batch)
        store_started = time.perf_counter()
        try:
            stored = await self._store(priced) if priced else {}
            stored_at = time.perf_counter()
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError):
            # One row the gateway should have refused must not block the stream: store row by row and
            # dead-letter the ones PostgreSQL rejects. Connection errors are not caught: the batch is retried.
            log.exception("batch insert rejected by PostgreSQL; storing its %d rows one by one", len(priced))
            stored, rejected = await self._store_one_by_one(priced)
            stored_at = time.perf_counter()
            dead.extend(rejected)
            rejected_entries = {entry.id for entry, _, _ in rejected}
            priced = [p for p in priced if p.entry.id not in rejected_entries]
        same = await self._same_requests(priced, stored)
        outcomes = await self._publish(priced, stored, same, dead, ack=batch.ack_command())
        batch.mark_acknowledged()
        metrics = self.metrics
        if metrics is not None:
            metrics.batches.inc()
            metrics.batch_size.observe(len(batch))
            if priced:
                metrics.store_duration.observe(stored_at - store_started)
            for outcome, count in zip(REPLY_OUTCOMES, outcomes, strict=True):
                if count:
                    metrics.replies_by_outcome[outcome].inc(count)
            if dead:
                metrics.stream.dead_letter.inc(len(dead))
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
                fingerprint = request_fingerprint(event.product_id, event.current_cpc, event.target_roas)
            except ValueError as exc:  # InvalidArgumentError, or a product id beyond 64 bits
                # The gateway validates first, so this is a producer bug: keep the entry for on-call.
                dead.append((entry, str(exc), event))
                continue
            priced.append(PricedRequest(entry, event, adjusted, fingerprint))
        return priced, dead

    async def _store(self, priced: Sequence[PricedRequest]) -> dict[str, StoredRow]:
        """The stored row of each request id of `priced`, inserting the ones that have none yet."""
        # Requests that share a request id (retries, or conflicting bodies, under one Idempotency-Key): the
        # first in stream order is the one stored when no row exists yet; every one is answered afterwards.
        first: dict[str, PricedRequest] = {}
        for request in priced:
            first.setdefault(request.event.request_id, request)
        inserting = first.values()
        # One statement is one transaction (all rows or none): no BEGIN/COMMIT round trips needed.
        rows = await self.pool.fetch(
            STORE_BATCH_SQL,
            list(first),
            [p.event.product_id for p in inserting],
            [p.event.current_cpc for p in inserting],
            [p.event.target_roas for p in inserting],
            [p.adjusted_cpc for p in inserting],
            [p.fingerprint for p in inserting],
        )
        stored = _by_request_id(row for row in rows if row["product_id"] is not None)
        earlier = [row for row in rows if row["product_id"] is None]
        if len(stored) + len(earlier) < len(first):
            # Committed by another transaction (another agent, or a batch of ours handled concurrently) after
            # our snapshot: our INSERT waited for it, then skipped the id. Read it now; it is compared like any.
            seen = {str(row["request_id"]) for row in rows}
            missing = [request_id for request_id in first if request_id not in seen]
            earlier.extend(await self.pool.fetch(FETCH_STORED_SQL, missing))
        if earlier:
            stored.update(
                _by_request_id(
                    await self.pool.fetch(
                        STORED_BIDS_SQL, [row["id"] for row in earlier], [row["calculated_at"] for row in earlier]
                    )
                )
            )
        for request_id in first:
            if request_id not in stored:
                stored[request_id] = self._spelled_differently(request_id, stored)
        return stored

    @staticmethod
    def _spelled_differently(request_id: str, stored: dict[str, StoredRow]) -> StoredRow:
        # PostgreSQL also reads upper-case, braced or unhyphenated UUIDs and answers in the canonical form.
        # Not found at all, the row was deleted since: raising retries the batch, which stores it anew.
        canonical = str(uuid.UUID(request_id))
        if canonical not in stored:
            raise LookupError(f"no row is stored for request id {request_id}")
        return stored[canonical]

    async def _store_one_by_one(
        self, priced: Sequence[PricedRequest]
    ) -> tuple[dict[str, StoredRow], list[tuple[StreamEntry, str, BidRequested | None]]]:
        stored: dict[str, StoredRow] = {}
        rejected: list[tuple[StreamEntry, str, BidRequested | None]] = []
        for request in priced:  # in stream order, so the first storable request of a request id is stored
            try:
                stored.update(await self._store([request]))
            except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
                rejected.append((request.entry, f"not stored: {exc}", request.event))
        return stored, rejected

    async def _same_requests(self, priced: Sequence[PricedRequest], stored: dict[str, StoredRow]) -> list[bool]:
        """For each request: is it the request its request id's row was stored for (a replay), or another one?"""
        rows = [stored[p.event.request_id] for p in priced]
        same = [row.request_fingerprint == p.fingerprint for p, row in zip(priced, rows, strict=True)]
        legacy = [i for i, row in enumerate(rows) if row.request_fingerprint is None]
        if legacy:
            # Rows stored before fingerprints existed: compare the values as the columns hold them (the rule
            # those rows were stored under; sub-cent differences are not seen).
            as_stored = await self.pool.fetch(
                AS_STORED_SQL,
                [priced[i].event.current_cpc for i in legacy],
                [priced[i].event.target_roas for i in legacy],
            )
            for i, values in zip(legacy, as_stored, strict=True):
                bid = rows[i].bid
                same[i] = (
                    bid.product_id == priced[i].event.product_id
                    and bid.current_cpc == values["current_cpc"]
                    and bid.target_roas == values["target_roas"]
                )
        return same

    async def _publish(
        self,
        priced: Sequence[PricedRequest],
        stored: dict[str, StoredRow],
        same: Sequence[bool],
        dead: Sequence[tuple[StreamEntry, str, BidRequested | None]],
        *,
        ack: Command,
    ) -> tuple[int, int, int, int]:
        """Reply, publish and acknowledge; returns the replies by outcome, in `REPLY_OUTCOMES` order."""
        stored_now = replayed = conflicts = rejected = 0
        replies: dict[str, list[BidReply]] = defaultdict(list)
        commands: list[Command] = []
        published: dict[int, dict[str, str]] = {}  # bid id -> its bids:priced fields
        for request, same_request in zip(priced, same, strict=True):
            bid = stored[request.event.request_id].bid
            if not same_request:
                # Neither the price nor the id of a bid is ever answered to another request, and a conflict
                # publishes nothing: every stored bid is published by the request it was stored for.
                replies[request.event.reply_to].append(
                    BidReply(request.event.reply_id, error=BidReply.IDEMPOTENCY_CONFLICT)
                )
                conflicts += 1
                continue
            fields = published.get(bid.bid_id)
            first_answer = fields is None
            if fields is None:
                fields = published[bid.bid_id] = bid.to_fields()
                commands.append(xadd(keys.BIDS_PRICED, fields))
            # The reply carries the price as published (money(adjusted_cpc)), formatted once.
            replies[request.event.reply_to].append(BidReply(request.event.reply_id, bid.bid_id, fields["adjusted_cpc"]))
            if first_answer and stored[request.event.request_id].inserted:
                stored_now += 1
            else:
                replayed += 1
        for entry, reason, event in dead:
            log.error(
                "dead-lettering %s: %s",
                entry.id,
                reason,
                extra={REQUEST_ID: event.request_id if event is not None else entry.fields.get("request_id")},
            )
            dead_letter = DeadLetter(entry.id, keys.BID_REQUESTS, reason, entry.fields, group=keys.PRICING_GROUP)
            commands.append(xadd(keys.BIDS_DEAD_LETTER, dead_letter.to_fields()))
            if event is not None:
                replies[event.reply_to].append(BidReply(event.reply_id, error=BidReply.REJECTED))
                rejected += 1
        for reply_to, answers in replies.items():
            commands.append(xadd(reply_to, encode_replies(answers), maxlen=self.reply_stream_maxlen))
            # A late reply to a gateway that died re-creates its expired stream: give it the gateway's expiry again.
            commands.append(("EXPIRE", reply_to, self.reply_stream_ttl_s))
        commands.append(ack)
        # MULTI/EXEC: the replies, the priced events and the acknowledgement happen together or not at all,
        # so a crash after the commit redelivers the batch without having published any of it.
        await execute_packed(self.redis, commands, transaction=True)
        return stored_now, replayed, conflicts, rejected
