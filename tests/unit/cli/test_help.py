"""Every command has --help with an example, and start-up stays lazy."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tundra.cli.app import COMMANDS, cli


def _walk(command: click.Command, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    found = [path]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            found.extend(_walk(sub, (*path, name)))
    return found


ALL_COMMANDS = _walk(cli, ())


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda p: " ".join(p) or "tundra")
def test_every_command_has_help_with_an_example(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output, f"`tundra {' '.join(path)} --help` has no example"


def test_every_registered_group_is_reachable() -> None:
    assert {p[0] for p in ALL_COMMANDS if p} == set(COMMANDS)


@pytest.mark.parametrize(
    "path",
    [p for p in ALL_COMMANDS if len(p) >= 2 and p[-1] in {"list", "show"}],
    ids=lambda p: " ".join(p),
)
def test_every_list_and_show_command_offers_json(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert "--json" in result.output


def test_unknown_command_is_a_usage_error_with_exit_64() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 64
    assert "tundra: error:" in result.stderr


def test_version_does_not_import_typer_rich_or_drivers() -> None:
    code = (
        "import sys; sys.argv = ['tundra', '--version']; from tundra.cli.main import main; main();"
        "bad = [m for m in ('typer', 'click', 'rich', 'psycopg', 'redis', 'argon2', 'cryptography')"
        " if m in sys.modules]; print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip().endswith("[]"), result.stdout


def test_server_list_json_imports_no_heavy_module(tmp_path) -> None:
    env_code = (
        "import sys; from tundra.cli.app import run\n"
        "try:\n    run(['server', 'list', '--json'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('rich', 'psycopg', 'redis', 'argon2',"
        " 'cryptography.hazmat.primitives.ciphers.aead')\n"
        "bad = [m for m in heavy if m in sys.modules]\nprint(bad, file=sys.stderr)"
    )
    import os

    env = {**os.environ, "TUNDRA_HOME": str(tmp_path / "home"), "TUNDRA_PASSWORD_PROFILE": "test"}
    env.pop("TUNDRA_DATABASE_URL", None)
    subprocess.run(
        [sys.executable, "-m", "tundra", "init", "--generate-password"],
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    result = subprocess.run(
        [sys.executable, "-c", env_code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.stderr.strip().splitlines()[-1] == "[]", result.stderr
