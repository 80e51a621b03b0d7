"""Benchmark: how fast one pricing agent drains a backlog (large batches, no HTTP in the way).

    REDIS_URL=... DATABASE_URL=... python -m bench.agent_drain [--bids 150000]

Fills `bids:requests` on the given Redis database (flushed first!) with valid bid events, starts a real
pricing agent, and times from its first read until its group has neither lag nor pending entries. Prints
bids/s and the agent's CPU seconds per bid (process startup subtracted by measuring an empty run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid

from redis import asyncio as aioredis

from redis_streams.pipe import execute_packed, xadd
from schema import keys
from schema.events import BidRequested


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def drain(bids: int) -> tuple[float, float]:
    redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    await redis.flushdb()
    commands = [
        xadd(keys.BID_REQUESTS, BidRequested(str(uuid.uuid4()), "bench:replies", str(i), 7, 1.5, 150.0).to_fields())
        for i in range(bids)
    ]
    for start in range(0, bids, 5000):
        await execute_packed(redis, commands[start : start + 5000])
    agent = subprocess.Popen(  # noqa: ASYNC220  # started once, before the timed part
        [sys.executable, "-m", "bidengine.cli", "pricing-agent"], stderr=subprocess.DEVNULL
    )
    started: float | None = None
    cpu_at_start = 0.0
    try:
        while True:
            await asyncio.sleep(0.02)
            groups = await redis.xinfo_groups(keys.BID_REQUESTS)
            group = next((g for g in groups if g["name"] == keys.PRICING_GROUP), None)
            if group is None:
                continue
            if started is None and bids and int(group["entries-read"] or 0) > 0:
                started, cpu_at_start = time.perf_counter(), cpu_seconds(agent.pid)
            if started is not None and group["lag"] == 0 and group["pending"] == 0:
                return time.perf_counter() - started, cpu_seconds(agent.pid) - cpu_at_start
    finally:
        agent.terminate()
        agent.wait()
        await redis.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=int, default=150_000)
    args = parser.parse_args()
    seconds, cpu = asyncio.run(drain(args.bids))
    print(
        f"drained {args.bids:,} bids in {seconds:.2f} s: {args.bids / seconds:,.0f} bids/s, "
        f"agent CPU {cpu / args.bids * 1e6:.0f} us/bid (batches of up to PRICING_BATCH_SIZE)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
