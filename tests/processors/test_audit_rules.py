"""The flag rule, exact in integer cents, against the decimal rule it replaces."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.audit import is_flagged


def cents(amount: str) -> int:
    return int(Decimal(amount).scaleb(2))


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
        ("99999999.99", "119999999.99", True),  # large amounts stay exact (no float)
        ("99999999.99", "119999999.98", False),
    ],
)
def test_threshold_edges(current: str, adjusted: str, flagged: bool) -> None:
    assert is_flagged(cents(current), cents(adjusted)) is flagged


@given(st.integers(min_value=0, max_value=10**12 - 1), st.integers(min_value=0, max_value=10**12 - 1))
def test_rule_matches_the_decimal_rule(current_cents: int, adjusted_cents: int) -> None:
    # The documented rule, |adjusted - current| > 0.20 * current, in exact decimals on the stored amounts.
    current = Decimal(current_cents).scaleb(-2)
    adjusted = Decimal(adjusted_cents).scaleb(-2)
    assert is_flagged(current_cents, adjusted_cents) is (abs(adjusted - current) > Decimal("0.20") * current)
