"""docker-compose.yml: valid against the Compose specification's schema with every reference resolved; the services
start in the right order and run commands the image has. (docker-compose v1 is deprecated and gone from CI runners;
the schema is the maintained definition both engines implement.)"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import yaml

from .conftest import ROOT, assert_bidengine_command, schema_errors, vendored_schema

COMPOSE = ROOT / "docker-compose.yml"
APP_SERVICES = {"migrate", "gateway", "pricing-agent", "audit-agent", "monitor", "console"}
LONG_RUNNING = APP_SERVICES - {"migrate"}


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def test_compose_spec_schema() -> None:
    """The Compose specification's own JSON schema (what `docker compose config` validates against)."""
    errors = schema_errors(vendored_schema("compose-spec"), compose())
    assert not errors, "\n".join(errors)


def test_references_resolve() -> None:
    """What the engine checks beyond the schema: every service, volume and network named is defined."""
    defined_volumes = set(compose().get("volumes") or {})
    defined_networks = set(compose().get("networks") or {}) | {"default"}
    for name, service in services().items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services(), f"{name} depends on undefined service {dependency}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in defined_volumes, f"{name} mounts undefined volume {source}"
        for network in service.get("networks") or []:
            assert network in defined_networks, f"{name} joins undefined network {network}"


def test_variables_have_defaults() -> None:
    """`${VAR}` without a default would be empty on a machine without an .env file: every one has `:-default`."""
    text = COMPOSE.read_text(encoding="utf-8")
    bare = [match for match in re.findall(r"\$\{([^}]*)\}", text) if "-" not in match]
    assert not bare, f"variables without a default: {bare}"


def test_databases_with_healthchecks_and_named_volumes() -> None:
    postgres, redis = services()["postgres"], services()["redis"]
    assert re.fullmatch(r"postgres:16(\.\d+)?(-\w+)?", postgres["image"]), postgres["image"]
    assert re.fullmatch(r"redis:7(\.\d+){0,2}(-\w+)?", redis["image"]), redis["image"]
    volumes = set(compose()["volumes"])
    for name, service in (("postgres", postgres), ("redis", redis)):
        assert service["healthcheck"]["test"], f"{name} has no healthcheck"
        named = {v.split(":")[0] for v in service["volumes"]}
        assert named & volumes, f"{name} keeps its data in no named volume"


def test_start_order() -> None:
    """migrate waits for a healthy PostgreSQL; every long-running process for a finished migration and Redis."""
    assert set(services()) >= APP_SERVICES, f"missing services: {APP_SERVICES - set(services())}"
    migrate = services()["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no", "a one-shot job"
    for name in LONG_RUNNING:
        depends = services()[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_app_services_run_commands_of_the_image() -> None:
    """Every app service builds this repository's Dockerfile (ENTRYPOINT bidengine) and runs a real subcommand."""
    for name in APP_SERVICES:
        service = services()[name]
        assert service["build"]["context"] == ".", name
        assert service["build"].get("dockerfile", "Dockerfile") == "Dockerfile", name
        assert "entrypoint" not in service, f"{name} overrides the image's ENTRYPOINT"
        assert_bidengine_command(["bidengine", *service["command"]], f"docker-compose service {name}")
    commands = {services()[name]["command"][0] for name in APP_SERVICES}
    assert commands == {"migrate", "gateway", "pricing-agent", "audit-agent", "monitor", "console"}


def test_console_is_opt_in_and_has_no_default_key() -> None:
    """No default credentials anywhere: the console runs only when asked for, with the operator's own key."""
    console = services()["console"]
    assert console["profiles"] == ["console"]
    assert console["environment"]["CONSOLE_SESSION_KEY"] == "${CONSOLE_SESSION_KEY:-}"
    assert all(port.startswith("127.0.0.1:") for port in console["ports"])


def test_ports_and_connection_settings() -> None:
    assert "8000:8000" in services()["gateway"]["ports"]
    assert "3001:3001" in services()["monitor"]["ports"]
    for name in APP_SERVICES:
        env = services()[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert "@postgres:5432/" in env["DATABASE_URL"], name
