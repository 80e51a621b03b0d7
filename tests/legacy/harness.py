"""Runs the same cases through the real PHP helper and through the Python port, in comparable form.

A case is ``(fn, args_json)``: the function ("calc", "validate", or the helpers "round", "is_numeric",
"empty") and its arguments as JSON text, the way a request body carries them. PHP decodes that text
with json_decode(), the port receives what json.loads() makes of it; JSON has no INF/NAN, so
``{"$php": "INF"}`` stands for one on both sides (see php_driver.php).

Results are compared in a canonical form where floats are their repr(): exact (repr round-trips),
-0.0 stays distinct from 0.0, and every NaN compares equal to every other.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from legacy import (
    InvalidArgumentError,
    calculate_adjusted_cpc,
    is_numeric,
    php_empty,
    php_round,
    validate_bid_data,
)

HERE = Path(__file__).resolve().parent
PHP_DRIVER = HERE / "php_driver.php"
GOLDEN_VECTORS = HERE / "golden_vectors.json"

Case = tuple[str, str]
Result = tuple[Any, ...]

_NON_FINITE = {"INF": math.inf, "-INF": -math.inf, "NAN": math.nan}


def php_binary() -> str | None:
    return shutil.which("php")


def _tag(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$php": "NAN" if math.isnan(value) else ("INF" if value > 0 else "-INF")}
    if isinstance(value, list):
        return [_tag(item) for item in value]
    if isinstance(value, dict):
        return {key: _tag(item) for key, item in value.items()}
    return value


def _untag(value: object) -> object:
    if isinstance(value, dict) and len(value) == 1 and "$php" in value:
        return _NON_FINITE[value["$php"]]
    if isinstance(value, list):
        return [_untag(item) for item in value]
    return value


def case(fn: str, *args: object) -> Case:
    """A case from Python values. Inside a dict the INF/NAN stand-in stays a dict on both sides,
    which makes no difference: any object is just a stdClass to the helper."""
    return fn, json.dumps([_tag(arg) for arg in args], allow_nan=False)


def decode_args(args_json: str) -> list[object]:
    args = _untag(json.loads(args_json))
    assert isinstance(args, list)
    return args


_PORT: dict[str, Callable[..., object]] = {
    "calc": calculate_adjusted_cpc,
    "validate": validate_bid_data,
    "round": php_round,
    "is_numeric": is_numeric,
    "empty": php_empty,
}


def _canonical_value(value: object) -> Result:
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, list):
        return ("list", tuple(value))
    raise AssertionError(f"unexpected result {value!r}")


def run_port(fn: str, args_json: str) -> Result:
    try:
        return _canonical_value(_PORT[fn](*decode_args(args_json)))
    except InvalidArgumentError as error:
        return ("throw", "InvalidArgumentException", str(error))
    except TypeError as error:
        return ("throw", "TypeError", str(error))


def canonical_php(raw: Sequence[Any]) -> Result:
    """A driver result (floats as IEEE-754 hex) in the canonical form."""
    kind = raw[0]
    if kind == "float":
        return ("float", repr(struct.unpack(">d", bytes.fromhex(raw[1]))[0]))
    if kind == "list":
        return ("list", tuple(raw[1]))
    if kind in {"boolean", "bool"}:
        return ("bool", raw[1])
    return tuple(raw)  # "throw", or a driver_error that no port result will ever equal


def run_php(cases: Sequence[Case], php: str) -> list[list[Any]]:
    """Raw driver results for all cases, from one PHP process."""
    line = json.dumps([list(c) for c in cases]) + "\n"
    done = subprocess.run([php, str(PHP_DRIVER)], input=line, capture_output=True, text=True, check=True, timeout=600)
    results: list[list[Any]] = json.loads(done.stdout)
    assert len(results) == len(cases), done.stderr
    return results


class PhpSession:
    """One long-lived driver process answering batch after batch (for hypothesis examples)."""

    def __init__(self, php: str) -> None:
        self._process = subprocess.Popen(
            [php, str(PHP_DRIVER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, cases: Sequence[Case]) -> list[list[Any]]:
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(json.dumps([list(c) for c in cases]) + "\n")
        self._process.stdin.flush()
        results: list[list[Any]] = json.loads(self._process.stdout.readline())
        return results

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


def mismatches(cases: Iterable[Case], php_results: Iterable[Sequence[Any]]) -> list[str]:
    """One line per case where the port and PHP disagree."""
    found = []
    for (fn, args_json), raw in zip(cases, php_results, strict=True):
        expected, actual = canonical_php(raw), run_port(fn, args_json)
        if expected != actual:
            found.append(f"{fn}({args_json}): php={expected} port={actual}")
    return found


def report(found: list[str], total: int, limit: int = 25) -> str:
    shown = "\n".join(found[:limit])
    return f"{len(found)} of {total} cases differ from PHP; first {min(limit, len(found))}:\n{shown}"
