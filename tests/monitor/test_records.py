"""The record contract and the normalization of upstream products (pure, no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.upstream import normalize
from schema.competitor import CompetitorPrice, iso_utc

OBSERVED = datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=UTC)
RECORD_KEYS = [
    "productId",
    "productName",
    "brand",
    "category",
    "price",
    "discountPercentage",
    "rating",
    "stock",
    "timestamp",
    "source",
]


def product(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": 7,
        "title": "Essence Mascara Lash Princess",
        "description": "ignored",
        "category": "beauty",
        "price": 9.99,
        "discountPercentage": 7.17,
        "rating": 4.94,
        "stock": 5,
        "brand": "Essence",
        "tags": ["beauty"],
        "dimensions": {"width": 23.17},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def test_a_product_becomes_the_record_consumers_read() -> None:
    result = normalize([product()], OBSERVED)

    assert result.rejected == []
    decoded = json.loads(result.records[0].to_json())
    assert list(decoded) == RECORD_KEYS
    assert decoded == {
        "productId": 7,
        "productName": "Essence Mascara Lash Princess",
        "brand": "Essence",
        "category": "beauty",
        "price": 9.99,
        "discountPercentage": 7.17,
        "rating": 4.94,
        "stock": 5,
        "timestamp": "2025-03-01T12:30:05.123Z",
        "source": "dummyjson",
    }


def test_a_product_without_brand_keeps_the_key_as_null() -> None:
    result = normalize([product(brand=DROP)], OBSERVED)

    decoded = json.loads(result.records[0].to_json())
    assert "brand" in decoded
    assert decoded["brand"] is None


def test_integer_prices_are_numbers_in_the_record() -> None:
    decoded = json.loads(normalize([product(price=1299)], OBSERVED).records[0].to_json())
    assert decoded["price"] == 1299.0


@pytest.mark.parametrize(
    ("broken", "field"),
    [
        (product(price="N/A"), "price"),
        (product(price="9.99"), "price"),  # a numeric string is still not a number: the feed is broken
        (product(price=True), "price"),
        (product(price=float("nan")), "price"),
        (product(price=-1), "price"),
        (product(price=DROP), "price"),
        (product(price=None), "price"),
        (product(title=DROP), "title"),
        (product(title=""), "title"),
        (product(id="sku-7"), "id"),
        (product(stock=2.5), "stock"),
        (product(category=DROP), "category"),
        ("not an object", "item"),
        (None, "item"),
    ],
)
def test_broken_items_are_rejected_with_a_reason(broken: Any, field: str) -> None:
    result = normalize([product(id=1), broken, product(id=2)], OBSERVED)

    assert [r.productId for r in result.records] == [1, 2]
    assert len(result.rejected) == 1
    assert result.rejected[0].index == 1
    assert field in result.rejected[0].reason


def test_a_product_listed_twice_in_one_poll_is_kept_once() -> None:
    result = normalize([product(id=3, price=1.0), product(id=3, price=2.0)], OBSERVED)

    assert [(r.productId, r.price) for r in result.records] == [(3, 1.0)]
    assert "duplicate" in result.rejected[0].reason


def test_timestamps_are_utc_with_milliseconds_and_z() -> None:
    paris = timezone(timedelta(hours=1))
    assert iso_utc(datetime(2025, 1, 2, 3, 4, 5, 678900, tzinfo=paris)) == "2025-01-02T02:04:05.678Z"


def test_a_record_read_back_equals_the_record_written() -> None:
    record = normalize([product(brand=DROP)], OBSERVED).records[0]
    assert CompetitorPrice.from_json(record.to_json()) == record


def test_a_record_needs_an_aware_timestamp() -> None:
    with pytest.raises(ValidationError):
        CompetitorPrice(
            productId=1,
            productName="x",
            brand=None,
            category="c",
            price=1.0,
            discountPercentage=0.0,
            rating=4.0,
            stock=1,
            timestamp=datetime(2025, 1, 1),  # naive: no time zone
        )
