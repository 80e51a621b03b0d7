"""The competitor price record: the contract between the monitor and every consumer of its output.

Each record is stored as one JSON object, both as an element of the `competitor_prices` list and as the
`record` field of a `competitor_prices:stream` entry. The key names are camelCase because the consumers of
the old TypeScript service already read them; renaming one is a breaking change.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_serializer, field_validator

SOURCE_DUMMYJSON: Final = "dummyjson"

# The stream entry field that holds the record's JSON.
STREAM_RECORD_FIELD: Final = "record"


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and a `Z` suffix, as JavaScript's `Date.toISOString()` writes it.

    The old service wrote this exact shape, so existing consumers keep parsing it; it also sorts as text.
    """
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class CompetitorPrice(BaseModel):
    """One observation of one competitor product's price."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    productId: int  # the wire names (camelCase) are the contract
    productName: str
    brand: str | None  # many products have none: the key is kept, with null
    category: str
    price: float = Field(ge=0, allow_inf_nan=False)
    discountPercentage: float = Field(allow_inf_nan=False)
    rating: float = Field(allow_inf_nan=False)
    stock: int
    timestamp: AwareDatetime  # when the monitor observed the price; every record of one poll shares it
    source: Literal["dummyjson"] = SOURCE_DUMMYJSON

    @field_validator("timestamp")
    @classmethod
    def _timestamp_in_utc_milliseconds(cls, moment: datetime) -> datetime:
        # Kept at the precision it is written with, so a record read back equals the one published.
        utc = moment.astimezone(UTC)
        return utc.replace(microsecond=utc.microsecond // 1000 * 1000)

    @field_serializer("timestamp")
    def _timestamp_as_iso_utc(self, moment: datetime) -> str:
        return iso_utc(moment)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, raw: str | bytes) -> CompetitorPrice:
        return cls.model_validate_json(raw)
