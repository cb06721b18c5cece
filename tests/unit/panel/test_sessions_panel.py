"""Panel sessions end to end through the app: cookie flags, fixation, logout, timeouts.

Every test runs on SQLite and PostgreSQL, each with the embedded KV and the real Valkey/Redis.
"""

from __future__ import annotations

import base64
import hashlib

from test_pages_support import (  # noqa: F401
    CSRF,
    PRESESSION,
    SESSION,
    Browser,
    audit_actions,
    panel_kv_fixture,
    second_browser,
    set_settings,
)

EXACT_FLAGS = "; HttpOnly; Secure; SameSite=Strict; Path=/"


def set_cookies(response) -> dict[str, str]:
    """Set-Cookie headers by cookie name."""
    found = {}
    for header in response.headers.get_list("set-cookie"):
        name = header.split("=", 1)[0]
        assert name not in found, f"{name} set twice in one response"
        found[name] = header
    return found


def test_session_cookie_has_exactly_the_required_flags(panel_kv: Browser) -> None:
    answer = panel_kv.login()
    cookies = set_cookies(answer)
    value = panel_kv.cookie(SESSION)
    assert cookies[SESSION] == f"{SESSION}={value}{EXACT_FLAGS}"
    assert "domain" not in cookies[SESSION].lower()
    assert "expires" not in cookies[SESSION].lower()
    assert "max-age" not in cookies[SESSION].lower()
    # The CSRF cookie: same flags (HttpOnly too: no script reads it, forms carry it).
    assert cookies[CSRF] == f"{CSRF}={panel_kv.cookie(CSRF)}{EXACT_FLAGS}"
    # The pre-session cookie is removed at login.
    assert cookies[PRESESSION] == f"{PRESESSION}={EXACT_FLAGS}; Max-Age=0"


def test_every_cookie_the_panel_sets_is_secure_host_prefixed(panel_kv: Browser) -> None:
    seen = []
    for response in (panel_kv.get("/"), panel_kv.get("/login"), panel_kv.login(),
                     panel_kv.get("/servers"), panel_kv.logout()):
        seen.extend(response.headers.get_list("set-cookie"))
    assert seen
    for header in seen:
        assert header.startswith("__Host-")
        assert EXACT_FLAGS in header
        assert "domain=" not in header.lower()


def test_session_id_is_new_at_login_and_a_planted_id_is_useless(panel_kv: Browser) -> None:
    # An attacker plants a well-formed id before the victim logs in (fixation).
    planted = base64.urlsafe_b64encode(b"\x01" * 32).rstrip(b"=").decode()
    panel_kv.client.cookies.set(SESSION, planted, domain="testserver.local")
    panel_kv.login()
    issued = panel_kv.cookie(SESSION)
    assert issued
    assert issued != planted
    assert len(issued) == 43
    # Logging in again gives yet another id, and the previous one is dead.
    panel_kv.logout()
    panel_kv.login()
    again = panel_kv.cookie(SESSION)
    assert again not in (issued, planted)
    kv = panel_kv.services.kv
    assert kv.get("session:" + hashlib.sha256(base64.urlsafe_b64decode(issued + "=")).hexdigest()
                  ) is None


def test_only_the_hash_of_the_session_id_is_stored(panel_kv: Browser) -> None:
    panel_kv.login()
    raw = panel_kv.cookie(SESSION)
    kv = panel_kv.services.kv
    handle = hashlib.sha256(base64.urlsafe_b64decode(raw + "=")).hexdigest()
    stored = kv.get(f"session:{handle}")
    assert stored is not None
    assert raw.encode() not in stored
    assert kv.get(f"session:{raw}") is None


def test_logout_kills_the_session_server_side(panel_kv: Browser) -> None:
    panel_kv.login()
    old_session, old_csrf = panel_kv.cookie(SESSION), panel_kv.cookie(CSRF)
    assert panel_kv.get("/").status_code == 200
    answer = panel_kv.logout()
    assert answer.status_code == 303
    assert set_cookies(answer)[SESSION] == f"{SESSION}={EXACT_FLAGS}; Max-Age=0"
    # Replaying the old cookie (as a thief who copied it would) is refused.
    thief = second_browser(panel_kv)
    thief.client.cookies.set(SESSION, old_session, domain="testserver.local")
    thief.client.cookies.set(CSRF, old_csrf, domain="testserver.local")
    assert thief.get("/").status_code == 303
    assert thief.get("/").headers["location"].startswith("/login")
    assert thief.post("/servers", {"name": "x", "address": "10.0.0.9"}).status_code in (303, 403)
    assert panel_kv.services.servers.list(_system()) == []
    assert "identity:session:logout" in audit_actions(panel_kv.services)


def _system():
    from tundra.core.principal import SYSTEM

    return SYSTEM


def test_idle_timeout_ends_the_session(panel_kv: Browser) -> None:
    set_settings(panel_kv, session_idle_timeout=600, session_absolute_timeout=10_000)
    panel_kv.login()
    panel_kv.clock.advance(599)
    assert panel_kv.get("/").status_code == 200  # activity pushes the idle deadline back
    panel_kv.clock.advance(599)
    assert panel_kv.get("/").status_code == 200
    panel_kv.clock.advance(601)
    answer = panel_kv.get("/")
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")
    assert set_cookies(answer)[SESSION].endswith("Max-Age=0")


def test_absolute_timeout_ends_an_active_session(panel_kv: Browser) -> None:
    set_settings(panel_kv, session_idle_timeout=600, session_absolute_timeout=1500)
    panel_kv.login()
    for _ in range(2):
        panel_kv.clock.advance(500)
        assert panel_kv.get("/").status_code == 200
    panel_kv.clock.advance(501)
    assert panel_kv.get("/").status_code == 303


def test_idle_record_also_expires_in_the_kv_store(panel_kv: Browser) -> None:
    """The KV TTL is the idle timeout: an abandoned session disappears by itself."""
    set_settings(panel_kv, session_idle_timeout=600)
    panel_kv.login()
    raw = panel_kv.cookie(SESSION)
    handle = hashlib.sha256(base64.urlsafe_b64decode(raw + "=")).hexdigest()
    left = panel_kv.services.kv.ttl(f"session:{handle}")
    assert left is not None
    assert 590 < left <= 600


def test_a_disabled_user_loses_the_session(panel_kv: Browser) -> None:
    from test_pages_support import BOB, BOB_PASSWORD, add_bob

    add_bob(panel_kv.services)
    panel_kv.login(BOB, BOB_PASSWORD)
    assert panel_kv.get("/").status_code == 200
    panel_kv.services.users.disable(_system(), BOB)
    assert panel_kv.get("/").status_code == 303


def test_malformed_session_cookies_are_anonymous(panel_kv: Browser) -> None:
    for value in ["", "x", "A" * 43, "A" * 42 + "=", "../../etc"]:
        panel_kv.client.cookies.set(SESSION, value, domain="testserver.local")
        answer = panel_kv.get("/servers")
        assert answer.status_code == 303, value
        assert answer.headers["location"].startswith("/login")
