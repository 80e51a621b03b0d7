"""The console's read-only pages. Each reads with a limit, under the backend deadline; a backend that fails
gives the page a sentence in place of its data and the status 503, never a 500 or a hang."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from aiohttp import web

from console import actions as action_log
from console import audit_records, bids, competitors, dead_letters, pipeline
from console.backends import Backends, Outcome, any_error
from console.context import BACKENDS, SETTINGS
from console.render import page
from console.security import current_user
from schema.keys import AUDIT_GROUP, BIDS_PRICED, DEAD_LETTER_STREAMS, PRICING_GROUP
from schema.settings import Settings

ENTRY_ID = re.compile(r"\d{1,20}-\d{1,20}")
MAX_BIGINT = 2**63 - 1


def backends_of(request: web.Request) -> Backends:
    return request.app[BACKENDS]


def settings_of(request: web.Request) -> Settings:
    return request.app[SETTINGS]


async def render(request: web.Request, template: str, context: dict[str, Any], *outcomes: Outcome[Any]) -> web.Response:
    """The page, with the status 503 when a backend it reads did not answer."""
    return await page(request, template, context, status=503 if any_error(*outcomes) else 200)


def entry_id_param(raw: str | None) -> str | None:
    return raw if raw and ENTRY_ID.fullmatch(raw) else None


def int_param(raw: str | None) -> int | None:
    raw = (raw or "").strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19:
        return None
    value = int(raw)
    return value if 1 <= value <= MAX_BIGINT else None


# --- Home: the answer on the first screen ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """One line of the health summary: `state` is ok, warn, bad or unknown (also spelled out on the page)."""

    name: str
    state: str
    value: str
    detail: str
    link: str


def _age(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else (now - moment).total_seconds()


def _group_signal(states: list[pipeline.StreamState], stream: str, group: str, settings: Settings) -> Signal:
    link = "/pipeline"
    for state in states:
        for g in state.groups:
            if state.name == stream and g.name == group:
                active = [c for c in g.consumers if c.idle_ms < 60_000]
                lag_known = g.undelivered is not None
                value = f"{g.lag:,} behind" if lag_known else f"{g.pending:,} pending"
                detail = f"{len(active)} of {g.consumers_total} consumers active in the last minute"
                if g.lag >= settings.max_pricing_lag and group == PRICING_GROUP:
                    return Signal(f"{group} agents", "bad", value, "the gateway refuses bids (MAX_PRICING_LAG)", link)
                if not active and g.lag > 0:
                    return Signal(f"{group} agents", "bad", value, "no consumer is reading: " + detail, link)
                state_name = "warn" if g.lag >= settings.console_lag_warn else "ok"
                return Signal(f"{group} agents", state_name, value, detail, link)
    return Signal(f"{group} agents", "bad", "no group", f"no consumer group {group!r} on {stream}: not started?", link)


async def home(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    now = datetime.now(UTC)

    async def redis_facts(redis: Any) -> dict[str, Any]:
        return {
            "streams": await pipeline.pipeline_state(redis, max_consumers=settings.console_page_size),
            "dead": {stream: await dead_letters.count(redis, stream) for stream in DEAD_LETTER_STREAMS},
            "today": await audit_records.today_totals(redis, now),
            "flags": (await audit_records.newest_flags(redis, limit=1, before=None, product_id=None, scan=1)).flags,
            "reports": (await audit_records.reports(redis, limit=1, before=None))[0],
            "poll": await competitors.latest_poll_at(redis),
        }

    redis_out, db_out = await asyncio.gather(backends.redis_outcome(redis_facts), backends.db_outcome(bids.newest))
    signals: list[Signal] = []
    if redis_out.value is not None:
        facts = redis_out.value
        signals.append(_group_signal(facts["streams"], "bids:requests", PRICING_GROUP, settings))
        signals.append(_group_signal(facts["streams"], BIDS_PRICED, AUDIT_GROUP, settings))
        dead = sum(facts["dead"].values())
        signals.append(
            Signal(
                "dead letters",
                "bad" if dead else "ok",
                f"{dead:,}",
                "requests the pricing agents could not store" if dead else "none",
                "/pipeline#dead-letters",
            )
        )
        today: audit_records.Totals = facts["today"]
        newest_flag = facts["flags"][0] if facts["flags"] else None
        signals.append(
            Signal(
                "flags today",
                "ok",
                f"{today.flagged:,}",
                f"of {today.reviewed:,} bids reviewed (UTC day)"
                + (f"; newest {newest_flag.flagged_at}" if newest_flag else ""),
                "/flags",
            )
        )
        report: audit_records.Report | None = facts["reports"][0] if facts["reports"] else None
        report_age = _age(report.generated_at if report else None, now)
        signals.append(
            Signal(
                "last daily report",
                "warn" if report_age is None or report_age > 26 * 3600 else "ok",
                report.get("generated_at") if report else "none",
                f"{report.get('flagged')} flagged of {report.get('reviewed')}" if report else "no report published",
                f"/reports/{report.entry_id}" if report else "/reports",
            )
        )
        poll_age = _age(facts["poll"], now)
        stale = 3 * settings.monitor_interval_s
        signals.append(
            Signal(
                "last competitor poll",
                "warn" if poll_age is None or poll_age > stale else "ok",
                facts["poll"].isoformat(timespec="seconds") if facts["poll"] else "none",
                f"older than {stale:.0f} s: is the monitor polling?"
                if poll_age is not None and poll_age > stale
                else "",
                "/competitors",
            )
        )
    if db_out.ok:
        newest: bids.Bid | None = db_out.value
        signals.append(
            Signal(
                "last bid stored",
                "ok",
                f"#{newest.id}" if newest else "none",
                newest.calculated_at.isoformat(timespec="seconds") if newest else "the table is empty",
                f"/bids/{newest.id}" if newest else "/bids",
            )
        )
    context = {"signals": signals, "redis_error": redis_out.error, "db_error": db_out.error, "now": now}
    return await render(request, "home.html", context, redis_out, db_out)


# --- Flags ---------------------------------------------------------------------------------------------------------


async def flags(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    product_id = int_param(request.query.get("product"))
    before = entry_id_param(request.query.get("before"))

    async def read(redis: Any) -> tuple[audit_records.FlagPage, str]:
        page = await audit_records.newest_flags(
            redis,
            limit=settings.console_page_size,
            before=before,
            product_id=product_id,
            scan=settings.console_flags_scan,
        )
        return page, await audit_records.last_flag_id(redis)

    out = await backends.redis_outcome(read)
    page, last_id = out.value if out.value else (None, "0-0")
    context = {
        "page": page,
        "product_id": product_id,
        "product_raw": request.query.get("product", ""),
        "live": before is None,
        "last_id": last_id,
        "poll_ms": int(settings.console_flags_poll_s * 1000),
        "scan": settings.console_flags_scan,
        "error": out.error,
    }
    return await render(request, "flags.html", context, out)


async def flags_feed(request: web.Request) -> web.Response:
    """New flags since `after`, as JSON for the live Flags page (which renders them as text, never HTML)."""
    backends, settings = backends_of(request), settings_of(request)
    after = entry_id_param(request.query.get("after")) or "0-0"
    product_id = int_param(request.query.get("product"))
    out = await backends.redis_outcome(
        lambda redis: audit_records.flags_after(redis, after, limit=settings.console_page_size)
    )
    if out.value is None:
        return web.json_response({"errors": [out.error]}, status=503)
    last = out.value[-1].entry_id if out.value else after
    shown = [f.as_json() for f in out.value if product_id is None or f.product_id == product_id]
    return web.json_response({"flags": shown, "last": last})


# --- Reports -------------------------------------------------------------------------------------------------------


async def reports(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    before = entry_id_param(request.query.get("before"))
    out = await backends.redis_outcome(
        lambda redis: audit_records.reports(redis, limit=settings.console_page_size, before=before)
    )
    page, older = out.value if out.value else ([], None)
    today = datetime.now(UTC).date()
    todays = [r for r in page if r.generated_at and r.generated_at.astimezone(UTC).date() == today]
    context = {"reports": page, "older": older, "todays": todays, "error": out.error}
    return await render(request, "reports.html", context, out)


async def report_detail(request: web.Request) -> web.Response:
    entry_id = entry_id_param(request.match_info["entry_id"])
    if entry_id is None:
        raise web.HTTPNotFound(text="No such report.")
    out = await backends_of(request).redis_outcome(lambda redis: audit_records.report(redis, entry_id))
    if out.ok and out.value is None:
        raise web.HTTPNotFound(text="No such report (audit:reports keeps the last ~1,000).")
    return await render(request, "report.html", {"report": out.value, "error": out.error}, out)


# --- Aggregates ----------------------------------------------------------------------------------------------------


async def aggregates(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    raw_products = request.query.getall("product", [])
    product_ids = [p for p in (int_param(raw) for raw in raw_products) if p is not None]
    out = await backends.redis_outcome(
        lambda redis: audit_records.aggregates(
            redis,
            product_ids=product_ids or None,
            max_product_fields=settings.console_aggregates_max_products,
        )
    )
    context = {
        "stats": out.value,
        "product_ids": product_ids,
        "max_products": settings.console_aggregates_max_products,
        "error": out.error,
    }
    return await render(request, "aggregates.html", context, out)


# --- Bids ----------------------------------------------------------------------------------------------------------


def _time_param(raw: str | None) -> datetime | None:
    """A `datetime-local` value (taken as UTC) or ISO 8601 with an offset."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def bids_page(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    query = request.query
    errors: list[str] = []
    text = query.get("q", "").strip()
    if text:
        error = await _find_one_bid(backends, text)
        return await render(request, "bids.html", _bids_context(query, [error], None, None))
    product_raw = query.get("product", "").strip()
    product_id = int_param(product_raw) if product_raw else None
    if product_raw and product_id is None:
        errors.append("A product id is a whole number from 1 to 2^63-1.")
    now = datetime.now(UTC)
    end = _time_param(query.get("to")) or now
    start = _time_param(query.get("from")) or (end - timedelta(days=7))
    if query.get("from") and _time_param(query.get("from")) is None:
        errors.append("'from' is not a date and time.")
    if query.get("to") and _time_param(query.get("to")) is None:
        errors.append("'to' is not a date and time.")
    if start > end:
        errors.append("'from' is after 'to'.")
    if errors:
        return await render(request, "bids.html", _bids_context(query, errors, None, None))
    cursor = None
    notices: list[str] = []
    if query.get("after"):
        try:
            cursor = bids.Cursor.decode(query["after"])
        except ValueError:
            notices.append("That page link is not valid; the search starts again from the newest bids.")

    out = await backends.db_outcome(
        lambda conn: bids.search(
            conn,
            start=start,
            end=end,
            product_id=product_id,
            cursor=cursor,
            limit=settings.console_page_size,
            first_span_s=settings.console_bids_first_span_s,
            max_span_s=settings.console_bids_max_span_s,
        )
    )
    context = _bids_context(query, notices, out.value, out.error)
    context.update({"start": start, "end": end, "product_id": product_id})
    if out.value is not None and out.value.next is not None:
        params = {k: v for k, v in query.items() if k not in ("after", "q")}
        params["after"] = out.value.next.encode()
        context["next_url"] = str(request.rel_url.with_query(params))
    return await render(request, "bids.html", context, out)


