"""Users: creation rules, admin-only changes, and every way authentication refuses."""

from __future__ import annotations

import time
from types import SimpleNamespace

import argon2
import pytest
from idhelpers import (
    ADMIN,
    ADMIN_PASSWORD,
    BOB,
    BOB_PASSWORD,
    SQLITE_ONLY,
    all_audit_text,
    audit_rows,
)

from tundra.core.audit.actions import Action
from tundra.core.crypto.passwords import TEST, Argon2Parameters, PasswordHasher
from tundra.core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Throttled,
)
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal

NOBODY = Principal(PrincipalKind.USER, "carol", user_id="x", is_admin=False)


def test_add_get_list_count(services, bob) -> None:
    assert services.users.count() == 2
    assert [u.name for u in services.users.list()] == [ADMIN, BOB]
    got = services.users.get(BOB)
    assert got == bob
    assert not got.is_admin
    assert not got.disabled
    assert not got.totp_enrolled
    data = got.as_dict()
    assert set(data) == {"id", "name", "is_admin", "is_acceptance", "disabled", "totp_enrolled",
                         "created_at", "updated_at"}
    assert BOB_PASSWORD not in repr(got)
    assert "argon2" not in repr(got)
    [row] = [r for r in audit_rows(services, Action.USER_CREATE) if r["resource"] == "user:bob"]
    assert row["details"] == {"id": bob.id, "is_admin": False, "is_acceptance": False}


def test_stored_hash_is_argon2id_and_never_the_password(services, bob) -> None:
    with services.db.read() as tx:
        stored = tx.fetchval("SELECT password_hash FROM users WHERE name = 'bob'")
    assert stored.startswith("$argon2id$")
    assert BOB_PASSWORD not in stored
    assert BOB_PASSWORD not in all_audit_text(services)


@SQLITE_ONLY
@pytest.mark.parametrize("name", ["", "Bob", "1bob", "bob smith", "b" * 65, "bob/..", "bób",
                                  "_bob", "bob\n"])
def test_invalid_names_are_refused(services, name) -> None:
    with pytest.raises(InvalidInput, match="invalid user name"):
        services.users.add(SYSTEM, name=name, password="a long enough password")


@SQLITE_ONLY
@pytest.mark.parametrize(("name", "password", "message"), [
    ("dave", "short", "at least 12"),
    ("dave", "elevenchars", "at least 12"),
    ("dave.the.user", "dave.the.user", "must not be the user name"),
    ("dave.the.user", "DAVE.THE.USER", "must not be the user name"),
    ("dave", "x" * 1025, "at most 1024"),
])
def test_password_policy(services, name, password, message) -> None:
    with pytest.raises(InvalidInput, match=message):
        services.users.add(SYSTEM, name=name, password=password)
    assert services.users.count() == 1


@SQLITE_ONLY
def test_twelve_characters_are_enough(services) -> None:
    assert services.users.add(SYSTEM, name="dave", password="twelve chars").name == "dave"


def test_duplicate_name_is_already_exists(services, bob) -> None:
    with pytest.raises(AlreadyExists):
        services.users.add(SYSTEM, name=BOB, password="another long password")


@SQLITE_ONLY
def test_get_unknown_is_not_found(services) -> None:
    with pytest.raises(NotFound):
        services.users.get("nobody")


@SQLITE_ONLY
@pytest.mark.parametrize("call", [
    lambda s: s.users.add(NOBODY, name="eve", password="a long enough password"),
    lambda s: s.users.set_password(NOBODY, BOB, "a long enough password"),
    lambda s: s.users.disable(NOBODY, BOB),
    lambda s: s.users.enable(NOBODY, BOB),
])
def test_mutations_need_an_administrator(services, bob, call) -> None:
    with pytest.raises(PermissionDenied, match="not an administrator"):
        call(services)


def test_authenticate_success_is_audited_without_the_password(services) -> None:
    user = services.users.authenticate(ADMIN, ADMIN_PASSWORD, source="198.51.100.7")
    assert user.name == ADMIN
    assert user.is_admin
    [row] = audit_rows(services, Action.USER_LOGIN)
    assert row["actor"] == "user:admin"
    assert row["resource"] == "user:admin"
    assert row["details"]["source"] == "198.51.100.7"
    assert ADMIN_PASSWORD not in all_audit_text(services)


