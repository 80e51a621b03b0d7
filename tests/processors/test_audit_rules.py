from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.audit import deviation_pct, is_flagged


@pytest.mark.parametrize(
    ("current", "adjusted", "flagged"),
    [
        ("10.00", "12.00", False),  # exactly +20%
        ("10.00", "12.01", True),
        ("10.00", "8.00", False),  # exactly -20%
        ("10.00", "7.99", True),
        ("10.00", "10.00", False),
        ("0.05", "0.06", False),  # +20% on a tiny bid, still exact
        ("0.05", "0.07", True),
        ("0.00", "0.00", False),  # no move from a zero bid
        ("0.00", "0.01", True),  # any spend from a zero bid
    ],
)
def test_threshold_edges(current: str, adjusted: str, flagged: bool) -> None:
    assert is_flagged(Decimal(current), Decimal(adjusted)) is flagged


@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_rule_matches_integer_cents(current_cents: int, adjusted_cents: int) -> None:
    # |a - c| > c / 5  <=>  5 |a - c| > c, in whole cents: no rounding anywhere.
    current = Decimal(current_cents).scaleb(-2)
    adjusted = Decimal(adjusted_cents).scaleb(-2)
    assert is_flagged(current, adjusted) is (5 * abs(adjusted_cents - current_cents) > current_cents)


def test_deviation_pct() -> None:
    assert deviation_pct(Decimal("10.00"), Decimal("12.01")) == Decimal("20.10")
    assert deviation_pct(Decimal("10.00"), Decimal("7.99")) == Decimal("-20.10")
    assert deviation_pct(Decimal("3.00"), Decimal("2.00")) == Decimal("-33.33")
    assert deviation_pct(Decimal("0.00"), Decimal("1.00")) is None
