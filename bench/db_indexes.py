"""Compare index designs for the 7-day audit queries on a seeded `bidding_productbid` (see docs/db-performance.md).

For each candidate: drop every non-constraint index, build the candidate, ANALYZE, then run each query
`--runs` times under `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` after one warm-up run, with the default
work_mem and with a per-session work_mem, and print the median execution time, the plan shape (scan, sort
method, temp blocks) and the index size. Run it against a scratch database, never a live one:

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/bidengine_perf \\
        .venv/bin/python -m bench.db_indexes --candidates none,legacy,btree,brin,partitioned
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg

from processors.audit_report import FLAGGED_LINES_SQL, SUMMARY_SQL
from schema.database import BIDS_TABLE

PROBLEM_SQL = f"SELECT * FROM {BIDS_TABLE} WHERE calculated_at > now() - interval '7 days' ORDER BY product_id"
PART_TABLE = "bench_bids_partitioned"
_WEEK = timedelta(days=7)

CANDIDATES: dict[str, list[str]] = {
    "none": [],
    "legacy": [f"CREATE INDEX bench_legacy ON {BIDS_TABLE} (calculated_at DESC, product_id)"],
    "btree": [f"CREATE INDEX bench_btree ON {BIDS_TABLE} (calculated_at)"],
    "brin": [f"CREATE INDEX bench_brin ON {BIDS_TABLE} USING brin (calculated_at) WITH (pages_per_range = 32)"],
    "brin128": [f"CREATE INDEX bench_brin128 ON {BIDS_TABLE} USING brin (calculated_at)"],
    "product": [f"CREATE INDEX bench_product ON {BIDS_TABLE} (product_id, calculated_at)"],
    # Weekly range partitions, each with a BRIN; built as a copy of the table (measured separately).
    "partitioned": [],
}


@dataclass
class Measurement:
    candidate: str
    query: str
    work_mem: str
    times_ms: list[float] = field(default_factory=list)
    plan: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)


def _walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _walk(child)


def plan_shape(plan: dict[str, Any]) -> str:
    parts = []
    for node in _walk(plan["Plan"]):
        kind = node["Node Type"]
        if "Index Name" in node:
            kind += f"({node['Index Name']})"
        elif "Relation Name" in node and kind.endswith("Scan"):
            kind += f"({node['Relation Name']})"
        if kind == "Sort":
            method, used = node.get("Sort Method", "?"), node.get("Sort Space Used", "?")
            kind += f"[{method} {used}kB {node.get('Sort Space Type', '')}]"
        workers = node.get("Workers Launched")
        if workers:
            kind += f"[{workers}w]"
        parts.append(kind)
    root = plan["Plan"]
    temp = root.get("Temp Read Blocks", 0) + root.get("Temp Written Blocks", 0)
    shared = root.get("Shared Hit Blocks", 0) + root.get("Shared Read Blocks", 0)
    return f"{' > '.join(parts)}; buffers={shared} temp={temp}"


def explain(conn: psycopg.Connection[Any], sql: str) -> tuple[float, dict[str, Any]]:
    # The audit's queries take their window's start as a parameter (processors/audit_report.py).
    params = conn.execute("SELECT now() - interval '7 days'").fetchone() if "$1" in sql else None
    row = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql.replace('$1', '%s')}", params).fetchone()
    assert row is not None
    doc = row[0] if isinstance(row[0], list) else json.loads(row[0])
    plan: dict[str, Any] = doc[0]
    return float(plan["Execution Time"]), plan


def drop_indexes(conn: psycopg.Connection[Any]) -> None:
    rows = conn.execute(
        """
        SELECT i.indexrelid::regclass::text FROM pg_index i
        WHERE i.indrelid = %s::regclass
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        (BIDS_TABLE,),
    ).fetchall()
    for (name,) in rows:
        conn.execute(f"DROP INDEX {name}")


def build_partitioned(conn: psycopg.Connection[Any]) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {PART_TABLE}")
    conn.execute(f"CREATE TABLE {PART_TABLE} (LIKE {BIDS_TABLE} INCLUDING DEFAULTS) PARTITION BY RANGE (calculated_at)")
    bounds = conn.execute(
        f"SELECT date_trunc('week', min(calculated_at)), max(calculated_at) + interval '1 week' FROM {BIDS_TABLE}"
    ).fetchone()
    assert bounds is not None
    start, end = bounds
    index = 0
    while start < end:
        conn.execute(
            f"CREATE TABLE {PART_TABLE}_{index} PARTITION OF {PART_TABLE} "
            f"FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + _WEEK).isoformat()}')"
        )
        start += _WEEK
        index += 1
    conn.execute(f"INSERT INTO {PART_TABLE} SELECT * FROM {BIDS_TABLE} ORDER BY id")
    conn.execute(f"CREATE INDEX ON {PART_TABLE} USING brin (calculated_at) WITH (pages_per_range = 32)")
    conn.execute(f"VACUUM ANALYZE {PART_TABLE}")


