"""Regression tests for what the earlier Python port got wrong, and the PHP facts finance relies on.

Every expected value here was read off php-cli 8.2 (the differential tests check the same inputs live).
"""

from __future__ import annotations

import math

import pytest

from legacy import (
    InvalidArgumentError,
    calculate_adjusted_cpc,
    is_numeric,
    php_compare,
    php_empty,
    php_round,
    validate_bid_data,
)

ROAS_MESSAGE = "Target ROAS must be greater than 0"
CPC_MESSAGE = "Current CPC must be non-negative"
ALL_ERRORS = ["Invalid product ID", "Invalid current CPC", "Invalid target ROAS"]


@pytest.mark.parametrize(
    ("cpc", "roas", "expected"),
    [
        (1.15, 150, 1.73),  # 1.15 * 1.5 is 1.7249999999999999 as a double; PHP pre-rounds it to 1.725
        (2.675, 100, 2.68),
        (1.005, 100, 1.01),
        ("1.15", "150", 1.73),
        (" 1.15\n", "1.5e2", 1.73),
        (10, 150, 15.0),
        (2**53 + 1, 300, 27021597764222980.0),  # int * int stays exact while it fits 64 bits
        # Past 64 bits PHP multiplies the operands as doubles: ...168e19, where the exact product
        # would round to ...166e19.
        (2**62 + 513, 300, 1.3835058055282168e19),
    ],
)
def test_adjusted_cpc_matches_php(cpc: object, roas: object, expected: float) -> None:
    assert calculate_adjusted_cpc(cpc, roas) == expected


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        (2.675, 2, 2.68),
        (1.005, 2, 1.01),
        (1.955, 2, 1.96),
        (-2.675, 2, -2.68),  # halves go away from zero
        (0.285, 2, 0.29),
        (5.045, 2, 5.05),
        (5.055, 2, 5.06),
        (1234.5678, -2, 1200.0),
        (0.49999999999999994, 0, 1.0),  # PHP 8.2's floor(value + 0.5) quirk, fixed only in PHP 8.3
        (1e15 + 0.25, 2, 1e15 + 0.25),  # beyond double precision PHP returns the value untouched
    ],
)
def test_php_round(value: float, places: int, expected: float) -> None:
    assert php_round(value, places) == expected


def test_php_round_keeps_negative_zero_and_non_finite() -> None:
    assert math.copysign(1.0, php_round(-0.001, 2)) == -1.0
    assert math.copysign(1.0, php_round(-0.0, 2)) == -1.0
    assert php_round(math.inf, 2) == math.inf
    assert math.isnan(php_round(math.nan, 2))


@pytest.mark.parametrize("zero", [0, 0.0, "0", "0.0", " 0 ", "-0", False, None])
def test_zero_cpc_is_allowed_and_gives_zero(zero: object) -> None:
    """Regression: the old port rejected 0 and "0" as a current CPC; PHP allows them (0 is not < 0)."""
    assert calculate_adjusted_cpc(zero, 150) == 0.0
    if zero not in (False, None):
        assert validate_bid_data(1, zero, 150) == []


@pytest.mark.parametrize("zero", [0, 0.0, -0.0, "0", "", " ", "-abc", False, None, "-5", -1e-300])
def test_roas_that_php_finds_not_above_zero(zero: object) -> None:
    """A non-numeric string is compared with "0" as text: "", " " and "-abc" sort before it, while
    "abc" sorts after it and reaches the arithmetic (a TypeError)."""
    with pytest.raises(InvalidArgumentError, match=ROAS_MESSAGE):
        calculate_adjusted_cpc(1.0, zero)


def test_roas_is_checked_before_cpc() -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        calculate_adjusted_cpc(-1, 0)
    assert str(raised.value) == ROAS_MESSAGE
    assert isinstance(raised.value, ValueError)
    with pytest.raises(InvalidArgumentError, match=CPC_MESSAGE):
        calculate_adjusted_cpc(-0.01, 150)


def test_booleans() -> None:
    """Regression: PHP compares a bool with 0 as bools and uses true as 1 in arithmetic."""
    assert calculate_adjusted_cpc(True, 150) == 1.5
    assert calculate_adjusted_cpc(10, True) == 0.1
    with pytest.raises(InvalidArgumentError, match=ROAS_MESSAGE):
        calculate_adjusted_cpc(10, False)
    assert validate_bid_data(True, True, True) == ALL_ERRORS
    assert validate_bid_data(False, False, False) == ALL_ERRORS
    assert not is_numeric(True)
    assert php_empty(False)
    assert not php_empty(True)


def test_nan_and_inf_strings() -> None:
    """Regression: "nan" and "inf" are not numeric in PHP, and only "1e400" is infinite."""
    for text in ("nan", "NAN", "inf", "INF", "-inf", "Infinity"):
        assert not is_numeric(text)
        assert validate_bid_data(text, text, text) == ALL_ERRORS
    assert is_numeric("1e400")
    assert calculate_adjusted_cpc("1e400", 150) == math.inf
    with pytest.raises(TypeError, match=r"^Unsupported operand types: string \* float$"):
        calculate_adjusted_cpc("nan", 150)


