"""The OpenAPI document (schema/http_api.py): valid OpenAPI 3.1, the README's statuses, the request schema against
the gateway's own validation, and every documented status of a real gateway checked against the document."""

from __future__ import annotations

import copy
import json
import re
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import hypothesis
import hypothesis.strategies as st
import jsonschema
import pytest
import requests
from openapi_spec_validator import OpenAPIV31SpecValidator
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from bidengine.embedded import free_port
from ingest import app as gateway_app
from ingest.validation import BidValidationError, parse_bid
from legacy import calculate_adjusted_cpc
from schema import http_api
from schema.database import MAX_MONEY
from schema.http_api import openapi_document
from schema.settings import Settings
from tests.pipeline.conftest import Pipeline, pipeline, wait_until_ready  # noqa: F401  # pipeline: the fixture

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT_URI = "urn:bidengine:openapi"
DOCUMENT = openapi_document()
REGISTRY: Registry[Any] = Registry().with_resource(
    DOCUMENT_URI, Resource.from_contents(DOCUMENT, default_specification=DRAFT202012)
)
VALID_BID = {"product_id": 4242, "current_cpc": 1.5, "target_roas": 150}


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator of a schema taken from the document: its `#/...` references resolve within the document."""
    if str(schema.get("$ref", "")).startswith("#/"):
        schema = {"$ref": DOCUMENT_URI + schema["$ref"]}
    return jsonschema.Draft202012Validator(schema, registry=REGISTRY, format_checker=jsonschema.FormatChecker())


def component(name: str) -> dict[str, Any]:
    return {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"}


REQUEST_SCHEMA = validator(component("BidRequest"))


# --- The document itself ------------------------------------------------------------------------------------------


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(DOCUMENT).validate()


def test_validator_has_teeth() -> None:
    broken = copy.deepcopy(DOCUMENT)
    broken["paths"]["/health"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] = {"type": "text"}
    with pytest.raises(OpenAPIValidationError):
        OpenAPIV31SpecValidator(broken).validate()
    broken = copy.deepcopy(DOCUMENT)
    del broken["info"]["title"]
    with pytest.raises(OpenAPIValidationError):
        OpenAPIV31SpecValidator(broken).validate()


def readme_statuses() -> set[str]:
    """The statuses of POST /api/bid/ in the README's table (`| 413 / 415 | ...` counts both)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| status | when | body |", 1)[1].split("\n\n", 1)[0]
    rows = [row.split("|")[1] for row in table.splitlines() if row.startswith("| ")]
    return {code for cell in rows for code in re.findall(r"\b([1-5]\d\d)\b", cell)}


def test_statuses_are_the_readmes() -> None:
    documented = set(DOCUMENT["paths"]["/api/bid/"]["post"]["responses"])
    assert readme_statuses() == documented, "the README's table and the document list different statuses"


def test_constants_are_the_gateways() -> None:
    assert http_api.MAX_IDEMPOTENCY_KEY == gateway_app.MAX_IDEMPOTENCY_KEY
    assert Settings().max_body_bytes == 16 * 1024  # the document says 16 KiB


# --- The request schema against the gateway's validation ------------------------------------------------------------

numeric_text = st.from_regex(r"\A[ \t]?[+-]?([0-9]{1,12}(\.[0-9]{0,4})?|\.[0-9]{1,4})([eE][+-]?[0-9]{1,2})?[ \t]?\Z")
values = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0, max_value=1e6),
    numeric_text,
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
bodies = st.fixed_dictionaries(
    {},
    optional={"product_id": values, "current_cpc": values, "target_roas": values, "extra": values},
)


def accepted(body: Any) -> bool:
    try:
        parse_bid(json.dumps(body).encode())
    except BidValidationError:
        return False
    return True


@hypothesis.settings(max_examples=3000, deadline=None, derandomize=True)
@hypothesis.given(body=st.one_of(bodies, values))
def test_every_accepted_body_matches_the_schema(body: Any) -> None:
    """The schema never rejects what the gateway accepts (numbers and numeric strings alike)."""
    if accepted(body):
        assert REQUEST_SCHEMA.is_valid(body), body


@hypothesis.settings(max_examples=2000, deadline=None, derandomize=True)
@hypothesis.given(
    product_id=st.integers(min_value=1, max_value=2**63 - 1),
    current_cpc=st.floats(min_value=0, max_value=MAX_MONEY),
    target_roas=st.floats(min_value=0.0001, max_value=99_999_999.9999),
)
def test_numbers_within_the_schema_are_accepted(product_id: int, current_cpc: float, target_roas: float) -> None:
    """For JSON numbers the schema is exact, but for the adjusted CPC, which must fit numeric(12, 2) too."""
    body = {"product_id": product_id, "current_cpc": current_cpc, "target_roas": target_roas}
    assert REQUEST_SCHEMA.is_valid(body)
    fits = calculate_adjusted_cpc(current_cpc, target_roas) <= MAX_MONEY
    assert accepted(body) == fits, body


