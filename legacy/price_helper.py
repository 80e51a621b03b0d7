"""Exact Python port of ``legacy/priceHelper.php`` as PHP 8.2 runs it.

This is the only copy of the bid formula in the product. Finance reconciles against the old platform
cent for cent, so every step reproduces PHP's own semantics rather than Python's: ``round()`` with
pre-rounding, ``empty()``, ``is_numeric()``, loose comparison with ``0`` and the int/float arithmetic
of ``*`` and ``/``. ``tests/legacy`` checks it against the real PHP binary; ``docs/legacy-port.md``
lists the semantics and the oddities found.

Inputs are what ``json.loads`` gives for a request body. PHP received the same body through
``json_decode()`` (objects as ``stdClass``), so each value is first mapped to what PHP would hold:
an integer outside PHP's 64-bit range becomes the nearest float, exactly as ``json_decode`` does, and
a dict is an object. Non-finite floats (``json.loads`` accepts ``NaN``/``Infinity``, and ``1e400``
decodes to infinity in both languages) are computed as PHP computes ``NAN``/``INF``. Rejecting any
of these is gateway policy, not the port's job.
"""

from __future__ import annotations

import math
import re

__all__ = [
    "InvalidArgumentError",
    "calculate_adjusted_cpc",
    "is_numeric",
    "php_compare",
    "php_empty",
    "php_round",
    "validate_bid_data",
]

PHP_INT_MAX = 2**63 - 1
PHP_INT_MIN = -(2**63)

