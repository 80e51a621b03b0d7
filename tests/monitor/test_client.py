"""Fetching the catalogue: paging to `total`, retries with backoff, giving up on what cannot succeed."""

from __future__ import annotations

import aiohttp
import pytest

from monitor.client import FetchError, ProductsClient, backoff_delay
from monitor.fake_api import Fault, RunningFakeApi


class RecordedSleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def client_for(
    api: RunningFakeApi,
    session: aiohttp.ClientSession,
    sleeps: RecordedSleeps,
    *,
    page_size: int = 30,
    max_retries: int = 2,
    timeout_s: float = 0.3,
) -> ProductsClient:
    return ProductsClient(
        session,
        api.products_url,
        page_size=page_size,
        timeout_s=timeout_s,
        max_retries=max_retries,
        backoff_base_s=0.5,
        backoff_cap_s=4.0,
        sleep=sleeps,
        rng=lambda: 1.0,  # the top of each jitter range, so the delays are exact
    )


def test_backoff_doubles_up_to_the_cap_and_jitter_stays_in_the_upper_half() -> None:
    top = [backoff_delay(n, base_s=0.5, cap_s=4.0, rng=lambda: 1.0) for n in range(6)]
    bottom = [backoff_delay(n, base_s=0.5, cap_s=4.0, rng=lambda: 0.0) for n in range(6)]

    assert top == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert bottom == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(("page_size", "pages"), [(30, 7), (100, 2), (200, 1), (7, 29)])
async def test_every_page_is_fetched_until_total(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession, page_size: int, pages: int
) -> None:
    sleeps = RecordedSleeps()
    catalogue = await client_for(fake_api, http_session, sleeps, page_size=page_size).fetch_catalogue()

    assert [item["id"] for item in catalogue.items] == list(range(1, 201))
    assert (catalogue.total, catalogue.pages, catalogue.requests) == (200, pages, pages)
    assert sleeps.delays == []


async def test_a_source_that_caps_its_pages_is_still_read_to_the_end(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    # Ask for more than a page can hold: progress follows what arrived, not what was asked for.
    sleeps = RecordedSleeps()
    fake_api.products[:] = fake_api.products[:45]
    catalogue = await client_for(fake_api, http_session, sleeps, page_size=1000).fetch_catalogue()

    assert len(catalogue.items) == 45


@pytest.mark.parametrize("fault", [Fault.SERVER_ERROR, Fault.HTML, Fault.TRUNCATED, Fault.SLOW])
async def test_transient_failures_are_retried_with_growing_delays(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession, fault: Fault
) -> None:
    sleeps = RecordedSleeps()
    fake_api.faults.next.extend([None, fault, fault])  # the second page fails twice, then answers

    catalogue = await client_for(fake_api, http_session, sleeps).fetch_catalogue()

    assert len(catalogue.items) == 200
    assert catalogue.requests == 9
    assert sleeps.delays == [0.5, 1.0]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.SERVER_ERROR, "HTTP 500"),
        (Fault.HTML, "expected JSON, got text/html"),
        (Fault.TRUNCATED, "not valid JSON"),
        (Fault.SLOW, "no complete answer within 0.3 s"),
    ],
)
async def test_a_page_that_keeps_failing_fails_the_fetch_after_the_last_retry(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession, fault: Fault, message: str
) -> None:
    sleeps = RecordedSleeps()
    fake_api.faults.always = fault

    with pytest.raises(FetchError, match=message):
        await client_for(fake_api, http_session, sleeps, max_retries=2).fetch_catalogue()

    assert fake_api.faults.requests == 3
    assert len(sleeps.delays) == 2


async def test_a_client_error_is_not_retried(fake_api: RunningFakeApi, http_session: aiohttp.ClientSession) -> None:
    sleeps = RecordedSleeps()
    fake_api.faults.always = Fault.NOT_FOUND

    with pytest.raises(FetchError, match="HTTP 404"):
        await client_for(fake_api, http_session, sleeps, max_retries=4).fetch_catalogue()

    assert fake_api.faults.requests == 1
    assert sleeps.delays == []


async def test_a_refused_connection_is_retried_then_fails(http_session: aiohttp.ClientSession) -> None:
    from bidengine.embedded import free_port

    sleeps = RecordedSleeps()
    client = ProductsClient(
        http_session,
        f"http://127.0.0.1:{free_port()}/products",
        page_size=30,
        timeout_s=0.3,
        max_retries=1,
        sleep=sleeps,
    )

    with pytest.raises(FetchError, match="ClientConnectorError"):
        await client.fetch_catalogue()
    assert len(sleeps.delays) == 1


async def test_a_response_that_is_json_but_not_a_page_is_a_failure(
    fake_api: RunningFakeApi, http_session: aiohttp.ClientSession
) -> None:
    sleeps = RecordedSleeps()
    client = ProductsClient(
        http_session,
        f"{fake_api.base_url}/products/1",  # a single product: JSON, but no products/total/skip/limit
        page_size=30,
        timeout_s=0.3,
        max_retries=0,
        sleep=sleeps,
    )

    with pytest.raises(FetchError, match="not a products page"):
        await client.fetch_catalogue()
