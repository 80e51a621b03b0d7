"""Benchmark: PostgreSQL bytes per stored bid (heap, each index, WAL), projected at a sustained rate.

    python -m bench.postgres_size [--rows 200000] [--rate 1000] [--database-url URL]

Creates a fresh database (on `--database-url`'s server, else an embedded PostgreSQL: WAL is counted server-wide,
so a shared server's other writers would be counted too), applies the migrations, and stores `--rows` bids with
the pricing agent's own steps (`PricingHandler._price` and `._store`: its batch statement, batches of
PRICING_BATCH_SIZE), as varied as bench.audit_drain's. Prints
the heap, TOAST and index bytes per row, the WAL written per row, and what a day, the 7-day audit window and a
year take at `--rate` bids/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator

import asyncpg
from redis import asyncio as aioredis

from bench.audit_drain import bid_requests
from bench.support import fresh_database
from bidengine.embedded import embedded_postgres
from processors.pricing import PricingHandler
from redis_streams.groups import Batch, StreamEntry
from schema import keys
from schema.database import BIDS_TABLE
from schema.settings import Settings

GIB = 2**30


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    if url:
        yield url
    else:
        with embedded_postgres() as embedded:
            yield embedded


async def store(database_url: str, rows: int, batch: int) -> dict[str, float]:
    """Store `rows` bids through the pricing agent's own pricing and storing steps; bytes per row of each part."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    assert pool is not None
    redis = aioredis.Redis()  # never connected: only the PostgreSQL side of the handler runs
    handler = PricingHandler(pool, redis, reply_stream_maxlen=1)
    requests = bid_requests(rows, 50_000)
    try:
        wal_start = await pool.fetchval("SELECT pg_current_wal_insert_lsn()::text")
        for start in range(0, rows, batch):
            entries = [StreamEntry(f"{i}-0", r.to_fields()) for i, r in enumerate(requests[start : start + batch])]
            priced, dead = handler._price(Batch(entries, keys.BID_REQUESTS, keys.PRICING_GROUP))
            assert not dead
            await handler._store(priced)
        wal = await pool.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), $1::text::pg_lsn)", wal_start)
        await pool.execute(f"VACUUM ANALYZE {BIDS_TABLE}")
        sizes = {
            "heap": await pool.fetchval("SELECT pg_relation_size($1::regclass)", BIDS_TABLE),
            "toast + fsm + vm": await pool.fetchval(
                "SELECT pg_table_size($1::regclass) - pg_relation_size($1::regclass)", BIDS_TABLE
            ),
        }
        for name, size in await pool.fetch(
            "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)"
            " FROM pg_index WHERE indrelid = $1::regclass",
            BIDS_TABLE,
        ):
            sizes[f"index {name}"] = size
        sizes["WAL written"] = float(wal)
        return {name: float(size) / rows for name, size in sizes.items()}
    finally:
        await pool.close()
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rate", type=int, default=1_000, help="sustained bids/s to project to")
    parser.add_argument("--database-url", help="a server to create the database on (default: embedded)")
    args = parser.parse_args()
    batch = Settings().pricing_batch_size
    with server(args.database_url) as url, fresh_database(url) as database_url:
        per_row = asyncio.run(store(database_url, args.rows, batch))
    day = args.rate * 86_400
    print(f"{args.rows:,} bids stored by the pricing agent's steps, batches of {batch:,}:")
    print(f"{'':<44}{'B/row':>8}{'per day':>12}{'7 days':>12}{'per year':>12}")
    stored = 0.0
    for name, size in per_row.items():
        if name != "WAL written":
            stored += size
        print(
            f"{name:<44}{size:>8.1f}{size * day / GIB:>8.1f} GiB{size * day * 7 / GIB:>8.1f} GiB"
            f"{size * day * 365 / GIB:>8.0f} GiB"
        )
    print(
        f"{'table + indexes':<44}{stored:>8.1f}{stored * day / GIB:>8.1f} GiB{stored * day * 7 / GIB:>8.1f} GiB"
        f"{stored * day * 365 / GIB:>8.0f} GiB   at {args.rate:,} bids/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