_WHITESPACE = b" \t\n\r\v\f"
_LONG_MIN_DIGITS = b"9223372036854775808"
_MAX_LENGTH_OF_LONG = 20
# The part of a string zend_strtod() consumes once the scanner has seen a digit or ".digit".
_STRTOD_PREFIX = re.compile(rb"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class InvalidArgumentError(ValueError):
    """PHP's InvalidArgumentException: same messages, raised in the same order."""


def _to_php(value: object) -> object:
    """The value PHP's json_decode() would have produced for the JSON that gave ``value``."""
    if isinstance(value, bool) or value is None or isinstance(value, float | str | list | dict):
        return value
    if isinstance(value, int):
        if PHP_INT_MIN <= value <= PHP_INT_MAX:
            return value
        try:
            return float(value)
        except OverflowError:  # json_decode's strtod overflows to infinity where Python raises
            return math.inf if value > 0 else -math.inf
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _wrap_long(value: int) -> int:
    """C's cast of an unsigned 64-bit accumulator to zend_long."""
    return (value + 2**63) % 2**64 - 2**63


def _numeric_string(text: str, *, allow_errors: bool) -> int | float | None:
    """Zend's _is_numeric_string_ex() asked for the value: the number a string stands for, or None.

    Strict (``allow_errors=False``) is what comparisons use; lenient is what arithmetic uses, where a
    leading-numeric string like "5abc" counts as 5 (PHP also warns). The scan is kept literal on
    purpose: its quirks (leading zeros not counted, the 19-digit overflow check that runs strcmp from
    a pointer an exponent sign can shift) decide whether PHP ends up with an int or a float.
    """
    raw = text.encode("utf-8", "surrogatepass")
    if not raw:
        return None
    s = raw + b"\0"  # C reads the terminator; every loop below stops on it
    start = 0
    while s[start] in _WHITESPACE:
        start += 1
    ptr = start + (s[start] in b"+-")

    if _isdigit(s[ptr]):
        ptr, digits, accumulator, is_double = _scan_digits(s, ptr)
    elif s[ptr] == ord(".") and _isdigit(s[ptr + 1]):
        digits, accumulator, is_double = 0, 0, True
    else:
        return None

    if is_double:
        number, ptr = _strtod(raw, start)
    if not allow_errors and not all(c in _WHITESPACE for c in raw[ptr:]):
        return None  # trailing whitespace is allowed since PHP 8, anything else is not
    if is_double:
        return number

    if digits == _MAX_LENGTH_OF_LONG - 1:
        compared = _strcmp(s[ptr - digits :], _LONG_MIN_DIGITS)
        if not (compared < 0 or (compared == 0 and s[start] == ord("-"))):
            return _strtod(raw, start)[0]
    return _wrap_long(-accumulator if s[start] == ord("-") else accumulator)


def _scan_digits(s: bytes, ptr: int) -> tuple[int, int, int, bool]:
    """The digit loop: where it stopped, how many digits it counted, their value, and whether
    a fraction, an exponent or a 20th digit hands the string to zend_strtod."""
    while s[ptr] == ord("0"):
        ptr += 1
    digits = accumulator = 0
    while digits < _MAX_LENGTH_OF_LONG:
        c = s[ptr]
        if _isdigit(c):
            accumulator = accumulator * 10 + c - ord("0")
            digits += 1
            ptr += 1
            continue
        if c == ord("."):
            return ptr, digits, accumulator, True
        if c in b"eE":
            exponent = ptr + 1
            if s[exponent] in b"+-":
                ptr = exponent  # C moves ptr onto the sign even when no digit follows
                exponent += 1
            return ptr, digits, accumulator, _isdigit(s[exponent])
        return ptr, digits, accumulator, False
    return ptr, digits, accumulator, True


def _strtod(raw: bytes, start: int) -> tuple[float, int]:
    """zend_strtod(): the correctly rounded double of the longest decimal prefix, and its end."""
    match = _STRTOD_PREFIX.match(raw, start)
    assert match is not None  # only called where a digit or ".digit" follows the optional sign
    return float(match.group()), match.end()


def _isdigit(c: int) -> bool:
    return ord("0") <= c <= ord("9")


def _strcmp(left: bytes, right: bytes) -> int:
    """C strcmp: stops at the first NUL of either side."""
    a = left.split(b"\0", 1)[0]
    b = right.split(b"\0", 1)[0]
    return (a > b) - (a < b)


def is_numeric(value: object) -> bool:
    """PHP's is_numeric(): ints and floats (INF and NAN too), and numeric strings; never bools or null."""
    value = _to_php(value)
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        # is_numeric() runs the same scan without asking for the value; only the value differs.
        return _numeric_string(value, allow_errors=False) is not None
    return False


def php_empty(value: object) -> bool:
    """PHP's empty(): null, false, 0, 0.0, -0.0, "", "0" and [] are empty; NAN and objects are not."""
    value = _to_php(value)
    if value is None or isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0  # NAN compares unequal, and PHP treats NAN as true
    if isinstance(value, str):
        return value in ("", "0")
    if isinstance(value, list):
        return not value
    return False  # a decoded JSON object is a stdClass, and objects are never empty


def php_compare(value: object, number: int = 0) -> int:
    """PHP 8's ``$value <=> $number`` for an int on the right, as -1, 0 or 1.

    ``$x < 0`` is ``php_compare(x) < 0`` and ``$x <= 0`` is ``php_compare(x) <= 0``. A NAN compares
    as greater, which makes both of those false, as PHP's own ``<`` and ``<=`` on floats are.
    """
    value = _to_php(value)
    if value is None or value is False:
        return -1 if number else 0
    if value is True:
        return 0 if number else 1
    if isinstance(value, str):
        parsed = _numeric_string(value, allow_errors=False)
        if parsed is None:
            # A non-numeric string is compared with the int's decimal text, byte by byte.
            left, right = value.encode("utf-8", "surrogatepass"), str(number).encode()
            return (left > right) - (left < right)
        value = parsed
    if isinstance(value, int):
        return (value > number) - (value < number)
    if isinstance(value, float):
        other = float(number)
        return 0 if value == other else (-1 if value < other else 1)
    if isinstance(value, list):
        return 1  # arrays are always greater than scalars
    # An object is cast to int for the comparison; stdClass cannot be, so PHP notices and uses 1.
    return php_compare(1, number)


def _php_type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "stdClass"


def _operands(left: object, operator: str, right: int | float) -> tuple[int | float, int | float]:
    """The numbers PHP 8 arithmetic reads from its operands, or its TypeError."""
    if left is None or isinstance(left, bool):
        return int(bool(left)), right
    if isinstance(left, int | float):
        return left, right
    if isinstance(left, str):
        parsed = _numeric_string(left, allow_errors=True)
        if parsed is not None:
            return parsed, right
    raise TypeError(f"Unsupported operand types: {_php_type_name(left)} {operator} {_php_type_name(right)}")


def _divide(left: int | float, right: int | float) -> int | float:
    if isinstance(left, int) and isinstance(right, int):
        if left % right == 0:  # an exact quotient stays an int in PHP
            return left // right
        return float(left) / right
    return float(left) / float(right)


def _multiply(left: int | float, right: int | float) -> int | float:
    if isinstance(left, int) and isinstance(right, int):
        product = left * right
        if PHP_INT_MIN <= product <= PHP_INT_MAX:
            return product
        # On overflow PHP multiplies the two operands as doubles, not the exact product.
    return float(left) * float(right)


def _intpow10(power: int) -> float:
    try:
        return math.pow(10.0, power)
    except OverflowError:  # C's pow() overflows to infinity where Python raises
        return math.inf


def _round_helper(value: float) -> float:
    """php_round_helper() for PHP_ROUND_HALF_UP: halves away from zero."""
    if value >= 0.0:
        return float(math.floor(value + 0.5))
    # C's ceil() keeps the sign of a negative value that rounds to zero; Python's int result cannot.
    return math.copysign(float(math.ceil(value - 0.5)), value)


def php_round(value: float, precision: int = 0) -> float:
    """PHP 8.2's round() of a float (_php_math_round, ext/standard/math.c).

    Before rounding to ``precision`` places the value is pre-rounded to the 15 significant digits a
    double is trusted with, which is why round(1.005, 2) is 1.01 and round(2.675, 2) is 2.68 although
    neither double is at or above the half.
    """
    if not math.isfinite(value) or value == 0.0:
        return value
    places = precision
    precision_places = 14 - math.floor(math.log10(abs(value)))
    f1 = _intpow10(abs(places))

    if places < precision_places < places + 15:
        pre_rounded = _round_helper(
            value * _intpow10(precision_places) if precision_places >= 0 else value / _intpow10(-precision_places)
        )
        tmp = pre_rounded / _intpow10(precision_places - places)
    else:
        tmp = value * f1 if places >= 0 else value / f1
        if abs(tmp) >= 1e15:
            return value  # beyond a double's precision: rounding would only add noise

    tmp = _round_helper(tmp)
    if abs(places) < 23:
        return tmp / f1 if places > 0 else tmp * f1
    # 10**places is inexact here, so PHP goes through text: "%15fe%d" and strtod. PHP's own snprintf
    # prints -0.0 without its sign (it tests num < 0), so a zero comes back positive.
    text = f"{tmp + 0.0:15f}e{-places}"[:38]
    result = float(text)
    return result if math.isfinite(result) else value


def calculate_adjusted_cpc(current_cpc: object, target_roas: object) -> float:
    """``PriceHelper::calculateAdjustedCpc``: ``round($currentCpc * ($targetRoas / 100), 2)``.

    Raises InvalidArgumentError with PHP's messages (ROAS checked first), and TypeError with PHP's
    message where PHP 8 throws one (arrays, objects and non-numeric strings in the arithmetic).
    """
    cpc, roas = _to_php(current_cpc), _to_php(target_roas)
    if php_compare(roas) <= 0:
        raise InvalidArgumentError("Target ROAS must be greater than 0")
    if php_compare(cpc) < 0:
        raise InvalidArgumentError("Current CPC must be non-negative")
    ratio = _divide(*_operands(roas, "/", 100))
    product = _multiply(*_operands(cpc, "*", ratio))
    if isinstance(product, int):
        return float(product)  # round() of an int is that int as a float, with no rounding step
    return php_round(product, 2)


def validate_bid_data(product_id: object, current_cpc: object, target_roas: object) -> list[str]:
    """``PriceHelper::validateBidData``: the error messages, in PHP's order."""
    errors = []
    if php_empty(product_id) or not is_numeric(product_id):
        errors.append("Invalid product ID")
    if not is_numeric(current_cpc) or php_compare(current_cpc) < 0:
        errors.append("Invalid current CPC")
    if not is_numeric(target_roas) or php_compare(target_roas) <= 0:
        errors.append("Invalid target ROAS")
    return errors
