"""Core sessions, pending logins, session re-authentication and CSRF tokens.

On both databases, each with the embedded KV and the real Valkey/Redis (``kv_services``).
"""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from idhelpers import ADMIN, ADMIN_PASSWORD, audit_rows

from tundra.core.audit.actions import Action
from tundra.core.errors import AuthenticationFailed, PermissionDenied, ReauthRequired
from tundra.core.identity.sessions import PENDING_TTL, handle_of, new_id
from tundra.core.principal import SYSTEM, Principal, PrincipalKind
from tundra.core.services import Services


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def svc(kv_services: Services) -> Services:
    kv_services.sessions.clock = Clock()
    return kv_services


def admin(services: Services):
    return services.users.get(ADMIN)


def test_ids_are_32_random_bytes_and_only_their_hash_is_stored(svc: Services) -> None:
    session_id, record = svc.sessions.create(admin(svc))
    raw = base64.urlsafe_b64decode(session_id + "=")
    assert len(raw) == 32
    assert len(session_id) == 43
    assert record.handle == hashlib.sha256(raw).hexdigest()
    assert svc.kv.get(f"session:{record.handle}") is not None
    assert session_id.encode() not in svc.kv.get(f"session:{record.handle}")
    assert svc.kv.get(f"session:{session_id}") is None
    assert svc.sessions.create(admin(svc))[0] != session_id


def test_malformed_ids_are_refused_before_any_lookup(svc: Services) -> None:
    for bad in ["", "short", "A" * 44, "A" * 42 + "!", "\u00e9" * 43]:
        assert handle_of(bad) is None
        assert svc.sessions.get(bad) is None
        assert svc.sessions.revoke(bad) is False


def test_get_returns_the_live_session(svc: Services) -> None:
    session_id, record = svc.sessions.create(admin(svc), source="192.0.2.7")
    found = svc.sessions.get(session_id)
    assert found is not None
    assert (found.user_id, found.user_name, found.source) == (record.user_id, ADMIN, "192.0.2.7")
    assert svc.sessions.get(new_id()) is None


def test_idle_timeout_and_touch(svc: Services) -> None:
    clock = svc.sessions.clock
    idle = svc.settings.session_idle_timeout
    session_id, _ = svc.sessions.create(admin(svc))
    clock.now += idle * 0.9
    assert svc.sessions.get(session_id) is not None  # touched: the deadline moves
    clock.now += idle * 0.9
    assert svc.sessions.get(session_id) is not None
    clock.now += idle
    assert svc.sessions.get(session_id) is None
    clock.now -= idle  # even back in time, the expired record is gone for good
    assert svc.sessions.get(session_id) is None


