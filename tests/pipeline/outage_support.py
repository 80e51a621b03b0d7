"""What the outage tests share: every role as a real process (`System`), and bidders that retry (`KeyedLoad`).

`KeyedLoad` is a few client threads, each posting keyed bids one after another, and retrying a bid with the
same `Idempotency-Key` on a 503 (after its `Retry-After`), a 504 (at once: the bid was accepted) or a
connection error, until it gets its 200: what a well-behaved bidder does. Every attempt is recorded with its
time, so a test can tell what the clients saw during a fault and how long the pipeline took to recover.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from bidengine.embedded import free_port
from ingest.app import request_id_for
from processors.heartbeat import read_heartbeat
from schema.database import BIDS_TABLE
from tests.pipeline.conftest import Pipeline, wait_until_ready
from tests.pipeline.test_failures import poll

AGENTS = ("pricing-agent", "audit-agent")


@dataclass
class Attempt:
    started: float
    finished: float
    status: int | str  # HTTP status, or "connection" for a connection error
    reason: str = ""
    bid_id: int | None = None


@dataclass
class KeyedBid:
    key: str
    product_id: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def bid_id(self) -> int | None:
        return next((a.bid_id for a in self.attempts if a.status == 200), None)

    @property
    def request_id(self) -> str:
        return request_id_for(self.key)


class KeyedLoad:
    """Client threads posting keyed bids and retrying them until each has its 200 (see the module docstring)."""

    def __init__(
        self, gateway_url: str, *, name: str, product_base: int, threads: int = 4, give_up_after_s: float = 180
    ) -> None:
        host, port = gateway_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.name = name
        self.product_base = product_base
        self.give_up_after_s = give_up_after_s
        self.bids: list[KeyedBid] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> KeyedLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        if exc_type is not None:  # the test failed: do not wait for the bids in flight
            self._abort.set()
        self.stop()

    def stop(self) -> None:
        """No new bids; wait until every bid started has its 200 (or was given up on)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.give_up_after_s + 60)

    def post(self, bid: KeyedBid) -> Attempt:
        body = json.dumps({"product_id": bid.product_id, "current_cpc": 1.25, "target_roas": 160})
        started = time.monotonic()
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            connection.request(
                "POST",
                "/api/bid/",
                body,
                {"Content-Type": "application/json", "Idempotency-Key": bid.key},
            )
            response = connection.getresponse()
            answer = json.loads(response.read())
            status: int | str = response.status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            return Attempt(started, time.monotonic(), "connection", type(exc).__name__)
        finally:
            connection.close()
        finished = time.monotonic()
        if status == 200:
            return Attempt(started, finished, 200, bid_id=int(answer["bid_id"]))
        return Attempt(started, finished, status, "; ".join(answer.get("errors", [])))

    def _run(self, thread: int) -> None:
        for n in range(1_000_000):
            if self._stop.is_set():
                return
            bid = KeyedBid(f"{self.name}-{thread}-{n}", self.product_base + thread * 1_000_000 + n)
            with self._lock:
                self.bids.append(bid)
            deadline = time.monotonic() + self.give_up_after_s
            while time.monotonic() < deadline and not self._abort.is_set():
                attempt = self.post(bid)
                bid.attempts.append(attempt)
                if attempt.status == 200:
                    break
                if attempt.status == 503:
                    time.sleep(1.0)  # the gateway's Retry-After
                elif attempt.status == "connection":
                    time.sleep(0.2)
                elif attempt.status != 504:
                    break  # 4xx: not retried (none expected)

    # What the clients saw.

    def attempts(self) -> Iterator[Attempt]:
        with self._lock:
            bids = list(self.bids)
        for bid in bids:
            yield from list(bid.attempts)

    def successes(self, after: float = 0.0) -> int:
        return sum(1 for a in self.attempts() if a.status == 200 and a.started >= after)

    def first_success_after(self, moment: float) -> float | None:
        times = [a.finished for a in self.attempts() if a.status == 200 and a.started >= moment]
        return min(times) if times else None

    def summary(self, since: float, until: float) -> str:
        window = [a for a in self.attempts() if since <= a.started < until]
        statuses = Counter(str(a.status) for a in window)
        reasons = Counter(a.reason for a in window if a.status != 200)
        slowest = max((a.finished - a.started for a in window), default=0.0)
        top = ", ".join(f"{count} x {reason!r}" for reason, count in reasons.most_common(3))
        return f"{dict(statuses)}; slowest answer {slowest:.2f} s; errors: {top or 'none'}"


