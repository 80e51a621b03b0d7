"""The bid handler's hand-made pieces say exactly what the library calls they replace would say."""

from __future__ import annotations

import json
import random
import uuid

from aiohttp import web

from ingest.app import bid_response, request_id_for


def test_request_ids_are_random_version_4_uuids_in_canonical_form() -> None:
    random.seed(12345)
    ids = [request_id_for(None) for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    random.seed(12345)
    # The same bits uuid.UUID(int=..., version=4) keeps: only the version and variant bits are forced.
    assert [str(uuid.UUID(int=random.getrandbits(128), version=4)) for _ in range(2000)] == ids


def test_an_idempotency_key_still_names_one_uuid() -> None:
    assert request_id_for("order-17") == request_id_for("order-17") != request_id_for("order-18")


def test_the_bid_response_is_what_json_response_sends() -> None:
    for adjusted_cpc, bid_id in ((2.25, 1), (0.0, 2**63 - 1), (9_999_999_999.99, 7), (0.01, 42), (1e-05, 3)):
        made = bid_response(adjusted_cpc, bid_id, "6f1c2a52-3f5e-4d0b-9a51-1c7e0a3b8d21")
        reference = web.json_response(
            {"adjusted_cpc": adjusted_cpc, "bid_id": bid_id},
            headers={"X-Request-Id": "6f1c2a52-3f5e-4d0b-9a51-1c7e0a3b8d21"},
        )
        assert made.body == reference.body
        assert json.loads(made.body) == {"adjusted_cpc": adjusted_cpc, "bid_id": bid_id}  # type: ignore[arg-type]
        assert list(made.headers.items()) == list(reference.headers.items())
        assert made.status == reference.status == 200
