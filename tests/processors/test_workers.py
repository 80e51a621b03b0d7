"""The Faust wiring: the audit agent on its own group, and the daily audit as a UTC crontab."""

from __future__ import annotations

from datetime import UTC, tzinfo
from typing import Any

from faust.utils import cron

from processors.workers import build_audit_app
from schema.settings import ServerSettings


def crontabs(app: Any) -> list[tuple[str, tzinfo | None, str]]:
    """(cron string, timezone, function name) of every crontab registered on a Faust app.

    Faust keeps no table of crontabs: each is an app task wrapping a `cron_starter` closure over the cron
    string, the timezone and the scheduled function, which is what is read here.
    """
    found = []
    for task in app._app_tasks:
        starter = getattr(task, "__wrapped__", None)
        if starter is None or starter.__closure__ is None:
            continue
        cells = dict(
            zip(starter.__code__.co_freevars, (c.cell_contents for c in starter.__closure__ or ()), strict=True)
        )
        if "cron_format" in cells:
            found.append((cells["cron_format"], cells["timezone"], cells["fun"].__name__))
    return found


def test_daily_audit_is_a_utc_crontab_with_the_configured_schedule() -> None:
    settings = ServerSettings(
        redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x", audit_report_cron="30 5 * * *"
    )
    app = build_audit_app(settings, consumer="audit-test")

    assert crontabs(app) == [("30 5 * * *", UTC, "daily_budget_audit")]
    # 05:30 UTC: the next run is at most a day away and lands on that minute.
    assert 0 < cron.secs_for_next("30 5 * * *", UTC) <= 86_400


def test_audit_agent_is_registered_on_its_own_group() -> None:
    settings = ServerSettings(redis_url="redis://127.0.0.1:1/0", database_url="postgresql://x@127.0.0.1:1/x")
    app = build_audit_app(settings, consumer="audit-test")

    names = [agent.name for agent in app.agents.values()]
    assert any(name.endswith("audit_bids") for name in names), names
    sources = [s for s in app._extra_services if type(s).__name__ == "GroupSource"]
    assert [(s.reader.config.stream, s.reader.config.group) for s in sources] == [("bids:priced", "audit")]
    assert sources[0].reader.config.batch_size == settings.audit_batch_size