@pytest.mark.parametrize(
    "body",
    [
        {"product_id": "123", "current_cpc": " 1.5", "target_roas": "1.5e2 "},
        {"product_id": 1e3, "current_cpc": 0, "target_roas": 0.0001},
        {"product_id": " 7\n", "current_cpc": "+.5", "target_roas": "100.", "other": [1]},
    ],
)
def test_numeric_strings_and_whole_floats_are_described(body: dict[str, Any]) -> None:
    assert accepted(body)
    assert REQUEST_SCHEMA.is_valid(body)


# --- Every documented status, from a real gateway ------------------------------------------------------------------


def assert_documented(path: str, method: str, response: requests.Response) -> None:
    """Status, required headers, content type and body as the document says."""
    operation = DOCUMENT["paths"][path][method]
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{method.upper()} {path}: {response.status_code} is not documented"
    for name, header in documented.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{response.status_code}: no {name} header"
            validator(header["schema"]).validate(response.headers[name])
    (media_type, content), *_ = documented["content"].items()
    assert response.headers["Content-Type"].split(";")[0] == media_type
    body = response.json() if media_type == "application/json" else response.text
    validator(content["schema"]).validate(body)


def post(url: str, body: Any = VALID_BID, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.post(f"{url}/api/bid/", data=data, headers=headers, timeout=30, **kwargs)


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (200, VALID_BID, {}),
        (400, {"product_id": 0, "current_cpc": -1, "target_roas": "x"}, {}),
        (400, b"{not json", {}),
        (400, VALID_BID, {"Idempotency-Key": "k" * 256}),
        (413, b'{"pad": "' + b"x" * (17 * 1024) + b'"}', {}),
        (415, VALID_BID, {"Content-Type": "text/plain"}),
    ],
    ids=["200", "400-legacy", "400-json", "400-key", "413", "415"],
)
def test_answers_of_the_bid_endpoint(pipeline: Pipeline, status: int, body: Any, headers: dict[str, str]) -> None:  # noqa: F811
    response = post(pipeline.gateway_url, body, headers=headers)
    assert response.status_code == status, response.text
    assert_documented("/api/bid/", "post", response)


def test_idempotency_conflict_is_a_documented_422(pipeline: Pipeline) -> None:  # noqa: F811
    key = {"Idempotency-Key": f"openapi-{uuid.uuid4()}"}
    assert post(pipeline.gateway_url, VALID_BID, headers=key).status_code == 200
    response = post(pipeline.gateway_url, {**VALID_BID, "current_cpc": 2.5}, headers=key)
    assert response.status_code == 422, response.text
    assert_documented("/api/bid/", "post", response)


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics", "/openapi.json"])
def test_answers_of_the_gets(pipeline: Pipeline, path: str) -> None:  # noqa: F811
    response = requests.get(f"{pipeline.gateway_url}{path}", timeout=10)
    assert response.status_code == 200
    assert_documented(path, "get", response)


@pytest.fixture(scope="module")
def stranded_gateway(pipeline: Pipeline) -> str:  # noqa: F811
    """A second gateway on the pipeline's Redis whose replies time out after 0.3 s while the agent is paused."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pipeline.start(
        "gateway", name="gateway-504", GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(port), REPLY_TIMEOUT_S="0.3"
    )
    wait_until_ready(url)
    return url


def test_no_reply_in_time_is_a_documented_504(pipeline: Pipeline, stranded_gateway: str) -> None:  # noqa: F811
    agent = pipeline.processes["pricing-agent"]
    agent.send_signal(signal.SIGSTOP)  # the bid waits on the stream: no reply can come
    try:
        response = post(stranded_gateway, {**VALID_BID, "product_id": 5041})
    finally:
        agent.send_signal(signal.SIGCONT)
    assert response.status_code == 504, response.text
    assert_documented("/api/bid/", "post", response)


@pytest.fixture(scope="module")
def gateway_without_redis(pipeline: Pipeline) -> str:  # noqa: F811
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    pipeline.start("gateway", name="gateway-503", **env)
    for _attempt in range(300):
        try:
            if requests.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except requests.ConnectionError:
            pass
        time.sleep(0.1)  # polling a starting process, not waiting for an effect
    raise TimeoutError("the gateway without Redis never answered /health")


def test_backend_down_is_a_documented_503(gateway_without_redis: str) -> None:
    response = post(gateway_without_redis)
    assert response.status_code == 503, response.text
    assert_documented("/api/bid/", "post", response)
    ready = requests.get(f"{gateway_without_redis}/ready", timeout=10)
    assert ready.status_code == 503
    assert_documented("/ready", "get", ready)
    assert ready.json()["redis"] is False
