"""`bidengine run`: the whole system on one machine, for development and demos.

Starts embedded Redis and PostgreSQL when REDIS_URL / DATABASE_URL are unset, applies the migrations,
then runs each role as its own process (as in production) and stops everything on SIGINT/SIGTERM or
when any role exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from bidengine.embedded import free_port, servers
from schema.database import apply_migrations
from schema.settings import Settings

log = logging.getLogger("bidengine.run")

ROLES = ("gateway", "pricing-agent", "audit-agent", "monitor", "console")


class _Stop(Exception):
    pass


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_all(settings: Settings, roles: tuple[str, ...] = ROLES, *, fake_source: bool = False) -> int:
    signal.signal(signal.SIGTERM, _raise_stop)
    with servers(settings.redis_url, settings.database_url) as (redis_url, database_url):
        applied = apply_migrations(database_url)
        log.info("migrations applied: %s", applied or "none pending")
        env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url}
        processes: dict[str, subprocess.Popen[bytes]] = {}
        exit_code = 0
        try:
            if fake_source:
                port = free_port()
                processes["fake products API"] = subprocess.Popen(
                    [sys.executable, "-m", "monitor.fake_api", "--port", str(port)], env=env
                )
                env["MONITOR_SOURCE_URL"] = f"http://127.0.0.1:{port}/products"
                log.info("competitor monitor polls the offline products API at %s", env["MONITOR_SOURCE_URL"])
            for role in roles:
                processes[role] = subprocess.Popen([sys.executable, "-m", "bidengine.cli", role], env=env)
                log.info("started %s (pid %d)", role, processes[role].pid)
            log.info("gateway on http://%s:%d/api/bid/", settings.gateway_host, settings.gateway_port)
            if "console" in roles:
                log.info(
                    "console on http://%s:%d/ ; create its first user in another shell with: "
                    "DATABASE_URL='%s' .venv/bin/bidengine console-user add NAME --role operator",
                    settings.console_host,
                    settings.console_port,
                    database_url,
                )
            while True:
                for role, process in processes.items():
                    if process.poll() is not None:
                        log.error("%s exited with %s; stopping everything", role, process.returncode)
                        exit_code = 1
                        raise _Stop(role)
                time.sleep(0.5)
        except (_Stop, KeyboardInterrupt):
            pass
        finally:
            _stop_all(processes)
        return exit_code


def _stop_all(processes: dict[str, subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for role, process in processes.items():
        try:
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", role, grace_s)
            process.kill()
            process.wait()
