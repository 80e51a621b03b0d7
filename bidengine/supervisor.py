"""`bidengine run`: the whole system on one machine, for development and demos.

Starts embedded Redis and PostgreSQL when REDIS_URL / DATABASE_URL are unset, applies the migrations, then runs
each role as its own process (as in production) and supervises them as a process manager does (Kubernetes'
`restartPolicy: Always`, systemd's `Restart=always`):

* A role that exits (a crash, SIGKILL, the OOM killer) is restarted after a back-off: 1 s, doubling up to
  30 s, back to 1 s once it has stayed up for 60 s. The log says which role exited, how (exit status or
  signal), when it will be restarted, and its new pid.
* A role that keeps dying (5 exits within 60 s) is reported with one ERROR line per streak, and is still
  restarted, every 30 s. It is never given up on: a role that cannot start because a backend is away (or a
  port is taken) comes back by itself once the cause is gone, as a pod in CrashLoopBackOff does; giving up
  would need a person to notice, which is what this supervisor is for.
* SIGINT (Ctrl-C) or SIGTERM stops everything: each role gets SIGTERM and 15 s to stop, then SIGKILL; then the
  embedded servers stop. The exit status is 0.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import FrameType

from bidengine.embedded import free_port, servers
from redis_streams.retry import Backoff
from schema.database import apply_migrations
from schema.settings import Settings

log = logging.getLogger("bidengine.run")

ROLES = ("gateway", "pricing-agent", "audit-agent", "monitor", "console")

RESTART_BACKOFF = Backoff(initial_s=1.0, max_s=30.0)
STABLE_AFTER_S = 60.0  # a role up this long is healthy again: its next exit restarts it after 1 s
CRASH_LOOP_EXITS = 5  # this many exits ...
CRASH_LOOP_WINDOW_S = 60.0  # ... within this window: the role keeps dying, say so
POLL_INTERVAL_S = 0.2
STOP_GRACE_S = 15.0


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class Supervised:
    """One supervised process: its command, its current process, and its recent exits."""

    name: str
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0  # exits in a row without a stable run between them
    restart_at: float | None = None
    exits: collections.deque[float] = field(default_factory=collections.deque)
    crash_loop_reported: bool = False

    def start(self, now: float) -> None:
        restarting = self.process is not None or self.restart_at is not None
        self.process = subprocess.Popen(self.command, env=self.env)
        self.started_at, self.restart_at = now, None
        if restarting:
            log.warning("restarted %s (pid %d)", self.name, self.process.pid)
        else:
            log.info("started %s (pid %d)", self.name, self.process.pid)

    def check(self, now: float) -> None:
        """Restart the role if it is due; notice if it exited and schedule its restart."""
        if self.process is None:
            if self.restart_at is not None and now >= self.restart_at:
                self.start(now)
            return
        returncode = self.process.poll()
        if returncode is None:
            if self.failures and now - self.started_at >= STABLE_AFTER_S:
                self.failures, self.crash_loop_reported = 0, False
            return
        pid = self.process.pid
        self.process = None
        if now - self.started_at >= STABLE_AFTER_S:
            self.failures, self.crash_loop_reported = 0, False
        self.failures += 1
        delay = RESTART_BACKOFF.nominal(self.failures)
        self.restart_at = now + delay
        self.exits.append(now)
        while self.exits and now - self.exits[0] > CRASH_LOOP_WINDOW_S:
            self.exits.popleft()
        log.error("%s (pid %d) %s; restarting it in %.0f s", self.name, pid, describe_exit(returncode), delay)
        if len(self.exits) >= CRASH_LOOP_EXITS and not self.crash_loop_reported:
            self.crash_loop_reported = True
            log.error(
                "%s keeps dying: %d exits in the last %.0f s; it is restarted every %.0f s until it stays up "
                "(see its log lines above for why)",
                self.name,
                len(self.exits),
                CRASH_LOOP_WINDOW_S,
                RESTART_BACKOFF.max_s,
            )


# The environment variable of each role's metrics port (the gateway serves /metrics on GATEWAY_PORT).
METRICS_PORT_VARIABLES = {
    "pricing-agent": "PRICING_METRICS_PORT",
    "audit-agent": "AUDIT_METRICS_PORT",
    "monitor": "MONITOR_METRICS_PORT",
}


def metrics_ports(settings: Settings) -> dict[str, str]:
    """A distinct metrics port for every role: the configured ones, a free port instead of any that another role
    (or the gateway, the monitor's /health, the console) already uses."""
    taken = {settings.gateway_port, settings.monitor_port, settings.console_port}
    ports: dict[str, str] = {}
    for variable in METRICS_PORT_VARIABLES.values():
        port = getattr(settings, variable.lower())
        if port in taken:
            port = free_port()
        taken.add(port)
        ports[variable] = str(port)
    return ports


def metrics_urls(settings: Settings, env: dict[str, str], roles: tuple[str, ...]) -> dict[str, str]:
    """Where each running role serves /metrics."""
    urls = {}
    if "gateway" in roles:
        urls["gateway"] = f"http://{settings.gateway_host}:{settings.gateway_port}/metrics"
    for role, variable in METRICS_PORT_VARIABLES.items():
        if role in roles:
            urls[role] = f"http://{settings.metrics_host}:{env[variable]}/metrics"
    return urls


def run_all(settings: Settings, roles: tuple[str, ...] = ROLES, *, fake_source: bool = False) -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    with servers(settings.redis_url, settings.database_url) as (redis_url, database_url):
        applied = apply_migrations(database_url)
        log.info("migrations applied: %s", applied or "none pending")
        env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, **metrics_ports(settings)}
        supervised: list[Supervised] = []
        try:
            if fake_source:
                port = free_port()
                command = [sys.executable, "-m", "monitor.fake_api", "--port", str(port)]
                supervised.append(Supervised("fake products API", command, env))
                env["MONITOR_SOURCE_URL"] = f"http://127.0.0.1:{port}/products"
                log.info("competitor monitor polls the offline products API at %s", env["MONITOR_SOURCE_URL"])
            for role in roles:
                supervised.append(Supervised(role, [sys.executable, "-m", "bidengine.cli", role], env))
            now = time.monotonic()
            for process in supervised:
                process.start(now)
            log.info("gateway on http://%s:%d/api/bid/", settings.gateway_host, settings.gateway_port)
            for role, url in metrics_urls(settings, env, roles).items():
                log.info("%s metrics on %s", role, url)
            if "console" in roles:
                log.info(
                    "console on http://%s:%d/ ; create its first user in another shell with: "
                    "DATABASE_URL='%s' .venv/bin/bidengine console-user add NAME --role operator",
                    settings.console_host,
                    settings.console_port,
                    database_url,
                )
            while True:
                time.sleep(POLL_INTERVAL_S)
                now = time.monotonic()
                for process in supervised:
                    process.check(now)
        except (_Stop, KeyboardInterrupt):
            log.info("stopping every role")
        finally:
            # A second Ctrl-C must not cut the shutdown short and leave processes behind.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            _stop_all(supervised)
        return 0


def _stop_all(supervised: list[Supervised], grace_s: float = STOP_GRACE_S) -> None:
    running = [(s.name, s.process) for s in supervised if s.process is not None and s.process.poll() is None]
    for _, process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for name, process in running:
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", name, grace_s)
            process.kill()
            process.wait()
