"""Benchmark: how fast one pricing agent drains a backlog (large batches, no HTTP in the way).

    REDIS_URL=... DATABASE_URL=... python -m bench.agent_drain [--bids 150000] [--baseline DIR [--rounds 2]]

Fills `bids:requests` on the given Redis database (flushed first!) with valid bid events, starts a real
pricing agent, and times from its first read until its group has neither lag nor pending entries. Prints
bids/s and the agent's CPU seconds per bid (measured from the agent's first read, so startup is excluded).

With `--baseline DIR` (a checkout of the version to compare with, e.g. `git archive main | tar -x -C DIR`),
that version's agent drains the same backlog too, in the same run, on the same database: rounds alternate
baseline, current, current, baseline, ... so a table that grows from run to run favours neither. It prints
each run, the medians and the ratios. The database must have the current version's migrations applied.

    ... python -m bench.agent_drain --instructions [--bids 2000] [--baseline DIR]

counts instructions instead (valgrind's callgrind), which a loaded machine does not move: the agent drains
`--bids` and then twice as many under valgrind, and the difference in instructions divided by the difference
in bids is the cost of one bid with start-up and shutdown cancelled out. Set PRICING_BATCH_SIZE to the batch
size to study (a live gateway at 50 connections gives batches of ~10-50; a backlog gives full batches).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
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


async def drain(bids: int, code_dir: str | None = None, *, wrapper: tuple[str, ...] = ()) -> tuple[float, float]:
    redis = aioredis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
    await redis.flushdb()
    commands = [
        xadd(keys.BID_REQUESTS, BidRequested(str(uuid.uuid4()), "bench:replies", str(i), 7, 1.5, 150.0).to_fields())
        for i in range(bids)
    ]
    for start in range(0, bids, 5000):
        await execute_packed(redis, commands[start : start + 5000])
    # `python -m` puts the working directory first on sys.path: the agent runs the code found there.
    env = {**os.environ, "PYTHONPATH": code_dir} if code_dir else None
    agent = subprocess.Popen(  # noqa: ASYNC220  # started once, before the timed part
        [*wrapper, sys.executable, "-m", "bidengine.cli", "pricing-agent"],
        stderr=subprocess.PIPE if wrapper else subprocess.DEVNULL,
        cwd=code_dir,
        env=env,
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
        if wrapper:
            _, stderr = agent.communicate()  # after the measured part
            collected = re.search(rb"Collected : (\d+)", stderr)
            instructions.append(int(collected.group(1)) if collected else -1)
        agent.wait()
        await redis.aclose()


instructions: list[int] = []  # what callgrind counted, one per run under valgrind


def count_instructions(bids: int, code_dir: str | None) -> float:
    """Instructions per bid of the agent draining `bids` more, start-up and shutdown cancelled out."""
    wrapper = ("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null")
    counts = []
    for backlog in (bids, 2 * bids):
        instructions.clear()
        asyncio.run(drain(backlog, code_dir, wrapper=wrapper))
        counts.append(instructions[0])
    return (counts[1] - counts[0]) / bids


def report(label: str, bids: int, seconds: float, cpu: float) -> None:
    print(
        f"{label}: drained {bids:,} bids in {seconds:.2f} s: {bids / seconds:,.0f} bids/s, "
        f"agent CPU {cpu / bids * 1e6:.1f} us/bid (batches of up to PRICING_BATCH_SIZE)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bids", type=int, default=150_000)
    parser.add_argument("--baseline", metavar="DIR", help="a checkout of the version to compare with")
    parser.add_argument("--rounds", type=int, default=2, help="with --baseline: runs of each version")
    parser.add_argument("--instructions", action="store_true", help="count instructions per bid (valgrind)")
    args = parser.parse_args()
    if args.instructions:
        current = count_instructions(args.bids, None)
        print(f"current: {current:,.0f} instructions per bid", flush=True)
        if args.baseline:
            baseline = count_instructions(args.bids, args.baseline)
            print(f"baseline: {baseline:,.0f} instructions per bid; current / baseline x{current / baseline:.3f}")
        return 0
    if not args.baseline:
        report("current", args.bids, *asyncio.run(drain(args.bids)))
        return 0
    runs: dict[str, list[tuple[float, float]]] = {"baseline": [], "current": []}
    for round_ in range(args.rounds):
        order = ("baseline", "current") if round_ % 2 == 0 else ("current", "baseline")
        for label in order:
            seconds, cpu = asyncio.run(drain(args.bids, args.baseline if label == "baseline" else None))
            runs[label].append((seconds, cpu))
            report(f"{label} (round {round_ + 1})", args.bids, seconds, cpu)
    medians = {
        label: (statistics.median(s for s, _ in results), statistics.median(c for _, c in results))
        for label, results in runs.items()
    }
    for label, (seconds, cpu) in medians.items():
        report(f"{label} median", args.bids, seconds, cpu)
    (base_s, base_cpu), (cur_s, cur_cpu) = medians["baseline"], medians["current"]
    print(f"current / baseline: bids/s x{base_s / cur_s:.3f}, agent CPU per bid x{cur_cpu / base_cpu:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
