"""The console in a real browser (headless Chromium driven by Playwright) against the real running system:
gateway, pricing agent, audit agent and console as processes on the test Redis and PostgreSQL.

Each scenario also takes a screenshot of its page: into a temporary directory, or, to refresh the ones shown in
docs/console.md, into the directory named by CONSOLE_SCREENSHOTS_DIR (`CONSOLE_SCREENSHOTS_DIR=docs/console`).
Needs Debian's `chromium` (/usr/bin/chromium); without it these tests are skipped, under CI=true they fail.
Run them alone with `scripts/test tests/console/test_browser.py`.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from redis import asyncio as aioredis

from bidengine.embedded import free_port
from schema.keys import AUDIT_FLAGS, BIDS_DEAD_LETTER
from tests.pipeline.conftest import Pipeline
from tests.servers import RedisServer

from . import seed
from .conftest import PASSWORD, TEST_HASHER

CHROMIUM = Path("/usr/bin/chromium")
# The flags the machine's notes give for Chromium here (no sandbox as root, nothing phoning home).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCUMENTED_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
# A test run leaves the committed screenshots alone unless asked to refresh them.
SCREENSHOTS = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or tempfile.mkdtemp(prefix="console-screenshots-"))
SCREENSHOTS.mkdir(parents=True, exist_ok=True)
WAIT_MS = 30_000


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install -y chromium)")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (extra [test])")
    if missing:
        reason = "browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@dataclass
class System:
    pipeline: Pipeline
    console_url: str
    redis: aioredis.Redis
    db: asyncpg.Pool

    def post_bid(self, product_id: int, current_cpc: float, target_roas: float) -> tuple[int, dict[str, Any]]:
        body = json.dumps({"product_id": product_id, "current_cpc": current_cpc, "target_roas": target_roas}).encode()
        request = urllib.request.Request(  # noqa: S310 - the local gateway
            f"{self.pipeline.gateway_url}/api/bid/", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, json.load(response)
        except urllib.error.HTTPError as error:
            return error.code, json.load(error)


def _wait_for_console(url: str, process: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the console exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


@pytest.fixture(scope="module")
def running(private_redis_server: RedisServer, database_url: str) -> Iterator[Pipeline]:
    _require_browser()
    env = {
        **os.environ,
        "REDIS_URL": private_redis_server.url(2),
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "CLAIM_IDLE_MS": "1000",
        "CONSOLE_SESSION_KEY": Fernet.generate_key().decode(),
        "CONSOLE_FLAGS_POLL_S": "0.5",
    }
    pipeline = Pipeline(env["REDIS_URL"], database_url, env)
    import redis as sync_redis

    sync_redis.Redis.from_url(pipeline.redis_url).flushdb()
    try:
        pipeline.start("pricing-agent")
        pipeline.start("audit-agent")
        pipeline.start_gateway()
        port = free_port()
        console = pipeline.start("console", CONSOLE_HOST="127.0.0.1", CONSOLE_PORT=str(port))
        pipeline.env["CONSOLE_URL"] = f"http://127.0.0.1:{port}"
        _wait_for_console(pipeline.env["CONSOLE_URL"], console)
        yield pipeline
    finally:
        pipeline.stop_all()


@pytest.fixture(scope="module")
async def system(running: Pipeline) -> AsyncIterator[System]:
    redis = aioredis.Redis.from_url(running.redis_url, decode_responses=True)
    db = await asyncpg.create_pool(running.database_url, min_size=1, max_size=2)
    assert db is not None
    await db.execute("TRUNCATE console_users, console_actions RESTART IDENTITY")
    await db.execute("TRUNCATE bidding_productbid RESTART IDENTITY")
    for name, role in (("olivia", "operator"), ("victor", "viewer")):
        await db.execute(
            "INSERT INTO console_users (name, role, password_hash) VALUES ($1, $2, $3)",
            name,
            role,
            TEST_HASHER.hash(PASSWORD),
        )
    now = datetime.now(UTC)
    await seed.add_polls(
        redis,
        [
            (now - timedelta(minutes=10), {1: 9.99, 2: 19.99, 3: 4.5, 4: 100.0, 6: 31.0}),
            (now - timedelta(minutes=5), {1: 9.49, 2: 19.99, 3: 5.0, 5: 12.0, 6: 29.5}),
        ],
    )
    yield System(running, running.env["CONSOLE_URL"], redis, db)
    await redis.aclose()
    await db.close()


@pytest.fixture(scope="module")
async def browser(running: Pipeline) -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    yield page
    await context.close()


async def log_in(page: Any, system: System, name: str, path: str = "/") -> None:
    await page.goto(f"{system.console_url}{path}")
    await page.fill('input[name="name"]', name)
    await page.fill('input[name="password"]', PASSWORD)
    await page.click('button[type="submit"]')
    await page.wait_for_url(f"{system.console_url}{path}")


async def shot(page: Any, name: str) -> None:
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def wait_for(condition: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise TimeoutError("condition not met")


async def test_without_a_session_the_browser_is_sent_to_login(page: Any, system: System) -> None:
    await page.goto(f"{system.console_url}/pipeline")
    assert page.url.startswith(f"{system.console_url}/login?next=/pipeline")
    assert await page.text_content("h1") == "Log in"
    await shot(page, "login")


async def test_log_in_and_see_the_health_summary(page: Any, system: System) -> None:
    status, _ = await asyncio.to_thread(system.post_bid, 11, 2.0, 120.0)
    assert status == 200
    await log_in(page, system, "olivia")
    assert await page.text_content("header .who span") == "olivia (operator)"
    rows = await page.locator("table.signals tbody tr").all_inner_texts()
    assert any("pricing agents" in row for row in rows)
    assert any("last bid stored" in row for row in rows)
    await shot(page, "home")


async def test_a_flagged_bid_appears_on_the_flags_page_without_a_reload(page: Any, system: System) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog.message))
    await log_in(page, system, "olivia", "/flags")
    await page.evaluate("window.__sameDocument = true")
    # Through the real gateway: 1.00 at ROAS 150 prices at 1.50, a +50% move, so the audit agent flags it.
    status, reply = await asyncio.to_thread(system.post_bid, 4242, 1.0, 150.0)
    assert status == 200, reply
    bid_id = reply["bid_id"]
    await page.wait_for_selector(f'#flags a[href="/bids/{bid_id}"]')
    assert await page.evaluate("window.__sameDocument") is True, "the page was not reloaded"
    row = page.locator("#flags tbody tr").first
    assert f"#{bid_id}" in await row.inner_text()
    assert "+50.00" in await row.inner_text()
    # A flag whose fields hold markup is shown as text (the live path builds rows with textContent).
    hostile = seed.HOSTILE
    await system.redis.xadd(
        AUDIT_FLAGS,
        seed.flag_fields(bid_id + 1, 77, "1.00", "2.00", datetime.now(UTC), request_id=hostile, flagged_at=hostile),
    )
    await page.wait_for_selector("#flags tbody tr:first-child td:text-is('<script>alert(1)</script>')")
    assert dialogs == [], "no script from a stream ever runs"
    await page.reload()
    assert await page.locator("#flags tbody tr td", has_text="<script>alert(1)</script>").count() >= 1
    assert dialogs == []
    for _ in range(4):
        await asyncio.to_thread(system.post_bid, 4243, 2.0, 200.0)
    await page.wait_for_selector('#flags a[href="/bids?product=4243"]')
    await shot(page, "flags")


async def test_find_a_bid_by_id(page: Any, system: System) -> None:
    status, reply = await asyncio.to_thread(system.post_bid, 5150, 3.0, 180.0)
    assert status == 200
    bid_id = reply["bid_id"]
    for product in (5151, 5152, 5153):
        await asyncio.to_thread(system.post_bid, product, 1.25, 110.0)
    await log_in(page, system, "victor", "/bids")
    await shot(page, "bids")
    await page.fill('input[name="q"]', str(bid_id))
    await page.click("text=Find")
    await page.wait_for_url(f"{system.console_url}/bids/{bid_id}")
    assert await page.text_content("h1") == f"Bid #{bid_id}"
    request_id = await system.db.fetchval("SELECT request_id::text FROM bidding_productbid WHERE id = $1", bid_id)
    assert request_id in await page.inner_text("table.fields")
    await page.wait_for_timeout(200)
    await page.reload()  # the audit agent may still have been writing the flag
    if "audit:flags entry" not in await page.inner_text("main"):
        await page.wait_for_timeout(1000)
        await page.reload()
    assert "audit:flags entry" in await page.inner_text("main"), "+80% is flagged"
    await shot(page, "bid")


async def test_operator_replays_a_dead_letter_and_it_is_stored_once(page: Any, system: System) -> None:
    # A real dead letter: PostgreSQL refuses the row (a constraint the gateway does not know), the bidder gets 422.
    await system.db.execute(
        "ALTER TABLE bidding_productbid ADD CONSTRAINT console_test_refuse CHECK (product_id <> 9090) NOT VALID"
    )
    try:
        status, reply = await asyncio.to_thread(system.post_bid, 9090, 1.5, 150.0)
    finally:
        await system.db.execute("ALTER TABLE bidding_productbid DROP CONSTRAINT console_test_refuse")
    assert status == 422, reply
    request_id = reply["request_id"]
    entries = await wait_for(lambda: system.redis.xrange(BIDS_DEAD_LETTER))
    (entry_id, letter), *_ = entries
    assert json.loads(letter["fields"])["request_id"] == request_id

    await log_in(page, system, "olivia", "/pipeline")
    assert await page.locator("#dead-letters ~ table tbody tr").count() >= 1
    await shot(page, "pipeline")
    await page.click(f'a[href="/pipeline/dead/{BIDS_DEAD_LETTER}/{entry_id}?action=replay"]')
    assert "Append the original request to" in await page.inner_text("form.confirm")
    await shot(page, "dead-letter")
    await page.click('form.confirm button[type="submit"]')
    assert "Replay: done" in await page.text_content("h1")

    async def stored() -> int:
        return int(
            await system.db.fetchval("SELECT count(*) FROM bidding_productbid WHERE request_id = $1::uuid", request_id)
        )

    assert await wait_for(stored) == 1
    # The same request dead-lettered again (e.g. a duplicate), replayed again: the agent stores it once.
    await system.redis.xadd(BIDS_DEAD_LETTER, letter)
    await page.goto(f"{system.console_url}/pipeline")
    await page.click("text=Replay…")
    await page.click('form.confirm button[type="submit"]')
    assert "Replay: done" in await page.text_content("h1")
    await wait_for(lambda: _requests_drained(system))
    assert await stored() == 1
    await page.goto(f"{system.console_url}/pipeline")
    log_rows = await page.locator("h2:text('Operator actions') + table tbody tr").all_inner_texts()
    assert sum("olivia" in row and "replay" in row and "done" in row for row in log_rows) == 2


async def _requests_drained(system: System) -> bool:
    groups = await system.redis.xinfo_groups("bids:requests")
    return all(int(g["pending"]) == 0 and int(g.get("lag") or 0) == 0 for g in groups)


async def test_a_viewer_is_refused(page: Any, system: System) -> None:
    entry = await seed.add_dead_letter(system.redis, seed.request_fields(7, 1.5, 150.0), "kept for the viewer test")
    await log_in(page, system, "victor", "/pipeline")
    assert await page.locator("text=Replay…").count() == 0
    response = await page.goto(f"{system.console_url}/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}?action=replay")
    assert response.status == 403
    assert "Only operators may replay or purge" in await page.inner_text("main")
    assert await system.redis.xlen(BIDS_DEAD_LETTER) >= 1


async def test_a_forged_post_without_the_csrf_token_is_refused(page: Any, system: System) -> None:
    """Another site's page (another origin, same browser, logged-in operator) submits a purge form."""
    entry = await seed.add_dead_letter(system.redis, seed.request_fields(8, 1.5, 150.0), "target of a forged POST")
    target = f"{system.console_url}/pipeline/dead/{BIDS_DEAD_LETTER}/{entry}/purge"

    async def attacker(_request: web.Request) -> web.Response:
        html = f'<form method="post" action="{target}"><button id="go">win a prize</button></form>'
        return web.Response(text=html, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", attacker)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await log_in(page, system, "olivia")
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.click("#go")
        await page.wait_for_url(target)
        assert "did not come from the console" in await page.inner_text("main")
        await shot(page, "csrf-refused")
    finally:
        await runner.cleanup()
    assert [e for e, _ in await system.redis.xrange(BIDS_DEAD_LETTER, min=entry, max=entry)] == [entry]


async def test_the_other_pages(page: Any, system: System) -> None:
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bidengine.cli", "audit-report"],
        env=system.pipeline.env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    await log_in(page, system, "victor", "/reports")
    assert "DAILY BUDGET AUDIT REPORT" in await page.inner_text("main")
    await shot(page, "reports")
    await page.goto(f"{system.console_url}/aggregates")
    assert "Rolling 7 days" in await page.inner_text("main")
    await shot(page, "aggregates")
    await page.goto(f"{system.console_url}/competitors")
    assert "Changed since the previous poll" in await page.inner_text("main")
    await shot(page, "competitors")


def test_screenshots_are_documented() -> None:
    doc = (DOCUMENTED_SCREENSHOTS.parent / "console.md").read_text(encoding="utf-8")
    for png in sorted(DOCUMENTED_SCREENSHOTS.glob("*.png")):
        assert f"console/{png.name}" in doc, f"docs/console.md does not show {png.name}"
