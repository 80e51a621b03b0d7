from decimal import Decimal

import asyncpg
import pytest

from schema.database import BIDS_TABLE, apply_migrations
from schema.events import BidRequested, EventDecodeError, money
from schema.settings import Settings, SettingsError


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