def test_infinity_and_nan_do_not_crash() -> None:
    """Regression: the old port crashed on float('inf'). PHP computes with INF and NAN like any float."""
    assert calculate_adjusted_cpc(math.inf, 150) == math.inf
    assert calculate_adjusted_cpc(1.0, math.inf) == math.inf
    assert math.isnan(calculate_adjusted_cpc(0, math.inf))
    assert math.isnan(calculate_adjusted_cpc(math.nan, 150))  # NAN < 0 is false, so no exception
    assert math.isnan(calculate_adjusted_cpc(1.0, math.nan))
    with pytest.raises(InvalidArgumentError, match=CPC_MESSAGE):
        calculate_adjusted_cpc(-math.inf, 150)
    assert validate_bid_data(math.inf, math.inf, math.inf) == []
    assert validate_bid_data(math.nan, math.nan, math.nan) == []  # is_numeric(NAN) and !empty(NAN)


def test_integers_beyond_64_bits_are_floats_as_json_decode_makes_them() -> None:
    assert calculate_adjusted_cpc(2**63, 100) == 9.223372036854776e18
    assert calculate_adjusted_cpc(10**400, 100) == math.inf  # json_decode reads 1e400 as INF
    with pytest.raises(InvalidArgumentError, match=CPC_MESSAGE):
        calculate_adjusted_cpc(-(10**400), 100)
    assert validate_bid_data(10**30, 10**30, 10**30) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, True), (0.0, True), (-0.0, True), ("", True), ("0", True), (None, True), (False, True),
        ([], True), ("0.0", False), ("00", False), (" 0", False), ("a", False), ([0], False),
        ({}, False), (math.nan, False), (1, False),
    ],
)  # fmt: skip
def test_php_empty(value: object, expected: bool) -> None:
    assert php_empty(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, True), (-1.5, True), (math.inf, True), (math.nan, True), ("1e3", True), ("1E-3", True),
        (" 1", True), ("1 ", True), ("\t\n\r\v\f1\n", True), (".5", True), ("1.", True), ("-.5e1", True),
        ("+1", True), ("1.e3", True), ("00001", True), ("1e400", True),
        ("", False), (" ", False), (".", False), ("1e", False), ("1e+", False), ("0x1A", False),
        ("1_000", False), ("1,5", False), ("5abc", False), ("1\x00", False), ("\xa01", False), ("１", False),
        ("nan", False), ("inf", False), (True, False), (None, False), ([], False), ([1], False), ({}, False),
    ],
)  # fmt: skip
def test_is_numeric(value: object, expected: bool) -> None:
    assert is_numeric(value) is expected


def test_validation_messages_and_order() -> None:
    assert validate_bid_data("42", "1.15", "150") == []
    assert validate_bid_data(0, -1, 0) == ALL_ERRORS
    assert validate_bid_data("0", "0", "0") == ["Invalid product ID", "Invalid target ROAS"]
    assert validate_bid_data(" 7 ", " -0 ", " 1e2 ") == []
    assert validate_bid_data(1.5, 1, 1) == []  # PHP accepts a fractional product ID; the gateway must not
    assert validate_bid_data([1], {"a": 1}, [150]) == ALL_ERRORS


def test_type_errors_carry_php_messages() -> None:
    """PHP 8 throws TypeError for arrays, objects and non-numeric strings in arithmetic."""
    cases = [
        (([], 150), "Unsupported operand types: array * float"),
        (({}, 100), "Unsupported operand types: stdClass * int"),
        ((1, []), "Unsupported operand types: array / int"),
        ((1, {}), "Unsupported operand types: stdClass / int"),
        ((1, "abc"), "Unsupported operand types: string / int"),
    ]
    for args, message in cases:
        with pytest.raises(TypeError) as raised:
            calculate_adjusted_cpc(*args)
        assert str(raised.value) == message


def test_leading_numeric_strings_count_in_arithmetic() -> None:
    """PHP warns on "5abc" but computes with 5; the quirky "9223372036854775808e+" wraps to PHP_INT_MIN."""
    assert calculate_adjusted_cpc("5abc", 100) == 5.0
    with pytest.raises(InvalidArgumentError, match=CPC_MESSAGE):
        calculate_adjusted_cpc("-5abc", 100)  # compared as text: "-" sorts before "0"
    assert calculate_adjusted_cpc("9223372036854775808e+", 100) == -9.223372036854776e18


def test_php_compare() -> None:
    assert php_compare(math.nan) == 1  # so both NAN < 0 and NAN <= 0 are false, as in PHP
    assert php_compare("-0.0") == 0
    assert php_compare(" -1 ") == -1
    assert php_compare([]) == 1
    assert php_compare({}) == 1
    assert php_compare("abc") == 1
    assert php_compare(" 1") == 1
    assert php_compare(None) == 0
