"""The running pipeline for end-to-end tests: a real gateway and real pricing agents, as subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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

    def start(self, role: str, name: str | None = None, **env: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [sys.executable, "-m", "bidengine.cli", role],
            env={**self.env, **env},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if os.environ.get("PIPELINE_QUIET") else None,
        )
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
    """Until the gateway is ready and sees the pricing group (an agent has started consuming)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | str | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/ready", timeout=2) as response:  # noqa: S310
                ready = json.load(response)
                if ready["pricing_lag"] is not None:
                    return
                last_error = "no pricing group yet"
        except Exception as exc:  # not listening yet, or 503 while backends are checked
            last_error = exc
        time.sleep(0.1)
    raise TimeoutError(f"{base_url} not ready: {last_error}")


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
