"""Benchmark: the whole system, the gateway + pricing agent alone, and a one-INSERT baseline, in one run.

    python -m bench.pipeline [--duration 15] [--rounds 1] [--connections 50] [--only system,pricing,baseline]
    python -m bench.pipeline --against main --only pricing --rounds 3   # this tree vs another revision, A/B

Each *configuration* is started fresh, driven by wrk on loopback (2 threads, 50 connections, a fixed
duration), checked, and stopped:

* `system`: the whole system as `bidengine run --fake-source` starts it (gateway, pricing agent, audit
  agent, competitor monitor polling the bundled products API, console), supervised by `bidengine run`;
* `pricing`: the gateway and the pricing agent alone (`bidengine gateway`, `bidengine pricing-agent`);
* `baseline`: `bench/baseline_server.py`, one asyncpg INSERT (one commit) per request, answered after it.

Every configuration runs against the benchmark's own servers: a private redis-server (the machine's
redis-server binary, default settings, no persistence; flushed before each configuration) and a fresh
database on DATABASE_URL's PostgreSQL (embedded PostgreSQL when unset), left at its default durability
(printed). After each load, every 200 is checked to have its row: the rows added must be at least the
200s counted by wrk, and 2,000 further bids are each looked up by the `bid_id` they were answered.

Printed for each run: bids/s, p50/p99/max latency, and the CPU each process spent per bid (user + system
from /proc, over the timed load): every role, redis-server, the PostgreSQL backends of the benchmark's
database (and the WAL writer), wrk. With `--rounds N` the configurations alternate (the order reverses
every round, so drift on a shared machine falls on each alike) and the summary gives the median and the
spread of each figure, and of each configuration's ratio to the baseline of the same round.

Configurations are rows of `CONFIGURATIONS`: a variant of one is a row with its own environment (e.g. a
setting switched off) or its own database preparation (e.g. another table layout); see `Configuration`.
`--against REV` adds, for each configuration but the baseline, a twin that runs the code of revision REV
(exported with `git archive`), alternating with this tree's in every round: on a shared machine the CPU per
bid of the two, same run, is how a change is judged (the summary prints their ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import psycopg
import redis

from bench.support import code_at, fresh_database, postgres_server, private_redis
from bidengine.embedded import free_port
from schema.database import BIDS_TABLE

ROOT = Path(__file__).resolve().parents[1]
# A static body: a Lua request()/response() per call would cost wrk more CPU than the gateway on 2 cores.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}'
"""
CHECKED_BIDS = 2000  # after the timed run: bids whose ids are each looked up in the table
SETTLE_S = 3.0  # after /ready: every role finishes starting (the agents' first group reads, the monitor's poll)


# --- one configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Configuration:
    """What one measured run starts.

    `commands` are started side by side (each a process of its own, the processes measured); `env` is added to
    the environment of every process. A configuration runs on the benchmark's database unless it has one of
    its own: `prepare_database(server_url)` returns the URL of one it made (e.g. another table layout), and a
    configuration running another tree's code (`code`, from --against) gets one migrated by that code.
    `compare_with` names the configuration the summary compares this one with (CPU per bid, bids/s), same
    round by same round. `default`: run unless --only says otherwise.
    """

    name: str
    label: str
    commands: Sequence[Sequence[str]]
    env: dict[str, str] = field(default_factory=dict)
    prepare_database: Callable[[str], str] | None = None
    baseline: bool = False
    code: Path = ROOT  # the tree whose code the processes run (their working directory comes first on sys.path)
    compare_with: str | None = None
    default: bool = True


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bidengine.cli", *args]


SYSTEM = [_cli("run", "--fake-source")]
PRICING = [_cli("pricing-agent"), _cli("gateway")]
CONFIGURATIONS: tuple[Configuration, ...] = (
    Configuration("system", "whole system (bidengine run)", SYSTEM),
    Configuration("pricing", "gateway + pricing agent", PRICING),
    Configuration(
        "baseline", "baseline (1 INSERT/request)", [[sys.executable, "-m", "bench.baseline_server"]], baseline=True
    ),
    # Variants, compared with the configuration they vary in the same rounds (`--only system,system-metrics-off`).
    # What the hot-path instrumentation costs: every role with METRICS_ENABLED=false.
    Configuration(
        "system-metrics-off",
        "whole system, METRICS_ENABLED=false",
        SYSTEM,
        env={"METRICS_ENABLED": "false"},
        compare_with="system",
        default=False,
    ),
    # The audit agent reading its live stream as soon as anything is there (before AUDIT_READ_INTERVAL_MS).
    Configuration(
        "system-audit-eager",
        "whole system, AUDIT_READ_INTERVAL_MS=0",
        SYSTEM,
        env={"AUDIT_READ_INTERVAL_MS": "0"},
        compare_with="system",
        default=False,
    ),
    # The table layout: `--against REV` with a revision from before the partitioned layout runs that code on a
    # database its own migrations made (the unpartitioned table). A layout prepared for this tree's code would
    # be a row here with `prepare_database`.
)


