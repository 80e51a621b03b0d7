"""A local stand-in for the DummyJSON products API, for tests and the offline demo.

It serves `monitor/fixtures/products.json` with DummyJSON's paging rules:

- `GET /products?limit=L&skip=S` answers `{"products": [...], "total", "skip", "limit"}`, where `limit` is
  the number of products in this answer (fewer than asked on the last page, 0 past the end);
- `limit` defaults to 30 and `limit=0` means every product from `skip` on;
- `select=title,price` keeps only those fields (plus `id`); without it, products are complete;
- `GET /products/{id}` answers one product, or 404 with `{"message": ...}`.

It can misbehave on demand, for all requests or for the next few: an HTML error page (served with a 200, as
proxies do), a 500, a 404, an answer slower than any sane timeout, a truncated JSON body, or pages where
every tenth product is broken (non-numeric or missing price, missing title, non-numeric id).
Switch it from the command line (`--fault`) or at run time: `POST /_fake/faults {"always": "500",
"next": ["slow", null]}` (`null` in `next` means one normal answer). `GET /_fake/faults` shows the state.

Run it alone: `python -m monitor.fake_api --port 8090`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, Final

from aiohttp import web

DEFAULT_LIMIT: Final = 30  # DummyJSON's page size when `limit` is not given
BAD_ITEM_EVERY: Final = 10  # with the bad-items fault, products whose id is a multiple of this are broken


class Fault(StrEnum):
    HTML = "html"
    SERVER_ERROR = "500"
    NOT_FOUND = "404"
    SLOW = "slow"
    TRUNCATED = "truncated"
    BAD_ITEMS = "bad-items"


@dataclass(slots=True)
class Faults:
    """What the fake does wrong. `next` is consumed one entry per products request, before `always`."""

    always: Fault | None = None
    next: deque[Fault | None] = field(default_factory=deque)
    slow_s: float = 30.0
    requests: int = 0  # products requests answered so far, faulty or not
    requested: asyncio.Event = field(default_factory=asyncio.Event)  # set by the first products request

    def take(self) -> Fault | None:
        self.requests += 1
        self.requested.set()
        return self.next.popleft() if self.next else self.always

    def as_json(self) -> dict[str, Any]:
        return {
            "always": self.always,
            "next": list(self.next),
            "slow_s": self.slow_s,
            "requests": self.requests,
        }


def load_fixture_products() -> list[dict[str, Any]]:
    text = resources.files("monitor").joinpath("fixtures/products.json").read_text(encoding="utf-8")
    products: list[dict[str, Any]] = json.loads(text)["products"]
    return products


def break_item(product: dict[str, Any]) -> dict[str, Any]:
    """Damage a product the way real feeds go wrong, deterministically by id."""
    broken = dict(product)
    kind = (product["id"] // BAD_ITEM_EVERY) % 4
    if kind == 0:
        broken["price"] = "N/A"
    elif kind == 1:
        del broken["price"]
    elif kind == 2:
        del broken["title"]
    else:
        broken["id"] = f"sku-{product['id']}"
    return broken


def is_broken_by_bad_items(product: dict[str, Any]) -> bool:
    return int(product["id"]) % BAD_ITEM_EVERY == 0


FAULTS_KEY: Final = web.AppKey("faults", Faults)
PRODUCTS_KEY: Final = web.AppKey("products", list[dict[str, Any]])
CLOSING_KEY: Final = web.AppKey("closing", asyncio.Event)


def build_app(products: list[dict[str, Any]] | None = None, faults: Faults | None = None) -> web.Application:
    app = web.Application()
    app[PRODUCTS_KEY] = load_fixture_products() if products is None else products
    app[FAULTS_KEY] = Faults() if faults is None else faults
    app[CLOSING_KEY] = asyncio.Event()

    async def release_slow_answers(app: web.Application) -> None:
        # Slow handlers wake up at shutdown instead of holding the server open for `slow_s`.
        app[CLOSING_KEY].set()

    app.on_shutdown.append(release_slow_answers)
    app.router.add_get("/products", list_products)
    app.router.add_get("/products/{id}", get_product)
    app.router.add_get("/_fake/faults", show_faults)
    app.router.add_post("/_fake/faults", set_faults)
    return app


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        return max(0, int(raw))
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"message": f"Invalid {name} '{raw}'"}), content_type="application/json"
        ) from None


async def list_products(request: web.Request) -> web.StreamResponse:
    fault = request.app[FAULTS_KEY].take()
    if fault is Fault.SLOW:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(request.app[CLOSING_KEY].wait(), request.app[FAULTS_KEY].slow_s)
    elif fault is Fault.HTML:
        return web.Response(
            text="<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>",
            content_type="text/html",
        )
    elif fault is Fault.SERVER_ERROR:
        return web.json_response({"message": "Internal server error"}, status=500)
    elif fault is Fault.NOT_FOUND:
        return web.json_response({"message": "Not found"}, status=404)

    catalogue = request.app[PRODUCTS_KEY]
    limit = _int_param(request, "limit", DEFAULT_LIMIT)
    skip = _int_param(request, "skip", 0)
    page = catalogue[skip:] if limit == 0 else catalogue[skip : skip + limit]
    if fault is Fault.BAD_ITEMS:
        page = [break_item(p) if is_broken_by_bad_items(p) else p for p in page]
    if select := request.query.get("select"):
        page = [_select(p, select.split(",")) for p in page]
    body = json.dumps({"products": page, "total": len(catalogue), "skip": skip, "limit": len(page)})
    if fault is Fault.TRUNCATED:
        # A well-formed HTTP answer whose JSON stops half way, as when an upstream dies mid-write.
        body = body[: len(body) // 2]
    return web.Response(text=body, content_type="application/json")


def _select(product: dict[str, Any], names: Iterable[str]) -> dict[str, Any]:
    wanted = {"id", *(n.strip() for n in names)}
    return {k: v for k, v in product.items() if k in wanted}


async def get_product(request: web.Request) -> web.Response:
    raw = request.match_info["id"]
    for product in request.app[PRODUCTS_KEY]:
        if str(product["id"]) == raw:
            return web.json_response(product)
    return web.json_response({"message": f"Product with id '{raw}' not found"}, status=404)


async def show_faults(request: web.Request) -> web.Response:
    return web.json_response(request.app[FAULTS_KEY].as_json())


async def set_faults(request: web.Request) -> web.Response:
    faults = request.app[FAULTS_KEY]
    try:
        wanted = await request.json()
        always = wanted.get("always")
        faults.always = None if always is None else Fault(always)
        faults.next = deque(None if f is None else Fault(f) for f in wanted.get("next", []))
        if "slow_s" in wanted:
            faults.slow_s = float(wanted["slow_s"])
    except (ValueError, TypeError, AttributeError) as exc:
        choices = ", ".join(f.value for f in Fault)
        return web.json_response({"message": f"{exc}; faults are: {choices}"}, status=400)
    return web.json_response(faults.as_json())


@dataclass(frozen=True, slots=True)
class RunningFakeApi:
    base_url: str
    faults: Faults
    products: list[dict[str, Any]]

    @property
    def products_url(self) -> str:
        return f"{self.base_url}/products"


@contextlib.asynccontextmanager
async def running_fake_api(
    host: str = "127.0.0.1", port: int = 0, *, products: list[dict[str, Any]] | None = None
) -> AsyncIterator[RunningFakeApi]:
    """Serve the fake on `host:port` (0: a free port) for the duration of the block."""
    app = build_app(copy.deepcopy(load_fixture_products()) if products is None else products)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield RunningFakeApi(f"http://{bound_host}:{bound_port}", app[FAULTS_KEY], app[PRODUCTS_KEY])
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monitor.fake_api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--fault", choices=[f.value for f in Fault], help="misbehave on every products request")
    parser.add_argument("--slow-s", type=float, default=30.0, help="delay of the `slow` fault")
    args = parser.parse_args(argv)
    faults = Faults(always=None if args.fault is None else Fault(args.fault), slow_s=args.slow_s)
    print(f"fake products API on http://{args.host}:{args.port}/products", flush=True)
    web.run_app(build_app(faults=faults), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
