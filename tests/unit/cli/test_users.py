"""`tundra user …` end to end through the CLI boundary, asserting on core state."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
from clihelpers import SQLITE_ONLY, run

from tundra.cli.exit import ExitStatus
from tundra.core.errors import AuthenticationFailed, NotFound

PASSWORD = "bob's long passphrase"


def test_add_with_password_stdin(services, env) -> None:
    result = run(env, "user", "add", "bob", "--password-stdin", stdin=PASSWORD + "\n")
    assert result.exit_code == ExitStatus.SUCCESS, result.stderr
    user = services.users.get("bob")
    assert not user.is_admin
    assert services.users.authenticate("bob", PASSWORD).id == user.id
    assert PASSWORD not in result.output


def test_add_an_acceptance_account(services, env) -> None:
    result = run(
        env,
        "user",
        "add",
        "carol",
        "--acceptance",
        "--password-stdin",
        stdin="carol's long passphrase\n",
    )
    assert result.exit_code == 0, result.stderr
    carol = services.users.get("carol")
    assert not carol.is_admin  # a low-privilege account: --admin with --acceptance is refused
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
@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (["user", "add", "bob"], None, ExitStatus.USAGE, "--password-stdin"),
        (["user", "add", "bob", "--password-stdin"], "short\n", ExitStatus.USAGE, "at least 12"),
        (["user", "add", "bob", "--password-stdin"], "bob\n", ExitStatus.USAGE, "at least 12"),
        (
            ["user", "add", "Bob!", "--password-stdin"],
            PASSWORD + "\n",
            ExitStatus.USAGE,
            "invalid user name",
        ),
        (["user", "add", "bob", "--password", PASSWORD], None, ExitStatus.USAGE, "--password"),
        (
            ["user", "add", "bob", "--password-stdin", "--generate-password"],
            PASSWORD + "\n",
            ExitStatus.USAGE,
            "not both",
        ),
        (["user", "show", "nobody"], None, ExitStatus.NOT_FOUND, "no user named 'nobody'"),
        (
            ["user", "add", "admin", "--password-stdin"],
            PASSWORD + "\n",
            ExitStatus.CONFLICT,
            "exists already",
        ),
        (["user", "disable", "admin"], None, ExitStatus.CONFLICT, "last enabled administrator"),
    ],
)
def test_refusals_are_one_line_with_a_documented_code(
    services, env, args, stdin, status, message
) -> None:
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


ADMIN_PASSWORD = "correct horse battery staple"
#: The secret the enrolment will make, fixed so that a test can type its code at the prompt.
KNOWN_RAW = bytes(range(20))
KNOWN_SECRET = base64.b32encode(KNOWN_RAW).decode("ascii")


@pytest.fixture
def known_secret(monkeypatch) -> pyotp.TOTP:
    monkeypatch.setattr("tundra.core.identity.totp.random_bytes", lambda n: KNOWN_RAW[:n])
    return pyotp.TOTP(KNOWN_SECRET)


@pytest.fixture
def terminal(monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)


def last_step(services, name: str = "admin"):
    with services.db.read() as tx:
        return tx.fetchval("SELECT totp_last_step FROM users WHERE name = :n", {"n": name})


def test_totp_enroll_at_a_terminal_asks_for_a_code_first(
    services, env, terminal, known_secret
) -> None:
    code = known_secret.now()
    result = run(env, "user", "totp", "enroll", "admin", stdin=f"{code}\n")
    assert result.exit_code == 0, result.output
    uri = next(line for line in result.stdout.splitlines() if line.startswith("otpauth://"))
    assert parse_qs(urlsplit(uri).query)["secret"] == [KNOWN_SECRET]
    assert "█" in result.stdout or "▀" in result.stdout or "▄" in result.stdout  # the QR code
    assert "Code shown by the authenticator app" in result.stderr
    assert "TOTP is on for admin" in result.stderr
    assert services.users.get("admin").totp_enrolled
    # The confirming code is used up: it cannot log in.
    assert last_step(services) is not None
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate("admin", ADMIN_PASSWORD, code)


def test_totp_enroll_wrong_codes_store_nothing(services, env, terminal, known_secret) -> None:
    valid = {known_secret.at(time.time() + 30 * s) for s in (-1, 0, 1, 2)}
    wrong = next(c for c in ("000000", "111111", "222222", "333333") if c not in valid)
    result = run(env, "user", "totp", "enroll", "admin", stdin=f"{wrong}\n" * 3)
    assert result.exit_code == ExitStatus.AUTH_FAILED, result.output
    assert "TOTP was not turned on" in result.stderr
    assert result.stderr.count("Code shown by the authenticator app") == 3
    assert not services.users.get("admin").totp_enrolled
    assert services.users.authenticate("admin", ADMIN_PASSWORD).is_admin  # no code needed
    # A wrong code, then the right one.
    retry = run(env, "user", "totp", "enroll", "admin", stdin=f"{wrong}\n{known_secret.now()}\n")
    assert retry.exit_code == 0, retry.output
    assert "TOTP was not turned on" in retry.stderr
    assert services.users.get("admin").totp_enrolled


def test_totp_enroll_abandoned_at_the_prompt_stores_nothing(services, env, terminal) -> None:
    result = run(env, "user", "totp", "enroll", "admin", stdin="")  # end of input: Ctrl-D
    assert result.exit_code != 0
    assert "otpauth://" in result.stdout
    assert not services.users.get("admin").totp_enrolled
    assert services.users.authenticate("admin", ADMIN_PASSWORD).is_admin
    assert last_step(services) is None


def test_totp_enroll_without_a_terminal_refuses_and_shows_nothing(services, env) -> None:
    for args in (["admin"], ["admin", "--json"]):
        result = run(env, "user", "totp", "enroll", *args)
        assert result.exit_code == ExitStatus.USAGE, result.output
        assert "--activate-now" in result.stderr
        assert "otpauth://" not in result.output
        assert not services.users.get("admin").totp_enrolled


def test_totp_enroll_json_at_a_terminal_keeps_stdout_json(
    services, env, terminal, known_secret
) -> None:
    result = run(env, "user", "totp", "enroll", "admin", "--json", stdin=f"{known_secret.now()}\n")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == {"user": "admin", "otpauth_uri": data["otpauth_uri"], "secret": KNOWN_SECRET}
    assert services.users.get("admin").totp_enrolled


def test_totp_enroll_activate_now_prints_the_uri_and_a_qr_code(services, env) -> None:
    result = run(env, "user", "totp", "enroll", "admin", "--activate-now")
    assert result.exit_code == 0, result.stderr
    uri = next(line for line in result.stdout.splitlines() if line.startswith("otpauth://"))
    secret = parse_qs(urlsplit(uri).query)["secret"][0]
    assert "█" in result.stdout or "▀" in result.stdout or "▄" in result.stdout  # the QR code
    assert services.users.get("admin").totp_enrolled
    assert last_step(services) is None  # unconfirmed: no step used yet
    code = pyotp.TOTP(secret).now()
    assert services.users.authenticate("admin", ADMIN_PASSWORD, code).is_admin
    assert "shown only now" in result.stderr


def test_totp_enroll_json_and_disable(services, env) -> None:
    data = json.loads(
        run(env, "user", "totp", "enroll", "admin", "--activate-now", "--json").stdout
    )
    assert data["otpauth_uri"].startswith("otpauth://totp/")
    assert len(data["secret"]) == 32
    for args in ([], ["--activate-now"]):
        again = run(env, "user", "totp", "enroll", "admin", *args)
        assert again.exit_code == ExitStatus.CONFLICT
        assert "otpauth://" not in again.output
    assert run(env, "user", "totp", "disable", "admin").exit_code == 0
    assert not services.users.get("admin").totp_enrolled
