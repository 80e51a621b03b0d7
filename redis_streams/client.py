"""The one place Redis clients are made: the gateway, both agents, the monitor and the CLI all get theirs here,
so timeouts, keepalives and reconnection cannot drift apart between roles.

What every client gets, and why:

* **Dead pooled connections are replaced, not handed out.** redis-py 8.1 with RESP3 turns on "maintenance
  notifications" by default (`enabled="auto"`), and that switches off the pool's check-out probe that spots a
  connection the server closed (redis-py issue #4252, fixed upstream after 8.1.0): after a Redis restart, every
  pooled connection then failed its next command with "Connection closed by server". Maintenance
  notifications are a Redis Enterprise/Cloud feature we do not use, so they are disabled here and the probe
  works again: the first command after Redis is back gets a fresh connection.
* **A connection idle for `HEALTH_CHECK_INTERVAL_S` is PINGed before it is used** (redis-py's health check,
  also on the packed path: `redis_streams.pipe`). That catches what the probe cannot see: a peer that vanished
  without closing (a failover to another host). A failed PING is retried on a new connection before the
  command is sent, so the command itself is never sent twice by this.
* **TCP keepalive** (idle 10 s, then 3 probes 5 s apart) notices a silently dead server within ~25 s even on a
  connection blocked in a read; **timeouts**: `REDIS_CONNECT_TIMEOUT_S` to connect, `REDIS_SOCKET_TIMEOUT_S`
  for a reply (blocking reads on the packed path carry their own deadline).
* **Command retries** (`retry_commands=True`): one retry, after a short jittered pause, of a command that
  failed on a connection error or a timeout. That is safe only for commands that may be applied twice
  (reads, XACK, XAUTOCLAIM, XGROUP CREATE, the audit's SADD-guarded script...). Clients whose commands are
  not safe to repeat (the monitor's MULTI/EXEC publish, the CLI's dead-letter replay) pass
  `retry_commands=False`; the hot paths bypass redis-py's retries altogether (`redis_streams.pipe`).
  Outages themselves are ridden out by the callers' back-off loops (`redis_streams.retry`), not here.
"""

from __future__ import annotations

import socket

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError, TimeoutError
from redis.maint_notifications import MaintNotificationsConfig

from schema.settings import Settings

HEALTH_CHECK_INTERVAL_S = 5
KEEPALIVE_OPTIONS = {
    option: value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3))
    if (option := getattr(socket, name, None)) is not None
}


def connect(
    url: str,
    settings: Settings,
    *,
    max_connections: int | None = None,
    retry_commands: bool = True,
    client_name: str | None = None,
) -> aioredis.Redis:
    """A client for `url` (no connection is opened until the first command: it never fails here)."""
    retry = (
        Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1, supported_errors=(ConnectionError,))
        if retry_commands
        else Retry(NoBackoff(), retries=0)
    )
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        max_connections=max_connections,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        socket_timeout=settings.redis_socket_timeout_s,
        socket_keepalive=True,
        socket_keepalive_options=KEEPALIVE_OPTIONS,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=retry,
        retry_on_error=[ConnectionError, TimeoutError] if retry_commands else [],
        client_name=client_name,
        maint_notifications_config=MaintNotificationsConfig(enabled=False),
    )