def check_every_200_has_its_row(load: KeyedLoad, database_url: str) -> dict[str, int]:
    """Each bid got a 200; each has exactly one row, with the bid id of its first 200; retried keys (and a
    fresh retry of every key now) return that same id. Returns figures for the report."""
    unanswered = [bid.key for bid in load.bids if bid.bid_id is None]
    assert unanswered == [], f"{len(unanswered)} bids never got a 200: {unanswered[:5]}"
    products = [bid.product_id for bid in load.bids]
    with psycopg.connect(database_url, autocommit=True) as db:
        rows = db.execute(
            f"SELECT request_id::text, id, count(*) OVER (PARTITION BY request_id) FROM {BIDS_TABLE} "
            "WHERE product_id = ANY(%s)",
            (products,),
        ).fetchall()
    by_request = {request_id: (bid_id, copies) for request_id, bid_id, copies in rows}
    assert len(rows) == len(load.bids), f"{len(rows)} rows for {len(load.bids)} bids"
    retried = 0
    for bid in load.bids:
        bid_id, copies = by_request[bid.request_id]
        assert copies == 1
        answers = {a.bid_id for a in bid.attempts if a.status == 200}
        assert answers == {bid_id}, (bid.key, answers, bid_id)
        retried += len(bid.attempts) > 1
    # Every key once more, now: the same bid id, nothing new stored.
    for bid in load.bids[:: max(1, len(load.bids) // 200)]:
        again = load.post(bid)
        assert (again.status, again.bid_id) == (200, bid.bid_id), (bid.key, again)
    with psycopg.connect(database_url, autocommit=True) as db:
        (count,) = db.execute(f"SELECT count(*) FROM {BIDS_TABLE} WHERE product_id = ANY(%s)", (products,)).fetchone()
    assert count == len(load.bids)
    return {"bids": len(load.bids), "retried": retried}


@dataclass
class System:
    """Every role as its own process: gateway, pricing agent, audit agent, monitor (polling the fake API)."""

    pipeline: Pipeline
    logs: Path
    monitor_url: str = ""
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def start(cls, redis_url: str, database_url: str, tmp_path: Path, *, wait: bool = True, **env: str) -> System:
        base = {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "LOG_LEVEL": "INFO",
            "CLAIM_IDLE_MS": "2000",
            "REPLY_TIMEOUT_S": "5",
            "MONITOR_INTERVAL_S": "1",
            "TMPDIR": str(tmp_path),  # the agents' heartbeat files, private to this test
            # Metrics ports of this test's own (other tests, or another checkout's, may hold the defaults).
            "PRICING_METRICS_PORT": str(free_port()),
            "AUDIT_METRICS_PORT": str(free_port()),
            "MONITOR_METRICS_PORT": str(free_port()),
            **env,
        }
        pipeline = Pipeline(redis_url, database_url, {**os.environ, **base})
        logs = tmp_path / "logs"
        logs.mkdir(exist_ok=True)
        system = cls(pipeline, logs)
        api_port, monitor_port, gateway_port = free_port(), free_port(), free_port()
        pipeline.start(f"--port {api_port}", name="fake-api", module="monitor.fake_api", log=logs / "fake-api.log")
        for agent in AGENTS:
            pipeline.start(agent, log=logs / f"{agent}.log")
        system.monitor_url = f"http://127.0.0.1:{monitor_port}"
        pipeline.start(
            "monitor",
            log=logs / "monitor.log",
            MONITOR_SOURCE_URL=f"http://127.0.0.1:{api_port}/products",
            MONITOR_HOST="127.0.0.1",
            MONITOR_PORT=str(monitor_port),
        )
        pipeline.gateway_url = f"http://127.0.0.1:{gateway_port}"
        pipeline.start("gateway", log=logs / "gateway.log", GATEWAY_HOST="127.0.0.1", GATEWAY_PORT=str(gateway_port))
        if wait:
            wait_until_ready(pipeline.gateway_url, timeout_s=60)
        system.pids = {name: process.pid for name, process in pipeline.processes.items()}
        return system

    @property
    def gateway_url(self) -> str:
        return self.pipeline.gateway_url

    def assert_all_alive(self) -> None:
        """No role exited, and none was restarted (the same processes as at the start)."""
        for name, process in self.pipeline.processes.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}: {self.log_tail(name)}"
            assert process.pid == self.pids[name]

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")

    def log_tail(self, name: str, lines: int = 30) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    def heartbeat(self, agent: str) -> tuple[float, dict[str, Any] | None]:
        return read_heartbeat(str(Path(self.pipeline.env["TMPDIR"]) / f"bidengine-{agent}.alive"))

    def agents_ready(self) -> bool:
        return all((self.heartbeat(agent)[1] or {}).get("ready") is True for agent in AGENTS)

    def ready(self) -> tuple[int, dict[str, Any]]:
        return get_json(f"{self.gateway_url}/ready")

    def monitor_health(self) -> int:
        return get_json(f"{self.monitor_url}/health")[0]

    def stop(self) -> None:
        self.pipeline.stop_all()

    def wait_ready(self, what: str, timeout_s: float = 60) -> None:
        poll(what, lambda: self.ready()[0] == 200 and self.agents_ready(), timeout_s=timeout_s)


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of a GET, 503s included; (0, {"error": ...}) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our own local server
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def count_lines(text: str, needle: str) -> int:
    return sum(1 for line in text.splitlines() if needle in line)


def log_entries(log: str) -> list[dict[str, Any]]:
    """The JSON lines of a role's log (telemetry/logs.py), in order; anything else on stderr is skipped."""
    entries = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:  # a line cut short by a kill
                continue
    return entries


# The outage lines of redis_streams/retry.py's `Outage`: "<what> failed: <error>; retrying with back-off ..." (or
# "<what> failed; retrying with back-off" with a traceback) when it starts, "<what> works again after ..." at its end.
_FAILED = re.compile(r"(?P<what>.+?) failed(?::|;) ?.*retrying with back-off")
_RECOVERED = re.compile(r"(?P<what>.+?) works again after")


def outage_lines(log: str) -> dict[str, tuple[int, int]]:
    """Per loop that met an outage: (lines saying it started, lines saying it ended) in a role's log."""
    found: dict[str, tuple[int, int]] = {}
    for entry in log_entries(log):
        message = str(entry.get("message", ""))
        if match := _FAILED.match(message):
            failed, recovered = found.get(match["what"], (0, 0))
            found[match["what"]] = (failed + 1, recovered)
        elif match := _RECOVERED.match(message):
            failed, recovered = found.get(match["what"], (0, 0))
            found[match["what"]] = (failed, recovered + 1)
    return found
