"""`tundra token …` end to end through the CLI boundary, asserting on core state."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from clihelpers import SQLITE_ONLY, run

from tundra.cli.app import cli
from tundra.cli.exit import ExitStatus
from tundra.cli.tokens import parse_expiry
from tundra.core.clock import from_iso, now
from tundra.core.errors import InvalidInput
from tundra.core.identity.token_format import TOKEN_PATTERN
from tundra.core.principal import SYSTEM

ADMIN_PASSWORD = "correct horse battery staple"


def test_create_prints_the_token_once_on_stdout(services, env) -> None:
    result = run(
        env,
        "token",
        "create",
        "--name",
        "ci",
        "--scope",
        "servers:read",
        "--scope",
        "sites:read",
        "--server",
        "web-1",
    )
    assert result.exit_code == ExitStatus.SUCCESS, result.stderr
    token = result.stdout.strip()
    assert re.fullmatch(TOKEN_PATTERN, token)  # stdout holds the token and nothing else
    assert "will not be shown again" in result.stderr
    principal = services.tokens.verify(token)
    assert principal.scopes == {"servers:read", "sites:read"}
    assert principal.resources == {"server": ("web-1",)}
    [stored] = services.tokens.list(SYSTEM)
    assert stored.owner == "admin"
    assert stored.expires_at is not None
    lifetime = from_iso(stored.expires_at) - now()
    assert timedelta(days=89) < lifetime <= timedelta(days=90)  # the default
    listed = run(env, "token", "list", "--json")
    assert token not in listed.stdout


def test_create_json_has_the_token_as_a_field(services, env) -> None:
    result = run(
        env,
        "token",
        "create",
        "--name",
        "mcp",
        "--scope",
        "servers:read",
        "--kind",
        "mcp",
        "--expires",
        "never",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["kind"] == "mcp"
    assert data["expires_at"] is None
    assert services.tokens.verify(data["token"], kind="mcp").token_id == data["id"]


def test_admin_token_needs_login_first(services, env) -> None:
    refused = run(env, "token", "create", "--name", "root", "--scope", "admin")
    assert refused.exit_code == ExitStatus.PERMISSION_DENIED
    assert "tundra login" in refused.stderr
    assert refused.stdout == ""
    assert services.tokens.list(SYSTEM, include_revoked=True) == []
    login = run(env, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert login.exit_code == 0, login.stderr
    created = run(env, "token", "create", "--name", "root", "--scope", "admin")
    assert created.exit_code == 0, created.stderr
    assert services.tokens.verify(created.stdout.strip()).is_admin


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--scope", "servers:nuke"], ExitStatus.USAGE, "unknown scope"),
        (["--scope", "servers:read", "--expires", "soon"], ExitStatus.USAGE, "invalid --expires"),
        (["--scope", "servers:read", "--expires", "0d"], ExitStatus.USAGE, "invalid --expires"),
        (["--scope", "servers:read", "--kind", "ssh"], ExitStatus.USAGE, "unknown token kind"),
        (["--scope", "servers:read", "--owner", "nobody"], ExitStatus.NOT_FOUND, "nobody"),
        ([], ExitStatus.USAGE, "--scope"),
    ],
)
def test_create_refusals(services, env, args, status, message) -> None:
    result = run(env, "token", "create", "--name", "x", *args)
    assert result.exit_code == status, result.output
    assert message in result.stderr
    assert services.tokens.list(SYSTEM, include_revoked=True) == []


def test_list_and_revoke_by_prefix(services, env) -> None:
    token = run(env, "token", "create", "--name", "ci", "--scope", "servers:read").stdout.strip()
    [listed] = json.loads(run(env, "token", "list", "--json").stdout)
    assert listed["name"] == "ci"
    assert listed["status"] == "active"
    assert token.startswith(listed["prefix"])
    table = CliRunner().invoke(cli, ["token", "list"], env={**env, "COLUMNS": "200"})
    assert listed["prefix"] in table.stdout
    result = run(env, "token", "revoke", listed["prefix"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(run(env, "token", "list", "--json").stdout) == []
    [revoked] = json.loads(run(env, "token", "list", "--all", "--json").stdout)
    assert revoked["status"] == "revoked"
    assert services.tokens.list(SYSTEM, include_revoked=True)[0].revoked_at is not None
    assert run(env, "token", "revoke", listed["id"]).exit_code == ExitStatus.CONFLICT
    assert run(env, "token", "revoke", "tnd_live_nothing").exit_code == ExitStatus.NOT_FOUND


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("90m", timedelta(minutes=90)),
        ("45s", timedelta(seconds=45)),
        ("never", None),
    ],
)
def test_parse_expiry(text, expected) -> None:
    assert parse_expiry(text) == expected


@pytest.mark.parametrize("text", ["", "d", "30", "-1d", "1y", "1.5d", "0h", "9999999d"])
def test_parse_expiry_refuses(text) -> None:
    with pytest.raises(InvalidInput):
        parse_expiry(text)
