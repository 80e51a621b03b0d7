"""The SQL schema: yoyo migrations shipped with this package, and the one function that applies them."""

from __future__ import annotations

from importlib import resources
from urllib.parse import urlsplit, urlunsplit

from yoyo import get_backend, read_migrations

BIDS_TABLE = "bidding_productbid"

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


def apply_migrations(database_url: str) -> list[str]:
    """Apply every pending migration; return the ids applied (idempotent, safe to run on each start)."""
    backend = get_backend(yoyo_url(database_url))
    migrations = read_migrations(migrations_path())
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [migration.id for migration in pending]
