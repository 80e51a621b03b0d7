"""The import contract of the layout (README, "Layout"), read from the source with `ast`, lazy imports included.

* `schema` (contracts) and `legacy` (the price formula) import no other package of the project; `schema` does
  no runtime I/O: no Redis, PostgreSQL or HTTP client (its migration runner uses yoyo, at deploy time).
* `redis_streams` (Redis Streams mechanics) imports only `schema` of the project; `telemetry` (JSON logs, the
  Prometheus plumbing) none.
* The roles (`ingest`, `processors`, `monitor`, `console`) import only the bottom packages, never each other
  and never `bidengine`: they meet through Redis and PostgreSQL.
* `bidengine` (the command line, the composition root) is imported by no package.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BOTTOM = {"schema", "legacy", "redis_streams", "telemetry"}
ROLES = {"ingest", "processors", "monitor", "console"}
PROJECT = BOTTOM | ROLES | {"bidengine"}

ALLOWED: dict[str, set[str]] = {
    "schema": set(),
    "legacy": set(),
    "telemetry": set(),
    "redis_streams": {"schema"},
    **{role: set(BOTTOM) for role in ROLES},
    "bidengine": PROJECT - {"bidengine"},
}
# Client libraries that mean runtime I/O, which `schema` must not do.
IO_LIBRARIES = {"redis", "hiredis", "asyncpg", "psycopg", "aiohttp", "faust", "mode", "httpx", "requests"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports; relative ones stay in the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def package_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(package: str) -> list[str]:
    found = []
    for path in package_files(package):
        for name in sorted(imported_modules(path) & PROJECT - {package} - ALLOWED[package]):
            found.append(f"{path.relative_to(ROOT)} imports {name}")
        if package == "schema":
            for name in sorted(imported_modules(path) & IO_LIBRARIES):
                found.append(f"{path.relative_to(ROOT)} imports the I/O library {name}")
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layout_allows(package: str) -> None:
    if not (ROOT / package).is_dir():
        pytest.skip(f"{package}/ does not exist")
    assert violations(package) == []


def test_every_package_is_under_the_contract_and_shipped() -> None:
    """A new top-level package must be placed in the layout before it can be imported, and be installed."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert packages <= set(ALLOWED), f"packages outside the import contract: {packages - set(ALLOWED)}"
    with (ROOT / "pyproject.toml").open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {f"{package}*" for package in packages} <= set(include), f"not installed by pyproject.toml: {include}"


def test_the_checker_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import ingest.app\n\ndef f():\n    from processors import workers\n    from . import sibling\n")
    assert imported_modules(module) == {"ingest", "processors"}
