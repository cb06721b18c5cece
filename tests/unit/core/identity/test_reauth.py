"""Re-authentication: required, satisfied, expired; bound to the Unix user; never by a token."""

from __future__ import annotations

import time

import pyotp
import pytest
from idhelpers import ADMIN, ADMIN_PASSWORD, BOB, BOB_PASSWORD, SQLITE_ONLY, audit_rows

from tundra.core.audit.actions import Action
from tundra.core.errors import (
    AuthenticationFailed,
    InvalidInput,
    PermissionDenied,
    ReauthRequired,
    TotpRequired,
)
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal, unix_user

TOKEN = Principal(PrincipalKind.TOKEN, "tnd_live_AAAAAAAA", user_id="u", is_admin=True,
                  scopes=frozenset({"admin"}), token_id="t")


def test_cli_without_login_is_refused_with_the_hint(kv_services) -> None:
    with pytest.raises(ReauthRequired) as caught:
        kv_services.reauth.require_fresh_auth(cli_principal())
    assert "tundra login" in str(caught.value)
    assert kv_services.reauth.window_remaining(cli_principal()) is None


def test_cli_login_opens_the_window(kv_services) -> None:
    me = cli_principal()
    grant = kv_services.reauth.cli_login(me, username=ADMIN, password=ADMIN_PASSWORD)
    assert grant.username == ADMIN
    assert grant.seconds == 300
    kv_services.reauth.require_fresh_auth(me)
    remaining = kv_services.reauth.window_remaining(me)
    assert remaining is not None
    assert 290 < remaining <= 300
    assert kv_services.reauth.stamped_user(me) == ADMIN
    [grant_row] = audit_rows(kv_services, Action.REAUTH_GRANT)
    assert grant_row["actor"] == f"cli:{unix_user()}"
    assert grant_row["resource"] == "user:admin"
    [login_row] = audit_rows(kv_services, Action.USER_LOGIN)
    assert login_row["actor"] == f"cli:{unix_user()}"


def test_the_window_is_bound_to_the_unix_user(kv_services) -> None:
    kv_services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    other = Principal(PrincipalKind.CLI, "mallory", is_admin=True)
    with pytest.raises(ReauthRequired):
        kv_services.reauth.require_fresh_auth(other)


@SQLITE_ONLY
def test_the_window_expires(kv_services, with_settings) -> None:
    short = with_settings(kv_services, reauth_window=1)
    short.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    short.reauth.require_fresh_auth(cli_principal())
    time.sleep(1.1)
    with pytest.raises(ReauthRequired):
        short.reauth.require_fresh_auth(cli_principal())
    assert short.reauth.window_remaining(cli_principal()) is None


def test_wrong_password_opens_nothing(services) -> None:
    with pytest.raises(AuthenticationFailed):
        services.reauth.cli_login(cli_principal(), username=ADMIN, password="not the password")
    with pytest.raises(ReauthRequired):
        services.reauth.require_fresh_auth(cli_principal())
    assert audit_rows(services, Action.REAUTH_GRANT) == []


def test_a_non_admin_cannot_open_the_cli_window(services, bob) -> None:
    with pytest.raises(PermissionDenied, match="not an administrator"):
        services.reauth.cli_login(cli_principal(), username=BOB, password=BOB_PASSWORD)
    with pytest.raises(ReauthRequired):
        services.reauth.require_fresh_auth(cli_principal())


def test_cli_login_with_totp(services) -> None:
    services.totp.clock = lambda: 1_700_000_000.0
    enrollment = services.totp.enroll(cli_principal(), ADMIN)
    with pytest.raises(TotpRequired):
        services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    code = pyotp.TOTP(enrollment.secret_b32).at(1_700_000_000)
    services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD,
                              totp_code=code)
    services.reauth.require_fresh_auth(cli_principal())


@SQLITE_ONLY
def test_cli_login_is_only_for_the_cli(services, bob) -> None:
    with pytest.raises(PermissionDenied):
        services.reauth.cli_login(bob.as_principal(), username=ADMIN, password=ADMIN_PASSWORD)


@pytest.mark.parametrize("token", [
    TOKEN,
    Principal(PrincipalKind.TOKEN, "tnd_live_BBBBBBBB", user_id="u", scopes=frozenset({"x"})),
])
def test_a_token_never_satisfies_reauth(kv_services, token) -> None:
    with pytest.raises(ReauthRequired, match="a token can never perform a sensitive operation"):
        kv_services.reauth.require_fresh_auth(token)
    # Not even with a stamp in place for its owner, nor one for the CLI.
    kv_services.reauth.cli_login(cli_principal(), username=ADMIN, password=ADMIN_PASSWORD)
    with pytest.raises(ReauthRequired, match="a token can never"):
        kv_services.reauth.require_fresh_auth(token)
    with pytest.raises(ReauthRequired):
        kv_services.reauth.stamp(token)


def test_panel_sessions_are_stamped_per_user(kv_services, bob) -> None:
    admin = kv_services.users.get(ADMIN).as_principal()
    as_bob = bob.as_principal()
    with pytest.raises(ReauthRequired, match="enter your password again"):
        kv_services.reauth.require_fresh_auth(admin)
    kv_services.reauth.stamp(admin)
    kv_services.reauth.require_fresh_auth(admin)
    assert kv_services.reauth.is_fresh(admin)
    assert not kv_services.reauth.is_fresh(as_bob)
    with pytest.raises(ReauthRequired):
        kv_services.reauth.require_fresh_auth(as_bob)


@SQLITE_ONLY
def test_system_passes_and_agents_never_do(services) -> None:
    services.reauth.require_fresh_auth(SYSTEM)
    with pytest.raises(ReauthRequired):
        services.reauth.require_fresh_auth(Principal(PrincipalKind.AGENT, "agent-1"))


@SQLITE_ONLY
def test_default_cli_username(services, with_settings, monkeypatch) -> None:
    monkeypatch.setattr("tundra.core.identity.reauth.unix_user", lambda: "operator")
    assert services.reauth.default_cli_username() == ADMIN  # the only administrator
    assert with_settings(cli_user="someone").reauth.default_cli_username() == "someone"
    services.users.add(SYSTEM, name="second", password="second admin password", is_admin=True)
    with pytest.raises(InvalidInput, match="--user"):
        services.reauth.default_cli_username()  # two administrators, neither named like me
    services.users.add(SYSTEM, name="operator", password="the operator's password")
    assert services.reauth.default_cli_username() == "operator"
