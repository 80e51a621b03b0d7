"""The running pipeline for end-to-end tests: a real gateway and real pricing agents, as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from bidengine.embedded import free_port
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Pipeline:
    redis_url: str
    database_url: str
    env: dict[str, str]
    gateway_url: str = ""
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(
        self, role: str, name: str | None = None, *, module: str = "bidengine.cli", log: Path | None = None, **env: str
    ) -> subprocess.Popen[bytes]:
        """Start `python -m <module> <role>`; its stderr goes to `log` when given (then read by the test)."""
        stderr: Any = subprocess.PIPE if os.environ.get("PIPELINE_QUIET") else None
        if log is not None:
            stderr = log.open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", module, *role.split()],
            env={**self.env, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        if log is not None:
            stderr.close()
        self.processes[name or role] = process
        return process

    def start_gateway(self, **env: str) -> None:
        port = free_port()
        self.gateway_url = f"http://127.0.0.1:{port}"
        self.start("gateway", GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), **env)
        wait_until_ready(self.gateway_url)

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def wait_until_ready(base_url: str, timeout_s: float = 30.0) -> None:
    """Until the gateway's /ready is 200: its backends answer and a pricing agent is consuming."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | str | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:  # noqa: S310
                ready = json.load(response)
                if ready["pricing_consumers"]:
                    return
                last_error = f"not ready: {ready}"
        except Exception as exc:  # not listening yet, or 503 while backends are checked / no agent yet
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready: {last_error}")


class SilentConsumer:
    """A member of the pricing group that reads bids and never answers: an agent too slow to reply in time.

    It announces itself as the agents do (`consumers:pricing`, scored by Redis's clock), so the gateway sees a
    live pricing agent and accepts bids; they time out (504). `stop()` leaves what it read pending, for a real
    agent to reclaim after CLAIM_IDLE_MS.
    """

    def __init__(self, redis_url: str, name: str = "silent") -> None:
        self.client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
        self.name = name
        self.read: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SilentConsumer:
        from schema import keys

        try:
            self.client.xgroup_create(keys.BID_REQUESTS, keys.PRICING_GROUP, id="0", mkstream=True)
        except sync_redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._thread.start()
        return self

    def _run(self) -> None:
        from schema import keys

        while not self._stop.is_set():
            reply = self.client.xreadgroup(
                keys.PRICING_GROUP, self.name, {keys.BID_REQUESTS: ">"}, count=100, block=100
            )
            for _, entries in reply or []:
                self.read.extend(entry_id for entry_id, _ in entries)
            seconds, micros = self.client.time()
            self.client.zadd(keys.consumers_key(keys.PRICING_GROUP), {self.name: seconds * 1000 + micros // 1000})

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        self.client.close()


@pytest.fixture(scope="module")
def pipeline(private_redis_server: RedisServer, database_url: str) -> Iterator[Pipeline]:
    """A gateway and one pricing agent, shared by a module's tests (on the session's private Redis, database 1,
    so the per-test flushes of the `redis` fixture never touch it)."""
    env = {
        **os.environ,
        "REDIS_URL": private_redis_server.url(1),
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "CLAIM_IDLE_MS": "1000",
        "REPLY_TIMEOUT_S": "30",  # the recovery test waits for a successor agent
    }
    pipeline = Pipeline(env["REDIS_URL"], database_url, env)
    sync_redis.Redis.from_url(pipeline.redis_url).flushdb()
    try:
        pipeline.start("pricing-agent")
        pipeline.start_gateway()
        yield pipeline
    finally:
        pipeline.stop_all()
