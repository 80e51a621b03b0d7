"""Seed `bidding_productbid` with realistic volume, fast: COPY from a generator, in time order.

Rows are written oldest first, the way production inserts arrive, so the physical order of the heap follows
`calculated_at` (the property a BRIN index relies on). Products are skewed (a few are bid on very often, most
rarely), every `request_id` is a fresh UUID, and `adjusted_cpc` comes from the legacy formula.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import asyncpg

from legacy import calculate_adjusted_cpc
from processors.bid_maintenance import MaintenanceReport, ensure_partitions, maintain
from schema.database import BIDS_TABLE, REQUEST_LEDGER
from schema.settings import Settings

DEFAULT_ROWS = 1_000_000
DEFAULT_DAYS = 90
DEFAULT_PRODUCTS = 50_000
CHUNK_ROWS = 20_000
CENT = Decimal("0.01")
COLUMNS = ("product_id", "current_cpc", "target_roas", "adjusted_cpc", "calculated_at", "request_id")


def legacy_adjusted_cpc(current_cpc: Decimal, target_roas: Decimal) -> Decimal:
    """The adjusted CPC the pricing agent would store: the legacy port on the floats PHP took, in cents."""
    value = calculate_adjusted_cpc(float(current_cpc), float(target_roas))
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


class _Progress:
    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0

    def update(self, done: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self.last < 0.5):
            return
        self.last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        width = 30
        filled = int(width * done / self.total) if self.total else width
        bar = "#" * filled + "-" * (width - filled)
        sys.stderr.write(f"\rseed [{bar}] {done:>11,}/{self.total:,} rows  {rate:>9,.0f} rows/s  {elapsed:6.1f}s")
        if force:
            sys.stderr.write("\n")
        sys.stderr.flush()


def _product_weights(products: int) -> list[float]:
    # Zipf-like: product k is bid on about 1/k^0.8 as often as the most popular one.
    return [1.0 / (k**0.8) for k in range(1, products + 1)]


async def _chunks(
    rows: int,
    *,
    days: int,
    products: int,
    end: datetime,
    rng: random.Random,
    progress: _Progress,
) -> AsyncIterator[bytes]:
    start = end - timedelta(days=days)
    span_us = days * 86_400_000_000
    step_us = span_us / rows
    product_ids = list(range(1, products + 1))
    cum_weights: list[float] = []
    total = 0.0
    for weight in _product_weights(products):
        total += weight
        cum_weights.append(total)
    # Each product keeps a base CPC, so the same product is bid on at similar prices.
    base_cents = [rng.randint(5, 500) for _ in range(products + 1)]
    done = 0
    while done < rows:
        n = min(CHUNK_ROWS, rows - done)
        chosen = rng.choices(product_ids, cum_weights=cum_weights, k=n)
        lines: list[str] = []
        for i, product in enumerate(chosen):
            offset_us = int((done + i) * step_us)
            at = start + timedelta(microseconds=offset_us)
            cents = max(1, int(base_cents[product] * rng.uniform(0.8, 1.2)))
            current = Decimal(cents).scaleb(-2)
            # Target ROAS in percent around 100 (the legacy formula scales the CPC by roas / 100).
            roas = Decimal(round(rng.lognormvariate(4.605, 0.15), 4)).quantize(Decimal("0.0001"))
            if roas <= 0:
                roas = Decimal("0.0001")
            adjusted = legacy_adjusted_cpc(current, roas)
            lines.append(f"{product}\t{current}\t{roas}\t{adjusted}\t{at.isoformat()}\t{uuid.uuid4()}\n")
        done += n
        progress.update(done)
        yield "".join(lines).encode()
        # Let the COPY writer run between chunks instead of generating everything up front.
        await asyncio.sleep(0)


async def seed(
    database_url: str,
    rows: int = DEFAULT_ROWS,
    days: int = DEFAULT_DAYS,
    *,
    products: int = DEFAULT_PRODUCTS,
    random_seed: int | None = None,
    end: datetime | None = None,
    progress: bool = True,
    analyze: bool = True,
) -> None:
    """Append `rows` bids spread evenly over the `days` before `end` (now)."""
    if rows <= 0 or days <= 0 or products <= 0:
        raise ValueError("rows, days and products must be positive")
    rng = random.Random(random_seed)
    bar = _Progress(rows, progress)
    until = end or datetime.now(UTC)
    conn = await asyncpg.connect(database_url)
    try:
        partitioned = await conn.fetchval(f"SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('{BIDS_TABLE}')")
        if partitioned:
            # Every seeded day gets its partition first (else its rows would land in DEFAULT).
            first = (until - timedelta(days=days)).astimezone(UTC).date()
            await ensure_partitions(conn, first, until.astimezone(UTC).date(), 1000, MaintenanceReport(), now=until)
        await conn.copy_to_table(
            BIDS_TABLE,
            source=_chunks(
                rows,
                days=days,
                products=products,
                end=until,
                rng=rng,
                progress=bar,
            ),
            columns=list(COLUMNS),
            format="text",
        )
        bar.update(rows, force=True)
        if partitioned:
            # The COPY's statement trigger recorded the request ids in the ledger; closed days are reordered.
            await maintain(conn, Settings(bids_maintenance_lock_timeout_ms=1000), now=lambda: until)
        if analyze:
            await conn.execute(f"ANALYZE {BIDS_TABLE}" + (f", {REQUEST_LEDGER}" if partitioned else ""))
    finally:
        await conn.close()


def main(database_url: str, rows: int, days: int, products: int = DEFAULT_PRODUCTS) -> int:
    asyncio.run(seed(database_url, rows, days, products=products))
    print(f"seeded {rows:,} rows over {days} days ({products:,} products)")
    return 0
