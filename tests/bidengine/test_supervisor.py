"""`bidengine run` supervises: a role killed with SIGKILL is restarted with back-off and the log says so; a role
that keeps dying is reported; SIGTERM stops everything, embedded servers included."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from bidengine import supervisor
from bidengine.embedded import free_port
from redis_streams.retry import Backoff
from schema.settings import Settings
from tests.pipeline.conftest import ROOT, Pipeline, wait_until_ready
from tests.pipeline.test_failures import poll, post_bid


class Output:
    """The lines a process writes to stderr, collected by a thread as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        stream = process.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(stream.readline, "")), daemon=True)
        self._thread.start()

    def find(self, pattern: str) -> re.Match[str] | None:
        for line in list(self.lines):
            if match := re.search(pattern, line):
                return match
        return None

    def text(self) -> str:
        return "".join(self.lines[-80:])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_a_role_killed_with_sigkill_is_restarted_and_sigterm_stops_everything(tmp_path: Path) -> None:
    gateway_port, monitor_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "DATABASE_URL")}
    env.update(
        GATEWAY_PORT=str(gateway_port),
        MONITOR_PORT=str(monitor_port),
        CONSOLE_PORT=str(free_port()),
        PRICING_METRICS_PORT=str(free_port()),
        AUDIT_METRICS_PORT=str(free_port()),
        MONITOR_METRICS_PORT=str(free_port()),
        TMPDIR=str(tmp_path),
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bidengine.cli", "run", "--fake-source"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(process)
    try:
        gateway = Pipeline("", "", env, gateway_url=f"http://127.0.0.1:{gateway_port}")
        wait_until_ready(gateway.gateway_url, timeout_s=90)
        started = output.find(r"started pricing-agent \(pid (\d+)\)")
        assert started is not None, output.text()
        pid = int(started[1])
        redis_port = int(poll("the embedded Redis", lambda: output.find(r"redis-server started at .*:(\d+)/"))[1])
        children = {
            name: int(match[1])
            for name in ("gateway", "audit-agent", "monitor")
            if (match := output.find(rf"started {name} \(pid (\d+)\)"))
        }
        assert len(children) == 3, output.text()
        # Each role's /metrics, printed at start, on a port of its own, answering.
        urls = {
            role: poll(f"{role}'s metrics URL", lambda role=role: output.find(rf'{role} metrics on (http://[^"\s]+)'))[
                1
            ]
            for role in ("gateway", "pricing-agent", "audit-agent", "monitor")
        }
        assert len(set(urls.values())) == 4, urls
        for role, url in urls.items():
            assert poll(f"{role} serving {url}", lambda url=url: "bidengine_" in scrape_text(url)), url

        os.kill(pid, signal.SIGKILL)
        poll(
            "the supervisor noticing",
            lambda: output.find(rf"pricing-agent \(pid {pid}\) was killed by SIGKILL; restarting it in 1 s"),
        )
        restarted = poll("the restart", lambda: output.find(r"restarted pricing-agent \(pid (\d+)\)"))
        new_pid = int(restarted[1])
        assert new_pid != pid
        assert alive(new_pid)
        assert all(alive(child) for child in children.values())  # the others were left alone
        wait_until_ready(gateway.gateway_url, timeout_s=60)
        # Until the new agent reads, the gateway may still count the killed one as alive (CONSUMER_ALIVE_MS) and
        # answer 504: the bidder's retry with its key, as bidders do, is answered once the new agent has started.
        bid = {"product_id": 777, "current_cpc": 1.5, "target_roas": 150}
        key = {"Idempotency-Key": "after-the-restart"}
        answered = poll("a 200 from the restarted agent", lambda: post_bid(gateway, bid, key)[0] == 200, timeout_s=60)
        assert answered

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=90) == 0, output.text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    for child in [new_pid, *children.values()]:
        assert not alive(child), output.text()
    assert not port_open(redis_port)  # the embedded Redis stopped too
    poll("the embedded PostgreSQL stopped", lambda: output.find("embedded PostgreSQL stopped"))


def test_a_role_that_keeps_dying_is_reported_once_and_still_restarted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF", Backoff(0.01, 0.04))
    role = supervisor.Supervised("flaky", [sys.executable, "-c", "import sys; sys.exit(3)"], dict(os.environ))
    with caplog.at_level(logging.INFO, logger="bidengine.run"):
        role.start(time.monotonic())
        deadline = time.monotonic() + 60
        while len(role.exits) < 7 and time.monotonic() < deadline:
            time.sleep(0.01)
            role.check(time.monotonic())
    messages = [r.getMessage() for r in caplog.records]
    assert len(role.exits) >= 7
    assert sum("keeps dying" in m for m in messages) == 1, messages
    assert any(re.search(r"flaky \(pid \d+\) exited with status 3; restarting it in 0 s", m) for m in messages)
    assert sum(m.startswith("restarted flaky") for m in messages) >= 6  # never given up on
    if role.process is not None:
        role.process.wait()


def scrape_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - the test's own server
        return str(response.read().decode())


def test_every_role_gets_a_distinct_metrics_port() -> None:
    settings = Settings(gateway_port=8000, monitor_port=3001, console_port=8001)
    assert supervisor.metrics_ports(settings) == {
        "PRICING_METRICS_PORT": "9101",
        "AUDIT_METRICS_PORT": "9102",
        "MONITOR_METRICS_PORT": "9103",
    }
    colliding = Settings(
        gateway_port=9101, pricing_metrics_port=9101, audit_metrics_port=9101, monitor_metrics_port=3001
    )
    ports = supervisor.metrics_ports(colliding)
    assert len({*ports.values(), "9101", "3001", "8001"}) == 6, ports  # none shared, with each other or the rest
    env = {**ports}
    urls = supervisor.metrics_urls(colliding, env, supervisor.ROLES)
    assert urls["gateway"] == "http://127.0.0.1:9101/metrics"
    assert urls["pricing-agent"] == f"http://127.0.0.1:{ports['PRICING_METRICS_PORT']}/metrics"
    assert set(urls) == {"gateway", "pricing-agent", "audit-agent", "monitor"}


def test_exits_are_described_by_status_or_signal() -> None:
    assert supervisor.describe_exit(1) == "exited with status 1"
    assert supervisor.describe_exit(-9) == "was killed by SIGKILL"
    assert supervisor.describe_exit(-15) == "was killed by SIGTERM"
