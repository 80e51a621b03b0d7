"""Benchmark: the bid pipeline against a one-INSERT-per-request baseline, driven by wrk on loopback.

    python -m bench.pipeline [--duration 20] [--connections 50] [--skip-baseline]

Uses REDIS_URL / DATABASE_URL when set (a fresh database `bidengine_bench` is created on that server),
otherwise embedded servers. Starts a real gateway and pricing agent, runs wrk, then checks that every
200 answered has its row. Then runs the baseline (bench/baseline_server.py) with the same wrk settings
and prints both with their ratio. PostgreSQL durability is left at its defaults and printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psycopg
import redis

from bidengine.embedded import free_port, servers
from schema.database import BIDS_TABLE, apply_migrations

ROOT = Path(__file__).resolve().parents[1]
# A static body: a Lua request()/response() per call would cost wrk more CPU than the gateway on 2 cores.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
"""
CHECKED_BIDS = 2000  # after the timed run: bids whose ids are each looked up in the table


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: str
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, duration: int, connections: int) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    done = re.search(r"(\d+) requests in ([\d.]+)(s|m)", output)
    assert done, output
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", output, re.MULTILINE))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    max_latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=float(done.group(2)) * (60 if done.group(3) == "m" else 1),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=errors.group(1) if errors else "none",
        p50_ms=_ms(latency["50"]),
        p99_ms=_ms(latency["99"]),
        max_ms=_ms(max_latency.group(1)) if max_latency else float("nan"),
    )


async def count_rows(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {BIDS_TABLE}"))
    finally:
        await conn.close()


async def post_and_check(url: str, database_url: str, count: int, connections: int) -> tuple[int, int]:
    """Post `count` bids, `connections` at a time; return (200s, 200s whose bid_id has no row)."""
    semaphore = asyncio.Semaphore(connections)
    async with aiohttp.ClientSession() as session:

        async def one(i: int) -> int | None:
            body = {"product_id": 1 + i, "current_cpc": round(0.5 + i / 100, 2), "target_roas": 150.0}
            async with semaphore, session.post(url, json=body) as response:
                return int((await response.json())["bid_id"]) if response.status == 200 else None

        ids = [bid_id for bid_id in await asyncio.gather(*(one(i) for i in range(count))) if bid_id is not None]
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE id = ANY($1::bigint[])", ids)
    finally:
        await conn.close()
    return len(ids), len(ids) - int(found)


def wait_ready(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def fresh_database(server_url: str, name: str) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    apply_migrations(url)
    return url


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Measured:
    wrk: WrkResult
    rows_added: int
    checked: int
    missing: int

    @property
    def ok(self) -> int:
        return self.wrk.requests - self.wrk.non_2xx


def measure(
    label: str, commands: list[list[str]], env: dict[str, str], base: str, args: argparse.Namespace
) -> Measured:
    processes = [subprocess.Popen(command, env=env, cwd=ROOT) for command in commands]
    database_url = env["DATABASE_URL"]
    try:
        wait_ready(f"{base}/ready")
        time.sleep(2)  # every process finishes starting (the agent's first group read)
        before = asyncio.run(count_rows(database_url))
        result = run_wrk(f"{base}/api/bid/", args.duration, args.connections)
        time.sleep(1)  # requests wrk abandoned at its deadline may still be committed
        rows_added = asyncio.run(count_rows(database_url)) - before
        checked, missing = asyncio.run(post_and_check(f"{base}/api/bid/", database_url, CHECKED_BIDS, args.connections))
    finally:
        stop(processes)
    measured = Measured(result, rows_added, checked, missing)
    print(
        f"{label:<28} {result.rate:>9,.0f} req/s  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  "
        f"max {result.max_ms:7.1f} ms  non-2xx {result.non_2xx}  socket errors: {result.socket_errors}\n"
        f"{'':<28} 200s {measured.ok:,}, rows added {rows_added:,}; "
        f"checked bids {checked:,}, 200s without a row: {missing}",
        flush=True,
    )
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20, help="seconds of load per run (bounded)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install -y wrk")

    with servers(os.environ.get("REDIS_URL"), os.environ.get("DATABASE_URL")) as (redis_url, server_url):
        database_url = fresh_database(server_url, "bidengine_bench")
        redis.Redis.from_url(redis_url).flushdb()
        with psycopg.connect(database_url) as conn:
            durability = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("synchronous_commit", "fsync", "wal_sync_method")
            }
        print(f"PostgreSQL durability: {durability}; {os.cpu_count()} CPUs; {args.connections} connections")
        port = free_port()
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "GATEWAY_PORT": str(port),
            "LOG_LEVEL": "WARNING",
        }
        base = f"http://127.0.0.1:{port}"
        pipeline = measure(
            "pipeline (gateway + agent)",
            [
                [sys.executable, "-m", "bidengine.cli", "pricing-agent"],
                [sys.executable, "-m", "bidengine.cli", "gateway"],
            ],
            env,
            base,
            args,
        )
        lost = pipeline.missing > 0 or pipeline.rows_added < pipeline.ok
        if args.skip_baseline:
            return 1 if lost else 0
        baseline = measure(
            "baseline (1 INSERT/request)", [[sys.executable, "-m", "bench.baseline_server"]], env, base, args
        )
        print(f"ratio pipeline / baseline: {pipeline.wrk.rate / baseline.wrk.rate:.2f}x")
        return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
