"""The port against the real PHP helper: golden vectors always, live php-cli where it is installed."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.legacy.cases import corpus, generated_cases, generated_helper_cases, hypothesis_cases
from tests.legacy.harness import (
    GOLDEN_VECTORS,
    Case,
    PhpSession,
    mismatches,
    php_binary,
    report,
    run_php,
)
from tests.legacy.regenerate_golden import golden_cases

LIVE_SEED = 7_2024
GENERATED = 120_000  # distinct calculate/validate cases
GENERATED_HELPERS = 30_000  # distinct round/is_numeric/empty cases

PHP = php_binary()


@pytest.fixture(scope="module")
def php() -> str:
    if PHP is None:
        if os.environ.get("CI"):
            pytest.fail("php-cli is missing in CI, where .ci/run installs it: the live comparison must run")
        pytest.skip("php-cli is not installed (apt-get install php-cli): live PHP comparison not run")
    return PHP


def _golden() -> tuple[list[Case], list[list[object]]]:
    document = json.loads(GOLDEN_VECTORS.read_text())
    vectors = document["cases"]
    return [(v["fn"], v["args"]) for v in vectors], [v["php"] for v in vectors]


def test_port_matches_golden_vectors() -> None:
    cases, results = _golden()
    assert len(cases) >= len(corpus()) + 3000
    found = mismatches(cases, results)
    assert not found, report(found, len(cases))


def test_golden_vectors_are_what_php_says_now(php: str) -> None:
    cases, results = _golden()
    assert cases == golden_cases(), "golden cases changed: python -m tests.legacy.regenerate_golden"
    assert run_php(cases, php) == results, "regenerate: python -m tests.legacy.regenerate_golden"


@pytest.mark.slow
def test_port_matches_php_on_corpus_and_generated_cases(php: str) -> None:
    started = time.monotonic()
    hand_made = corpus()
    generated = generated_cases(LIVE_SEED, GENERATED) + generated_helper_cases(LIVE_SEED, GENERATED_HELPERS)
    cases = list(dict.fromkeys(hand_made + generated))
    found = mismatches(cases, run_php(cases, php))
    print(
        f"\nlegacy differential: {len(hand_made)} corpus + {len(generated)} generated "
        f"({GENERATED} calculate/validate) = {len(cases)} distinct cases, "
        f"{len(found)} mismatches, {time.monotonic() - started:.1f}s"
    )
    assert not found, report(found, len(cases))


@pytest.fixture(scope="module")
def php_session(php: str) -> Iterator[PhpSession]:
    session = PhpSession(php)
    yield session
    session.close()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(hypothesis_cases(), min_size=1, max_size=25))
def test_port_matches_php_on_hypothesis_examples(php_session: PhpSession, batch: list[Case]) -> None:
    """Hypothesis explores and, on a disagreement, shrinks it to the smallest input that shows it."""
    found = mismatches(batch, php_session.run(batch))
    assert not found, report(found, len(batch))
