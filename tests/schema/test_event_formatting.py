"""The shortcuts in the events' formatting give the text the plain formatting gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from schema.events import PricedBid, money

CENT = Decimal("0.01")


@given(
    st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**12), max_value=10**12),
        st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-(10**8), max_value=10**8),
        st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**12), max_value=10**12),
        st.sampled_from([Decimal("0.00"), Decimal("-0.00"), Decimal("1E+2"), Decimal("1.2E-7"), Decimal("5")]),
    )
)
def test_money_is_the_amount_quantized_to_cents(value: Decimal) -> None:
    assert money(value) == f"{value.quantize(CENT)}"


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_money_of_a_float_is_its_shortest_decimal_quantized(value: float) -> None:
    assert money(value) == f"{Decimal(repr(value)).quantize(CENT)}"


def priced(calculated_at: datetime) -> PricedBid:
    return PricedBid(1, "r", 2, Decimal("1.50"), Decimal("150.0000"), Decimal("2.25"), calculated_at)


def test_calculated_at_is_the_isoformat_of_each_datetime_even_when_equal_ones_differ_in_zone() -> None:
    moment = datetime(2026, 12, 1, 10, 0, 0, 123456, tzinfo=UTC)
    elsewhere = moment.astimezone(timezone(timedelta(hours=2)))
    assert moment == elsewhere
    for value in (moment, elsewhere, moment, moment.replace(tzinfo=None), elsewhere):
        assert priced(value).to_fields()["calculated_at"] == value.isoformat()
