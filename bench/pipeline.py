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

import asyncpg
import psycopg
import redis

from bidengine.embedded import free_port, servers
from schema.database import BIDS_TABLE, apply_migrations

ROOT = Path(__file__).resolve().parents[1]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local out
function init(args)
  out = io.open(args[1] .. "/ids-" .. tostring({}):gsub("table: ", ""), "w")
end
function request()
  counter = counter + 1
  local body = string.format('{"product_id": %d, "current_cpc": %.2f, "target_roas": 150.0}',
                             1 + counter % 5000, 0.5 + (counter % 300) / 100)
  return wrk.format(nil, nil, nil, body)
end
function response(status, headers, body)
  if status == 200 then
    out:write(body:match('"bid_id": (%d+)'), "\\n")
  end
end
"""


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


def run_wrk(url: str, duration: int, connections: int, ids_dir: str) -> WrkResult:
    script = Path(ids_dir) / "bid.lua"
    script.write_text(WRK_SCRIPT)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url, "--", ids_dir],
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


def answered_ids(ids_dir: str) -> list[int]:
    return [int(line) for path in Path(ids_dir).glob("ids-*") for line in path.read_text().split()]


async def missing_rows(database_url: str, ids: list[int]) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        found = await conn.fetchval(f"SELECT count(*) FROM {BIDS_TABLE} WHERE id = ANY($1::bigint[])", ids)
    finally:
        await conn.close()
    return len(set(ids)) - int(found)


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


def measure(
    label: str, commands: list[list[str]], env: dict[str, str], url: str, ready_url: str, args: argparse.Namespace
) -> tuple[WrkResult, int, int]:
    processes = [subprocess.Popen(command, env=env, cwd=ROOT) for command in commands]
    try:
        wait_ready(ready_url)
        time.sleep(2)  # let every process finish starting (the agent's group read loop)
        with tempfile.TemporaryDirectory() as ids_dir:
            result = run_wrk(url, args.duration, args.connections, ids_dir)
            ids = answered_ids(ids_dir)
    finally:
        stop(processes)
    missing = asyncio.run(missing_rows(env["DATABASE_URL"], ids))
    print(
        f"{label:<28} {result.rate:>9,.0f} req/s  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms  "
        f"max {result.max_ms:7.1f} ms  non-2xx {result.non_2xx}  socket errors: {result.socket_errors}  "
        f"200s {len(ids):,}  200s without a row: {missing}",
        flush=True,
    )
    return result, len(ids), missing


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
        pipeline, _, missing = measure(
            "pipeline (gateway + agent)",
            [
                [sys.executable, "-m", "bidengine.cli", "pricing-agent"],
                [sys.executable, "-m", "bidengine.cli", "gateway"],
            ],
            env,
            f"{base}/api/bid/",
            f"{base}/ready",
            args,
        )
        if args.skip_baseline:
            return 1 if missing else 0
        baseline, _, _ = measure(
            "baseline (1 INSERT/request)",
            [[sys.executable, "-m", "bench.baseline_server"]],
            env,
            f"{base}/api/bid/",
            f"{base}/health",
            args,
        )
        print(f"ratio pipeline / baseline: {pipeline.rate / baseline.rate:.2f}x")
        return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