# --- wrk -----------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: str
    p50_ms: float
    p99_ms: float
    max_ms: float
    user_s: float  # wrk's own CPU time, user and system
    system_s: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, duration: int, connections: int) -> WrkResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    command = ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script.name, url]
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read()
    os.unlink(script.name)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed: {output}")
    done = re.search(r"(\d+) requests in ([\d.]+)(s|m)", output)
    assert done, output
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", output, re.MULTILINE))
    assert {"50", "99"} <= latency.keys(), output
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
        user_s=usage.ru_utime,
        system_s=usage.ru_stime,
    )


# --- checks --------------------------------------------------------------------------------------------


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


def wait_ready(url: str, timeout_s: float = 60) -> None:
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


# --- CPU per process -----------------------------------------------------------------------------------


def _children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent:
            found.append(int(entry))
    return found


def _role_name(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        args = [arg.decode() for arg in cmdline.read().split(b"\0") if arg]
    if "bidengine.cli" in args:
        return " ".join(args[args.index("bidengine.cli") + 1 :]) or "bidengine"
    if "-m" in args:
        module = args[args.index("-m") + 1]
        return {"monitor.fake_api": "fake products API", "bench.baseline_server": "baseline server"}.get(module, module)
    return Path(args[0]).name if args else str(pid)


def measured_processes(started: Sequence[subprocess.Popen[bytes]]) -> dict[int, str]:
    """pid -> name of every process of a configuration: those started, and the roles `bidengine run` started."""
    processes: dict[int, str] = {}
    for process in started:
        name = _role_name(process.pid)
        processes[process.pid] = "supervisor (bidengine run)" if name.startswith("run") else name
        for child in _children(process.pid):
            with contextlib.suppress(OSError):
                processes[child] = _role_name(child)
    return processes


def postgres_processes(database_url: str) -> dict[int, str]:
    """The PostgreSQL backends connected to the benchmark's database, and the WAL writer."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT pid, backend_type FROM pg_stat_activity "
            "WHERE (datname = current_database() AND pid <> pg_backend_pid()) OR backend_type = 'walwriter'"
        ).fetchall()
    return {int(pid): "postgres: walwriter" if kind == "walwriter" else "postgres: backends" for pid, kind in rows}


@dataclass(frozen=True)
class Usage:
    """What a process spent: CPU seconds in user and kernel mode, and its read and write system calls."""

    user_s: float = 0.0
    system_s: float = 0.0
    reads: int = 0
    writes: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.user_s + other.user_s,
            self.system_s + other.system_s,
            self.reads + other.reads,
            self.writes + other.writes,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.user_s - other.user_s,
            self.system_s - other.system_s,
            self.reads - other.reads,
            self.writes - other.writes,
        )

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.system_s


def process_usage(pid: int) -> Usage:
    """utime/stime from /proc/PID/stat; syscr/syscw (read-like and write-like system calls) from /proc/PID/io."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    with open(f"/proc/{pid}/io") as io:
        counters = dict(line.split(": ") for line in io.read().splitlines())
    tick = os.sysconf("SC_CLK_TCK")
    return Usage(int(fields[11]) / tick, int(fields[12]) / tick, int(counters["syscr"]), int(counters["syscw"]))


def usage_snapshot(pids: dict[int, str]) -> dict[int, Usage]:
    snapshot = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            snapshot[pid] = process_usage(pid)
    return snapshot


# --- a run ---------------------------------------------------------------------------------------------


@dataclass
class Measured:
    configuration: Configuration
    wrk: WrkResult
    rows_added: int
    checked: int
    missing: int
    usage: dict[str, Usage]  # process (group) name -> what it spent during the timed load

    @property
    def cpu_s(self) -> dict[str, float]:
        return {name: usage.cpu_s for name, usage in self.usage.items()}

    @property
    def ok(self) -> int:
        return self.wrk.requests - self.wrk.non_2xx

    @property
    def lost(self) -> bool:
        return self.missing > 0 or self.rows_added < self.ok

    def us_per_bid(self, name: str) -> float:
        return self.cpu_s[name] / max(self.wrk.requests, 1) * 1e6

    @property
    def total_us_per_bid(self) -> float:
        return sum(self.cpu_s.values()) / max(self.wrk.requests, 1) * 1e6


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def measure(configuration: Configuration, database_url: str, redis_url: str, args: argparse.Namespace) -> Measured:
    redis_client = redis.Redis.from_url(redis_url)
    redis_client.flushall()
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "GATEWAY_PORT": str(port),
        # Every other port a role may open: free ones, so a run never collides with anything on the machine.
        "MONITOR_PORT": str(free_port()),
        "CONSOLE_PORT": str(free_port()),
        "PRICING_METRICS_PORT": str(free_port()),
        "AUDIT_METRICS_PORT": str(free_port()),
        "MONITOR_METRICS_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        **configuration.env,
    }
    base = f"http://127.0.0.1:{port}"
    processes = [
        subprocess.Popen(
            list(command), env=env, cwd=configuration.code, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        for command in configuration.commands
    ]
    try:
        wait_ready(f"{base}/ready")
        time.sleep(SETTLE_S)
        pids = measured_processes(processes)
        pids.update(postgres_processes(database_url))
        before = asyncio.run(count_rows(database_url))
        pids[int(redis_client.info("server")["process_id"])] = "redis-server"
        cpu_before = usage_snapshot(pids)
        result = run_wrk(f"{base}/api/bid/", args.duration, args.connections)
        cpu_after = usage_snapshot(pids)
        restarted = [pids[pid] for pid in cpu_before if pid not in cpu_after and "postgres" not in pids[pid]]
        time.sleep(1)  # requests wrk abandoned at its deadline may still be committed
        rows_added = asyncio.run(count_rows(database_url)) - before
        checked, missing = asyncio.run(post_and_check(f"{base}/api/bid/", database_url, CHECKED_BIDS, args.connections))
    finally:
        _stop(processes)
        redis_client.close()
    if restarted:
        print(f"WARNING: processes exited during the load: {restarted}", flush=True)
    usage: dict[str, Usage] = {}
    for pid, name in pids.items():
        if pid in cpu_before and pid in cpu_after:
            usage[name] = usage.get(name, Usage()) + (cpu_after[pid] - cpu_before[pid])
    usage["wrk"] = Usage(result.user_s, result.system_s)
    return Measured(configuration, result, rows_added, checked, missing, usage)


def print_run(measured: Measured, prefix: str) -> None:
    result = measured.wrk
    print(
        f"{prefix}{measured.configuration.label:<30} {result.rate:>8,.0f} bids/s  p50 {result.p50_ms:5.1f} ms  "
        f"p99 {result.p99_ms:5.1f} ms  max {result.max_ms:6.1f} ms  non-2xx {result.non_2xx}  "
        f"socket errors: {result.socket_errors}",
        flush=True,
    )
    indent = " " * len(prefix)
    print(
        f"{indent}  200s {measured.ok:,}, rows added {measured.rows_added:,}; checked bids {measured.checked:,}, "
        f"200s without a row: {measured.missing}{'  LOST BIDS' if measured.lost else ''}",
        flush=True,
    )
    parts = ", ".join(
        f"{name} {measured.us_per_bid(name):.1f}"
        for name in sorted(measured.cpu_s, key=lambda n: -measured.cpu_s[n])
        if measured.cpu_s[name] > 0 or name in ("redis-server", "wrk")
    )
    cores = sum(measured.cpu_s.values()) / result.seconds
    print(f"{indent}  CPU µs per bid: {parts}; total {measured.total_us_per_bid:.1f} ({cores:.2f} cores)", flush=True)
    bids = max(result.requests, 1)
    kernel = ", ".join(
        f"{name} {usage.system_s / max(usage.cpu_s, 1e-9):.0%}"
        for name, usage in sorted(measured.usage.items(), key=lambda item: -item[1].cpu_s)
        if usage.cpu_s > 0.01 * sum(measured.cpu_s.values())
    )
    calls = ", ".join(
        f"{name} {usage.reads / bids:.2f}+{usage.writes / bids:.2f}"
        for name, usage in sorted(measured.usage.items(), key=lambda item: -item[1].cpu_s)
        if usage.reads + usage.writes > 0.01 * bids
    )
    print(f"{indent}  of which in the kernel: {kernel}", flush=True)
    print(f"{indent}  read+write system calls per bid: {calls}", flush=True)


# --- the invocation ------------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str) -> str:
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, fmt)
    return f"{format(median, fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def summarize(runs: dict[str, list[Measured]], configurations: Sequence[Configuration]) -> None:
    baseline = next((c for c in configurations if c.baseline), None)
    rounds = max(len(measured) for measured in runs.values())
    print(f"\nsummary over {rounds} round(s): median (min–max)")
    for configuration in configurations:
        measured = runs[configuration.name]
        print(
            f"{configuration.label:<30} {_spread([m.wrk.rate for m in measured], ',.0f')} bids/s  "
            f"p50 {_spread([m.wrk.p50_ms for m in measured], '.1f')} ms  "
            f"p99 {_spread([m.wrk.p99_ms for m in measured], '.1f')} ms  "
            f"CPU {_spread([m.total_us_per_bid for m in measured], '.0f')} µs/bid"
        )
        names = sorted({name for m in measured for name in m.cpu_s}, key=lambda n: -measured[0].cpu_s.get(n, 0))
        per_process = ", ".join(
            f"{name} {statistics.median(m.us_per_bid(name) if name in m.cpu_s else 0.0 for m in measured):.1f}"
            for name in names
        )
        print(f"{'':<30} CPU µs per bid (median): {per_process}")
    by_name = {c.name: c for c in configurations}
    for configuration in configurations:
        base = by_name.get(configuration.compare_with or "")
        if base is None:
            continue
        ours, theirs = runs[base.name], runs[configuration.name]
        cpu = [m.total_us_per_bid / t.total_us_per_bid for m, t in zip(ours, theirs, strict=False)]
        rate = [m.wrk.rate / t.wrk.rate for m, t in zip(ours, theirs, strict=False)]
        names = sorted({name for m in ours for name in m.cpu_s}, key=lambda n: -ours[0].cpu_s.get(n, 0))
        ratios = {
            name: [m.us_per_bid(name) / t.us_per_bid(name) for m, t in zip(ours, theirs, strict=False)]
            for name in names
            if all(t.cpu_s.get(name) for t in theirs) and all(name in m.cpu_s for m in ours)
        }
        per_process = ", ".join(f"{name} {_spread(values, '.2f')}" for name, values in ratios.items())
        print(
            f"{base.label} / {configuration.label}: CPU per bid {_spread(cpu, '.3f')}, "
            f"bids/s {_spread(rate, '.3f')}; per process: {per_process}"
        )
    if baseline is None:
        return
    for configuration in configurations:
        if configuration.baseline:
            continue
        against = [m.wrk.rate / b.wrk.rate for m, b in zip(runs[configuration.name], runs[baseline.name], strict=False)]
        print(f"ratio {configuration.label} / baseline: {_spread(against, '.2f')}x")