def test_unknown_user_and_wrong_password_look_the_same(services, bob) -> None:
    with pytest.raises(AuthenticationFailed) as unknown:
        services.users.authenticate("nobody", BOB_PASSWORD)
    with pytest.raises(AuthenticationFailed) as wrong:
        services.users.authenticate(BOB, "not bob's password")
    assert type(unknown.value) is type(wrong.value) is AuthenticationFailed
    assert str(unknown.value) == str(wrong.value) == "wrong user name or password"
    reasons = [r["details"]["reason"] for r in audit_rows(services, Action.USER_LOGIN_FAILED)]
    assert reasons == ["unknown user", "wrong password"]
    text = all_audit_text(services)
    assert BOB_PASSWORD not in text
    assert "not bob's password" not in text


def _count_argon2(services) -> list[str]:
    """Replace the hasher's argon2 object by a delegating one that records verifications."""
    hasher = services.passwords
    inner = hasher._impl
    calls: list[str] = []

    def verify(encoded: str, password: str) -> bool:
        calls.append(encoded)
        return inner.verify(encoded, password)

    hasher._impl = SimpleNamespace(hash=inner.hash, verify=verify,
                                   check_needs_rehash=inner.check_needs_rehash)
    return calls


def test_unknown_user_costs_one_argon2_verification_like_a_known_one(services, bob) -> None:
    calls = _count_argon2(services)
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate("nobody", "whatever password")
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate("Not A Valid Name!", "whatever password")
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate(BOB, "whatever password")
    assert len(calls) == 3
    dummy = argon2.extract_parameters(calls[0])
    real = argon2.extract_parameters(calls[2])
    assert calls[0] == calls[1]  # the one dummy hash
    assert (dummy.memory_cost, dummy.time_cost) == (real.memory_cost, real.time_cost)


def test_disabled_user_is_refused_even_with_the_right_password(services, bob) -> None:
    services.users.disable(cli_principal(), BOB)
    with pytest.raises(AuthenticationFailed, match="wrong user name or password"):
        services.users.authenticate(BOB, BOB_PASSWORD)
    assert audit_rows(services, Action.USER_LOGIN_FAILED)[-1]["details"]["reason"] == "disabled"
    services.users.enable(cli_principal(), BOB)
    assert services.users.authenticate(BOB, BOB_PASSWORD).name == BOB
    assert [r["action"] for r in audit_rows(services, Action.USER_DISABLE)] == [
        Action.USER_DISABLE]


def test_disable_twice_and_enable_twice_conflict(services, bob) -> None:
    services.users.disable(cli_principal(), BOB)
    with pytest.raises(Conflict):
        services.users.disable(cli_principal(), BOB)
    services.users.enable(cli_principal(), BOB)
    with pytest.raises(Conflict):
        services.users.enable(cli_principal(), BOB)


def test_the_last_enabled_admin_cannot_be_disabled(services) -> None:
    with pytest.raises(Conflict, match="last enabled administrator"):
        services.users.disable(cli_principal(), ADMIN)
    services.users.add(SYSTEM, name="root2", password="another admin password", is_admin=True)
    services.users.disable(cli_principal(), ADMIN)
    assert services.users.get(ADMIN).disabled


def test_set_password(services, bob) -> None:
    services.users.set_password(cli_principal(), BOB, "a brand new password")
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate(BOB, BOB_PASSWORD)
    assert services.users.authenticate(BOB, "a brand new password").name == BOB
    assert audit_rows(services, Action.USER_PASSWORD_CHANGE)[0]["resource"] == "user:bob"
    with pytest.raises(InvalidInput):
        services.users.set_password(cli_principal(), BOB, "short")


def test_rehash_on_login_when_parameters_changed(services, bob) -> None:
    stronger = Argon2Parameters(memory_cost=512, time_cost=2, parallelism=1, hash_len=32,
                                salt_len=16)
    services.passwords = PasswordHasher(stronger, concurrency=2)
    services.users.authenticate(BOB, BOB_PASSWORD)
    with services.db.read() as tx:
        stored = tx.fetchval("SELECT password_hash FROM users WHERE name = 'bob'")
    params = argon2.extract_parameters(stored)
    assert (params.memory_cost, params.time_cost) == (512, 2)
    [row] = audit_rows(services, Action.USER_PASSWORD_REHASH)
    assert row["resource"] == "user:bob"
    # The new hash works, and a second login has nothing left to rehash.
    services.users.authenticate(BOB, BOB_PASSWORD)
    assert len(audit_rows(services, Action.USER_PASSWORD_REHASH)) == 1


