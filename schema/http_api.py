"""The gateway's public HTTP contract: pydantic models of every body, and the OpenAPI 3.1 document built from them.

`openapi_document()` is the only description of the contract in machine-readable form; the gateway serves it at
`GET /openapi.json`. It is never written by hand: the JSON Schemas come from the models below, and the tests
check the live gateway's answers against the document (tests/ingest/test_openapi.py: every status and body of
the README's table, and a bounded schemathesis run).

The request schema describes what the gateway accepts, not an idealised API. The legacy rules
(`legacy.validate_bid_data`, PHP's `is_numeric`) let numbers and numeric strings through, so each field is a
number or a numeric string. Where a rule cannot be written in JSON Schema (a numeric string's value, the
adjusted CPC of two fields together) the schema is the wider set, and the gateway answers 400 for the rest: a
body the gateway accepts always matches the schema, and a body that does not match is always a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from schema.database import MAX_MONEY, MAX_TARGET_ROAS, MIN_TARGET_ROAS

API_VERSION: Final = "1.0.0"
MAX_PRODUCT_ID: Final = 2**63 - 1
MAX_IDEMPOTENCY_KEY: Final = 255

# PHP 8's is_numeric() for strings: optional leading and trailing whitespace (space, \t, \n, \r, \v, \f), a sign,
# digits with an optional fraction (or a fraction alone), an optional exponent. No hex, no "inf"/"nan".
_PHP_WHITESPACE = r"[ \t\n\r\v\f]*"
NUMERIC_STRING: Final = rf"^{_PHP_WHITESPACE}[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?{_PHP_WHITESPACE}$"
# The key as the application sees it (HTTP strips surrounding whitespace): 1-255 printable ASCII characters.
IDEMPOTENCY_KEY_PATTERN: Final = rf"^[ -~]{{1,{MAX_IDEMPOTENCY_KEY}}}$"
UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _absent_by_default(schema: dict[str, Any]) -> None:
    """An optional member is left out of the body when absent, never sent as null: no null default in its schema."""
    schema.pop("default", None)


NumericString = Annotated[
    str,
    StringConstraints(pattern=NUMERIC_STRING),
    Field(description="A numeric string as PHP's is_numeric() accepts it; its value obeys the same limits."),
]
RequestId = Annotated[str, StringConstraints(pattern=UUID_PATTERN), Field(description="The bid's request id.")]


class BidRequest(BaseModel):
    """`POST /api/bid/` body. Other members are ignored."""

    model_config = ConfigDict(extra="allow", title="BidRequest")

    product_id: Annotated[
        Annotated[int, Field(ge=1, le=MAX_PRODUCT_ID)] | NumericString,
        Field(
            description=(
                "A whole number from 1 to 2^63-1: a JSON number with no fractional part (123, 123.0, 1e3) or a "
                'numeric string of one ("123", " 123 ", "1e3"). "0", 0, negative, fractional and larger values '
                'are a 400 ("Invalid product ID" for 0 and non-numeric values).'
            )
        ),
    ]
    current_cpc: Annotated[
        Annotated[float, Field(ge=0, le=MAX_MONEY)] | NumericString,
        Field(
            description=(
                f"The current cost per click, from 0 to {MAX_MONEY:.2f} (numeric(12, 2)), as a number or a numeric "
                'string. Negative or non-numeric values: "Invalid current CPC".'
            )
        ),
    ]
    target_roas: Annotated[
        Annotated[float, Field(ge=MIN_TARGET_ROAS, le=MAX_TARGET_ROAS)] | NumericString,
        Field(
            description=(
                f"The target return on ad spend in percent, from {MIN_TARGET_ROAS} to {MAX_TARGET_ROAS:.4f} "
                '(numeric(12, 4)), as a number or a numeric string. 0, negative or non-numeric values: "Invalid '
                'target ROAS". The adjusted CPC, round(current_cpc * target_roas / 100, 2), must also fit '
                f"{MAX_MONEY:.2f}, else 400."
            )
        ),
    ]


class BidAccepted(BaseModel):
    """200: the bid is committed (or was already, under this Idempotency-Key)."""

    model_config = ConfigDict(extra="forbid", title="BidAccepted")

    adjusted_cpc: Annotated[float, Field(ge=0, le=MAX_MONEY, description="round(current_cpc * target_roas / 100, 2)")]
    bid_id: Annotated[int, Field(ge=1, description="The stored bid's id (bidding_productbid.id).")]


Errors = Annotated[list[str], Field(min_length=1, description="What went wrong, legacy messages first.")]


class ErrorBody(BaseModel):
    """Every error: `{"errors": [...]}`."""

    model_config = ConfigDict(extra="forbid", title="Errors")

    errors: Errors


class BidNotStored(BaseModel):
    """422: the Idempotency-Key was used before for a different bid, or the bid could not be stored."""

    model_config = ConfigDict(extra="forbid", title="BidNotStored")

    errors: Errors
    request_id: RequestId | SkipJsonSchema[None] = Field(
        default=None, description="Present when the bid could not be stored.", json_schema_extra=_absent_by_default
    )


class BidNotConfirmed(BaseModel):
    """504: accepted but not confirmed within REPLY_TIMEOUT_S; retrying with the same Idempotency-Key is safe."""

    model_config = ConfigDict(extra="forbid", title="BidNotConfirmed")

    errors: Errors
    request_id: RequestId


class Health(BaseModel):
    """`GET /health`: the process is alive."""

    model_config = ConfigDict(extra="forbid", title="Health")

    status: Literal["ok"]


class Readiness(BaseModel):
    """`GET /ready`: Redis and PostgreSQL reachable, a pricing agent alive, and the pricing agents keeping up."""

    model_config = ConfigDict(extra="forbid", title="Readiness")

    status: Literal["ok", "unavailable"]
    redis: bool = Field(description="Redis answered the last check (every second).")
    postgres: bool = Field(description="PostgreSQL answered the last check.")
    pricing_lag: Annotated[int, Field(ge=0)] | None = Field(
        description="Bids the pricing group has not finished (undelivered + pending); null before the group exists."
    )
    pricing_consumers: Annotated[int, Field(ge=0)] | None = Field(
        description="Pricing agents alive (each announces itself at least every CONSUMER_ALIVE_MS; none: 503); "
        "null while Redis is unreachable."
    )
    in_flight: Annotated[int, Field(ge=0)] = Field(description="Bids of this gateway waiting for their reply.")
    problem: str | SkipJsonSchema[None] = Field(
        default=None,
        description="Why the gateway is not ready (only when it is not).",
        json_schema_extra=_absent_by_default,
    )


def _json(model: type[BaseModel], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
    }
    if headers:
        response["headers"] = headers
    return response


_REQUEST_ID_HEADER: Final = {
    "X-Request-Id": {
        "description": "The bid's request id (stored with the row; derived from the Idempotency-Key when given).",
        "required": True,
        "schema": {"type": "string", "pattern": UUID_PATTERN},
    }
}
_RETRY_AFTER_HEADER: Final = {
    "Retry-After": {
        "description": "Seconds to wait before retrying (RETRY_AFTER_S).",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}


def _post_bid() -> dict[str, Any]:
    return {
        "operationId": "postBid",
        "summary": "Price and store a bid",
        "description": (
            "Answers 200 only after the row is committed. adjusted_cpc is computed exactly as the legacy PHP "
            "helper computes it. A retry with the same Idempotency-Key and the same request after a 503, a 504 or "
            "a lost connection returns the same bid_id and adjusted_cpc and stores nothing new; the same key with "
            "another request is a 422."
        ),
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": (
                    "Names one bid, as in Stripe's API: the same key with the same request (product_id, current_cpc "
                    'and target_roas as numbers: 2, 2.0 and "2" are one value; 1.001 and 1.004 are two) replays '
                    "the stored bid; the same key with another request is a 422 and returns nothing of that bid."
                ),
                "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
            }
        ],
        "requestBody": {
            "required": True,
            "description": (
                "At most MAX_BODY_BYTES (16 KiB), as sent and once decoded; Content-Encoding gzip or deflate is "
                "decoded by the gateway."
            ),
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{BidRequest.__name__}"}}},
        },
        "responses": {
            "200": _json(
                BidAccepted,
                "Stored (or already stored under this Idempotency-Key for the same request).",
                _REQUEST_ID_HEADER,
            ),
            "400": _json(
                ErrorBody,
                "Invalid input: the legacy messages first (Invalid product ID, Invalid current CPC, Invalid target "
                "ROAS), then what the legacy code let through (malformed JSON, not an object, Missing field: ..., "
                "a product id that is not a whole number from 1 to 2^63-1, non-finite numbers, values or a result "
                "too large to store, a malformed Idempotency-Key); a gzip or deflate body that does not decode; a "
                "malformed chunked body; a body cut short by the client closing its side. Nothing is stored.",
            ),
            "408": _json(
                ErrorBody,
                "The headers (HEADER_TIMEOUT_S after their first byte) or the body (BODY_TIMEOUT_S after the "
                "headers) did not arrive in time; the connection is closed. Nothing is stored.",
            ),
            "413": _json(ErrorBody, "The body is larger than MAX_BODY_BYTES (16 KiB), as sent or once decompressed."),
            "415": _json(
                ErrorBody,
                "Content-Type is not application/json, or Content-Encoding is not gzip, x-gzip, deflate or "
                "identity (then with Accept-Encoding: gzip, deflate).",
            ),
            "417": _json(ErrorBody, "An Expect header other than 100-continue."),
            "431": _json(
                ErrorBody, "The headers are still incomplete after MAX_HEADER_BYTES; the connection is closed."
            ),
            "422": _json(
                BidNotStored,
                "The Idempotency-Key was used before for a different bid, or the bid could not be stored.",
                _REQUEST_ID_HEADER,
            ),
            "503": _json(
                ErrorBody,
                "Redis or PostgreSQL unreachable, no pricing agent alive, the pricing agents too far behind "
                "(MAX_PRICING_LAG), too many bids in flight in this gateway (MAX_IN_FLIGHT), or MAX_CONNECTIONS "
                "connections open to it (then the connection is closed). Nothing is stored; retry after Retry-After.",
                _RETRY_AFTER_HEADER,
            ),
            "504": _json(
                BidNotConfirmed,
                "Accepted but not confirmed within REPLY_TIMEOUT_S; retry with the same Idempotency-Key.",
                _REQUEST_ID_HEADER,
            ),
        },
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the gateway's public API, built from the models of this module."""
    models: list[type[BaseModel]] = [
        BidRequest,
        BidAccepted,
        ErrorBody,
        BidNotStored,
        BidNotConfirmed,
        Health,
        Readiness,
    ]
    _, definitions = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/components/schemas/{model}"
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bidengine gateway",
            "version": API_VERSION,
            "description": "Bidders post bids; the gateway answers with the adjusted CPC once the bid is stored.",
        },
        "paths": {
            "/api/bid/": {"post": _post_bid()},
            "/health": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "Liveness: the process is alive",
                    "responses": {"200": _json(Health, "Alive.")},
                }
            },
            "/ready": {
                "get": {
                    "operationId": "getReady",
                    "summary": "Readiness: Redis and PostgreSQL reachable, the pricing agents keeping up",
                    "responses": {
                        "200": _json(Readiness, "Ready."),
                        "503": _json(Readiness, "Not ready; `problem` says why."),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics of this gateway (docs/metrics.md)",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document",
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {"schemas": definitions["$defs"]},
    }
