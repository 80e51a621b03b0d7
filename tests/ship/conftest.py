"""Shared helpers for the deployment-file tests: paths, the project's entry points, the validating tools.

The tools are the real engines, run offline: Helm's Go template engine and linter (helm_python), the Kubernetes
OpenAPI schemas (kubernetes_validate), docker-compose, hadolint and BuildKit's Dockerfile parser, actionlint
(with shellcheck), and the Compose / GitHub-workflow JSON schemas vendored by check-jsonschema.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import socket
import sys
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def tool(name: str, hint: str) -> str:
    """Path of a command-line tool (the virtualenv's first, then PATH); a clear failure when it is missing."""
    local = VENV_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"`{name}` is not installed: {hint}", pytrace=False)
    return found


@cache
def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@cache
def cli_commands() -> frozenset[str]:
    """Subcommands of the `bidengine` console script, as the CLI itself registers them."""
    from bidengine.cli import COMMANDS

    return frozenset(COMMANDS)


def assert_bidengine_command(command: list[str], where: str) -> None:
    """`command` runs an existing console script with an existing subcommand."""
    scripts: dict[str, str] = pyproject()["project"]["scripts"]
    assert command, f"{where}: empty command"
    program, *args = command
    assert program in scripts, f"{where}: {program!r} is not a console script of the project ({sorted(scripts)})"
    module, _, attr = scripts[program].partition(":")
    assert callable(getattr(importlib.import_module(module), attr)), f"{where}: {scripts[program]} is missing"
    assert args, f"{where}: no subcommand"
    assert args[0] in cli_commands(), f"{where}: `{program} {args[0]}` is not one of {sorted(cli_commands())}"


@cache
def vendored_schema(name: str) -> dict[str, Any]:
    """A JSON schema shipped by check-jsonschema (`--builtin-schema vendor.<name>`), read without importing its
    CLI (whose click version may clash with the project's)."""
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("check-jsonschema is not installed (extra [ship])", pytrace=False)
    path = Path(next(iter(spec.submodule_search_locations))) / "builtin_schemas" / "vendor" / f"{name}.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def schema_errors(schema: dict[str, Any], document: Any) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(document)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_server_url(private_redis_server: RedisServer) -> str:
    return private_redis_server.url(5)
