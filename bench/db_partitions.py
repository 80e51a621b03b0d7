"""The bids table, legacy (unpartitioned + BRIN) vs day partitions, measured in the same run, alternating.

Queries (see docs/db-performance.md): the 7-day "problem" query as written (`now() - interval '7 days'`), the
same with its bound as a parameter (planned per execution: what a reporting tool binding the date gets), and
the daily audit's summary and flagged queries. Each: one warm-up, then the median "Execution Time" of `--runs`
`EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)`, per round, designs alternating within each round. Also the sizes,
and with `--audit` the daily audit end to end (`bidengine audit-report`: wall time and peak RSS).

    .venv/bin/python -m bench.db_partitions --legacy-url postgresql://.../bidengine_db10 \\
        --partitioned-url postgresql://.../bidengine_db10p [--larger-url postgresql://.../bidengine_db50p] \\
        --rounds 3 --audit

`--larger-url`: a larger database in the partitioned layout (50M rows over 450 days), measured in the same
rounds; its ratio to `--partitioned-url` says whether a query's cost follows the window or the table.

`--insert N`: the pricing agent's store statement, batches of 1,000 (the real SQL of each layout), N batches
per design in alternating rounds of 10, on two fresh databases; time per batch and the server backend's CPU
per batch (read from /proc: the server must run on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from bench.legacy_layout import LEGACY_STORE_BATCH_SQL, legacy_database
from bench.support import fresh_database, private_redis, process_cpu_seconds
from processors.audit_report import FLAGGED_LINES_SQL, REPORT_PARALLEL_SETUP_COST, REPORT_WORK_MEM, SUMMARY_SQL
from processors.pricing import STORE_BATCH_SQL
from schema.database import BIDS_TABLE, REQUEST_LEDGER
from schema.idempotency import request_fingerprint

PROBLEM_SQL = f"SELECT * FROM {BIDS_TABLE} WHERE calculated_at > now() - interval '7 days' ORDER BY product_id"
BOUND_PROBLEM_SQL = f"SELECT * FROM {BIDS_TABLE} WHERE calculated_at > $1 ORDER BY product_id"
QUERIES = {
    "problem": PROBLEM_SQL,
    "problem-bound": BOUND_PROBLEM_SQL,
    "summary": SUMMARY_SQL,
    "flagged": FLAGGED_LINES_SQL,
}


@dataclass
class Series:
    times_ms: list[float] = field(default_factory=list)
    planning_ms: list[float] = field(default_factory=list)
    plan: str = ""


def _walk(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out.extend(_walk(child))
    return out


def plan_shape(plan: dict[str, Any]) -> str:
    nodes = _walk(plan)
    scans = [n for n in nodes if "Relation Name" in n]
    kinds = sorted({n["Node Type"] for n in scans})
    removed = sum(n.get("Subplans Removed", 0) for n in nodes)
    sorts = [n for n in nodes if n["Node Type"] == "Sort" and n.get("Actual Rows", 0) > 0]
    sort = f"sort {sorts[0].get('Sort Method', '?')} {sorts[0].get('Sort Space Used', '?')}kB" if sorts else "no sort"
    buffers = plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)
    return (
        f"{plan['Node Type']}; {len(scans)} scans ({', '.join(kinds)}), {removed} partitions pruned; {sort};"
        f" {buffers} buffers"
    )


async def explain(conn: asyncpg.Connection, name: str) -> tuple[float, float, dict[str, Any]]:
    sql = QUERIES[name]
    args: list[Any] = []
    if "$1" in sql:
        args.append(await conn.fetchval("SELECT now() - interval '7 days'"))
    raw = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args)
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    return float(doc["Execution Time"]), float(doc["Planning Time"]), doc["Plan"]


async def measure(url: str, name: str, runs: int, series: Series) -> None:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            if name in ("summary", "flagged"):  # as the daily audit sets them for its own transaction
                await conn.execute(f"SET LOCAL work_mem = '{REPORT_WORK_MEM}'")
                await conn.execute(f"SET LOCAL parallel_setup_cost = {REPORT_PARALLEL_SETUP_COST}")
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            await explain(conn, name)  # warm-up
            times, planning = [], []
            for _ in range(runs):
                execution_ms, planning_ms, plan = await explain(conn, name)
                times.append(execution_ms)
                planning.append(planning_ms)
        series.times_ms.append(statistics.median(times))
        series.planning_ms.append(statistics.median(planning))
        series.plan = plan_shape(plan)
    finally:
        await conn.close()


async def sizes(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch(
            f"SELECT relid FROM pg_partition_tree('{BIDS_TABLE}') UNION"
            f" SELECT '{BIDS_TABLE}'::regclass UNION"
            f" SELECT to_regclass('{REQUEST_LEDGER}') WHERE to_regclass('{REQUEST_LEDGER}') IS NOT NULL"
        )
        heap = index = 0
        for row in tables:
            heap += await conn.fetchval("SELECT pg_table_size($1)", row["relid"])
            index += await conn.fetchval("SELECT pg_indexes_size($1)", row["relid"])
        ledger = await conn.fetchval(f"SELECT pg_total_relation_size(to_regclass('{REQUEST_LEDGER}'))")
        rows = await conn.fetchval(f"SELECT reltuples::bigint FROM pg_class WHERE oid = '{BIDS_TABLE}'::regclass")
        parts = await conn.fetchval(f"SELECT count(*) - 1 FROM pg_partition_tree('{BIDS_TABLE}')")
        return (
            f"heap {heap / 2**20:,.0f} MB, indexes {index / 2**20:,.0f} MB (ledger total"
            f" {(ledger or 0) / 2**20:,.0f} MB), partitions {parts}, reltuples {rows:,}"
        )
    finally:
        await conn.close()


def audit(url: str, redis_url: str) -> tuple[float, int, int]:
    env = dict(os.environ, DATABASE_URL=url, REDIS_URL=redis_url, LOG_LEVEL="WARNING")
    started = time.perf_counter()
    done = subprocess.run(
        ["/usr/bin/time", "-f", "maxrss=%M", sys.executable, "-m", "bidengine.cli", "audit-report"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - started
    rss_kb = int(done.stderr.strip().rsplit("maxrss=", 1)[1].split()[0])
    lines = sum(1 for line in done.stdout.splitlines() if line.startswith("bid="))
    return wall, rss_kb, lines


async def query_rounds(ns: argparse.Namespace) -> None:
    designs = {"legacy": ns.legacy_url, "partitioned": ns.partitioned_url}
    if ns.larger_url:
        designs["larger"] = ns.larger_url
    for design, url in designs.items():
        print(f"{design}: {await sizes(url)}")
    results: dict[tuple[str, str], Series] = {}
    for round_no in range(ns.rounds):
        order = list(designs.items()) if round_no % 2 == 0 else list(designs.items())[::-1]
        for name in ns.queries.split(","):
            for design, url in order:
                await measure(url, name, ns.runs, results.setdefault((design, name), Series()))
        print(f"round {round_no + 1} done (load average {os.getloadavg()[0]:.1f})", flush=True)
    print(f"\nmedian of {ns.runs} EXPLAIN ANALYZE per round, ms (rounds alternate the designs)")
    for name in ns.queries.split(","):
        legacy, part = results[("legacy", name)], results[("partitioned", name)]
        ratio = statistics.median(part.times_ms) / statistics.median(legacy.times_ms)
        print(f"{name:14} legacy {fmt(legacy.times_ms)}  partitioned {fmt(part.times_ms)}  ratio {ratio:.2f}x")
        print(f"{'':14} planning: legacy {fmt(legacy.planning_ms)}  partitioned {fmt(part.planning_ms)}")
        print(f"{'':14} legacy plan: {legacy.plan}")
        print(f"{'':14} partitioned plan: {part.plan}")
        if ns.larger_url:
            larger = results[("larger", name)]
            growth = statistics.median(larger.times_ms) / statistics.median(part.times_ms)
            print(f"{'':14} larger {fmt(larger.times_ms)}  ratio to partitioned {growth:.2f}x")
            print(f"{'':14} planning: larger {fmt(larger.planning_ms)}; plan: {larger.plan}")
    if ns.audit:
        with private_redis() as redis_url:
            for round_no in range(ns.rounds):
                for design, url in designs.items() if round_no % 2 == 0 else list(designs.items())[::-1]:
                    wall, rss_kb, lines = audit(url, redis_url)
                    print(f"audit-report {design:12} wall {wall:.2f} s  peak RSS {rss_kb / 1024:.1f} MB  {lines} lines")


def fmt(values: list[float]) -> str:
    return "/".join(f"{v:.0f}" for v in values) + f" (median {statistics.median(values):.0f})"


def _batch(size: int) -> list[list[Any]]:
    ids = [uuid.uuid4() for _ in range(size)]
    products = [1 + (i * 7919) % 50_000 for i in range(size)]
    cpcs = [1.0 + (i % 300) / 100 for i in range(size)]
    roas = [100.0] * size
    adjusted = cpcs
    fingerprints = [request_fingerprint(p, c, r) for p, c, r in zip(products, cpcs, roas, strict=True)]
    return [ids, products, cpcs, roas, adjusted, fingerprints]


async def insert_rounds(ns: argparse.Namespace) -> None:
    with legacy_database(ns.server_url) as legacy_url, fresh_database(ns.server_url) as new_url:
        designs = {"legacy": (legacy_url, LEGACY_STORE_BATCH_SQL), "partitioned": (new_url, STORE_BATCH_SQL)}
        conns = {d: await asyncpg.connect(url) for d, (url, _) in designs.items()}
        per_batch: dict[str, list[tuple[float, float]]] = {d: [] for d in designs}
        try:
            for round_no in range(ns.insert // 10):
                order = list(designs) if round_no % 2 == 0 else list(designs)[::-1]
                for design in order:
                    conn, sql = conns[design], designs[design][1]
                    pid = conn.get_server_pid()
                    for _ in range(10):
                        args = _batch(1000)
                        cpu0, t0 = process_cpu_seconds(pid), time.perf_counter()
                        rows = await conn.fetch(sql, *args)
                        per_batch[design].append((time.perf_counter() - t0, process_cpu_seconds(pid) - cpu0))
                        assert len(rows) == 1000
        finally:
            for conn in conns.values():
                await conn.close()
    print(f"store statement, batches of 1,000, {ns.insert} batches per design, alternating rounds of 10")
    medians = {}
    for design, samples in per_batch.items():
        walls = [w for w, _ in samples[5:]]  # the first batches warm caches and plans
        cpu = sum(c for _, c in samples[5:]) / len(samples[5:])
        medians[design] = statistics.median(walls)
        print(f"{design:12} median {medians[design] * 1000:.1f} ms/batch, mean backend CPU {cpu * 1000:.1f} ms/batch")
    print(f"ratio partitioned/legacy (median wall per batch): {medians['partitioned'] / medians['legacy']:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--legacy-url")
    parser.add_argument("--partitioned-url")
    parser.add_argument(
        "--larger-url", help="a larger database in the partitioned layout (50M rows): its ratio to --partitioned-url"
    )
    parser.add_argument("--queries", default="problem,problem-bound,summary,flagged")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--audit", action="store_true")
    parser.add_argument("--insert", type=int, default=0, help="measure the store statement instead (N batches)")
    parser.add_argument(
        "--server-url", default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    )
    ns = parser.parse_args()
    if ns.insert:
        asyncio.run(insert_rounds(ns))
    else:
        if not (ns.legacy_url and ns.partitioned_url):
            parser.error("--legacy-url and --partitioned-url are needed (or --insert N)")
        asyncio.run(query_rounds(ns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