def index_bytes(conn: psycopg.Connection[Any], table: str) -> int:
    """Bytes of the non-constraint indexes on the table, or on all its partitions."""
    row = conn.execute(
        """
        SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0)
        FROM pg_index i
        WHERE (i.indrelid = %s::regclass OR i.indrelid IN (SELECT relid FROM pg_partition_tree(%s::regclass)))
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
        """,
        (table, table),
    ).fetchone()
    assert row is not None
    return int(row[0])


def measure(
    conn: psycopg.Connection[Any], candidate: str, queries: dict[str, str], work_mems: list[str], runs: int
) -> list[Measurement]:
    results = []
    for work_mem in work_mems:
        conn.execute(f"SET work_mem = '{work_mem}'")
        for name, sql in queries.items():
            m = Measurement(candidate, name, work_mem)
            explain(conn, sql)  # warm-up: the same cache state for every candidate
            for _ in range(runs):
                elapsed, plan = explain(conn, sql)
                m.times_ms.append(elapsed)
                m.plan = plan_shape(plan)
            results.append(m)
            print(
                f"{candidate:<12}{name:<9}work_mem={work_mem:<6} median {m.median_ms:8.1f} ms "
                f"runs {[round(t, 1) for t in m.times_ms]}  {m.plan}",
                flush=True,
            )
    conn.execute("RESET work_mem")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--candidates", default="none,legacy,btree,brin,brin128,product,partitioned")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work-mem", default="4MB,64MB", help="session work_mem values to try")
    parser.add_argument("--queries", default="problem,summary,flagged")
    parser.add_argument("--keep", default="", help="candidate to leave in place at the end")
    ns = parser.parse_args()
    if not ns.database_url or ns.database_url.rstrip("/").endswith(("/test", "/postgres")):
        raise SystemExit("point --database-url at a scratch database (e.g. bidengine_perf)")

    with psycopg.connect(ns.database_url, autocommit=True) as conn:
        rows, heap, correlation = conn.execute(
            f"""
            SELECT (SELECT count(*) FROM {BIDS_TABLE}), pg_relation_size('{BIDS_TABLE}'),
                   (SELECT correlation FROM pg_stats WHERE tablename = '{BIDS_TABLE}' AND attname = 'calculated_at')
            """
        ).fetchone() or (0, 0, None)
        in_window = conn.execute(
            f"SELECT count(*) FROM {BIDS_TABLE} WHERE calculated_at > now() - interval '7 days'"
        ).fetchone()
        print(
            f"table: {rows:,} rows, heap {heap / 2**20:.0f} MB, calculated_at correlation {correlation}, "
            f"{in_window[0] if in_window else 0:,} rows in the 7-day window",
            flush=True,
        )
        all_queries = {"problem": PROBLEM_SQL, "summary": SUMMARY_SQL, "flagged": FLAGGED_LINES_SQL}
        queries = {name: all_queries[name] for name in ns.queries.split(",")}
        work_mems = ns.work_mem.split(",")
        for candidate in ns.candidates.split(","):
            drop_indexes(conn)
            started = time.perf_counter()
            if candidate == "partitioned":
                build_partitioned(conn)
                size = index_bytes(conn, PART_TABLE)
                part_queries = {k: v.replace(BIDS_TABLE, PART_TABLE) for k, v in queries.items()}
                print(f"{candidate:<12}built in {time.perf_counter() - started:.1f}s, index size {size:,} bytes")
                measure(conn, candidate, part_queries, work_mems, ns.runs)
                conn.execute(f"DROP TABLE {PART_TABLE}")
                continue
            for statement in CANDIDATES[candidate]:
                conn.execute(statement)
            conn.execute(f"ANALYZE {BIDS_TABLE}")
            size = index_bytes(conn, BIDS_TABLE)
            print(
                f"{candidate:<12}built in {time.perf_counter() - started:.1f}s, index size {size:,} bytes", flush=True
            )
            measure(conn, candidate, queries, work_mems, ns.runs)
        drop_indexes(conn)
        if ns.keep:
            for statement in CANDIDATES[ns.keep]:
                conn.execute(statement)
            conn.execute(f"ANALYZE {BIDS_TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
