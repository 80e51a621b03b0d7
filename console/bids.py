"""Bid search over `bidding_productbid`: by id, by request id, or newest first within a time range.

Every query either uses a unique index (`id`, or `request_id` through the request ledger) or bounds
`calculated_at` on both sides, so it reads one time slice (the day partitions it spans, through their
`calculated_at` index), never the table. Pages are keyset-paginated on (calculated_at, id), never OFFSET.

A page is filled slice by slice, newest first: the first slice spans `CONSOLE_BIDS_FIRST_SPAN_S`, each next
one twice the previous, until the page is full, the range's start is reached, or the page has read
`CONSOLE_BIDS_MAX_SPAN_S`. So a busy table costs a page about one small slice, and a sparse product filter
reads a bounded span and offers to continue older instead of scanning on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID

import asyncpg

from schema.database import BIDS_TABLE, REQUEST_LEDGER

_COLUMNS = "id, product_id, current_cpc, target_roas, adjusted_cpc, calculated_at, request_id"

# One time slice, newest first, strictly before the cursor (calculated_at, id).
SLICE_SQL = f"""
SELECT {_COLUMNS} FROM {BIDS_TABLE}
WHERE calculated_at >= $1 AND calculated_at <= $2 AND (calculated_at, id) < ($2, $3)
  AND ($4::bigint IS NULL OR product_id = $4)
ORDER BY calculated_at DESC, id DESC
LIMIT $5
"""
BY_ID_SQL = f"SELECT {_COLUMNS} FROM {BIDS_TABLE} WHERE id = $1"
# Through the request ledger (the bids table has no index on request_id): its (id, calculated_at) pointer
# is known when the query starts, so only the bid's own partition is read.
BY_REQUEST_SQL = f"""
SELECT {_COLUMNS} FROM {BIDS_TABLE}
WHERE id = (SELECT bid_id FROM {REQUEST_LEDGER} WHERE request_id = $1)
  AND calculated_at = (SELECT calculated_at FROM {REQUEST_LEDGER} WHERE request_id = $1)
  AND request_id = $1
"""
NEWEST_SQL = f"SELECT {_COLUMNS} FROM {BIDS_TABLE} ORDER BY id DESC LIMIT 1"

# The id bound of a cursor that continues strictly before a moment (every id is above it).
BEFORE_EVERY_ID = 0
AFTER_EVERY_ID = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Bid:
    id: int
    product_id: int
    current_cpc: Decimal
    target_roas: Decimal
    adjusted_cpc: Decimal
    calculated_at: datetime
    request_id: str

    @property
    def deviation_pct(self) -> str:
        if self.current_cpc == 0:
            return "inf" if self.adjusted_cpc else "0.00"
        return f"{(self.adjusted_cpc - self.current_cpc) * 100 / self.current_cpc:+.2f}"


def _bid(row: asyncpg.Record) -> Bid:
    return Bid(
        id=row["id"],
        product_id=row["product_id"],
        current_cpc=row["current_cpc"],
        target_roas=row["target_roas"].normalize(),
        adjusted_cpc=row["adjusted_cpc"],
        calculated_at=row["calculated_at"],
        request_id=str(row["request_id"]),
    )


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: strictly before (calculated_at, id)."""

    at: datetime
    id: int

    def encode(self) -> str:
        raw = f"{self.at.astimezone(UTC).isoformat()}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            at, _, bid_id = raw.partition("|")
            moment = datetime.fromisoformat(at)
            if moment.tzinfo is None:
                raise ValueError("naive time")
            return cls(moment, int(bid_id))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError("not a page cursor") from exc


@dataclass(frozen=True, slots=True)
class BidPage:
    bids: list[Bid]
    next: Cursor | None  # None: nothing older within the range
    searched_from: datetime  # the oldest moment this page read
    slices: int


async def by_id(conn: asyncpg.Connection, bid_id: int) -> Bid | None:
    row = await conn.fetchrow(BY_ID_SQL, bid_id)
    return None if row is None else _bid(row)


async def by_request_id(conn: asyncpg.Connection, request_id: UUID) -> Bid | None:
    row = await conn.fetchrow(BY_REQUEST_SQL, request_id)
    return None if row is None else _bid(row)


async def newest(conn: asyncpg.Connection) -> Bid | None:
    row = await conn.fetchrow(NEWEST_SQL)
    return None if row is None else _bid(row)


async def search(
    conn: asyncpg.Connection,
    *,
    start: datetime,
    end: datetime,
    product_id: int | None,
    cursor: Cursor | None,
    limit: int,
    first_span_s: int,
    max_span_s: int,
) -> BidPage:
    """Bids in [start, end], newest first, strictly before `cursor`; see the module docstring for the bounds."""
    upper = cursor or Cursor(end, AFTER_EVERY_ID)
    if upper.at > end:
        upper = Cursor(end, AFTER_EVERY_ID)
    span = timedelta(seconds=max(first_span_s, 1))
    budget_end = upper.at - timedelta(seconds=max_span_s)
    found: list[Bid] = []
    slices = 0
    lower = upper.at
    while len(found) < limit:
        lower = max(upper.at - span, start, budget_end)
        rows = await conn.fetch(SLICE_SQL, lower, upper.at, upper.id, product_id, limit - len(found))
        slices += 1
        found.extend(_bid(row) for row in rows)
        if len(found) >= limit:
            last = found[-1]
            return BidPage(found, Cursor(last.calculated_at, last.id), lower, slices)
        if lower <= start:
            return BidPage(found, None, start, slices)
        # Continue strictly before this slice: everything at or after `lower` has been read.
        upper = Cursor(lower, BEFORE_EVERY_ID)
        if lower <= budget_end:
            return BidPage(found, upper, lower, slices)
        span *= 2
    return BidPage(found, None, lower, slices)
