"""Configuration, read once from the environment into one typed object.

Every role takes a `Settings` instead of reading `os.environ` itself, so the full list of knobs lives here
and is documented in the README.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, get_type_hints


class SettingsError(ValueError):
    """An environment variable holds a value of the wrong type."""


@dataclass(frozen=True, slots=True)
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

    # Pricing agent (processors/).
    pricing_batch_size: int = 1000
    pricing_block_ms: int = 100
    pricing_concurrency: int = 1
    claim_idle_ms: int = 15_000
    reply_stream_maxlen: int = 100_000
    priced_retention_s: int = 24 * 3600
    requests_retention_s: int = 3600
    trim_interval_s: float = 10.0

    # Audit agent (processors/).
    audit_report_cron: str = "0 6 * * *"
    audit_batch_size: int = 500

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

    # Prometheus /metrics of the roles without an HTTP port of their own (the gateway serves /metrics on
    # GATEWAY_PORT). Each role gets its own port so `bidengine run` can start them side by side.
    metrics_host: str = "127.0.0.1"
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


def _coerce(name: str, hint: Any, raw: str) -> Any:
    target = int if hint is int else float if hint is float else str
    try:
        return target(raw)
    except ValueError as exc:
        raise SettingsError(f"{name.upper()}={raw!r} is not a valid {target.__name__}") from exc