async def _find_one_bid(backends: Backends, text: str) -> str:
    """Redirects to the bid a search names (id or request id), or returns why there is none."""
    bid_id = int_param(text.lstrip("#"))
    if bid_id is not None:
        raise web.HTTPSeeOther(location=f"/bids/{bid_id}")
    try:
        request_id = UUID(text)
    except ValueError:
        return "Search for a bid id (a whole number) or a request id (a UUID)."
    found = await backends.db_call(lambda conn: bids.by_request_id(conn, request_id))
    if found is None:
        return f"No bid has the request id {request_id}."
    raise web.HTTPSeeOther(location=f"/bids/{found.id}")


def _bids_context(query: Any, errors: list[str], page: bids.BidPage | None, error: str | None) -> dict[str, Any]:
    return {
        "form": {k: query.get(k, "") for k in ("q", "product", "from", "to")},
        "errors": errors,
        "page": page,
        "error": error,
        "next_url": None,
    }


async def bid_detail(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    bid_id = int_param(request.match_info["bid_id"])
    if bid_id is None:
        raise web.HTTPNotFound(text="A bid id is a whole number.")
    row = await backends.db_outcome(lambda conn: bids.by_id(conn, bid_id))
    if row.ok and row.value is None:
        raise web.HTTPNotFound(text=f"No bid #{bid_id}.")
    flag: Outcome[audit_records.Flag | None] = Outcome()
    if row.value is not None:
        bid = row.value
        flag = await backends.redis_outcome(
            lambda redis: audit_records.flag_of_bid(
                redis, bid.id, bid.calculated_at, scan=settings.console_flag_lookup_scan
            )
        )
    context = {
        "bid": row.value,
        "flag": flag.value,
        "flag_error": flag.error,
        "error": row.error,
        "scan": settings.console_flag_lookup_scan,
    }
    return await render(request, "bid.html", context, row, flag)


# --- Pipeline ------------------------------------------------------------------------------------------------------


async def pipeline_page(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    before = entry_id_param(request.query.get("before"))

    async def read(redis: Any) -> dict[str, Any]:
        letters = {}
        for stream in DEAD_LETTER_STREAMS:
            page, older = await dead_letters.newest(redis, stream, limit=settings.console_page_size, before=before)
            letters[stream] = {"entries": page, "older": older, "count": await dead_letters.count(redis, stream)}
        return {
            "streams": await pipeline.pipeline_state(redis, max_consumers=settings.console_page_size),
            "letters": letters,
        }

    redis_out, log_out = await asyncio.gather(
        backends.redis_outcome(read),
        backends.db_outcome(lambda conn: action_log.recent(conn, settings.console_page_size)),
    )
    context = {
        "state": redis_out.value,
        "error": redis_out.error,
        "actions": log_out.value,
        "actions_error": log_out.error,
        "is_operator": current_user(request).is_operator,
        "lag_warn": settings.console_lag_warn,
    }
    return await render(request, "pipeline.html", context, redis_out, log_out)


# --- Competitors ---------------------------------------------------------------------------------------------------


async def competitors_page(request: web.Request) -> web.Response:
    backends, settings = backends_of(request), settings_of(request)
    out = await backends.redis_outcome(
        lambda redis: competitors.latest_polls(redis, read=settings.console_competitors_read)
    )
    context = {"data": out.value, "error": out.error, "read": settings.console_competitors_read}
    return await render(request, "competitors.html", context, out)
