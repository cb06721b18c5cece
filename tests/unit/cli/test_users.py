"""`tundra user …` end to end through the CLI boundary, asserting on core state."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from click.testing import CliRunner

from tundra.cli.app import cli
from tundra.cli.exit import ExitStatus
from tundra.core.errors import NotFound

PASSWORD = "bob's long passphrase"


#: Refusal tables run on SQLite only: the database engine plays no part in them.
SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])


@pytest.fixture
def env(services) -> dict[str, str]:
    s = services.settings
    return {"TUNDRA_HOME": str(s.home), "TUNDRA_DATABASE_URL": s.database_url,
            "TUNDRA_PASSWORD_PROFILE": "test"}


def run(env: dict[str, str], *args: str, stdin: str | None = None):
    return CliRunner().invoke(cli, list(args), env=env, input=stdin)


def test_add_with_password_stdin(services, env) -> None:
    result = run(env, "user", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == ExitStatus.SUCCESS, result.stderr
    user = services.users.get("bob")
    assert not user.is_admin
    assert services.users.authenticate("bob", PASSWORD).id == user.id
    assert PASSWORD not in result.output


def test_add_admin_and_acceptance(services, env) -> None:
    result = run(env, "user", "add", "carol", "--admin", "--acceptance", "--password-stdin",
                 stdin="carol's long passphrase\n")
    assert result.exit_code == 0, result.stderr
    carol = services.users.get("carol")
    assert carol.is_admin
    assert carol.is_acceptance


def test_add_with_a_generated_password_prints_it_once(services, env) -> None:
    result = run(env, "user", "add", "bob", "--generate-password")
    assert result.exit_code == 0, result.stderr
    password = result.stdout.strip().splitlines()[-1]
    assert len(password) == 24
    assert services.users.authenticate("bob", password).name == "bob"
    assert "will not be shown again" in result.stderr


def test_add_prompts_twice_at_a_terminal(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    result = run(env, "user", "add", "bob", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.stderr
    assert services.users.authenticate("bob", PASSWORD).name == "bob"


def test_add_with_a_mismatched_confirmation_creates_nothing(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    result = run(env, "user", "add", "bob", stdin=f"{PASSWORD}\nsomething else\n")
    assert result.exit_code != 0
    with pytest.raises(NotFound):
        services.users.get("bob")


@SQLITE_ONLY
@pytest.mark.parametrize(("args", "stdin", "status", "message"), [
    (["user", "add", "bob"], None, ExitStatus.USAGE, "--password-stdin"),
    (["user", "add", "bob", "--password-stdin"], "short\n", ExitStatus.USAGE, "at least 12"),
    (["user", "add", "bob", "--password-stdin"], "bob\n", ExitStatus.USAGE, "at least 12"),
    (["user", "add", "Bob!", "--password-stdin"], PASSWORD + "\n", ExitStatus.USAGE,
     "invalid user name"),
    (["user", "add", "bob", "--password", PASSWORD], None, ExitStatus.USAGE, "--password"),
    (["user", "add", "bob", "--password-stdin", "--generate-password"], PASSWORD + "\n",
     ExitStatus.USAGE, "not both"),
    (["user", "show", "nobody"], None, ExitStatus.NOT_FOUND, "no user named 'nobody'"),
    (["user", "add", "admin", "--password-stdin"], PASSWORD + "\n", ExitStatus.CONFLICT,
     "exists already"),
    (["user", "disable", "admin"], None, ExitStatus.CONFLICT, "last enabled administrator"),
])
def test_refusals_are_one_line_with_a_documented_code(services, env, args, stdin, status,
                                                      message) -> None:
    result = run(env, *args, stdin=stdin)
    assert result.exit_code == status, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert [u.name for u in services.users.list()] == ["admin"]


def test_list_and_show_json_never_include_secrets(services, env) -> None:
    run(env, "user", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    listed = json.loads(run(env, "user", "list", "--json").stdout)
    assert [u["name"] for u in listed] == ["admin", "bob"]
    shown = json.loads(run(env, "user", "show", "bob", "--json").stdout)
    assert shown["name"] == "bob"
    assert shown["is_admin"] is False
    assert "password_hash" not in shown
    assert "totp_secret" not in shown
    table = run(env, "user", "list")
    assert table.exit_code == 0
    assert "bob" in table.stdout


def test_passwd(services, env) -> None:
    run(env, "user", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    result = run(env, "user", "passwd", "bob", "--password-stdin", stdin="a new long password\n")
    assert result.exit_code == 0, result.stderr
    assert services.users.authenticate("bob", "a new long password").name == "bob"


def test_disable_and_enable(services, env) -> None:
    run(env, "user", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    assert run(env, "user", "disable", "bob").exit_code == 0
    assert services.users.get("bob").disabled
    assert run(env, "user", "disable", "bob").exit_code == ExitStatus.CONFLICT
    assert run(env, "user", "enable", "bob").exit_code == 0
    assert not services.users.get("bob").disabled


def test_totp_enroll_prints_the_uri_and_a_qr_code(services, env) -> None:
    result = run(env, "user", "totp", "enroll", "admin")
    assert result.exit_code == 0, result.stderr
    uri = next(line for line in result.stdout.splitlines() if line.startswith("otpauth://"))
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert "█" in result.stdout or "▀" in result.stdout or "▄" in result.stdout  # the QR code
    assert services.users.get("admin").totp_enrolled
    code = pyotp.TOTP(secret).now()
    assert services.users.authenticate("admin", "correct horse battery staple", code).is_admin
    assert "shown only now" in result.stderr


def test_totp_enroll_json_and_disable(services, env) -> None:
    data = json.loads(run(env, "user", "totp", "enroll", "admin", "--json").stdout)
    assert data["otpauth_uri"].startswith("otpauth://totp/")
    assert len(data["secret"]) == 32
    again = run(env, "user", "totp", "enroll", "admin")
    assert again.exit_code == ExitStatus.CONFLICT
    assert run(env, "user", "totp", "disable", "admin").exit_code == 0
    assert not services.users.get("admin").totp_enrolled