def test_no_rehash_when_parameters_match(services, bob) -> None:
    assert services.passwords.parameters == TEST
    services.users.authenticate(BOB, BOB_PASSWORD)
    assert audit_rows(services, Action.USER_PASSWORD_REHASH) == []


def test_failed_login_does_not_rehash(services, bob) -> None:
    services.passwords = PasswordHasher(Argon2Parameters(512, 2, 1, 32, 16), concurrency=1)
    with pytest.raises(AuthenticationFailed):
        services.users.authenticate(BOB, "a wrong password")
    assert audit_rows(services, Action.USER_PASSWORD_REHASH) == []


# --- throttling (every KV kind) ----------------------------------------------------------


@pytest.fixture
def strict(kv_services, with_settings):
    """Three failures lock for two seconds."""
    return with_settings(kv_services, login_max_failures=3, login_lock_seconds=2)


def test_account_lock_refuses_the_right_password(strict, bob) -> None:
    for source in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
        with pytest.raises(AuthenticationFailed) as caught:
            strict.users.authenticate(BOB, "wrong password!", source=source)
        assert type(caught.value) is AuthenticationFailed
    calls = _count_argon2(strict)
    with pytest.raises(Throttled) as locked:
        strict.users.authenticate(BOB, BOB_PASSWORD, source="198.51.100.4")
    assert 1 <= locked.value.retry_after <= 2
    assert calls == []  # refused before the password was looked at
    # Another account is not affected.
    assert strict.users.authenticate(ADMIN, ADMIN_PASSWORD, source="198.51.100.4").name == ADMIN


def test_source_lock_covers_every_account(strict, bob) -> None:
    for name in (BOB, ADMIN, "nobody"):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate(name, "wrong password!", source="203.0.113.9")
    with pytest.raises(Throttled):
        strict.users.authenticate(ADMIN, ADMIN_PASSWORD, source="203.0.113.9")
    # The same account from another address still works: only that source is locked.
    assert strict.users.authenticate(ADMIN, ADMIN_PASSWORD, source="203.0.113.10").name == ADMIN


def test_unknown_names_are_throttled_too(strict) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate("ghost", "wrong password!")
    with pytest.raises(Throttled):
        strict.users.authenticate("ghost", "wrong password!")


def test_throttled_refusal_is_audited_once_per_lock(strict, bob) -> None:
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate(BOB, "wrong password!")
    for _ in range(4):
        with pytest.raises(Throttled):
            strict.users.authenticate(BOB, BOB_PASSWORD)
    rows = audit_rows(strict, Action.USER_LOGIN_FAILED)
    assert [r["details"]["reason"] for r in rows] == ["wrong password"] * 3 + ["throttled"]
    assert rows[2]["details"]["locked"] is True


@SQLITE_ONLY
def test_lock_expires(kv_services, with_settings, bob) -> None:
    brief = with_settings(kv_services, login_max_failures=3, login_lock_seconds=1)
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            brief.users.authenticate(BOB, "wrong password!")
    with pytest.raises(Throttled) as locked:
        brief.users.authenticate(BOB, BOB_PASSWORD)
    assert locked.value.retry_after == 1
    time.sleep(1.1)
    assert brief.users.authenticate(BOB, BOB_PASSWORD).name == BOB


def test_success_clears_the_account_counter(strict, bob) -> None:
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate(BOB, "wrong password!")
    strict.users.authenticate(BOB, BOB_PASSWORD)
    for _ in range(2):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate(BOB, "wrong password!")
    assert strict.users.authenticate(BOB, BOB_PASSWORD).name == BOB


def test_a_non_admin_token_is_refused_user_management_with_an_audit_row(services) -> None:
    created = services.tokens.create(cli_principal(), name="ops", scopes=["users:read"],
                                     owner=ADMIN)
    token = services.tokens.verify(created.plaintext)
    with pytest.raises(PermissionDenied):
        services.users.add(token, name="eve", password="a long enough password")
    [row] = audit_rows(services, Action.TOKEN_DENIED)
    assert row["actor"] == f"token:{token.name}"
    assert row["details"]["scope"] == "admin"
    with pytest.raises(NotFound):
        services.users.get("eve")
