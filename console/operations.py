"""Operator actions on dead letters: a confirmation page (GET), then the action (POST with the CSRF token).

Only operators may replay or purge; a viewer's attempt is refused with 403. Every attempt, refused, failed or
done, is written to the action log (who, what, when, outcome) before the answer.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from aiohttp import web

from console import actions as action_log
from console import dead_letters
from console.backends import BackendUnavailable
from console.context import BACKENDS, SETTINGS
from console.pages import entry_id_param
from console.render import page
from console.security import SessionUser, current_user

log = logging.getLogger(__name__)

ACTIONS = ("replay", "purge")


def _target(request: web.Request) -> tuple[str, str]:
    stream = request.match_info["stream"]
    entry_id = entry_id_param(request.match_info["entry_id"])
    if entry_id is None:
        raise web.HTTPNotFound(text="No such dead letter.")
    try:
        dead_letters.check_stream(stream)
    except dead_letters.DeadLetterError as exc:
        raise web.HTTPNotFound(text=str(exc)) from None
    return stream, entry_id


async def _log(request: web.Request, user: SessionUser, *, action: str, target: str, outcome: str, detail: str) -> int:
    """Record an action; raises BackendUnavailable when PostgreSQL cannot (the action is then not taken)."""
    settings = request.app[SETTINGS]
    log.info("operator action: %s %s %s by %s (%s)", action, target, outcome, user.name, detail)
    return await request.app[BACKENDS].db_call(
        lambda conn: action_log.record(
            conn,
            user_name=user.name,
            action=action,
            target=target,
            outcome=outcome,
            detail=detail,
            retention_days=settings.console_actions_retention_days,
        )
    )


async def dead_letter(request: web.Request) -> web.Response:
    """One dead letter, and the confirmation step of `?action=replay|purge`."""
    stream, entry_id = _target(request)
    action = request.query.get("action")
    user = current_user(request)
    if action is not None and action not in ACTIONS:
        raise web.HTTPNotFound(text="Unknown action.")
    if action is not None and not user.is_operator:
        raise web.HTTPForbidden(text="Only operators may replay or purge dead letters.")
    out = await request.app[BACKENDS].redis_outcome(lambda redis: dead_letters.show(redis, stream, entry_id))
    if out.ok and out.value is None:
        raise web.HTTPNotFound(text="This dead letter is gone (replayed or purged).")
    replayable: str | None = None
    if out.value is not None:
        try:
            out.value.original()
        except dead_letters.DeadLetterError as exc:
            replayable = str(exc)
    context: dict[str, Any] = {
        "letter": out.value,
        "error": out.error,
        "action": action,
        "not_replayable": replayable,
        "is_operator": user.is_operator,
        "target": dead_letters.DEAD_LETTER_STREAMS[stream],
    }
    return await page(request, "dead_letter.html", context, status=200 if out.ok else 503)


async def act(request: web.Request) -> web.Response:
    stream, entry_id = _target(request)
    action = request.match_info["action"]
    user = current_user(request)
    target = f"{stream} {entry_id}"
    if action not in ACTIONS:
        raise web.HTTPNotFound(text="Unknown action.")
    backends = request.app[BACKENDS]
    if not user.is_operator:
        with contextlib.suppress(BackendUnavailable):
            await _log(request, user, action=action, target=target, outcome="refused", detail="viewers cannot act")
        raise web.HTTPForbidden(text="Only operators may replay or purge dead letters.")
    try:
        # Recorded before it is taken: an action the log cannot hold is not taken.
        action_id = await _log(request, user, action=action, target=target, outcome="started", detail="")
    except BackendUnavailable as exc:
        raise web.HTTPServiceUnavailable(text=f"Nothing was done: the action log is unavailable ({exc}).") from None
    try:
        letter = await backends.redis_call(lambda redis: dead_letters.show(redis, stream, entry_id))
        if letter is None:
            outcome, detail = "gone", "already replayed or purged"
        elif action == "replay":
            new_id = await backends.redis_call(lambda redis: dead_letters.replay(redis, letter))
            source = dead_letters.DEAD_LETTER_STREAMS[stream]
            outcome, detail = (
                ("done", f"request {letter.request_id} appended to {source} as {new_id}")
                if new_id
                else ("gone", "already replayed or purged")
            )
        else:
            purged = await backends.redis_call(lambda redis: dead_letters.purge(redis, stream, entry_id))
            outcome, detail = ("done", f"deleted (reason was: {letter.reason[:200]})") if purged else ("gone", "")
    except dead_letters.DeadLetterError as exc:
        outcome, detail = "refused", f"cannot replay: {exc}"
    except BackendUnavailable as exc:
        outcome, detail = "failed", str(exc)
    try:
        await backends.db_call(lambda conn: action_log.finish(conn, action_id, outcome, detail))
    except BackendUnavailable as exc:
        log.error("could not record the outcome of action %d (%s %s): %s", action_id, outcome, detail, exc)
    log.info("operator action %d: %s %s %s by %s (%s)", action_id, action, target, outcome, user.name, detail)
    context = {"action": action, "target": target, "outcome": outcome, "detail": detail}
    status = {"done": 200, "gone": 409, "refused": 422, "failed": 503}[outcome]
    return await page(request, "action_done.html", context, status=status)
