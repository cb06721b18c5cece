"""`tundra server …` end to end through the CLI boundary, asserting on core state."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from clihelpers import run

from tundra.cli.app import cli
from tundra.cli.exit import ExitStatus
from tundra.core.principal import cli_principal


def test_add_then_list_json(services, env) -> None:
    result = run(env, "server", "add", "web-1", "--address", "203.0.113.10", "--tag", "prod")
    assert result.exit_code == 0, result.output
    assert services.servers.get(cli_principal(), "web-1").tags == ("prod",)
    listed = run(env, "server", "list", "--json")
    assert listed.exit_code == 0
    assert [s["name"] for s in json.loads(listed.stdout)] == ["web-1"]


def test_show_renders_a_table_and_json(services, env) -> None:
    run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    shown = run(env, "server", "show", "web-1")
    assert "203.0.113.10" in shown.stdout
    data = json.loads(run(env, "server", "show", "web-1", "--json").stdout)
    assert data["status"] == "pending"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["server", "show", "nope"], ExitStatus.NOT_FOUND, "no server named 'nope'"),
        (
            ["server", "add", "Bad", "--address", "203.0.113.1"],
            ExitStatus.USAGE,
            "invalid server name",
        ),
        (["server", "add", "web-1"], ExitStatus.USAGE, "--address"),
    ],
)
def test_errors_are_one_line_with_a_documented_code(env, args, status, message) -> None:
    result = run(env, *args)
    assert result.exit_code == status
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr


def test_duplicate_is_a_conflict(env) -> None:
    run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    result = run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    assert result.exit_code == ExitStatus.CONFLICT


def test_remove_without_login_and_without_a_terminal_is_refused(services, env) -> None:
    run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    result = run(env, "server", "remove", "web-1", "--yes")
    assert result.exit_code == ExitStatus.PERMISSION_DENIED
    assert "tundra login" in result.stderr
    assert services.servers.get(cli_principal(), "web-1")


def test_remove_after_login(services, env) -> None:
    run(env, "server", "add", "web-1", "--address", "203.0.113.10")
    login = run(
        env, "login", "--user", "admin", "--password-stdin", stdin="correct horse battery staple\n"
    )
    assert login.exit_code == 0, login.output
    result = run(env, "server", "remove", "web-1", "--yes")
    assert result.exit_code == 0, result.output
    assert services.servers.list(cli_principal()) == []


def test_uninitialised_home_is_a_clear_error(tmp_path) -> None:
    result = CliRunner().invoke(
        cli, ["server", "list"], env={"TUNDRA_HOME": str(tmp_path / "none")}
    )
    assert result.exit_code in {ExitStatus.CONFIG, ExitStatus.UNAVAILABLE}
    assert "tundra init" in result.stderr
