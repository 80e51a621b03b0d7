"""Configuration, read once from the environment into one typed object.

Every role takes a `Settings` instead of reading `os.environ` itself, so the full list of knobs lives here
and is documented in the README. Anything that sizes a Redis key or a loop is a field here.

The command line reads `Settings` once, checks what a command needs and hands the role the narrower type it
asks for: `RedisSettings`, `DatabaseSettings` or `ServerSettings`, whose URLs are `str`, not optional, so no
role checks them again.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar, get_type_hints


class SettingsError(ValueError):
    """An environment variable is missing or holds a value of the wrong type."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    # Servers. Unset means: start embedded ones (development and tests only).
    redis_url: str | None = None
    database_url: str | None = None

    # Gateway (ingest/).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    reply_timeout_s: float = 5.0
    max_body_bytes: int = 16 * 1024
    max_in_flight: int = 20_000
    max_pricing_lag: int = 200_000
    retry_after_s: int = 1
    gateway_redis_connections: int = 64  # the gateway's Redis pool
    reply_read_count: int = 1000  # replies read per XREAD of the gateway's reply stream
    reply_read_block_ms: int = 1000
    # An abandoned reply stream (its gateway died) expires this long after the gateway last refreshed it.
    reply_stream_ttl_s: int = 300
    # A pricing consumer that has not read its group for this long counts as dead: with none alive, 503.
    consumer_alive_ms: int = 5_000

    # Every role: how it talks to Redis, and how every loop backs off while a backend is away.
    redis_connect_timeout_s: float = 2.0
    redis_socket_timeout_s: float = 5.0  # a command (other than a blocking read) that takes longer has failed
    retry_delay_s: float = 0.2  # first pause after a failure; doubles (with jitter) on each failure in a row
    retry_max_delay_s: float = 2.0  # ... up to this

    # The HTTP edge (ingest/edge.py): read deadlines and connection bounds, so that no client can hold the
    # gateway's memory or a connection for long. A request's headers must arrive within HEADER_TIMEOUT_S
    # of its first byte, its body within BODY_TIMEOUT_S of the end of its headers (then 408 and close);
    # an idle keep-alive connection is closed after KEEPALIVE_TIMEOUT_S. A connection the gateway closes
    # first (after an error, a deadline, an idle timeout) is half-closed and drained for up to
    # LINGERING_CLOSE_S before the socket is closed, so the client reads the last answer, not a reset.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keepalive_timeout_s: float = 75.0
    lingering_close_s: float = 2.0
    max_header_bytes: int = 32 * 1024
    max_connections: int = 2048

    # Both agents (processors/): how they read their consumer groups.
    claim_idle_ms: int = 15_000  # another consumer's entry is taken over after this long unacknowledged
    agent_read_ahead: int = 1  # batches read but not yet handled, per agent process
    max_deliveries: int = 5  # an entry failing on its own is dead-lettered at its Nth delivery
    dead_letter_maxlen: int = 100_000  # bids:dead and audit:dead keep about this many letters
    consumer_expiry_s: int = 3600  # a consumer with nothing pending, idle this long, is removed from its group
    database_connect_timeout_s: float = 5.0  # an agent's connection attempt to PostgreSQL
    database_command_timeout_s: float = 30.0  # an agent's statement that takes longer has failed

    # Pricing agent (processors/).
    pricing_batch_size: int = 1000
    pricing_block_ms: int = 100
    pricing_concurrency: int = 1
    reply_stream_maxlen: int = 100_000
    # Processed `bids:priced` entries are kept this long for consumers that read without a group (PostgreSQL is the
    # system of record: one further behind replays from it by id, docs/capacity.md); grouped consumers never lose
    # an unprocessed entry to it.
    priced_retention_s: int = 3600
    requests_retention_s: int = 3600
    trim_interval_s: float = 10.0

    # The bids table's day partitions (schema/partitioning.py), maintained by the pricing agent and by
    # `bidengine db-maintain`. Retention 0 keeps every bid forever (docs/db-performance.md says why).
    bids_retention_days: int = 0  # a day's partition is dropped once its newest bid is this many days old
    bids_partitions_ahead_days: int = 7  # partitions exist this many days after today
    bids_maintenance_interval_s: float = 600.0  # how often the pricing agent runs the maintenance
    bids_maintenance_lock_timeout_ms: int = 50  # longest an insert can wait behind a maintenance lock

    # Audit agent (processors/).
    audit_report_cron: str = "0 6 * * *"
    audit_batch_size: int = 500
    audit_block_ms: int = 100
    # A read that did not fill a batch is followed by the next one this long after it started: the live stream
    # comes in batches of ~rate x interval (fewer reads and script calls per bid); flags appear this much later.
    audit_read_interval_ms: int = 100
    audit_flags_maxlen: int = 100_000  # audit:flags keeps about this many entries
    audit_reports_maxlen: int = 1_000  # audit:reports keeps about this many daily reports

    # Competitor monitor (monitor/).
    monitor_source_url: str = "https://dummyjson.com/products"
    monitor_interval_s: float = 300.0
    monitor_page_size: int = 100
    monitor_timeout_s: float = 10.0
    monitor_max_retries: int = 4
    monitor_list_max: int = 1000
    monitor_stream_maxlen: int = 100_000
    monitor_host: str = "127.0.0.1"
    monitor_port: int = 3001

    # On-call console (console/). See the README's Console section.
    console_host: str = "127.0.0.1"
    console_port: int = 8001
    # Fernet key (urlsafe base64 of 32 bytes) that signs and encrypts the session cookie. Required by
    # `bidengine console`; `bidengine run` generates one for development when it is unset.
    console_session_key: str | None = None
    console_session_idle_s: int = 30 * 60  # a session unused this long must log in again
    console_session_max_s: int = 12 * 3600  # and none lives longer than this, used or not
    # Behind a TLS-terminating proxy (the chart's ALB): take the scheme (Secure cookies, HSTS) from
    # X-Forwarded-Proto and the client address (login rate limits) from the last X-Forwarded-For hop.
    console_trust_forwarded: bool = False
    console_login_window_s: int = 15 * 60
    console_login_max_failures_per_user: int = 10  # failed logins per user name and window
    console_login_max_attempts_per_address: int = 30  # login attempts per client address and window
    console_password_min_length: int = 12
    console_hash_concurrency: int = 2  # argon2 hashes at once (64 MiB of memory each)
    console_backend_timeout_s: float = 2.0  # a page gives up on Redis / PostgreSQL after this
    console_page_size: int = 50  # rows per page (bids, flags, reports, dead letters, actions)
    console_flags_poll_s: float = 2.0  # how often an open Flags page asks for new flags
    console_flags_scan: int = 5000  # newest flags searched when filtering by product
    console_flag_lookup_scan: int = 2000  # audit:flags entries searched for one bid's flag
    console_bids_first_span_s: int = 60  # the first time slice a bid search reads (it doubles until a page is full)
    console_bids_max_span_s: int = 7 * 86400  # the most time one page of a bid search reads
    console_aggregates_max_products: int = 200_000  # product counters read to rank the top products
    console_competitors_read: int = 1000  # newest competitor_prices elements read
    console_lag_warn: int = 10_000  # a consumer group this far behind is shown as a warning
    console_actions_retention_days: int = 365  # operator action log rows kept
    console_db_pool_size: int = 5
    console_redis_max_connections: int = 20
    # Prometheus /metrics of the roles without an HTTP port of their own (the gateway serves /metrics on
    # GATEWAY_PORT). Each role gets its own port so `bidengine run` can start them side by side.
    metrics_host: str = "127.0.0.1"
    # False: the hot paths record nothing per request or batch (every /metrics still answers, with the process
    # metrics and the consumer-group state): to measure what the metrics cost, in the same run.
    metrics_enabled: bool = True
    pricing_metrics_port: int = 9101
    audit_metrics_port: int = 9102
    monitor_metrics_port: int = 9103

    log_level: str = "INFO"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from upper-case environment variables named after the fields (REDIS_URL, ...)."""
        env = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = env.get(field.name.upper())
            if raw is None or raw == "":
                continue
            values[field.name] = _coerce(field.name, hints[field.name], raw)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class RedisSettings(Settings):
    """Settings of a command that needs Redis."""

    redis_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisSettings:
        return _narrow(cls, settings)


@dataclass(frozen=True, kw_only=True)
class DatabaseSettings(Settings):
    """Settings of a command that needs PostgreSQL."""

    database_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> DatabaseSettings:
        return _narrow(cls, settings)


@dataclass(frozen=True, kw_only=True)
class ServerSettings(RedisSettings, DatabaseSettings):
    """Settings of a role that needs both servers (the gateway, the agents)."""

    redis_url: str
    database_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerSettings:
        return _narrow(cls, settings)


_NarrowT = TypeVar("_NarrowT", bound=Settings)


def _narrow(cls: type[_NarrowT], settings: Settings) -> _NarrowT:
    """`settings` as `cls`, or `SettingsError` naming every required URL that is unset."""
    required = [name for name in ("redis_url", "database_url") if get_type_hints(cls)[name] is str]
    missing = [name.upper() for name in required if not getattr(settings, name)]
    if missing:
        raise SettingsError(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    return cls(**{field.name: getattr(settings, field.name) for field in fields(settings)})


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _coerce(name: str, hint: Any, raw: str) -> Any:
    if hint is bool:
        if raw.lower() in _TRUE | _FALSE:
            return raw.lower() in _TRUE
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid boolean (true/false)")
    target = int if hint is int else float if hint is float else str
    try:
        return target(raw)
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {target.__name__}") from exc
