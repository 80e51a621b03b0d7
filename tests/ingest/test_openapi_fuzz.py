"""The live gateway, tested from its own OpenAPI document by schemathesis: a real gateway process and a real pricing
agent (tests/pipeline/conftest.py) on real Redis and PostgreSQL.

Bounded: a fixed number of examples per operation and mode, no shrinking, and a time budget per operation after
which the remaining examples are generated but not sent. The checks: no server error beyond the documented
503/504, every status, header, content type and body as documented, and every request the document rejects
(negative mode) answered with a 4xx. Every failure is collected, so one run reports all of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from schema.http_api import openapi_document
from tests.pipeline.conftest import Pipeline, pipeline  # noqa: F401  # the fixture, shared with the pipeline tests

POSITIVE, NEGATIVE = schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE
# (operation, generation mode, examples): the bid endpoint gets the examples; the GETs take no input.
RUNS = [
    ("POST /api/bid/", POSITIVE, 150),
    ("POST /api/bid/", NEGATIVE, 150),
    ("GET /health", POSITIVE, 3),
    ("GET /ready", POSITIVE, 3),
    ("GET /metrics", POSITIVE, 3),
    ("GET /openapi.json", POSITIVE, 3),
]
TIME_BUDGET_S = 20.0
CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def live_schema(pipeline: Pipeline) -> schemathesis.BaseSchema:  # noqa: F811
    """The document as the gateway serves it; identical to the one built from the models."""
    served = requests.get(f"{pipeline.gateway_url}/openapi.json", timeout=10).json()
    assert served == openapi_document()
    # Loaded from the served document (from_url would leave out the operation it was loaded from).
    return schemathesis.openapi.from_dict(served)


def test_every_operation_is_fuzzed() -> None:
    operations = {f"{method.upper()} {path}" for path, item in openapi_document()["paths"].items() for method in item}
    assert operations == {label for label, _, _ in RUNS}


@pytest.mark.parametrize(("label", "mode", "examples"), RUNS, ids=[f"{r[0]} {r[1].value}" for r in RUNS])
def test_gateway_answers_as_documented(
    live_schema: schemathesis.BaseSchema,
    pipeline: Pipeline,  # noqa: F811
    label: str,
    mode: schemathesis.GenerationMode,
    examples: int,
) -> None:
    operation = next(op.ok() for op in live_schema.get_all_operations() if op.ok().label == label)
    failures: dict[str, str] = {}
    statuses: dict[int, int] = {}
    sent = 0
    deadline = time.monotonic() + TIME_BUDGET_S
    session = requests.Session()

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        nonlocal sent
        if time.monotonic() > deadline:
            return  # the budget is spent: the remaining examples are not sent
        sent += 1
        try:
            response = case.call_and_validate(base_url=pipeline.gateway_url, session=session, checks=CHECKS, timeout=15)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        except Exception as exc:  # a check failed: keep the first example of each distinct failure
            failures.setdefault(str(exc).split("\n\n")[0][:300], case.as_curl_command())

    run()
    print(f"{label} {mode.value}: {sent} requests, statuses {dict(sorted(statuses.items()))}")
    assert sent > 0
    assert not failures, "\n\n".join(f"{what}\n  reproduce: {curl}" for what, curl in failures.items())
