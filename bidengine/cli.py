"""`bidengine`: the one command-line entry that starts any role, or all of them.

Each role lives in its own package and is imported lazily here, so a process loads only the role it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from schema.settings import Settings

Command = Callable[[Settings, argparse.Namespace], int]


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from schema.database import apply_migrations

    if not settings.database_url:
        raise SystemExit("DATABASE_URL is required for `bidengine migrate`")
    applied = apply_migrations(settings.database_url)
    logging.getLogger("bidengine").info("migrations applied: %s", applied or "none pending")
    return 0


def _gateway(settings: Settings, _args: argparse.Namespace) -> int:
    from ingest.server import main

    return main(settings)


def _pricing_agent(settings: Settings, _args: argparse.Namespace) -> int:
    from processors.workers import run_pricing_worker

    return run_pricing_worker(settings)


def _audit_agent(settings: Settings, _args: argparse.Namespace) -> int:
    from processors.workers import run_audit_worker

    return run_audit_worker(settings)


def _monitor(settings: Settings, _args: argparse.Namespace) -> int:
    from monitor.service import main

    return main(settings)


def _console(settings: Settings, _args: argparse.Namespace) -> int:
    from console.server import main

    return main(settings)


def _console_user(settings: Settings, args: argparse.Namespace) -> int:
    from console.user_cli import main

    return main(settings, args.action, args.name, args.role)


def _console_user_options(parser: argparse.ArgumentParser) -> None:
    from console.user_cli import ACTIONS

    parser.add_argument("action", choices=ACTIONS, help="add a user, list them, disable/enable one, set a password")
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

    return report_main(settings)


def _audit_stats(settings: Settings, args: argparse.Namespace) -> int:
    from processors.audit_cli import stats_main

    return stats_main(settings, product_ids=args.product, as_json=args.json, top=args.top)


def _audit_stats_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--product", type=int, action="append", default=[], help="only this product (repeatable)")
    parser.add_argument("--top", type=int, default=10, help="products listed, most flagged first")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _seed(settings: Settings, args: argparse.Namespace) -> int:
    from bidengine.seed import main
    from schema.database import apply_migrations

    if not settings.database_url:
        raise SystemExit("DATABASE_URL is required for `bidengine seed`")
    apply_migrations(settings.database_url)
    return main(settings.database_url, args.rows, args.days, args.products)


def _seed_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--products", type=int, default=50_000)


def _probe(_settings: Settings, args: argparse.Namespace) -> int:
    # Runs every few seconds in an agent's pod: the standard library and the tiny heartbeat module only.
    import os
    import time

    from processors.heartbeat import heartbeat_path

    path = heartbeat_path(args.role)
    try:
        age_s = time.time() - os.stat(path).st_mtime
    except OSError as exc:
        print(f"{args.role}: no heartbeat ({exc})", file=sys.stderr)
        return 1
    if age_s > args.max_age_s:
        print(f"{args.role}: heartbeat {path} is {age_s:.0f}s old (max {args.max_age_s:g}s)", file=sys.stderr)
        return 1
    return 0


def _probe_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("role", choices=["pricing-agent", "audit-agent"], help="the agent whose heartbeat to check")
    parser.add_argument(
        "--max-age-s", type=float, default=30.0, help="fail when the heartbeat file is older than this (seconds)"
    )


COMMANDS: dict[str, tuple[Command, str]] = {
    "run": (_run_all, "run the whole system (embedded Redis/PostgreSQL when no URLs are given)"),
    "migrate": (_migrate, "apply pending database migrations"),
    "gateway": (_gateway, "run the HTTP gateway (POST /api/bid/)"),
    "pricing-agent": (_pricing_agent, "run the Faust worker with the pricing agent"),
    "audit-agent": (_audit_agent, "run the Faust worker with the audit agent and the daily audit"),
    "monitor": (_monitor, "run the competitor price monitor"),
    "audit-report": (_audit_report, "run the daily budget audit now (report on stdout, summary to Redis)"),
    "audit-stats": (_audit_stats, "print the audit agent's windowed aggregates"),
    "seed": (_seed, "append realistic bids to the database (COPY), e.g. --rows 1000000 --days 90"),
    "probe": (_probe, "liveness of a running agent: exit 1 unless its heartbeat file is recent"),
    "console": (_console, "run the on-call web console (docs/console.md)"),
    "console-user": (_console_user, "manage console users: add|list|disable|enable|password NAME [--role ...]"),
}

# The options of the commands that take any.
COMMAND_OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "run": _run_options,
    "audit-stats": _audit_stats_options,
    "seed": _seed_options,
    "probe": _probe_options,
    "console-user": _console_user_options,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name in COMMAND_OPTIONS:
            COMMAND_OPTIONS[name](command_parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    command, _ = COMMANDS[args.command]
    return command(settings, args)


if __name__ == "__main__":
    sys.exit(main())
