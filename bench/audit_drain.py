"""Benchmark: the audit agent's own CPU per bid when draining a backlog, next to the pricing agent's, in one run.

    python -m bench.audit_drain [--bids 100000] [--products 10000] [--baseline REV] [--rounds 2] [--skip-pricing]

Starts a Redis server of its own (default settings) and, unless `--skip-pricing`, a fresh database on
DATABASE_URL's server (embedded PostgreSQL when unset). Fills `bids:requests` with varied bids, lets a real
pricing agent (`bidengine pricing-agent`) drain them into PostgreSQL and `bids:priced`, then lets a real audit
agent (`bidengine audit-agent`) drain that same `bids:priced`: once with the code of git revision `REV`
(`--baseline`, exported with `git archive`), once with this tree, each from an empty audit state and a new
`audit` group, alternating the two for `--rounds` rounds. For each drain it prints bids/s, the agent process's
CPU per bid (user + system, from its first read to its group having neither lag nor pending entries) and
Redis's own CPU per bid (INFO cpu), and checks that every bid was counted exactly once; then the medians and
the ratios.

With `--skip-pricing`, `bids:priced` is filled directly with entries shaped as the pricing agent writes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import redis as sync_redis
from redis import asyncio as aioredis

from bench.support import (
    code_at,
    fresh_database,
    postgres_server,
    private_redis,
    process_cpu_seconds,
    redis_cpu_seconds,
)
from legacy import calculate_adjusted_cpc
from redis_streams.pipe import execute_packed, xadd
from schema import keys
from schema.events import BidRequested, PricedBid

ROOT = Path(__file__).resolve().parents[1]
FILL_CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class Drain:
    label: str
    bids: int
    seconds: float
    agent_cpu_s: float
    redis_cpu_s: float

    def line(self) -> str:
        return (
            f"{self.label:<34}{self.bids / self.seconds:>10,.0f} bids/s"
            f"{self.agent_cpu_s / self.bids * 1e6:>10.1f} us/bid agent"
            f"{self.redis_cpu_s / self.bids * 1e6:>10.1f} us/bid Redis"
        )


def bid_requests(
    count: int, products: int, *, reply_to: str = "bids:replies:bench", seed: int = 12
) -> list[BidRequested]:
    """Varied bids: products drawn from `products`, CPCs 0.05-20.00, target ROAS 50-400 (most are flagged)."""
    rng = random.Random(seed)
    return [
        BidRequested(
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            reply_to,
            str(i),
            rng.randint(1, products),
            rng.randint(5, 2000) / 100,
            float(rng.randint(50, 400)),
        )
        for i in range(count)
    ]


def priced_bids(requests: list[BidRequested]) -> list[PricedBid]:
    """What the pricing agent would publish for `requests` (ids 1.., calculated now)."""
    now = datetime.now(UTC)
    return [
        PricedBid(
            bid_id=i,
            request_id=r.request_id,
            product_id=r.product_id,
            current_cpc=Decimal(repr(r.current_cpc)).quantize(Decimal("0.01")),
            target_roas=Decimal(repr(r.target_roas)),
            adjusted_cpc=Decimal(repr(calculate_adjusted_cpc(r.current_cpc, r.target_roas))).quantize(Decimal("0.01")),
            calculated_at=now,
        )
        for i, r in enumerate(requests, start=1)
    ]


async def fill(redis_url: str, stream: str, entries: list[dict[str, str]]) -> None:
    redis = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        commands = [xadd(stream, fields) for fields in entries]
        for start in range(0, len(commands), FILL_CHUNK):
            await execute_packed(redis, commands[start : start + FILL_CHUNK])
    finally:
        await redis.aclose()


def _group(client: sync_redis.Redis, stream: str, group: str) -> dict[str, object] | None:
    try:
        groups = client.xinfo_groups(stream)
    except sync_redis.ResponseError:
        return None
    return next((g for g in groups if g["name"] == group), None)


def drain(
    label: str, command: list[str], *, cwd: Path, env: dict[str, str], redis_url: str, stream: str, group: str
) -> Drain:
    """Run an agent until its group has delivered the whole stream and has nothing pending; measure that span."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    bids = client.xlen(stream)
    last_id = client.xinfo_stream(stream)["last-generated-id"]
    agent = subprocess.Popen(command, cwd=cwd, env=env, stderr=subprocess.DEVNULL)
    try:
        started: tuple[float, float, float] | None = None
        while True:
            time.sleep(0.02)
            if agent.poll() is not None:
                raise RuntimeError(f"{label}: the agent exited with {agent.returncode}")
            info = _group(client, stream, group)
            if info is None:
                continue
            delivered = info["last-delivered-id"]
            if started is None and delivered != "0-0":
                started = (time.perf_counter(), process_cpu_seconds(agent.pid), redis_cpu_seconds(client))
            if started is not None and delivered == last_id and info["pending"] == 0:
                return Drain(
                    label,
                    bids,
                    time.perf_counter() - started[0],
                    process_cpu_seconds(agent.pid) - started[1],
                    redis_cpu_seconds(client) - started[2],
                )
    finally:
        agent.terminate()
        agent.wait()
        client.close()


