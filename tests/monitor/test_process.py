"""`bidengine monitor` as a real process: it starts, logs JSON lines, and exits 0 on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bidengine.embedded import free_port
from monitor.fake_api import Fault, RunningFakeApi

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 30.0


class MonitorProcess:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.log: list[dict[str, Any]] = []

    async def wait_for_log(self, event: str) -> dict[str, Any]:
        """Read JSON log lines until one with this `event` arrives (or the deadline passes)."""
        assert self.process.stderr is not None
        async with asyncio.timeout(STARTUP_DEADLINE_S):
            while True:
                line = await self.process.stderr.readline()
                assert line, f"process ended before logging {event!r}: {self.log}"
                entry = self._parse(line)
                if entry.get("event") == event:
                    return entry

    async def stop(self, signum: int) -> int:
        self.process.send_signal(signum)
        _, rest = await asyncio.wait_for(self.process.communicate(), timeout=15)
        for line in rest.splitlines():
            self._parse(line)
        assert self.process.returncode is not None
        return self.process.returncode

    def _parse(self, line: bytes) -> dict[str, Any]:
        text = line.decode().strip()
        if not text.startswith("{"):
            return {}  # other libraries log through the root logger's text format
        entry: dict[str, Any] = json.loads(text)
        self.log.append(entry)
        return entry

    def events(self) -> list[str]:
        return [e.get("event", "") for e in self.log]


async def start_monitor(env_overrides: dict[str, str]) -> MonitorProcess:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_") and k != "REDIS_URL"}
    env.update({"MONITOR_PORT": str(port), "MONITOR_INTERVAL_S": "3600", "LOG_LEVEL": "INFO"})
    env.update(env_overrides)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bidengine.cli",
        "monitor",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return MonitorProcess(process, port)


@pytest.fixture
def monitor_env(redis_url: str, fake_api: RunningFakeApi) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "MONITOR_SOURCE_URL": fake_api.products_url, "MONITOR_TIMEOUT_S": "20"}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_polls_at_start_serves_health_and_exits_0_on_signal(
    monitor_env: dict[str, str], http_session: aiohttp.ClientSession, signum: int
) -> None:
    monitor = await start_monitor(monitor_env)
    try:
        poll = await monitor.wait_for_log("poll")
        async with http_session.get(f"http://127.0.0.1:{monitor.port}/health") as response:
            health_status = response.status
    finally:
        returncode = await monitor.stop(signum)

    assert poll["outcome"] == "ok"
    assert (poll["items_fetched"], poll["items_rejected"], poll["items_published"]) == (200, 0, 200)
    assert isinstance(poll["duration_ms"], float)
    assert health_status == 200
    assert returncode == 0
    assert monitor.events()[-2:] == ["shutdown", "stopped"]


async def test_a_poll_in_progress_is_abandoned_on_sigterm(
    monitor_env: dict[str, str], fake_api: RunningFakeApi
) -> None:
    fake_api.faults.always = Fault.SLOW  # the first page answers only when the fake shuts down
    monitor = await start_monitor(monitor_env)
    try:
        await monitor.wait_for_log("started")
        # The poll's first request has reached the source, and will not be answered.
        await asyncio.wait_for(fake_api.faults.requested.wait(), STARTUP_DEADLINE_S)
    finally:
        returncode = await monitor.stop(signal.SIGTERM)

    assert returncode == 0
    assert "poll_abandoned" in monitor.events()
    assert "poll" not in monitor.events()


async def test_refuses_to_start_without_redis_url(fake_api: RunningFakeApi) -> None:
    monitor = await start_monitor({"MONITOR_SOURCE_URL": fake_api.products_url})

    returncode = await asyncio.wait_for(monitor.process.wait(), timeout=15)

    assert returncode == 2
