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


def _run_all(settings: Settings, _args: argparse.Namespace) -> int:
    from bidengine.supervisor import run_all

    return run_all(settings)


COMMANDS: dict[str, tuple[Command, str]] = {
    "run": (_run_all, "run the whole system (embedded Redis/PostgreSQL when no URLs are given)"),
    "migrate": (_migrate, "apply pending database migrations"),
    "gateway": (_gateway, "run the HTTP gateway (POST /api/bid/)"),
    "pricing-agent": (_pricing_agent, "run the Faust worker with the pricing agent"),
    "audit-agent": (_audit_agent, "run the Faust worker with the audit agent and the daily audit"),
    "monitor": (_monitor, "run the competitor price monitor"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bidengine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text)
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
