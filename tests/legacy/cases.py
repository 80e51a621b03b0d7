"""Inputs for the differential tests: a hand-made corpus of edge cases and seeded generators.

The generators favour the places where PHP and a naive port part ways: prices at exact half cents,
values whose binary form sits just under a half, int/float boundaries (64-bit overflow, exact
division by 100), numeric-looking strings with whitespace, signs, exponents and trailing junk, and
every JSON type in every argument position.
"""

from __future__ import annotations

import math
import random
import struct

from hypothesis import strategies as st

from tests.legacy.harness import Case, case

INT_MAX = 2**63 - 1
INT_MIN = -(2**63)
WHITESPACE = ["", "", "", " ", "  ", "\t", "\n", "\r", "\v", "\f", " \n"]
# Characters PHP's numeric scanner does not treat as whitespace, but other languages might.
NOT_WHITESPACE = ["\x00", "\xa0", "\u2003", "\x1c", "\x85"]
SPECIAL_STRINGS = [
    "",
    " ",
    "0",
    "00",
    "-0",
    "+0",
    "0.0",
    "-0.0",
    ".0",
    "0.",
    ".",
    "-",
    "+",
    "e",
    "1e",
    "1e+",
    "1e-",
    "1e5",
    "1E5",
    "1e+5",
    "1e-5",
    "1.e5",
    ".5e1",
    "1e5.5",
    "1.5.5",
    "--1",
    "+-1",
    "0x1A",
    "0X1a",
    "0b101",
    "0o17",
    "017",
    "1_000",
    "1,5",
    "nan",
    "NaN",
    "NAN",
    "inf",
    "INF",
    "-inf",
    "Infinity",
    "1e400",
    "-1e400",
    "1e-400",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "9223372036854775808e+",
    "99999999999999999999",
    "00000000000000000000000000001",
    "true",
    "false",
    "null",
    "[]",
    "{}",
    "abc",
    "5abc",
    "5 abc",
    " 5",
    "5 ",
    " 5 ",
    "\t5\n",
    "5\x00",
    "\x005",
    "١٢٣",
    "５",
]
SPECIAL_FLOATS = [
    0.0,
    -0.0,
    1e-9,
    -1e-9,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1e-300,
    0.005,
    0.015,
    0.125,
    0.49999999999999994,
    0.5,
    1.005,
    1.015,
    1.045,
    1.115,
    2.675,
    1.15,
    4.35,
    8.325,
    1e15,
    1e15 + 0.5,
    999999999999.995,
    1e16,
    9.007199254740993e15,
    9.223372036854776e18,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
]
SPECIAL_INTS = [
    0,
    1,
    -1,
    2,
    50,
    99,
    100,
    101,
    150,
    199,
    200,
    -100,
    -150,
    1000,
    10**15,
    2**53,
    2**53 + 1,
    INT_MAX,
    INT_MIN,
    INT_MAX + 1,
    INT_MIN - 1,
    10**19,
    10**30,
    -(10**30),
    10**400,
    -(10**400),
]


def _money(r: random.Random) -> float:
    """A price with up to four decimals, often at exactly half a cent."""
    units = r.choice([0, 0, 1, 9, 99, 999, 10**6, 10**9, 10**12])
    cents = r.randint(0, 99)
    whole = r.randint(0, units)
    if r.random() < 0.5:
        return float(f"{whole}.{cents:02d}5")
    numerator = r.randint(0, units * 10**4 + 9999)
    divisor: int = 10 ** r.choice([0, 1, 2, 3, 4])
    return round(numerator / divisor, 4)


def _any_float(r: random.Random) -> float:
    pick = r.random()
    if pick < 0.3:
        return r.choice(SPECIAL_FLOATS)
    if pick < 0.5:
        return float(struct.unpack("<d", r.getrandbits(64).to_bytes(8, "little"))[0])
    if pick < 0.7:
        return r.uniform(-1, 1) * float(10 ** r.randint(-12, 20))
    if pick < 0.85:
        # The doubles next to a half cent: where pre-rounding decides the cent.
        return math.nextafter(_money(r), r.choice([math.inf, -math.inf]))
    return _money(r) * r.choice([1, 1, 1, -1])


