"""Fetching the whole catalogue from a DummyJSON-compatible products API, page by page, with retries.

Each page request has its own timeout and is retried with exponential backoff and jitter, a bounded number
of times. Anything that is not a well-formed products page (an HTML error page from a proxy, a 5xx, a
timeout, a cut-off body) counts as a failed attempt; a page that still fails after the last retry fails the
whole fetch, so a poll never publishes half a catalogue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from pydantic import ValidationError
from yarl import URL

from monitor.upstream import ProductsPage

log = logging.getLogger(__name__)

# 4xx answers that are worth asking again; any other 4xx means our request is wrong and will stay wrong.
RETRIABLE_CLIENT_ERRORS: Final = frozenset({408, 425, 429})
# A catalogue that never reaches `total` (a source that keeps answering full pages) must still end.
MAX_PAGES: Final = 10_000
SNIPPET_CHARS: Final = 120


class UpstreamError(Exception):
    """One request did not return a usable products page."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class FetchError(Exception):
    """The catalogue could not be fetched: a page failed on its last attempt, or cannot succeed."""

    def __init__(self, message: str, *, pages: int = 0, requests: int = 0) -> None:
        super().__init__(message)
        self.pages = pages  # pages fetched before the failure
        self.requests = requests  # requests made, the failed attempts included


@dataclass(frozen=True, slots=True)
class Catalogue:
    items: list[Any]  # raw product objects, validated later one by one
    total: int  # what the source reported on its last page
    pages: int
    requests: int  # including retries


def backoff_delay(retry: int, *, base_s: float, cap_s: float, rng: Callable[[], float]) -> float:
    """Seconds to wait before retry number `retry` (0-based): exponential, capped, with "equal jitter".

    Half the delay is fixed so retries really back off; the random half spreads out monitors that failed
    together, so they do not all hit a recovering source at the same instant.
    """
    ceiling = min(cap_s, base_s * 2.0**retry)
    return ceiling / 2 + rng() * ceiling / 2


class ProductsClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        source_url: str,
        *,
        page_size: int,
        timeout_s: float,
        max_retries: int,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1 (limit=0 would ask for everything at once)")
        self._session = session
        self._url = URL(source_url)
        self._page_size = page_size
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_retries = max(0, max_retries)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._sleep = sleep
        self._rng = rng

    async def fetch_catalogue(self) -> Catalogue:
        items: list[Any] = []
        skip = 0
        pages = 0
        requests = 0
        while True:
            try:
                page, attempts = await self._fetch_page(skip)
            except FetchError as exc:
                raise FetchError(str(exc), pages=pages, requests=requests + exc.requests) from exc.__cause__
            pages += 1
            requests += attempts
            items.extend(page.products)
            # The response's `limit` is how many products it holds; advance by what actually arrived.
            skip += len(page.products)
            if not page.products or skip >= page.total:
                return Catalogue(items, page.total, pages, requests)
            if pages >= MAX_PAGES:
                message = f"gave up after {pages} pages without reaching total={page.total}"
                raise FetchError(message, pages=pages, requests=requests)

    async def _fetch_page(self, skip: int) -> tuple[ProductsPage, int]:
        url = self._url.update_query(limit=self._page_size, skip=skip)
        for retry in range(self._max_retries + 1):
            try:
                return await self._get_page(url), retry + 1
            except UpstreamError as exc:
                if not exc.retriable or retry == self._max_retries:
                    raise FetchError(f"{url}: {exc} (attempt {retry + 1})", requests=retry + 1) from exc
                delay = backoff_delay(retry, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s, rng=self._rng)
                log.warning(
                    "upstream request failed, retrying",
                    extra={"url": str(url), "error": str(exc), "attempt": retry + 1, "retry_in_s": delay},
                )
                await self._sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")  # pragma: no cover

    async def _get_page(self, url: URL) -> ProductsPage:
        try:
            async with self._session.get(
                url, timeout=self._timeout, headers={"Accept": "application/json"}
            ) as response:
                body = await response.read()
                status, content_type = response.status, response.content_type
        except TimeoutError as exc:
            raise UpstreamError(f"no complete answer within {self._timeout.total} s", retriable=True) from exc
        except aiohttp.ClientError as exc:
            # Refused or reset connections, and bodies cut short against their Content-Length.
            raise UpstreamError(f"{type(exc).__name__}: {exc}", retriable=True) from exc

        if status >= 400:
            retriable = status >= 500 or status in RETRIABLE_CLIENT_ERRORS
            raise UpstreamError(f"HTTP {status}: {_snippet(body)}", retriable=retriable)
        if content_type != "application/json":
            # Typically a proxy's or CDN's HTML error page served with a 200.
            raise UpstreamError(f"expected JSON, got {content_type}: {_snippet(body)}", retriable=True)
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise UpstreamError(f"body is not valid JSON ({exc}), {len(body)} bytes", retriable=True) from exc
        try:
            return ProductsPage.model_validate(data)
        except ValidationError as exc:
            raise UpstreamError(f"not a products page: {exc.error_count()} errors", retriable=True) from exc


def _snippet(body: bytes) -> str:
    text = body[:SNIPPET_CHARS].decode("utf-8", errors="replace")
    return " ".join(text.split())
