from dataclasses import fields
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from schema.database import BIDS_TABLE, apply_migrations
from schema.events import BidRequested, EventDecodeError, money
from schema.settings import DatabaseSettings, RedisSettings, ServerSettings, Settings, SettingsError


def test_settings_read_typed_values_from_environment() -> None:
    settings = Settings.from_env({"GATEWAY_PORT": "9000", "REPLY_TIMEOUT_S": "2.5", "REDIS_URL": "redis://x"})
    assert settings.gateway_port == 9000
    assert settings.reply_timeout_s == 2.5
    assert settings.redis_url == "redis://x"
    assert settings.database_url is None


def test_settings_reject_malformed_numbers() -> None:
    with pytest.raises(SettingsError, match="GATEWAY_PORT"):
        Settings.from_env({"GATEWAY_PORT": "eighty"})


def test_bid_request_round_trips_floats_exactly() -> None:
    event = BidRequested("id", "bids:replies:g", "r1", 7, 0.1 + 0.2, 150.0)
    assert BidRequested.from_fields(event.to_fields()) == event


def test_bid_request_decode_names_the_missing_field() -> None:
    with pytest.raises(EventDecodeError, match="reply_to"):
        BidRequested.from_fields({"request_id": "x"})


def test_money_has_two_decimals() -> None:
    assert money(Decimal("2.5")) == "2.50"
    assert money(2.25) == "2.25"


async def test_migrations_are_idempotent_and_create_the_legacy_table(database_url: str, db: asyncpg.Pool) -> None:
    assert apply_migrations(database_url) == []
    columns = await db.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", BIDS_TABLE
    )
    names = {row["column_name"] for row in columns}
    assert {"id", "product_id", "current_cpc", "target_roas", "adjusted_cpc", "calculated_at"} <= names
    assert "request_id" in names


def test_readme_documents_every_setting() -> None:
    """Each setting appears in the README's settings table as its environment variable."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    table = "\n".join(line for line in readme.splitlines() if line.startswith("| "))
    missing = [f.name.upper() for f in fields(Settings) if f"`{f.name.upper()}`" not in table]
    assert missing == []


def test_commands_get_settings_with_the_urls_they_need() -> None:
    both = Settings(redis_url="redis://r", database_url="postgresql://d")
    assert ServerSettings.from_settings(both).database_url == "postgresql://d"
    assert RedisSettings.from_settings(Settings(redis_url="redis://r")).redis_url == "redis://r"
    with pytest.raises(SettingsError, match=r"^REDIS_URL and DATABASE_URL are required$"):
        ServerSettings.from_settings(Settings())
    with pytest.raises(SettingsError, match=r"^DATABASE_URL is required$"):
        DatabaseSettings.from_settings(Settings(redis_url="redis://r"))
