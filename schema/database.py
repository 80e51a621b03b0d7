"""The SQL schema: yoyo migrations shipped with this package, and the one function that applies them."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

BIDS_TABLE = "bidding_productbid"
# The sequence that numbers bids (created by bigserial in 0001; it keeps numbering across the partitioned layout).
BIDS_ID_SEQUENCE = "bidding_productbid_id_seq"
# One row per stored bid, keyed by request id: what makes request ids unique (migration 0004).
REQUEST_LEDGER = "bidding_request_ledger"

# Largest amount a numeric(12, 2) column holds; the gateway rejects bids whose values would not fit.
MAX_MONEY = 9_999_999_999.99
# target_roas is numeric(12, 4): smaller positive values would be stored as 0.0000.
MAX_TARGET_ROAS = 99_999_999.9999
MIN_TARGET_ROAS = 0.0001


def migrations_path() -> str:
    return str(resources.files("schema") / "migrations")


def yoyo_url(database_url: str) -> str:
    """yoyo speaks DB-API: point it at psycopg 3 for a postgresql:// URL."""
    parts = urlsplit(database_url)
    if parts.scheme in ("postgres", "postgresql"):
        parts = parts._replace(scheme="postgresql+psycopg")
    return urlunsplit(parts)


def apply_migrations(database_url: str, *, up_to: str | None = None) -> list[str]:
    """Apply every pending migration; return the ids applied (idempotent, safe to run on each start).

    Then, once migration 0004 is in, move a legacy unpartitioned bids table to the day-partitioned layout,
    online (`schema.partitioning.convert_to_partitioned`). `up_to` stops after that migration id, without the
    conversion (benchmarks and tests that prepare a database in an older layout).
    """
    from schema.partitioning import convert_to_partitioned

    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(migrations_path())
    if up_to is not None:
        migrations = migrations.filter(lambda migration: migration.id <= up_to)
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    if up_to is None:
        convert_to_partitioned(database_url)
    return [migration.id for migration in pending]