def _any_int(r: random.Random) -> int:
    pick = r.random()
    if pick < 0.3:
        return r.choice(SPECIAL_INTS)
    if pick < 0.6:
        return r.randint(-1000, 1000)
    if pick < 0.8:
        return r.randint(0, 100) * 100 * r.choice([1, -1])
    return r.randint(-(2**70), 2**70)


def _number_text(r: random.Random) -> str:
    """A numeric-looking string built from PHP's numeric grammar, then sometimes broken."""
    pick = r.random()
    if pick < 0.25:
        body = repr(_any_float(r)) if r.random() < 0.5 else str(_any_int(r))
    elif pick < 0.4:
        body = f"{_money(r):.{r.randint(0, 4)}f}"
    else:
        digits = "".join(r.choice("0123456789") for _ in range(r.choice([0, 1, 1, 2, 3, 5, 18, 19, 20, 25])))
        if r.random() < 0.3:
            digits = "0" * r.randint(1, 20) + digits
        fraction = r.choice(["", "", ".", "." + str(r.randint(0, 999)), ".005", ".675", ".5"])
        exponent = r.choice(["", "", "", "e5", "E-3", "e+2", "e", "e+", "e-", "e400", "e-400", "e0"])
        body = r.choice(["", "", "-", "+"]) + digits + fraction + exponent
    text = r.choice(WHITESPACE) + body + r.choice(WHITESPACE)
    if r.random() < 0.15:
        junk = r.choice(["abc", "x", ".", "e", "-", "+", " 1", "0x1A", *NOT_WHITESPACE])
        spot = r.randint(0, len(text))
        text = text[:spot] + junk + text[spot:]
    return text


def _any_text(r: random.Random) -> str:
    pick = r.random()
    if pick < 0.3:
        return r.choice(SPECIAL_STRINGS)
    if pick < 0.85:
        return _number_text(r)
    alphabet = "0123456789.eE+- \txabcnaifINF" + "".join(NOT_WHITESPACE) + "é€😀"
    return "".join(r.choice(alphabet) for _ in range(r.randint(0, 8)))


def _any_value(r: random.Random, depth: int = 0) -> object:
    pick = r.random()
    if pick < 0.22:
        return _any_int(r)
    if pick < 0.44:
        return _any_float(r)
    if pick < 0.78:
        return _any_text(r)
    if pick < 0.84:
        return r.choice([True, False])
    if pick < 0.9:
        return None
    if pick < 0.96 or depth > 1:
        return [_any_value(r, depth + 1) for _ in range(r.choice([0, 0, 1, 2]))]
    # JSON objects hold no INF/NAN here: the {"$php": ...} stand-in is only read at top level and in lists.
    keys = r.sample(["a", "b", "id", "0", "1"], r.randint(0, 2))
    return {key: r.choice([0, "0", None, [], "x"]) for key in keys}


def _price_input(r: random.Random) -> object:
    """A current CPC as a client would send it: mostly a price, sometimes as text or an int."""
    value = _money(r)
    pick = r.random()
    if pick < 0.55:
        return value
    if pick < 0.7:
        return r.randint(0, 10 ** r.randint(1, 7))
    if pick < 0.9:
        return r.choice(WHITESPACE) + f"{value:.{r.randint(0, 4)}f}" + r.choice(WHITESPACE)
    return _any_value(r)


def _roas_input(r: random.Random) -> object:
    pick = r.random()
    if pick < 0.45:
        return r.randint(1, 1000)
    if pick < 0.6:
        return r.randint(1, 100) * 100
    if pick < 0.75:
        return round(r.uniform(0, 1000), r.randint(0, 3))
    if pick < 0.85:
        return str(r.randint(-10, 1000))
    return _any_value(r)


def _one_case(r: random.Random) -> Case:
    pick = r.random()
    if pick < 0.35:
        return case("calc", _price_input(r), _roas_input(r))
    if pick < 0.55:
        return case("calc", _any_value(r), _any_value(r))
    if pick < 0.7:
        return case("validate", r.choice([_any_int(r), str(r.randint(0, 10**6))]), _price_input(r), _roas_input(r))
    return case("validate", _any_value(r), _any_value(r), _any_value(r))


def generated_cases(seed: int, count: int) -> list[Case]:
    """``count`` distinct calc/validate cases, the same for the same seed."""
    r = random.Random(seed)
    seen: dict[Case, None] = {}
    while len(seen) < count:
        seen.setdefault(_one_case(r), None)
    return list(seen)


