"""The command line as the composition root: one check, one message and one exit status for a missing URL."""

from __future__ import annotations

import pytest

from bidengine import cli

CLEAN_ENV = ("REDIS_URL", "DATABASE_URL")


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("gateway", "REDIS_URL and DATABASE_URL are required"),
        ("pricing-agent", "REDIS_URL and DATABASE_URL are required"),
        ("audit-agent", "REDIS_URL and DATABASE_URL are required"),
        ("monitor", "REDIS_URL is required"),
        ("migrate", "DATABASE_URL is required"),
        ("audit-report", "DATABASE_URL is required"),
        ("audit-stats", "REDIS_URL is required"),
        ("console", "REDIS_URL and DATABASE_URL are required"),
        ("console-user list", "DATABASE_URL is required"),
    ],
)
def test_a_command_without_its_urls_exits_2_before_starting(
    command: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert cli.main(command.split()) == cli.USAGE_ERROR
    name = command.split(maxsplit=1)[0]
    assert capsys.readouterr().err.strip() == f"bidengine {name}: {message} (`bidengine run` starts embedded servers)"


def test_a_malformed_setting_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    assert cli.main(["gateway"]) == cli.USAGE_ERROR
    assert "GATEWAY_PORT='eighty' is not a valid int" in capsys.readouterr().err