@contextlib.contextmanager
def migrated_by(code: Path, server_url: str) -> Iterator[str]:
    """A new database with the migrations of the tree `code` applied by its own `bidengine migrate`."""
    name = f"bidengine_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
    try:
        subprocess.run(
            _cli("migrate"), cwd=code, env={**os.environ, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}, check=True
        )
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per run (bounded)")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every configuration, alternating")
    names = [c.name for c in CONFIGURATIONS]
    default = ",".join(c.name for c in CONFIGURATIONS if c.default)
    parser.add_argument("--only", default=default, help=f"comma-separated, of {','.join(names)} (default {default})")
    parser.add_argument("--skip-baseline", action="store_true", help="(same as leaving baseline out of --only)")
    parser.add_argument("--against", metavar="REV", help="also run each configuration at git revision REV (A/B)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required: apt-get install -y wrk")
    wanted = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(wanted) - set(names)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)} (known: {names})")
    configurations = [c for c in CONFIGURATIONS if c.name in wanted and not (c.baseline and args.skip_baseline)]

    with contextlib.ExitStack() as stack:
        if args.against:
            other = stack.enter_context(code_at(args.against))
            configurations = [
                twin
                for c in configurations
                for twin in (
                    (c,)
                    if c.baseline
                    else (
                        c,
                        replace(
                            c,
                            name=f"{c.name}@{args.against}",
                            label=f"{c.label} @{args.against}",
                            code=other,
                            compare_with=c.name,
                        ),
                    )
                )
            ]
        redis_url = stack.enter_context(private_redis())
        server_url = stack.enter_context(postgres_server())
        database_url = stack.enter_context(fresh_database(server_url))
        with psycopg.connect(database_url) as conn:
            durability = {
                name: conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
                for name in ("synchronous_commit", "fsync", "wal_sync_method")
            }
        print(
            f"PostgreSQL durability: {durability}; {os.cpu_count()} CPUs; {args.connections} connections; "
            f"{args.duration} s per run; {args.rounds} round(s)",
            flush=True,
        )
        databases = {}
        for c in configurations:
            if c.prepare_database is not None:
                databases[c.name] = c.prepare_database(server_url)
            elif c.code != ROOT:
                databases[c.name] = stack.enter_context(migrated_by(c.code, server_url))
            else:
                databases[c.name] = database_url
        runs: dict[str, list[Measured]] = {c.name: [] for c in configurations}
        lost = False
        for round_number in range(1, args.rounds + 1):
            order = configurations if round_number % 2 else list(reversed(configurations))
            for configuration in order:
                measured = measure(configuration, databases[configuration.name], redis_url, args)
                print_run(measured, f"round {round_number}  ")
                runs[configuration.name].append(measured)
                lost = lost or measured.lost
        summarize(runs, configurations)
        return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
