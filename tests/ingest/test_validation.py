"""The validation fast path gives exactly what the rules give, for every body.

`validate_bid` accepts the common body (a whole-number id and two plain numbers in range) without running the
legacy rules one by one; `validate_bid_by_the_rules` always runs them. Both must agree on every document: the
same bid, or the same errors in the same order.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ingest.validation import BidInput, BidValidationError, decode_body, validate_bid, validate_bid_by_the_rules
from schema.database import MAX_MONEY, MAX_TARGET_ROAS, MIN_TARGET_ROAS

EDGES = [
    0,
    1,
    -1,
    2**63 - 1,
    2**63,
    -(2**63),
    2**64,
    10**400,
    0.0,
    -0.0,
    0.5,
    1.5,
    MIN_TARGET_ROAS,
    MIN_TARGET_ROAS / 2,
    MAX_TARGET_ROAS,
    MAX_TARGET_ROAS * 1.0000001,
    MAX_MONEY,
    MAX_MONEY + 0.01,
    MAX_MONEY * 50,
    math.inf,
    -math.inf,
    math.nan,
    True,
    False,
    None,
    "1",
    " 1.5",
    "1e3",
    "abc",
    "",
    [],
    {},
]
values = st.one_of(
    st.sampled_from(EDGES),
    st.integers(),
    st.integers(min_value=-10, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=MAX_MONEY * 1.01),
    st.floats(min_value=0, max_value=MAX_TARGET_ROAS * 1.01),
    st.text(max_size=8),
)


def outcome(validate: Any, document: dict[str, Any]) -> BidInput | list[str]:
    try:
        return validate(document)
    except BidValidationError as exc:
        return exc.errors


def same(left: BidInput | list[str], right: BidInput | list[str]) -> bool:
    if isinstance(left, BidInput) and isinstance(right, BidInput):
        # NaN is never accepted, so plain equality of the floats is exact here.
        return left == right and type(left.current_cpc) is type(right.current_cpc) is float
    return left == right


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    product_id=values,
    current_cpc=values,
    target_roas=values,
    present=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
@example(product_id=123, current_cpc=1.5, target_roas=150.0, present=(True, True, True))
@example(product_id=1, current_cpc=MAX_MONEY, target_roas=MAX_TARGET_ROAS, present=(True, True, True))
@example(product_id=1, current_cpc=MAX_MONEY, target_roas=100.0, present=(True, True, True))
@example(product_id=1, current_cpc=MAX_MONEY, target_roas=100.01, present=(True, True, True))
@example(product_id=True, current_cpc=1.5, target_roas=150.0, present=(True, True, True))
def test_the_fast_path_agrees_with_the_rules(
    product_id: Any, current_cpc: Any, target_roas: Any, present: tuple[bool, bool, bool]
) -> None:
    document = {
        name: value
        for name, value, kept in zip(
            ("product_id", "current_cpc", "target_roas"), (product_id, current_cpc, target_roas), present, strict=True
        )
        if kept
    }
    assert same(outcome(validate_bid, document), outcome(validate_bid_by_the_rules, document))


def test_the_common_body_is_accepted_as_the_rules_accept_it() -> None:
    document = decode_body(b'{"product_id": 123, "current_cpc": 1.50, "target_roas": 150.0}')
    assert validate_bid(document) == validate_bid_by_the_rules(document) == BidInput(123, 1.5, 150.0)


def test_decoding_is_json_loads_with_constants_refused() -> None:
    for body in (
        '{"product_id": 1, "current_cpc": 2, "target_roas": 3}'.encode("utf-16"),
        '{"a": "\u00e9"}'.encode("utf-32-le"),
        b'\xef\xbb\xbf{"a": 1}',
        b'{"a": 1e400}',
    ):
        assert decode_body(body) == json.loads(body)
    for refused in (b'{"a": NaN}', b'{"a": -Infinity}', b"[1]", b"\xff", b""):
        with pytest.raises(BidValidationError):
            decode_body(refused)
