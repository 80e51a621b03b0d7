"""`bidengine`: the one command-line entry that starts any role, or all of them: the composition root.

It reads the settings once, checks what the command needs (the server URLs), tunes the process for the
long-running roles, and hands each role the settings type it asks for. Each role lives in its own package
and is imported lazily here, so a process loads only the role it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from schema.settings import DatabaseSettings, RedisSettings, ServerSettings, Settings, SettingsError

# Exit status of a command started without what it needs (as argparse does for bad arguments).
USAGE_ERROR = 2


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from schema.database import apply_migrations

    applied = apply_migrations(DatabaseSettings.from_settings(settings).database_url)
    logging.getLogger("bidengine").info("migrations applied: %s", applied or "none pending")
    return 0


def _db_maintain(settings: Settings, _args: argparse.Namespace) -> int:
    import asyncio

    from processors.bid_maintenance import maintain_database

    report = asyncio.run(maintain_database(DatabaseSettings.from_settings(settings).database_url, settings))
    print(f"bids table maintenance: {report}")
    return 0


def _gateway(settings: Settings, _args: argparse.Namespace) -> int:
    from ingest.server import main

    return _long_running(main, ServerSettings.from_settings(settings))


def _pricing_agent(settings: Settings, _args: argparse.Namespace) -> int:
    from processors.workers import build_pricing_app, run_worker

    server_settings = ServerSettings.from_settings(settings)
    return _long_running(lambda s: run_worker(build_pricing_app(s), s), server_settings)


def _audit_agent(settings: Settings, _args: argparse.Namespace) -> int:
    from processors.workers import build_audit_app, run_worker

    server_settings = ServerSettings.from_settings(settings)
    return _long_running(lambda s: run_worker(build_audit_app(s), s), server_settings)


def _monitor(settings: Settings, _args: argparse.Namespace) -> int:
    from monitor.service import main

    # No embedded fallback here: prices written to a private Redis would reach no consumer.
    return main(RedisSettings.from_settings(settings))


_RoleSettings = TypeVar("_RoleSettings", bound=Settings)


def _long_running(role: Callable[[_RoleSettings], int], settings: _RoleSettings) -> int:
    from bidengine.process import tune_for_throughput

    tune_for_throughput()
    return role(settings)


def _console(settings: Settings, _args: argparse.Namespace) -> int:
    from console.server import main

    return main(ServerSettings.from_settings(settings))


def _console_user(settings: Settings, args: argparse.Namespace) -> int:
    from console.user_cli import main

    return main(DatabaseSettings.from_settings(settings), args.action, args.name, args.role)


# The same as console.user_cli.ACTIONS, not imported from there: building the parser must stay light
# (`bidengine probe` runs every few seconds and loads no client library).
CONSOLE_USER_ACTIONS = ("add", "list", "disable", "enable", "password")


def _console_user_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=CONSOLE_USER_ACTIONS, help="add a user, list them, disable/enable one, set a password"
    )
    parser.add_argument("name", nargs="?", help="the user name (lower-case letters, digits, '.', '_', '-')")
    parser.add_argument("--role", choices=["viewer", "operator"], help="for add: viewer (default) or operator")


def _run_all(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from bidengine.supervisor import run_all
    from console.server import ensure_development_session_key

    # Development only: the console gets a throwaway session key when none is set (and says so).
    ensure_development_session_key(os.environ)
    return run_all(settings, fake_source=args.fake_source)


def _run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fake-source",
        action="store_true",
        help="point the competitor monitor at the bundled offline products API (machines without internet)",
    )


def _audit_report(settings: Settings, _args: argparse.Namespace) -> int:
    from processors.audit_cli import report_main

    return report_main(DatabaseSettings.from_settings(settings))


def _audit_stats(settings: Settings, args: argparse.Namespace) -> int:
    from processors.audit_cli import stats_main

    return stats_main(RedisSettings.from_settings(settings), product_ids=args.product, as_json=args.json, top=args.top)


def _audit_stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--product", type=int, action="append", default=[], help="only this product (repeatable)")
    parser.add_argument("--top", type=int, default=10, help="products listed, most flagged first")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from bidengine.seed import main
    from schema.database import apply_migrations

    database_url = DatabaseSettings.from_settings(settings).database_url
    apply_migrations(database_url)
    return main(database_url, args.rows, args.days, args.products)


def _seed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--products", type=int, default=50_000)


def _probe(_settings: Settings, args: argparse.Namespace) -> int:
    # Runs every few seconds in an agent's pod: the standard library and the tiny heartbeat module only.
    from processors.heartbeat import heartbeat_path, read_heartbeat

    path = heartbeat_path(args.role)
    try:
        age_s, state = read_heartbeat(path)
    except OSError as exc:
        print(f"{args.role}: no heartbeat ({exc})", file=sys.stderr)
        return 1
    if age_s > args.max_age_s:
        print(f"{args.role}: heartbeat {path} is {age_s:.0f}s old (max {args.max_age_s:g}s)", file=sys.stderr)
        return 1
    if not args.ready:
        return 0
    if state is None:
        print(f"{args.role}: heartbeat {path} does not say whether the agent is ready", file=sys.stderr)
        return 1
    if not state.get("ready"):
        problems = "; ".join(str(problem) for problem in state.get("problems") or []) or "no reason given"
        print(f"{args.role}: not ready: {problems}", file=sys.stderr)
        return 1
    return 0


def _probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=["pricing-agent", "audit-agent"], help="the agent whose heartbeat to check")
    parser.add_argument(
        "--max-age-s", type=float, default=30.0, help="fail when the heartbeat file is older than this (seconds)"
    )
    parser.add_argument(
        "--ready",
        action="store_true",
        help="readiness: also fail while the agent reports a problem (Redis or PostgreSQL away, reads failing)",
    )


def _dead_letters(settings: Settings, args: argparse.Namespace) -> int:
    from bidengine.dead_letters import main

    return main(RedisSettings.from_settings(settings), args)


def _dead_letters_options(parser: argparse.ArgumentParser) -> None:
    # Built for every command line (the probe's too): schema.keys only, nothing heavy.
    from schema import keys

    actions = parser.add_subparsers(dest="action", required=True)
    streams = list(keys.DEAD_LETTER_STREAMS)

    listing = actions.add_parser("list", help="list dead letters, newest first")
    listing.add_argument("--stream", choices=streams, help="one dead-letter stream (default: all)")
    listing.add_argument("--limit", type=int, default=20, help="letters listed per stream")
    listing.add_argument("--oldest-first", action="store_true")
    listing.add_argument("--before", help="page on: only letters after this id in the listing order")
    listing.add_argument("--json", action="store_true", help="print JSON, one object per line")

    show = actions.add_parser("show", help="print dead letters in full, with their original entries")
    show.add_argument("ids", nargs="+", metavar="ID")
    show.add_argument("--stream", choices=streams, help="where to look (default: all)")

    replay = actions.add_parser("replay", help="put letters' original entries back on their streams")
    replay.add_argument("ids", nargs="*", metavar="ID")
    replay.add_argument("--stream", choices=streams, required=True)
    replay.add_argument("--all", action="store_true", help="every letter of the stream")

    purge = actions.add_parser("purge", help="delete dead letters for good")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--stream", choices=streams, required=True)
    purge.add_argument("--all", action="store_true", help="every letter of the stream (needs --yes)")
    purge.add_argument("--yes", action="store_true", help="confirm --all")


@dataclass(frozen=True, slots=True)
class Command:
    run: Callable[[Settings, argparse.Namespace], int]
    help: str
    options: Callable[[argparse.ArgumentParser], None] | None = None


COMMANDS: dict[str, Command] = {
    "run": Command(_run_all, "run the whole system (embedded Redis/PostgreSQL when no URLs are given)", _run_options),
    "migrate": Command(
        _migrate, "apply pending database migrations (moves a legacy bids table to day partitions, online)"
    ),
    "db-maintain": Command(
        _db_maintain, "maintain the bids table's day partitions now (ahead, DEFAULT, reorder, retention)"
    ),
    "gateway": Command(_gateway, "run the HTTP gateway (POST /api/bid/)"),
    "pricing-agent": Command(_pricing_agent, "run the Faust worker with the pricing agent"),
    "audit-agent": Command(_audit_agent, "run the Faust worker with the audit agent and the daily audit"),
    "monitor": Command(_monitor, "run the competitor price monitor"),
    "audit-report": Command(_audit_report, "run the daily budget audit now (report on stdout, summary to Redis)"),
    "audit-stats": Command(_audit_stats, "print the audit agent's windowed aggregates", _audit_stats_options),
    "seed": Command(
        _seed, "append realistic bids to the database (COPY), e.g. --rows 1000000 --days 90", _seed_options
    ),
    "probe": Command(
        _probe, "liveness (and --ready) of a running agent: exit 1 unless its heartbeat is recent", _probe_options
    ),
    "dead-letters": Command(
        _dead_letters,
        "list, show, replay or purge the agents' dead letters (bids:dead, audit:dead)",
        _dead_letters_options,
    ),
    "console": Command(_console, "run the on-call web console (docs/console.md)"),
    "console-user": Command(
        _console_user,
        "manage console users: add|list|disable|enable|password NAME [--role viewer|operator]",
        _console_user_options,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.help)
        if command.options is not None:
            command.options(command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"bidengine {args.command}: {exc}", file=sys.stderr)
        return USAGE_ERROR
    # Every role logs JSON lines to stderr (telemetry/logs.py); the Faust workers are given the same set-up.
    from telemetry.logs import configure

    configure(settings.log_level)
    try:
        return COMMANDS[args.command].run(settings, args)
    except SettingsError as exc:
        # Raised before the role starts: a missing URL or a malformed value, never a runtime failure.
        print(f"bidengine {args.command}: {exc} (`bidengine run` starts embedded servers)", file=sys.stderr)
        return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
