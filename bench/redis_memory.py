"""Benchmark: Redis memory per key family, per bid, and projected at a sustained rate with the default settings.

    python -m bench.redis_memory [--bids 100000] [--rate 1000] [--products 50000]

Starts a Redis server of its own (default settings) and writes `--bids` bids the way the roles write them:
the gateway's `bids:requests` entries, the pricing agent's `bids:priced` entries and reply-stream entries
(`schema.events` encoders, one reply entry per agent batch), then runs the real audit recorder
(`processors.audit.audit_batch`, batches of AUDIT_BATCH_SIZE) over the priced bids, and the monitor's real
publisher for competitor prices. It measures `MEMORY USAGE <key> SAMPLES 0` of every key family and prints,
for each, the bytes per bid (or per entry, product, record), what bounds it with the default settings, and
the memory it takes in steady state at `--rate` bids/s, then the total against the 2 GB target.

Bids are spread over `--products` products (the products reviewed in a day: the per-product aggregates grow
with them, not with bids) with CPCs of 0.05-20.00 and target ROAS 50-400, as in bench.audit_drain.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from redis import asyncio as aioredis

from bench.audit_drain import bid_requests, priced_bids
from bench.support import private_redis
from monitor.publisher import publish as publish_competitor_prices
from processors.audit import audit_batch
from processors.audit_store import AuditStore
from redis_streams.groups import StreamEntry
from redis_streams.pipe import Command, execute_packed, xadd
from schema import audit, keys
from schema.competitor import CompetitorPrice
from schema.events import AuditReportSummary, BidReply, DeadLetter, encode_replies
from schema.settings import Settings

TARGET_BYTES = 2 * 10**9
CHUNK = 5_000
GIB = 2**30


@dataclass(frozen=True, slots=True)
class Family:
    key: str
    per: str  # what one unit is: bid, entry, product, record
    unit_bytes: float
    bids_per_unit: float  # how many bids one unit costs (1 for a bid, < 1 for a flag...)
    retention: str
    steady_units: float  # units alive in steady state at the rate
    per_bid_state: bool = True  # False: bounded by a count or by products, whatever the bids

    @property
    def bytes_per_bid(self) -> float:
        return self.unit_bytes / self.bids_per_unit if self.bids_per_unit else 0.0

    @property
    def steady_bytes(self) -> float:
        return self.unit_bytes * self.steady_units


async def memory(redis: aioredis.Redis, *keys_: str) -> int:
    total = 0
    for key in keys_:
        used = await redis.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


async def send(redis: aioredis.Redis, commands: list[Command]) -> None:
    for start in range(0, len(commands), CHUNK):
        await execute_packed(redis, commands[start : start + CHUNK])


async def measure(url: str, args: argparse.Namespace, settings: Settings) -> list[Family]:
    redis = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        return await _measure(redis, args, settings)
    finally:
        await redis.aclose()


async def _measure(redis: aioredis.Redis, args: argparse.Namespace, settings: Settings) -> list[Family]:
    rate, bids = args.rate, args.bids
    gateway = keys.reply_stream(uuid.uuid4().hex)  # as ingest names its stream
    requests = bid_requests(bids, args.products, reply_to=gateway)
    priced = priced_bids(requests)
    families: list[Family] = []

    # The gateway: one entry per accepted bid, kept REQUESTS_RETENTION_S after processing, trimmed every
    # TRIM_INTERVAL_S.
    await send(redis, [xadd(keys.BID_REQUESTS, r.to_fields()) for r in requests])
    per_request = await memory(redis, keys.BID_REQUESTS) / bids
    kept = settings.requests_retention_s + settings.trim_interval_s
    families.append(Family(keys.BID_REQUESTS, "bid", per_request, 1, _after_processing(settings, kept), rate * kept))

    # The pricing agent: one entry per stored bid.
    await send(redis, [xadd(keys.BIDS_PRICED, b.to_fields()) for b in priced])
    per_priced = await memory(redis, keys.BIDS_PRICED) / bids
    kept = settings.priced_retention_s + settings.trim_interval_s
    families.append(Family(keys.BIDS_PRICED, "bid", per_priced, 1, _after_processing(settings, kept), rate * kept))

    # Replies: one entry per agent batch and gateway; the gateway trims what it read about every second. At
    # `rate` a batch holds what arrived while the agent handled the previous one: about a tenth of a second.
    batch = max(1, min(settings.pricing_batch_size, rate // 10))
    replies = [BidReply(r.reply_id, b.bid_id, f"{b.adjusted_cpc}") for r, b in zip(requests, priced, strict=True)]
    await send(
        redis,
        [xadd(gateway, encode_replies(replies[i : i + batch])) for i in range(0, bids, batch)],
    )
    per_reply = await memory(redis, gateway) / bids
    families.append(Family("bids:replies:<gateway>", "bid", per_reply, 1, "read + ~1 s (live gateway)", rate * 2))
    # A gateway that died: its in-flight requests (at most MAX_IN_FLIGHT) may still be answered after it is gone;
    # the stream that re-creates is given REPLY_STREAM_TTL_S again by each late reply, then expires.
    families.append(
        Family(
            "  ... of a dead gateway",
            "bid",
            per_reply,
            1,
            f"<= {settings.max_in_flight:,} replies, {_span(settings.reply_stream_ttl_s)}",
            settings.max_in_flight,
        )
    )

    # The audit agent, for real: seen bitmaps, aggregates, flags.
    store = AuditStore(redis, flags_maxlen=settings.audit_flags_maxlen)
    entries = [StreamEntry(f"{b.bid_id}-0", b.to_fields()) for b in priced]
    flagged = 0
    for start in range(0, bids, settings.audit_batch_size):
        result = await audit_batch(entries[start : start + settings.audit_batch_size], store=store)
        flagged += result.flagged
    seen_keys = [k async for k in redis.scan_iter(match=f"{keys.AUDIT_SEEN_PREFIX}*")]
    per_seen_key = await memory(redis, *seen_keys) / len(seen_keys)
    ranges_alive = math.ceil(rate * audit.KEY_TTL_S / audit.SEEN_KEY_IDS) + 1  # + the range being filled
    families.append(
        Family(
            "audit:seen:{range}",
            "id",
            per_seen_key / audit.SEEN_KEY_IDS,
            1,
            f"{_span(audit.KEY_TTL_S)} after a range's last bid",
            ranges_alive * audit.SEEN_KEY_IDS,
        )
    )
    day = datetime.now(UTC).date()
    products_seen = len({b.product_id for b in priced})
    per_product = await memory(redis, keys.audit_products_key(day)) / products_seen
    days_alive = audit.KEY_TTL_S / 86_400 + 1  # today's hash, and every day written in the last KEY_TTL_S
    products_per_day = min(args.products, rate * 86_400)
    families.append(
        Family(
            "audit:agg:{day}:products",
            "product",
            per_product,
            rate * 86_400 / products_per_day,
            f"{_span(audit.KEY_TTL_S)} after the day; {products_per_day:,} products/day",
            products_per_day * days_alive,
            per_bid_state=False,
        )
    )
    per_day = await memory(redis, keys.audit_day_key(day))
    families.append(
        Family(
            "audit:agg:{day}", "day", per_day, rate * 86_400, _span(audit.KEY_TTL_S), days_alive, per_bid_state=False
        )
    )
    per_flag = await memory(redis, keys.AUDIT_FLAGS) / await redis.xlen(keys.AUDIT_FLAGS)
    families.append(
        Family(
            keys.AUDIT_FLAGS,
            "flag",
            per_flag,
            bids / flagged,
            f"last ~{settings.audit_flags_maxlen:,} (AUDIT_FLAGS_MAXLEN)",
            settings.audit_flags_maxlen,
            per_bid_state=False,
        )
    )

    # The daily budget audit: one summary a day.
    now = datetime.now(UTC)
    summary = AuditReportSummary(now, now - timedelta(days=7), 778_214, 138_502, Decimal("91234.56"), Decimal("1.00"))
    await send(redis, [xadd(keys.AUDIT_REPORTS, summary.to_fields()) for _ in range(1_000)])
    per_report = await memory(redis, keys.AUDIT_REPORTS) / 1_000
    families.append(
        Family(
            keys.AUDIT_REPORTS,
            "report",
            per_report,
            0,
            "last ~1,000",
            settings.audit_reports_maxlen,
            per_bid_state=False,
        )
    )

    # Dead letters: requests an agent could not store; kept until on-call deletes them.
    dead = [
        DeadLetter(f"{i}-0", keys.BID_REQUESTS, "undecodable event: missing field 'reply_to'", r.to_fields())
        for i, r in enumerate(requests[:1_000])
    ]
    await send(redis, [xadd(keys.BIDS_DEAD_LETTER, d.to_fields()) for d in dead])
    per_dead = await memory(redis, keys.BIDS_DEAD_LETTER) / len(dead)
    families.append(Family(keys.BIDS_DEAD_LETTER, "entry", per_dead, 0, "until deleted by hand (0 when healthy)", 0))

    # The competitor monitor, through its own publisher.
    rng = random.Random(3)
    records = [
        CompetitorPrice(
            productId=i,
            productName=f"Product {i} with a name of usual length",
            brand=rng.choice([None, "Brand"]),
            category="smartphones",
            price=rng.randint(100, 200_000) / 100,
            discountPercentage=rng.randint(0, 3_000) / 100,
            rating=rng.randint(100, 500) / 100,
            stock=rng.randint(0, 200),
            timestamp=now,
        )
        for i in range(2_000)
    ]
    await publish_competitor_prices(redis, records, list_max=settings.monitor_list_max, stream_maxlen=10**9)
    per_listed = await memory(redis, keys.COMPETITOR_PRICES_LIST) / await redis.llen(keys.COMPETITOR_PRICES_LIST)
    per_record = await memory(redis, keys.COMPETITOR_PRICES_STREAM) / await redis.xlen(keys.COMPETITOR_PRICES_STREAM)
    families.append(
        Family(keys.COMPETITOR_PRICES_LIST, "record", per_listed, 0, "newest 1,000", settings.monitor_list_max)
    )
    families.append(
        Family(keys.COMPETITOR_PRICES_STREAM, "record", per_record, 0, "last ~100,000", settings.monitor_stream_maxlen)
    )
    return families


def _after_processing(settings: Settings, kept_s: float) -> str:
    return f"{_span(kept_s - settings.trim_interval_s)} after processing (+ {settings.trim_interval_s:g} s to trim)"


def _span(seconds: float) -> str:
    if seconds >= 86_400:
        return f"{seconds / 86_400:g} d"
    if seconds >= 3_600:
        return f"{seconds / 3_600:g} h"
    return f"{seconds:g} s"


def table(families: list[Family], rate: int, empty_bytes: int) -> str:
    lines = [
        f"{'key':<28}{'bytes':>10} {'per':<8}{'B/bid':>8}  {'kept':<44}{'steady state':>14}",
        "-" * 114,
    ]
    for f in families:
        per_bid = f"{f.bytes_per_bid:.3f}" if 0 < f.bytes_per_bid < 1 else f"{f.bytes_per_bid:.0f}"
        if not (f.per_bid_state and f.bids_per_unit):
            per_bid = "-"
        lines.append(
            f"{f.key:<28}{f.unit_bytes:>10,.{3 if f.unit_bytes < 1 else 1}f} {f.per:<8}{per_bid:>8}  "
            f"{f.retention:<44}{f.steady_bytes / 2**20:>11,.1f} MiB"
        )
    total = sum(f.steady_bytes for f in families) + empty_bytes
    lines.append(f"{'Redis itself (empty)':<28}{'':>10} {'':<8}{'':>8}  {'':<44}{empty_bytes / 2**20:>11,.1f} MiB")
    lines.append("-" * 114)
    verdict = "within" if total <= TARGET_BYTES else "OVER"
    lines.append(
        f"total at {rate:,} bids/s with the default settings: {total / GIB:.2f} GiB ({total / 10**9:.2f} GB), "
        f"{verdict} the {TARGET_BYTES / 10**9:.0f} GB target ({total / TARGET_BYTES:.0%})"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=int, default=100_000, help="bids written to measure with")
    parser.add_argument("--rate", type=int, default=1_000, help="sustained bids/s to project to")
    parser.add_argument("--products", type=int, default=50_000, help="products reviewed per day")
    args = parser.parse_args()
    settings = Settings()
    with private_redis() as url:
        empty = asyncio.run(_used_memory(url))
        families = asyncio.run(measure(url, args, settings))
    print(f"measured with {args.bids:,} bids in a Redis of default settings (MEMORY USAGE ... SAMPLES 0)")
    print(table(families, args.rate, empty))
    return 0


async def _used_memory(url: str) -> int:
    redis = aioredis.Redis.from_url(url)
    try:
        return int((await redis.info("memory"))["used_memory"])
    finally:
        await redis.aclose()


if __name__ == "__main__":
    sys.exit(main())