def generated_helper_cases(seed: int, count: int) -> list[Case]:
    """Distinct cases for the helpers on their own: round() at many precisions, is_numeric(), empty()."""
    r = random.Random(seed)
    seen: dict[Case, None] = {}
    while len(seen) < count:
        pick = r.random()
        if pick < 0.5:
            precision = r.choice([2, 2, 2, 0, 1, 3, 4, -1, -2, r.randint(-5, 25)])
            seen.setdefault(case("round", _any_float(r), precision), None)
        elif pick < 0.8:
            seen.setdefault(case("is_numeric", _any_value(r)), None)
        else:
            seen.setdefault(case("empty", _any_value(r)), None)
    return list(seen)


def corpus() -> list[Case]:
    """The hand-made edge cases, each argument position crossed with the interesting values."""
    cases = [
        case("calc", 1.15, 150),  # PHP gives 1.73; a plain float port gives 1.72
        case("calc", 2.675, 100),
        case("calc", 1.005, 100),
        case("calc", 0, 100),
        case("calc", "0", 100),
        case("calc", -0.0, 100),
        case("calc", 1e-9, 100),
        case("calc", 1e15, 150),
        case("calc", 1.0, math.inf),
        case("calc", 0, math.inf),
        case("calc", math.inf, 100),
        case("calc", math.nan, 100),
        case("calc", 1.0, math.nan),
        case("calc", 10**30, 150),
        case("calc", INT_MAX, 200),
        case("calc", 2**53 + 1, 300),
        case("validate", 1, 1.15, 150),
        case("validate", 0, 0, 0),
        case("validate", "0", "0", "0"),
        case("validate", True, True, True),
        case("validate", False, False, False),
        case("validate", None, None, None),
        case("validate", "nan", "nan", "nan"),
        case("validate", "inf", "inf", "inf"),
        case("validate", "1e400", "1e400", "1e400"),
        case("validate", math.inf, math.inf, math.inf),
        case("validate", math.nan, math.nan, math.nan),
        case("validate", [], [], []),
        case("validate", [0], [[1]], [{"a": 1}]),
        case("validate", {}, {}, {}),
        case("validate", {"id": 5}, {"0": 0}, {"a": []}),
        case("validate", 10**30, -(10**30), 10**400),
    ]
    # Every price at an exact half cent from 0.005 to 9.995, times the common ROAS values.
    for cents in range(0, 1000):
        price = float(f"{cents // 100}.{cents % 100:02d}5")
        cases.append(case("calc", price, 100))
        cases.append(case("round", price, 2))
    for roas in (50, 99, 101, 110, 125, 150, 175, 200, 250, 333, 1000):
        for price in (0.01, 0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 1.15, 1.25, 2.675, 9.99):
            cases.append(case("calc", price, roas))
    specials: list[object] = [
        *SPECIAL_INTS,
        *SPECIAL_FLOATS,
        *SPECIAL_STRINGS,
        *NOT_WHITESPACE,
        True,
        False,
        None,
        [],
        [0],
        [[]],
        [None, [1, [2]]],
        {},
        {"a": 1},
        {"a": {"b": []}},
    ]
    for value in specials:
        cases.append(case("calc", value, 150))
        cases.append(case("calc", 1.15, value))
        cases.append(case("validate", value, 1.0, 100))
        cases.append(case("validate", 1, value, 100))
        cases.append(case("validate", 1, 1.0, value))
        cases.append(case("is_numeric", value))
        cases.append(case("empty", value))
        if isinstance(value, float):
            for precision in (0, 1, 2, 3, -1, 15, 22, 23, 25):
                cases.append(case("round", value, precision))
    return list(dict.fromkeys(cases))


# For the hypothesis property test: small values, shrunk toward the simplest disagreement.
json_scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(),
    st.decimals(min_value=0, max_value=10**6, places=3).map(float),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.from_regex(r"\A[ \t\n]?[+-]?[0-9]{0,20}(\.[0-9]{0,4})?([eE][+-]?[0-9]{0,3})?[ \t\n]?x?\Z"),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from("abc"), inner, max_size=2),
    max_leaves=3,
)


@st.composite
def hypothesis_cases(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        return case("calc", draw(json_values), draw(json_values))
    return case("validate", draw(json_values), draw(json_values), draw(json_values))
