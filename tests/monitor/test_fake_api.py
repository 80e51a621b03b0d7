"""The fake must page like DummyJSON, or the client tests prove nothing about the real source."""

from __future__ import annotations

from typing import Any

import aiohttp

from monitor.fake_api import Fault, RunningFakeApi, is_broken_by_bad_items


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def test_pages_report_how_many_products_they_hold(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    _, first = await get(http_session, f"{fake_api.products_url}?limit=50&skip=0")
    _, last = await get(http_session, f"{fake_api.products_url}?limit=50&skip=180")
    _, past = await get(http_session, f"{fake_api.products_url}?limit=50&skip=500")

    assert (first["total"], first["skip"], first["limit"], len(first["products"])) == (200, 0, 50, 50)
    assert (last["skip"], last["limit"], len(last["products"])) == (180, 20, 20)
    assert [p["id"] for p in last["products"]] == list(range(181, 201))
    assert (past["limit"], past["products"]) == (0, [])


async def test_limit_defaults_to_30_and_zero_means_all(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    _, default = await get(http_session, fake_api.products_url)
    _, everything = await get(http_session, f"{fake_api.products_url}?limit=0")
    _, rest = await get(http_session, f"{fake_api.products_url}?limit=0&skip=150")

    assert default["limit"] == 30
    assert everything["limit"] == 200
    assert len(everything["products"]) == 200
    assert rest["limit"] == 50


async def test_products_are_complete_without_select_and_trimmed_with_it(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    _, full = await get(http_session, f"{fake_api.products_url}?limit=1")
    _, selected = await get(http_session, f"{fake_api.products_url}?limit=1&select=title,price")

    assert {"id", "title", "price", "category", "rating", "stock", "sku"} <= set(full["products"][0])
    assert set(selected["products"][0]) == {"id", "title", "price"}


async def test_the_fixture_catalogue_is_varied(fake_api: RunningFakeApi) -> None:
    assert len(fake_api.products) == 200
    assert len({p["category"] for p in fake_api.products}) >= 10
    assert sum("brand" not in p for p in fake_api.products) >= 20  # real products often have no brand
    assert any(isinstance(p["price"], int) for p in fake_api.products)


async def test_one_product_and_a_missing_one(fake_api: RunningFakeApi, http_session: aiohttp.ClientSession) -> None:
    status, found = await get(http_session, f"{fake_api.base_url}/products/3")
    missing_status, missing = await get(http_session, f"{fake_api.base_url}/products/9999")

    assert (status, found["id"]) == (200, 3)
    assert missing_status == 404
    assert "not found" in missing["message"]


async def test_faults_queued_for_the_next_requests_then_normal_service(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    fake_api.faults.next.extend([Fault.SERVER_ERROR, Fault.HTML, Fault.TRUNCATED, None, Fault.BAD_ITEMS])
    url = f"{fake_api.products_url}?limit=0"

    async with http_session.get(url) as r500:
        assert r500.status == 500
    async with http_session.get(url) as html:
        assert (html.status, html.content_type) == (200, "text/html")
    async with http_session.get(url) as truncated:
        text = await truncated.text()
        assert truncated.content_type == "application/json"
        assert not text.rstrip().endswith("}")
    _, normal = await get(http_session, url)
    _, bad = await get(http_session, url)
    _, after = await get(http_session, url)

    assert normal == after
    broken = [p for p in fake_api.products if is_broken_by_bad_items(p)]
    assert len(broken) == 20
    assert bad["products"] != normal["products"]
    assert fake_api.faults.requests == 6


async def test_faults_can_be_switched_over_http(fake_api: RunningFakeApi, http_session: aiohttp.ClientSession) -> None:
    async with http_session.post(f"{fake_api.base_url}/_fake/faults", json={"always": "500"}) as response:
        assert response.status == 200
    status, _ = await get(http_session, fake_api.products_url)
    async with http_session.post(f"{fake_api.base_url}/_fake/faults", json={"always": "nonsense"}) as response:
        assert response.status == 400

    assert status == 500
    assert fake_api.faults.always is Fault.SERVER_ERROR
