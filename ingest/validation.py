"""Turning a request body into a bid, with the legacy error messages first.

The legacy rules (`legacy.validate_bid_data`, a faithful port of the PHP helper) decide first, and their
messages lead the error list, so existing clients see what they always saw. The gateway is stricter than
PHP where PHP let through what cannot be stored or makes no sense as a bid; those extra rules live here:

* the body must be well-formed JSON (PHP's json_decode rules: no NaN/Infinity literals) and an object;
* every field must be present;
* `product_id` must be a whole number from 1 to 2**63 - 1 (PHP accepts "-5", "1.5" or "1e3");
* amounts must be finite (PHP accepts 1e400, which JSON decoding turns into INF);
* values and the adjusted CPC must fit their columns (numeric(12, 2) money, numeric(12, 4) ROAS).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from legacy import calculate_adjusted_cpc, validate_bid_data
from schema.database import MAX_MONEY, MAX_TARGET_ROAS, MIN_TARGET_ROAS

FIELDS = ("product_id", "current_cpc", "target_roas")
MAX_PRODUCT_ID = 2**63 - 1


class BidValidationError(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class BidInput:
    product_id: int
    current_cpc: float
    target_roas: float


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every body: `json.loads(body, parse_constant=...)` would build a new decoder per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        # What json.loads does with bytes (UTF-8, -16 or -32, detected as RFC 8259 allows), then our decoder.
        document = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BidValidationError(["Malformed JSON body"]) from None
    if not isinstance(document, dict):
        raise BidValidationError(["Request body must be a JSON object"])
    return document


def _as_float(value: Any) -> float:
    """The float PHP would use for a value `is_numeric` accepted (numbers and numeric strings)."""
    if isinstance(value, str):
        return float(value.strip())
    return float(value)


def _whole_number(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    try:
        number = _as_float(value)
    except (ValueError, OverflowError):
        return None
    if isinstance(value, str):
        # Decimal strings of whole numbers keep full precision (floats lose it above 2**53). Longer than
        # 2**63 - 1 can be is out of range anyway (and int() refuses strings over 4300 digits).
        text = value.strip()
        digits = text.lstrip("+-")
        if digits.isdigit():
            significant = digits.lstrip("0") or "0"
            if len(significant) > 19:
                return None
            return -int(significant) if text.startswith("-") else int(significant)
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _amount(name: str, value: Any, errors: list[str], *, maximum: float, minimum: float = 0.0) -> float:
    try:
        number = _as_float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        errors.append(f"{name} must be a finite number")
    elif number > maximum:
        errors.append(f"{name} is too large to store (at most {maximum:.{2 if maximum == MAX_MONEY else 4}f})")
    elif 0 < number < minimum:
        errors.append(f"{name} is too small to store (at least {minimum})")
    return number


# Number types that skip the rules below when their values are in range (bool, an int subclass, is not one).
_PLAIN_NUMBERS = (int, float)
# cpc * roas at most this: the adjusted CPC, cpc * roas / 100 rounded to cents, is far below MAX_MONEY.
_SURELY_STORABLE_PRODUCT = MAX_MONEY * 50


def validate_bid(document: dict[str, Any]) -> BidInput:
    """Return the bid, or raise `BidValidationError` listing every problem (legacy messages first).

    The common body (a whole-number id and two plain numbers, all in range) is accepted without running the
    rules one by one: for such values every legacy rule and every rule of `validate_bid_by_the_rules` holds
    (a non-zero int id is numeric and not empty; amounts >= 0 and >= MIN_TARGET_ROAS > 0 pass PHP's
    comparisons; bounded values are finite), and an adjusted CPC of at most half the money limit cannot round
    past it. Anything else, NaN included (it fails every comparison), takes the rules. The result is the
    same either way (tests/ingest/test_validation.py compares both on generated bodies); this only saves
    the gateway the PHP-faithful scan for the body nearly every bidder sends.
    """
    product_id: Any = document.get("product_id")
    current_cpc: Any = document.get("current_cpc")
    target_roas: Any = document.get("target_roas")
    if (
        type(product_id) is int
        and type(current_cpc) in _PLAIN_NUMBERS
        and type(target_roas) in _PLAIN_NUMBERS
        and 1 <= product_id <= MAX_PRODUCT_ID
        and 0 <= current_cpc <= MAX_MONEY
        and MIN_TARGET_ROAS <= target_roas <= MAX_TARGET_ROAS
    ):
        cpc, roas = float(current_cpc), float(target_roas)
        if cpc * roas <= _SURELY_STORABLE_PRODUCT:
            return BidInput(product_id, cpc, roas)
    return validate_bid_by_the_rules(document)


def validate_bid_by_the_rules(document: dict[str, Any]) -> BidInput:
    """`validate_bid`, every rule checked in turn: the legacy rules, then the gateway's own."""
    product_id, current_cpc, target_roas = (document.get(name) for name in FIELDS)
    errors = validate_bid_data(product_id, current_cpc, target_roas)
    errors.extend(f"Missing field: {name}" for name in FIELDS if name not in document)
    if errors:
        raise BidValidationError(errors)

    whole = _whole_number(product_id)
    if whole is None or not 1 <= whole <= MAX_PRODUCT_ID:
        errors.append(f"product_id must be a whole number from 1 to {MAX_PRODUCT_ID}")
    cpc = _amount("current_cpc", current_cpc, errors, maximum=MAX_MONEY)
    roas = _amount("target_roas", target_roas, errors, maximum=MAX_TARGET_ROAS, minimum=MIN_TARGET_ROAS)
    if errors or whole is None:
        raise BidValidationError(errors)
    # The legacy rules passed (target_roas > 0, current_cpc >= 0), so the helper cannot raise here.
    adjusted = calculate_adjusted_cpc(cpc, roas)
    if adjusted > MAX_MONEY:
        raise BidValidationError([f"adjusted CPC {adjusted:.2f} is too large to store (at most {MAX_MONEY:.2f})"])
    return BidInput(whole, cpc, roas)


def parse_bid(body: bytes) -> BidInput:
    return validate_bid(decode_body(body))