def reset_audit(redis_url: str) -> None:
    """Forget every audit key and the audit group, so the next audit agent starts from the stream's beginning."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with contextlib.suppress(sync_redis.ResponseError):
            client.xgroup_destroy(keys.BIDS_PRICED, keys.AUDIT_GROUP)
        for key in client.scan_iter(match="audit:*", count=1000):
            client.delete(key)
    finally:
        client.close()


def counted(redis_url: str) -> int:
    """Bids counted by the audit agent, summed over every day hash it wrote."""
    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        day_keys = [k for k in client.scan_iter(match=f"{keys.AUDIT_AGGREGATE_PREFIX}*", count=1000)]
        return sum(int(client.hget(k, "reviewed") or 0) for k in day_keys if not k.endswith(":products"))
    finally:
        client.close()


def agent_env(redis_url: str, database_url: str, code: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "PYTHONPATH")}
    return env | {
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "PYTHONPATH": str(code),
        "AUDIT_REPORT_CRON": "0 0 1 1 *",  # the daily report never runs during a drain
    }


def run(args: argparse.Namespace) -> list[Drain]:
    results: list[Drain] = []
    requests = bid_requests(args.bids, args.products)
    with contextlib.ExitStack() as stack:
        redis_url = stack.enter_context(private_redis())
        if args.skip_pricing:
            database_url = "postgresql://unused@127.0.0.1:1/unused"  # the audit agent needs none to drain
            asyncio.run(fill(redis_url, keys.BIDS_PRICED, [bid.to_fields() for bid in priced_bids(requests)]))
        else:
            database_url = stack.enter_context(fresh_database(stack.enter_context(postgres_server())))
            asyncio.run(fill(redis_url, keys.BID_REQUESTS, [r.to_fields() for r in requests]))
            results.append(
                drain(
                    "pricing agent (this tree)",
                    [sys.executable, "-m", "bidengine.cli", "pricing-agent"],
                    cwd=ROOT,
                    env=agent_env(redis_url, database_url, ROOT),
                    redis_url=redis_url,
                    stream=keys.BID_REQUESTS,
                    group=keys.PRICING_GROUP,
                )
            )
        variants: list[tuple[str, Path]] = []
        if args.baseline:
            variants.append((f"audit agent ({args.baseline})", stack.enter_context(code_at(args.baseline))))
        variants.append(("audit agent (this tree)", ROOT))
        for round_ in range(args.rounds):
            # Alternate the order (A B, B A, ...) so a machine getting busier favours neither version.
            for label, code in variants if round_ % 2 == 0 else variants[::-1]:
                reset_audit(redis_url)
                result = drain(
                    label,
                    [sys.executable, "-m", "bidengine.cli", "audit-agent"],
                    cwd=code,
                    env=agent_env(redis_url, database_url, code),
                    redis_url=redis_url,
                    stream=keys.BIDS_PRICED,
                    group=keys.AUDIT_GROUP,
                )
                total = counted(redis_url)
                if total != result.bids:
                    raise RuntimeError(f"{label}: {total:,} bids counted for {result.bids:,} priced")
                print(f"round {round_ + 1}: {result.line()}", flush=True)
                results.append(result)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--baseline", metavar="REV", help="also drain with the audit agent of this git revision")
    parser.add_argument("--skip-pricing", action="store_true", help="fill bids:priced directly (no PostgreSQL)")
    parser.add_argument("--rounds", type=int, default=2, help="drains of each audit version, alternating")
    args = parser.parse_args()
    results = run(args)
    print(f"drained {args.bids:,} bids ({args.products:,} products), each agent alone on a Redis of its own")
    print(f"medians over {args.rounds} round(s):")
    medians = {}
    for label in dict.fromkeys(r.label for r in results):
        runs = [r for r in results if r.label == label]
        medians[label] = Drain(
            label,
            runs[0].bids,
            statistics.median(r.seconds for r in runs),
            statistics.median(r.agent_cpu_s for r in runs),
            statistics.median(r.redis_cpu_s for r in runs),
        )
        print(medians[label].line())
    audits = [m for label, m in medians.items() if label.startswith("audit")]
    if len(audits) == 2:
        old, new = audits
        print(
            f"audit agent, this tree / {args.baseline}: CPU per bid x{new.agent_cpu_s / old.agent_cpu_s:.2f}, "
            f"Redis CPU per bid x{new.redis_cpu_s / old.redis_cpu_s:.2f}, bids/s x{old.seconds / new.seconds:.2f}"
        )
    pricing = medians.get("pricing agent (this tree)")
    if pricing is not None:
        print(
            f"audit agent (this tree) / pricing agent: CPU per bid x{audits[-1].agent_cpu_s / pricing.agent_cpu_s:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
