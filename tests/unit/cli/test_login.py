"""`tundra login` and the re-auth prompt of sensitive commands, through the CLI boundary."""

from __future__ import annotations

import json

import pyotp
from clihelpers import run

from tundra.cli.exit import ExitStatus
from tundra.core.principal import SYSTEM, cli_principal

ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"


def test_login_with_password_stdin_opens_the_window(services, env) -> None:
    assert not services.reauth.is_fresh(cli_principal())
    result = run(env, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert result.exit_code == ExitStatus.SUCCESS, result.stderr
    assert "authenticated as admin" in result.stderr
    assert services.reauth.is_fresh(cli_principal())
    assert services.reauth.stamped_user(cli_principal()) == ADMIN


def test_status_before_and_after(services, env) -> None:
    before = run(env, "login", "--status", "--json")
    assert before.exit_code == 0
    assert json.loads(before.stdout) == {"open": False, "user": None, "remaining_seconds": None}
    run(env, "login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    after = json.loads(run(env, "login", "--status", "--json").stdout)
    assert after["open"] is True
    assert after["user"] == ADMIN
    assert 290 <= after["remaining_seconds"] <= 300
    human = run(env, "login", "--status")
    assert "authenticated as admin" in human.stderr


def test_wrong_password_is_auth_failed_and_opens_nothing(services, env) -> None:
    result = run(env, "login", "--password-stdin", stdin="not the password\n")
    assert result.exit_code == ExitStatus.AUTH_FAILED
    assert result.stderr.strip() == "tundra: error: wrong user name or password"
    assert not services.reauth.is_fresh(cli_principal())


def test_without_a_terminal_the_password_must_come_from_stdin(services, env) -> None:
    result = run(env, "login")
    assert result.exit_code == ExitStatus.USAGE
    assert "--password-stdin" in result.stderr


def test_no_plain_password_option(env) -> None:
    result = run(env, "login", "--password", ADMIN_PASSWORD)
    assert result.exit_code == ExitStatus.USAGE


def test_prompt_at_a_terminal(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    result = run(env, "login", stdin=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.stderr
    assert ADMIN_PASSWORD not in result.output
    assert services.reauth.is_fresh(cli_principal())


def test_a_non_admin_cannot_log_in_for_sensitive_commands(services, env) -> None:
    services.users.add(SYSTEM, name="bob", password="bob's long passphrase")
    result = run(env, "login", "--user", "bob", "--password-stdin", stdin="bob's long passphrase\n")
    assert result.exit_code == ExitStatus.PERMISSION_DENIED
    assert not services.reauth.is_fresh(cli_principal())


def test_totp_user_needs_the_code(services, env) -> None:
    enrollment = services.totp.enroll(SYSTEM, ADMIN)
    result = run(env, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert result.exit_code == ExitStatus.AUTH_FAILED
    assert "--totp" in result.stderr
    code = pyotp.TOTP(enrollment.secret_b32).now()
    result = run(env, "login", "--password-stdin", "--totp", code, stdin=ADMIN_PASSWORD + "\n")
    assert result.exit_code == 0, result.stderr
    assert services.reauth.is_fresh(cli_principal())
    # The same code again is a replay.
    services.kv.delete(f"reauth:cli:{cli_principal().name}")
    again = run(env, "login", "--password-stdin", "--totp", code, stdin=ADMIN_PASSWORD + "\n")
    assert again.exit_code == ExitStatus.AUTH_FAILED


def test_repeated_failures_are_throttled(services, env) -> None:
    env = {**env, "TUNDRA_LOGIN_MAX_FAILURES": "2"}
    for _ in range(2):
        assert (
            run(env, "login", "--password-stdin", stdin="wrong!\n").exit_code
            == ExitStatus.AUTH_FAILED
        )
    result = run(env, "login", "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert result.exit_code == ExitStatus.THROTTLED
    assert "try again later" in result.stderr
    assert not services.reauth.is_fresh(cli_principal())


def test_sensitive_command_prompts_at_a_terminal_and_retries(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    result = run(
        env, "token", "create", "--name", "root", "--scope", "admin", stdin=ADMIN_PASSWORD + "\n"
    )
    assert result.exit_code == 0, result.stderr
    assert "needs a recent authentication" in result.stderr
    token = result.stdout.strip().splitlines()[-1]
    assert services.tokens.verify(token).is_admin
    assert services.reauth.is_fresh(cli_principal())


def test_sensitive_command_prompt_with_a_wrong_password(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    result = run(env, "token", "create", "--name", "root", "--scope", "admin", stdin="not it\n")
    assert result.exit_code == ExitStatus.AUTH_FAILED
    assert services.tokens.list(SYSTEM, include_revoked=True) == []


def test_sensitive_command_asks_for_the_totp_code_too(services, env, monkeypatch) -> None:
    monkeypatch.setattr("tundra.cli.auth.interactive", lambda: True)
    enrollment = services.totp.enroll(SYSTEM, ADMIN)
    code = pyotp.TOTP(enrollment.secret_b32).now()
    result = run(
        env,
        "token",
        "create",
        "--name",
        "root",
        "--scope",
        "admin",
        stdin=f"{ADMIN_PASSWORD}\n{code}\n",
    )
    assert result.exit_code == 0, result.stderr
    assert services.tokens.list(SYSTEM)[0].scopes == ("admin",)


def test_sensitive_command_without_a_terminal_says_run_login(services, env) -> None:
    result = run(env, "token", "create", "--name", "root", "--scope", "admin")
    assert result.exit_code == ExitStatus.PERMISSION_DENIED
    assert len(result.stderr.strip().splitlines()) == 1
    assert "run `tundra login` first" in result.stderr
    assert services.tokens.list(SYSTEM, include_revoked=True) == []
