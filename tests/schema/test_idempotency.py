"""`schema.idempotency`: what "the same request" is, pinned to its documented encoding; and its column."""

from __future__ import annotations

import hashlib
import struct
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from yoyo import get_backend, read_migrations

from schema.database import BIDS_TABLE, apply_migrations, migrations_path, yoyo_url
from schema.idempotency import request_fingerprint


def test_request_fingerprint_is_one_value_per_number_however_written() -> None:
    two = request_fingerprint(7, 2.0, 150.0)
    assert request_fingerprint(7, 2, 150) == two  # an int and a float of one value
    assert request_fingerprint(7, float("2.00"), float("1.5e2")) == two
    assert request_fingerprint(7, -0.0, 150.0) == request_fingerprint(7, 0.0, 150.0)
    # Values that round to the same cent, or to the same numeric(12, 4), are other requests.
    assert request_fingerprint(7, 1.001, 150.0) != request_fingerprint(7, 1.004, 150.0)
    assert request_fingerprint(7, 2.0, 150.00001) != two
    assert request_fingerprint(8, 2.0, 150.0) != two
    assert request_fingerprint(7, 150.0, 2.0) != two  # the fields are not interchangeable


def test_request_fingerprint_encoding_is_pinned() -> None:
    """The documented encoding, recomputed by hand: other producers and the storage must agree with it."""
    canonical = (7).to_bytes(8, "big", signed=True) + struct.pack(">d", 2.0) + struct.pack(">d", 150.0)
    expected = int.from_bytes(hashlib.blake2b(canonical, digest_size=8).digest(), "big", signed=True)
    assert request_fingerprint(7, 2.0, 150.0) == expected
    assert -(2**63) <= request_fingerprint(2**63 - 1, 9_999_999_999.99, 99_999_999.9999) < 2**63
    with pytest.raises(ValueError, match="64-bit"):
        request_fingerprint(2**63, 1.0, 1.0)


def test_request_fingerprint_column_is_nullable_and_rolls_back(database_url: str) -> None:
    """Migration 0003 adds a nullable bigint with no default (no table rewrite); its rollback removes it."""
    name = f"bidengine_rollback_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(database_url)._replace(path=f"/{name}"))
    column_sql = (
        "SELECT data_type, is_nullable, column_default FROM information_schema.columns"
        " WHERE table_name = %s AND column_name = 'request_fingerprint'"
    )
    try:
        apply_migrations(url)
        with psycopg.connect(url) as conn:
            assert conn.execute(column_sql, (BIDS_TABLE,)).fetchall() == [("bigint", "YES", None)]
        backend = get_backend(yoyo_url(url))
        migrations = read_migrations(migrations_path())
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(migrations.filter(lambda m: m.id.startswith("0003"))))
        with psycopg.connect(url) as conn:
            assert conn.execute(column_sql, (BIDS_TABLE,)).fetchall() == []
        assert apply_migrations(url) == ["0003_request_fingerprint"]
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