def test_absolute_timeout(svc: Services) -> None:
    clock = svc.sessions.clock
    settings = svc.settings
    session_id, _ = svc.sessions.create(admin(svc))
    steps = int(settings.session_absolute_timeout // (settings.session_idle_timeout * 0.9))
    for _ in range(steps):
        clock.now += settings.session_idle_timeout * 0.9
        assert svc.sessions.get(session_id) is not None
    clock.now = svc.sessions.get(session_id).created_at + settings.session_absolute_timeout
    assert svc.sessions.get(session_id) is None


def test_kv_ttl_never_outlives_the_absolute_deadline(svc: Services) -> None:
    from dataclasses import replace

    svc.settings = replace(svc.settings, session_idle_timeout=600, session_absolute_timeout=900)
    clock = svc.sessions.clock
    session_id, record = svc.sessions.create(admin(svc))
    clock.now += 500
    svc.sessions.get(session_id)
    left = svc.kv.ttl(f"session:{record.handle}")
    assert left is not None
    assert left <= 400 + 1


def test_revoke_is_server_side(svc: Services) -> None:
    session_id, record = svc.sessions.create(admin(svc))
    assert svc.sessions.revoke(session_id) is True
    assert svc.sessions.get(session_id) is None
    assert svc.kv.get(f"session:{record.handle}") is None
    assert svc.sessions.revoke(session_id) is False


def test_create_revokes_the_session_it_replaces(svc: Services) -> None:
    old, _ = svc.sessions.create(admin(svc))
    new, _ = svc.sessions.create(admin(svc), replaces=old)
    assert svc.sessions.get(old) is None
    assert svc.sessions.get(new) is not None


def test_login_and_logout_are_audited(svc: Services) -> None:
    session_id, record = svc.sessions.create(admin(svc), totp=True, request_id="req-login-1")
    rows = audit_rows(svc, Action.SESSION_CREATE)
    assert rows[-1]["request_id"] == "req-login-1"
    assert rows[-1]["actor"] == f"user:{ADMIN}"
    assert session_id not in str(rows)
    assert record.handle not in str(rows)
    assert audit_rows(svc, Action.USER_LOGIN)[-1]["details"]["totp"] is True
    principal = record.principal(admin(svc))
    assert svc.sessions.logout(session_id, principal) is True
    assert audit_rows(svc, Action.SESSION_LOGOUT)


def test_panel_freshness_is_per_session(svc: Services) -> None:
    clock = svc.sessions.clock
    reauth = svc.reauth
    first_id, first = svc.sessions.create(admin(svc))
    p1 = first.principal(admin(svc))
    reauth.require_fresh_auth(p1)  # just logged in
    assert 0 < reauth.window_remaining(p1) <= svc.settings.reauth_window
    clock.now += svc.settings.reauth_window
    with pytest.raises(ReauthRequired):
        reauth.require_fresh_auth(p1)
    assert reauth.window_remaining(p1) is None
    _, second = svc.sessions.create(admin(svc))
    p2 = second.principal(admin(svc))
    reauth.require_fresh_auth(p2)  # the new session is fresh ...
    with pytest.raises(ReauthRequired):
        reauth.require_fresh_auth(p1)  # ... and that does not refresh the old one
    svc.sessions.revoke(first_id)
    with pytest.raises(ReauthRequired):
        reauth.require_fresh_auth(p1)


def test_reauthenticate_checks_the_password_and_refreshes(svc: Services) -> None:
    clock = svc.sessions.clock
    _, record = svc.sessions.create(admin(svc))
    principal = record.principal(admin(svc))
    clock.now += svc.settings.reauth_window + 5
    with pytest.raises(AuthenticationFailed):
        svc.sessions.reauthenticate(principal, password="wrong password!", source="t")
    with pytest.raises(ReauthRequired):
        svc.reauth.require_fresh_auth(principal)
    window = svc.sessions.reauthenticate(principal, password=ADMIN_PASSWORD, source="t",
                                         request_id="req-reauth-1")
    assert window == svc.settings.reauth_window
    svc.reauth.require_fresh_auth(principal)
    grant = audit_rows(svc, Action.REAUTH_GRANT)[-1]
    assert grant["request_id"] == "req-reauth-1"
    assert grant["actor"] == f"user:{ADMIN}"


def test_tokens_and_sessionless_principals_cannot_use_session_reauth(svc: Services) -> None:
    token = Principal(PrincipalKind.TOKEN, "tnd_live_abc", user_id=admin(svc).id,
                      is_admin=True, session="0" * 64)
    with pytest.raises(ReauthRequired):
        svc.reauth.require_fresh_auth(token)
    with pytest.raises(PermissionDenied):
        svc.sessions.reauthenticate(admin(svc).as_principal(), password=ADMIN_PASSWORD)
    with pytest.raises(PermissionDenied):
        svc.sessions.reauthenticate(SYSTEM, password=ADMIN_PASSWORD)


def test_reauthenticate_refuses_an_ended_session(svc: Services) -> None:
    session_id, record = svc.sessions.create(admin(svc))
    svc.sessions.revoke(session_id)
    with pytest.raises(AuthenticationFailed):
        svc.sessions.reauthenticate(record.principal(admin(svc)), password=ADMIN_PASSWORD)


def test_pending_logins(svc: Services) -> None:
    clock = svc.sessions.clock
    pre = new_id()
    svc.sessions.start_pending(pre, admin(svc), stage="totp", source="192.0.2.1")
    found = svc.sessions.pending(pre)
    assert found is not None
    assert found.stage == "totp"
    assert found.user_name == ADMIN
    assert svc.sessions.pending(new_id()) is None
    assert svc.sessions.pending("malformed") is None
    clock.now += PENDING_TTL
    assert svc.sessions.pending(pre) is None
    clock.now -= PENDING_TTL
    svc.sessions.clear_pending(pre)
    assert svc.sessions.pending(pre) is None


def test_sealed_enrolment_uri_opens_only_for_its_pre_session(svc: Services) -> None:
    pre = new_id()
    uri = "otpauth://totp/Tundra:admin?secret=JBSWY3DPEHPK3PXP&issuer=Tundra"
    sealed = svc.sessions.seal_uri(pre, uri)
    assert "JBSWY3DPEHPK3PXP" not in sealed
    assert svc.sessions.open_uri(pre, sealed) == uri
    assert svc.sessions.open_uri(new_id(), sealed) is None
    tampered = base64.b64decode(sealed)
    tampered = tampered[:-1] + bytes([tampered[-1] ^ 1])
    assert svc.sessions.open_uri(pre, base64.b64encode(tampered).decode()) is None
    assert svc.sessions.open_uri(pre, "not base64!") is None


# --- CSRF tokens -----------------------------------------------------------------------------


def test_csrf_token_is_bound_to_its_session(services: Services) -> None:
    csrf = services.csrf
    one, two = new_id(), new_id()
    token = csrf.issue(one)
    assert token.startswith("v1.1.")
    assert csrf.verify(one, token)
    assert not csrf.verify(two, token)
    assert not csrf.verify("", token)
    assert csrf.issue(one) != token  # a fresh nonce each time


MANGLES = [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),
    lambda t: t.replace("v1.1.", "v1.2."),
    lambda t: t.replace("v1.1.", "v1.0."),
    lambda t: t.replace("v1.1.", "v2.1."),
    lambda t: t + "A",
    lambda t: "",
    lambda t: "v1.99999999999." + t.split(".", 2)[2],
]


def test_csrf_token_with_stray_padding_bits_is_refused(services: Services) -> None:
    import base64

    binding = new_id()
    token = services.csrf.issue(binding)
    # Flip a padding bit of the last character: it decodes to the same bytes, and must still fail.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    mac = token.rsplit(".", 1)[1]
    flipped = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]
    pad = "=" * (-len(mac) % 4)
    assert base64.urlsafe_b64decode(flipped + pad) == base64.urlsafe_b64decode(mac + pad)
    assert not services.csrf.verify(binding, token[: -len(mac)] + flipped)


def test_csrf_tampering_is_refused(services: Services) -> None:
    binding = new_id()
    token = services.csrf.issue(binding)
    for mangle in MANGLES:
        assert not services.csrf.verify(binding, mangle(token))


def test_csrf_key_is_shared_by_instances_and_survives_restarts(services: Services) -> None:
    binding = new_id()
    token = services.csrf.issue(binding)
    other = Services(services.settings)  # another process on the same database and master key
    try:
        assert other.csrf.verify(binding, token)
    finally:
        other.close()
