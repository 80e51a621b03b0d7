"""The shapes the DummyJSON products API sends, and their normalization into `CompetitorPrice` records.

Validation is strict on purpose: a price that arrives as a string, a boolean or NaN is a sign the source is
broken, and a wrong price next to our bids is worse than a missing one. Unknown keys are ignored, since the
API adds fields over time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schema.competitor import CompetitorPrice


class UpstreamProduct(BaseModel):
    """The fields of a DummyJSON product the monitor uses (the API sends many more)."""

    model_config = ConfigDict(strict=True, extra="ignore")

    id: int = Field(ge=1)
    title: str = Field(min_length=1)
    brand: str | None = None  # absent for many products (groceries, kitchen accessories, ...)
    category: str = Field(min_length=1)
    price: float = Field(ge=0, allow_inf_nan=False)
    discountPercentage: float = Field(allow_inf_nan=False)  # the API's camelCase names
    rating: float = Field(allow_inf_nan=False)
    stock: int


class ProductsPage(BaseModel):
    """One response of `GET /products?limit=&skip=`. `limit` is the number of products it holds."""

    model_config = ConfigDict(strict=True, extra="ignore")

    # Items stay unvalidated here: one bad item is skipped on its own, it does not reject the page.
    products: list[Any]
    total: int = Field(ge=0)
    skip: int = Field(ge=0)
    limit: int = Field(ge=0)


@dataclass(frozen=True, slots=True)
class Rejected:
    """An upstream item that did not become a record, with why (for the logs)."""

    index: int
    product_id: object
    reason: str


@dataclass(frozen=True, slots=True)
class Normalized:
    records: list[CompetitorPrice]
    rejected: list[Rejected]


def normalize(items: Sequence[Any], observed_at: datetime) -> Normalized:
    """Turn raw upstream items into records, skipping (and reporting) the ones that do not validate.

    A product id seen twice keeps its first occurrence: the catalogue can shift between two page requests.
    """
    records: list[CompetitorPrice] = []
    rejected: list[Rejected] = []
    seen: set[int] = set()
    for index, item in enumerate(items):
        product_id = item.get("id") if isinstance(item, dict) else None
        try:
            product = UpstreamProduct.model_validate(item)
        except ValidationError as exc:
            rejected.append(Rejected(index, product_id, _summary(exc)))
            continue
        if product.id in seen:
            rejected.append(Rejected(index, product.id, "duplicate product id in one poll"))
            continue
        seen.add(product.id)
        records.append(
            CompetitorPrice(
                productId=product.id,
                productName=product.title,
                brand=product.brand,
                category=product.category,
                price=product.price,
                discountPercentage=product.discountPercentage,
                rating=product.rating,
                stock=product.stock,
                timestamp=observed_at,
            )
        )
    return Normalized(records, rejected)


def _summary(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
