"""TOTP: enrolment confirmed by a first code, encrypted secret, the +-1 step window, replay
refusal (also under concurrency)."""

from __future__ import annotations

import base64
import threading
from urllib.parse import parse_qs, urlsplit

import pyotp
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
from tundra.core.errors import (
    AuthenticationFailed,
    Conflict,
    DecryptionFailed,
    InvalidInput,
    PermissionDenied,
    Throttled,
    TotpRequired,
)
from tundra.core.principal import cli_principal

T0 = 1_700_000_010.0  # 10 s into a 30-second step
STEP0 = int(T0 // 30)


@pytest.fixture
def enrolled(services, bob):
    """bob with TOTP enrolled, and the services' clock frozen at T0.

    Through the one-step ``enroll`` (no confirming code), so that no step is used yet and the
    window tests can use any of them.
    """
    services.totp.clock = lambda: T0
    enrollment = services.totp.enroll(cli_principal(), BOB)
    return pyotp.TOTP(enrollment.secret_b32)


def code_at(totp: pyotp.TOTP, steps: int) -> str:
    return str(totp.at(T0 + 30 * steps))


def stored(services, name: str = BOB) -> dict:
    with services.db.read() as tx:
        return tx.fetchone(
            "SELECT totp_secret, totp_last_step FROM users WHERE name = :n", {"n": name}
        )


def wrong_code(totp: pyotp.TOTP) -> str:
    valid = {code_at(totp, s) for s in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222") if c not in valid)


def test_begin_enrollment_stores_nothing(services, bob) -> None:
    services.totp.clock = lambda: T0
    enrollment = services.totp.begin_enrollment(cli_principal(), BOB)
    assert len(enrollment.secret_b32) == 32
    uri = urlsplit(enrollment.otpauth_uri)
    assert uri.scheme == "otpauth"
    assert uri.netloc == "totp"
    query = parse_qs(uri.query)
    assert query["secret"] == [enrollment.secret_b32]
    assert query["issuer"] == ["Tundra"]
    assert "bob" in uri.path
    assert enrollment.secret_b32 not in repr(enrollment)
    assert stored(services) == {"totp_secret": None, "totp_last_step": None}
    assert not services.users.get(BOB).totp_enrolled
    assert audit_rows(services, Action.TOTP_ENROLL) == []
    # Each call is a new secret: nothing pending is kept anywhere in core.
    again = services.totp.begin_enrollment(cli_principal(), BOB)
    assert again.secret_b32 != enrollment.secret_b32


def test_complete_enrollment_stores_only_the_encrypted_secret(services, bob) -> None:
    services.totp.clock = lambda: T0
    enrollment = services.totp.begin_enrollment(cli_principal(), BOB)
    code = code_at(pyotp.TOTP(enrollment.secret_b32), 0)
    services.totp.complete_enrollment(cli_principal(), BOB, enrollment.secret_b32, code)
    row = stored(services)
    blob = bytes(row["totp_secret"])
    raw = base64.b32decode(enrollment.secret_b32)
    assert blob.startswith(b"tnd\x01")
    assert raw not in blob
    assert services.keys.decrypt("users", "totp_secret", bob.id, blob) == raw
    assert row["totp_last_step"] == STEP0  # the confirming code's step is used up
    assert services.users.get(BOB).totp_enrolled
    [audit] = audit_rows(services, Action.TOTP_ENROLL)
    assert audit["resource"] == "user:bob"
    assert audit["details"] == {"id": bob.id, "confirmed": True}
    assert enrollment.secret_b32 not in all_audit_text(services)
    assert code not in all_audit_text(services)


@SQLITE_ONLY
@pytest.mark.parametrize("steps", [-1, 0, 1])
def test_confirmation_accepts_the_usual_window(services, bob, steps) -> None:
    services.totp.clock = lambda: T0
    enrollment = services.totp.begin_enrollment(cli_principal(), BOB)
    code = code_at(pyotp.TOTP(enrollment.secret_b32), steps)
    services.totp.complete_enrollment(cli_principal(), BOB, enrollment.secret_b32, code)
    assert stored(services)["totp_last_step"] == STEP0 + steps


def test_wrong_confirmation_code_stores_nothing(services, bob) -> None:
    services.totp.clock = lambda: T0
    enrollment = services.totp.begin_enrollment(cli_principal(), BOB)
    totp = pyotp.TOTP(enrollment.secret_b32)
    valid = {code_at(totp, s) for s in (-1, 0, 1)}
    refused = [wrong_code(totp), code_at(totp, 2), code_at(totp, -2), "12345", "abcdef", ""]
    for code in refused:
        if code in valid:
            continue  # a 6-digit collision with a valid code, one in ~333,000
        with pytest.raises(AuthenticationFailed, match="TOTP was not turned on"):
            services.totp.complete_enrollment(cli_principal(), BOB, enrollment.secret_b32, code)
    assert stored(services) == {"totp_secret": None, "totp_last_step": None}
    assert audit_rows(services, Action.TOTP_ENROLL) == []
    # The password alone still logs in (no TotpRequired), and the same key can still be
    # confirmed with the right code.
    assert services.users.authenticate(BOB, BOB_PASSWORD).name == BOB
    services.totp.complete_enrollment(cli_principal(), BOB, enrollment.secret_b32,
                                      code_at(totp, 0))
    assert services.users.get(BOB).totp_enrolled


def test_abandoned_enrollment_leaves_the_password_login_and_a_fresh_start(services,
                                                                          bob) -> None:
    services.totp.clock = lambda: T0
    abandoned = services.totp.begin_enrollment(cli_principal(), BOB)
    # The user walks away: the account is as before.
    assert services.users.authenticate(BOB, BOB_PASSWORD).name == BOB
    again = services.totp.begin_enrollment(bob.as_principal(), BOB)
    assert again.secret_b32 != abandoned.secret_b32
    totp = pyotp.TOTP(again.secret_b32)
    services.totp.complete_enrollment(bob.as_principal(), BOB, again.secret_b32,
                                      code_at(totp, 0))
    with pytest.raises(TotpRequired):
        services.users.authenticate(BOB, BOB_PASSWORD)
    assert services.users.authenticate(BOB, BOB_PASSWORD, code_at(totp, 1)).name == BOB
    # The abandoned key can no longer be turned on over the active one.
    with pytest.raises(Conflict):
        services.totp.complete_enrollment(cli_principal(), BOB, abandoned.secret_b32,
                                          code_at(pyotp.TOTP(abandoned.secret_b32), 0))


def test_the_confirmation_code_cannot_be_replayed_for_the_first_login(services, bob) -> None:
    services.totp.clock = lambda: T0
    enrollment = services.totp.begin_enrollment(cli_principal(), BOB)
    totp = pyotp.TOTP(enrollment.secret_b32)
    code = code_at(totp, 0)
    services.totp.complete_enrollment(cli_principal(), BOB, enrollment.secret_b32, code)
    with pytest.raises(AuthenticationFailed, match="TOTP code is not valid"):
        services.users.authenticate(BOB, BOB_PASSWORD, code)
    with pytest.raises(AuthenticationFailed):  # nor an older step of the window
        services.users.authenticate(BOB, BOB_PASSWORD, code_at(totp, -1))
    with pytest.raises(AuthenticationFailed):
        services.totp.verify(BOB, code)
    assert len(audit_rows(services, Action.TOTP_REPLAY_REFUSED)) == 3
    assert audit_rows(services, Action.USER_LOGIN) == []
    assert services.users.authenticate(BOB, BOB_PASSWORD, code_at(totp, 1)).name == BOB


@SQLITE_ONLY
@pytest.mark.parametrize("secret", ["", "AAAA", "not base32!", "A" * 40, "A" * 33])
def test_complete_refuses_a_key_begin_did_not_make(services, bob, secret) -> None:
    with pytest.raises(InvalidInput, match="not a TOTP key made by Tundra"):
        services.totp.complete_enrollment(cli_principal(), BOB, secret, "123456")
    assert stored(services)["totp_secret"] is None


def test_one_step_enroll_activates_at_once_unconfirmed(services, bob) -> None:
    enrollment = services.totp.enroll(cli_principal(), BOB)
    row = stored(services)
    blob = bytes(row["totp_secret"])
    assert services.keys.decrypt("users", "totp_secret", bob.id, blob) == \
        base64.b32decode(enrollment.secret_b32)
    assert row["totp_last_step"] is None
    [audit] = audit_rows(services, Action.TOTP_ENROLL)
    assert audit["details"] == {"id": bob.id, "confirmed": False}


def test_enrol_twice_is_a_conflict(services, enrolled) -> None:
    with pytest.raises(Conflict, match="enrolled already"):
        services.totp.begin_enrollment(cli_principal(), BOB)
    with pytest.raises(Conflict, match="enrolled already"):
        services.totp.enroll(cli_principal(), BOB)


def test_of_two_pending_enrolments_only_the_first_confirmed_counts(services, bob) -> None:
    services.totp.clock = lambda: T0
    first = services.totp.begin_enrollment(cli_principal(), BOB)
    second = services.totp.begin_enrollment(cli_principal(), BOB)
    services.totp.complete_enrollment(cli_principal(), BOB, first.secret_b32,
                                      code_at(pyotp.TOTP(first.secret_b32), 0))
    with pytest.raises(Conflict, match="enrolled already"):
        services.totp.complete_enrollment(cli_principal(), BOB, second.secret_b32,
                                          code_at(pyotp.TOTP(second.secret_b32), 0))
    blob = bytes(stored(services)["totp_secret"])
    assert services.keys.decrypt("users", "totp_secret", bob.id, blob) == \
        base64.b32decode(first.secret_b32)
    assert len(audit_rows(services, Action.TOTP_ENROLL)) == 1


def test_a_user_may_enrol_themselves_but_not_someone_else(services, bob) -> None:
    services.totp.clock = lambda: T0
    as_bob = bob.as_principal()
    with pytest.raises(PermissionDenied):
        services.totp.begin_enrollment(as_bob, ADMIN)
    theirs = services.totp.begin_enrollment(cli_principal(), ADMIN)
    with pytest.raises(PermissionDenied):
        services.totp.complete_enrollment(as_bob, ADMIN, theirs.secret_b32,
                                          code_at(pyotp.TOTP(theirs.secret_b32), 0))
    assert not services.users.get(ADMIN).totp_enrolled
    own = services.totp.begin_enrollment(as_bob, BOB)
    services.totp.complete_enrollment(as_bob, BOB, own.secret_b32,
                                      code_at(pyotp.TOTP(own.secret_b32), 0))
    assert services.users.get(BOB).totp_enrolled
    with pytest.raises(PermissionDenied):
        services.totp.disable(as_bob, BOB)  # removing a second factor is for administrators


def test_password_right_and_no_code_is_totp_required(services, enrolled) -> None:
    with pytest.raises(TotpRequired):
        services.users.authenticate(BOB, BOB_PASSWORD)
    # The code is asked for only after the password verified.
    with pytest.raises(AuthenticationFailed) as wrong:
        services.users.authenticate(BOB, "a wrong password")
    assert type(wrong.value) is AuthenticationFailed


@pytest.mark.parametrize("steps", [-1, 0, 1])
def test_codes_of_the_current_and_adjacent_steps_are_accepted(services, enrolled, steps) -> None:
    user = services.users.authenticate(BOB, BOB_PASSWORD, code_at(enrolled, steps))
    assert user.name == BOB
    with services.db.read() as tx:
        stored = tx.fetchval("SELECT totp_last_step FROM users WHERE name = 'bob'")
    assert stored == int(T0 // 30) + steps


@SQLITE_ONLY
@pytest.mark.parametrize("steps", [-3, -2, 2, 3])
def test_codes_outside_the_window_are_refused(services, enrolled, steps) -> None:
    code = code_at(enrolled, steps)
    if code in {code_at(enrolled, s) for s in (-1, 0, 1)}:
        pytest.skip("a 6-digit collision with a valid code")  # one in ~333,000
    with pytest.raises(AuthenticationFailed, match="TOTP code is not valid"):
        services.users.authenticate(BOB, BOB_PASSWORD, code)
    assert audit_rows(services, Action.USER_LOGIN_FAILED)[-1]["details"]["reason"] == \
        "wrong TOTP code"


@SQLITE_ONLY
@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12 34 5"])
def test_malformed_codes_are_refused(services, enrolled, code) -> None:
    with pytest.raises(AuthenticationFailed, match="TOTP code is not valid"):
        services.users.authenticate(BOB, BOB_PASSWORD, code)


@SQLITE_ONLY
def test_spaces_inside_a_code_are_tolerated(services, enrolled) -> None:
    code = code_at(enrolled, 0)
    assert services.users.authenticate(BOB, BOB_PASSWORD, f"{code[:3]} {code[3:]}").name == BOB


def test_replay_of_the_same_code_is_refused_and_audited(services, enrolled) -> None:
    code = code_at(enrolled, 0)
    services.users.authenticate(BOB, BOB_PASSWORD, code)
    with pytest.raises(AuthenticationFailed, match="TOTP code is not valid"):
        services.users.authenticate(BOB, BOB_PASSWORD, code)
    [row] = audit_rows(services, Action.TOTP_REPLAY_REFUSED)
    assert row["resource"] == "user:bob"
    assert code not in all_audit_text(services)


def test_an_older_step_is_refused_after_a_newer_one(services, enrolled) -> None:
    services.users.authenticate(BOB, BOB_PASSWORD, code_at(enrolled, 1))
    for steps in (0, -1):
        with pytest.raises(AuthenticationFailed):
            services.users.authenticate(BOB, BOB_PASSWORD, code_at(enrolled, steps))
    assert len(audit_rows(services, Action.TOTP_REPLAY_REFUSED)) == 2
    services.totp.clock = lambda: T0 + 60  # two steps later a fresh code works again
    assert services.users.authenticate(BOB, BOB_PASSWORD, code_at(enrolled, 2)).name == BOB


def test_the_conditional_update_refuses_a_replay_the_read_missed(services, enrolled,
                                                                 monkeypatch) -> None:
    # Both logins read the row before either wrote: the check in Python passes twice, and only
    # the conditional UPDATE stands between the second one and success.
    stale = services.users.auth_row(BOB)
    code = code_at(enrolled, 0)
    services.users.authenticate(BOB, BOB_PASSWORD, code)
    monkeypatch.setattr(services.users, "auth_row", lambda name: stale)
    with pytest.raises(AuthenticationFailed, match="TOTP code is not valid"):
        services.users.authenticate(BOB, BOB_PASSWORD, code)
    assert len(audit_rows(services, Action.TOTP_REPLAY_REFUSED)) == 1
    assert len(audit_rows(services, Action.USER_LOGIN)) == 1


def test_concurrent_uses_of_one_code_let_exactly_one_through(services, enrolled) -> None:
    code = code_at(enrolled, 0)
    # Create the embedded KV file here first: several threads opening a brand-new SQLite file
    # at once can fail with "database is locked" while it switches to WAL (reported).
    services.kv.ttl("warm-up")
    barrier = threading.Barrier(4)
    outcomes: list[str] = []
    lock = threading.Lock()

    def attempt() -> None:
        barrier.wait(timeout=10)
        try:
            services.users.authenticate(BOB, BOB_PASSWORD, code)
            result = "ok"
        except AuthenticationFailed:
            result = "refused"
        finally:
            services.db.close_thread()
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok", "refused", "refused", "refused"]
    assert len(audit_rows(services, Action.USER_LOGIN)) == 1


def test_standalone_verify_and_confirm(services, enrolled) -> None:
    services.totp.confirm(cli_principal(), BOB, code_at(enrolled, 0))
    [row] = audit_rows(services, Action.TOTP_VERIFY)
    assert row["resource"] == "user:bob"
    with pytest.raises(AuthenticationFailed):
        services.totp.verify(BOB, code_at(enrolled, 0))
    assert len(audit_rows(services, Action.TOTP_REPLAY_REFUSED)) == 1
    with pytest.raises(AuthenticationFailed):
        services.totp.verify(ADMIN, code_at(enrolled, 1))  # admin has no TOTP


def test_wrong_codes_are_throttled_like_passwords(kv_services, with_settings, enrolled) -> None:
    strict = with_settings(kv_services, login_max_failures=3, login_lock_seconds=5)
    strict.totp.clock = lambda: T0
    good = code_at(enrolled, 0)
    wrong = "000000" if good != "000000" else "111111"
    for _ in range(3):
        with pytest.raises(AuthenticationFailed):
            strict.users.authenticate(BOB, BOB_PASSWORD, wrong)
    with pytest.raises(Throttled):
        strict.users.authenticate(BOB, BOB_PASSWORD, good)


def test_disable_removes_the_second_factor(services, enrolled) -> None:
    services.totp.disable(cli_principal(), BOB)
    assert not services.users.get(BOB).totp_enrolled
    assert services.users.authenticate(BOB, BOB_PASSWORD).name == BOB
    assert audit_rows(services, Action.TOTP_DISABLE)[0]["resource"] == "user:bob"
    with pytest.raises(Conflict):
        services.totp.disable(cli_principal(), BOB)


def test_a_secret_copied_to_another_row_does_not_decrypt(services, enrolled) -> None:
    # The envelope binds the secret to bob's row: pasted onto admin's row it is useless.
    with services.db.transaction() as tx:
        blob = tx.fetchval("SELECT totp_secret FROM users WHERE name = 'bob'")
        tx.execute("UPDATE users SET totp_secret = :b WHERE name = 'admin'", {"b": blob})
    with pytest.raises(DecryptionFailed):
        services.users.authenticate(ADMIN, ADMIN_PASSWORD, code_at(enrolled, 0))
