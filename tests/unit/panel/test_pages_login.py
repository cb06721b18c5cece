"""Login: no user enumeration, throttling, the TOTP step, forced administrator enrolment."""

from __future__ import annotations

import re

import pyotp
from test_pages_support import (  # noqa: F401
    ADMIN,
    ADMIN_PASSWORD,
    BOB,
    BOB_PASSWORD,
    SESSION,
    Browser,
    add_bob,
    audit_actions,
    panel_fixture,
    panel_kv_fixture,
    second_browser,
    set_settings,
)


def test_unknown_user_and_wrong_password_get_the_same_answer(panel: Browser) -> None:
    add_bob(panel.services)
    panel.fresh_page()
    unknown = panel.post("/login", {"username": "nobody", "password": "whatever it is"})
    wrong = panel.post("/login", {"username": BOB, "password": "not bob's password"})
    invalid = panel.post("/login", {"username": "NOT A NAME!", "password": "x"})
    for answer in (unknown, wrong, invalid):
        assert answer.status_code == 401
        assert "wrong user name or password" in answer.text
        assert not answer.headers.get_list("set-cookie")
    # Byte for byte, once the request id in the footer is set aside.
    strip = _without_request_id
    assert strip(unknown.text) == strip(wrong.text) == strip(invalid.text)
    assert not panel.cookie(SESSION)
    assert audit_actions(panel.services).count("identity:user:login-failed") == 3


def _without_request_id(text: str) -> str:
    return re.sub(r"request <code>[^<]*</code>", "", text)


def test_a_user_without_totp_gets_a_session(panel: Browser) -> None:
    add_bob(panel.services)
    answer = panel.login_password(BOB, BOB_PASSWORD)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    assert panel.cookie(SESSION)
    assert panel.get("/").status_code == 200
    actions = audit_actions(panel.services)
    assert "identity:user:login" in actions
    assert "identity:session:create" in actions


def test_throttling_answers_429_and_refuses_the_right_password(panel_kv: Browser) -> None:
    add_bob(panel_kv.services)
    set_settings(panel_kv, login_max_failures=3, login_lock_seconds=120)
    panel_kv.fresh_page()
    for _ in range(3):
        assert panel_kv.post("/login", {"username": BOB, "password": "guess guess"}
                             ).status_code == 401
    locked = panel_kv.post("/login", {"username": BOB, "password": BOB_PASSWORD})
    assert locked.status_code == 429
    assert 1 <= int(locked.headers["Retry-After"]) <= 120
    assert "Too many failed attempts" in locked.text
    assert not panel_kv.cookie(SESSION)
    # Another browser from the same address is locked out too (per source as well).
    other = second_browser(panel_kv)
    other.fresh_page()
    assert other.post("/login", {"username": ADMIN, "password": ADMIN_PASSWORD}
                      ).status_code == 429


def test_totp_step_then_session(panel_kv: Browser) -> None:
    panel_kv.login()  # enrols
    panel_kv.logout()
    first = panel_kv.login_password()
    assert first.status_code == 303
    assert first.headers["location"].startswith("/login/totp")
    assert not panel_kv.cookie(SESSION)  # no session before the code
    assert panel_kv.get("/").status_code == 303
    page = panel_kv.get("/login/totp")
    assert page.status_code == 200
    assert 'autocomplete="one-time-code"' in page.text
    wrong = panel_kv.post("/login/totp", {"code": "000000"})
    assert wrong.status_code == 401
    assert "not valid" in wrong.text
    done = panel_kv.post("/login/totp", {"code": panel_kv.code()})
    assert done.status_code == 303
    assert done.headers["location"] == "/"
    assert panel_kv.get("/").status_code == 200
    actions = audit_actions(panel_kv.services)
    assert "identity:totp:verify" in actions


def test_a_totp_code_cannot_be_replayed(panel: Browser) -> None:
    panel.login()
    panel.logout()
    code = panel.code()
    panel.login_password()
    assert panel.post("/login/totp", {"code": code}).status_code == 303
    panel.logout()
    panel.login_password()
    replay = panel.post("/login/totp", {"code": code})
    assert replay.status_code == 401
    assert "identity:totp:replay-refused" in audit_actions(panel.services)


def test_totp_step_is_throttled(panel: Browser) -> None:
    panel.login()
    panel.logout()
    set_settings(panel, login_max_failures=2)
    panel.login_password()
    for _ in range(2):
        assert panel.post("/login/totp", {"code": "123456"}).status_code == 401
    locked = panel.post("/login/totp", {"code": panel.code()})
    assert locked.status_code == 429
    assert "Retry-After" in locked.headers
    assert not panel.cookie(SESSION)


def test_the_totp_step_is_bound_to_the_browser_that_gave_the_password(panel: Browser) -> None:
    panel.login()
    panel.logout()
    panel.login_password()
    thief = second_browser(panel)
    thief.fresh_page()
    answer = thief.post("/login/totp", {"code": panel.code()})
    assert answer.status_code == 303
    assert "login-expired" in answer.headers["location"]
    assert not thief.cookie(SESSION)


def test_pending_login_expires(panel: Browser) -> None:
    panel.login()
    panel.logout()
    panel.login_password()
    panel.clock.advance(301)
    answer = panel.post("/login/totp", {"code": panel.code()})
    assert answer.status_code == 303
    assert "login-expired" in answer.headers["location"]


def test_admin_without_totp_is_walked_through_enrolment(panel_kv: Browser) -> None:
    services = panel_kv.services
    first = panel_kv.login_password()
    assert first.status_code == 303
    assert first.headers["location"].startswith("/login/enroll")
    assert not panel_kv.cookie(SESSION)
    assert panel_kv.get("/servers").status_code == 303  # no session while enrolling
    start = panel_kv.get("/login/enroll")
    assert "Create my authenticator key" in start.text
    assert panel_kv.post("/login/enroll").status_code == 303
    assert not services.users.get(ADMIN).totp_enrolled  # nothing stored before the code
    page = panel_kv.get("/login/enroll")
    assert "Nothing changes until a code is accepted" in page.text
    assert 'src="/login/enroll/qr.svg"' in page.text
    assert "otpauth://totp/" in page.text
    qr = panel_kv.get("/login/enroll/qr.svg")
    assert qr.status_code == 200
    assert qr.headers["content-type"] == "image/svg+xml"
    assert qr.content.startswith(b"<svg")
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text).group(1)
    # Reloading shows the same key (sealed in the pending login), and posting again does
    # not make another one.
    assert panel_kv.post("/login/enroll").status_code == 303
    assert secret in panel_kv.get("/login/enroll").text
    panel_kv.totp_secrets[ADMIN] = secret
    done = panel_kv.post("/login/enroll/confirm", {"code": panel_kv.code()})
    assert done.status_code == 303
    assert panel_kv.cookie(SESSION)
    assert panel_kv.get("/servers").status_code == 200
    assert services.users.get(ADMIN).totp_enrolled
    [enrolled] = [e for e in services.audit.list(limit=10_000)
                  if e.action == "identity:totp:enroll"]
    assert enrolled.actor == f"user:{ADMIN}"


def _start_enrolment(browser: Browser) -> str:
    """Password, then the enrolment page's button; the key the page shows."""
    first = browser.login_password()
    assert first.headers["location"].startswith("/login/enroll"), first.headers["location"]
    assert browser.post("/login/enroll").status_code == 303
    found = re.search(r'id="totp-secret">([A-Z2-7]+)<', browser.get("/login/enroll").text)
    assert found is not None
    return found.group(1)


def _wrong_code(browser: Browser, secret: str) -> str:
    now = browser.clock()
    valid = {pyotp.TOTP(secret).at(now + 30 * s) for s in (-1, 0, 1)}
    return next(c for c in ("000000", "111111", "222222") if c not in valid)


def test_a_wrong_confirmation_code_stores_nothing(panel: Browser) -> None:
    services = panel.services
    secret = _start_enrolment(panel)
    wrong = panel.post("/login/enroll/confirm", {"code": _wrong_code(panel, secret)})
    assert wrong.status_code == 401
    assert "TOTP was not turned on" in wrong.text
    assert secret in wrong.text  # the same key is offered again
    assert not panel.cookie(SESSION)
    assert not services.users.get(ADMIN).totp_enrolled
    assert "identity:totp:enroll" not in audit_actions(services)
    panel.totp_secrets[ADMIN] = secret
    assert panel.post("/login/enroll/confirm", {"code": panel.code()}).status_code == 303
    assert panel.cookie(SESSION)
    assert services.users.get(ADMIN).totp_enrolled


def test_an_abandoned_enrolment_does_not_lock_the_admin_out(panel: Browser) -> None:
    services = panel.services
    abandoned = _start_enrolment(panel)
    # The administrator leaves: cookies gone (another browser, or closed), or the pending
    # login expires. The account is unchanged and the password alone leads to a new enrolment.
    panel.client.cookies.clear()
    assert not services.users.get(ADMIN).totp_enrolled
    fresh = _start_enrolment(panel)
    assert fresh != abandoned
    panel.clock.advance(301)
    late = panel.post("/login/enroll/confirm", {"code": pyotp.TOTP(fresh).at(panel.clock())})
    assert late.status_code == 303
    assert "login-expired" in late.headers["location"]
    assert not services.users.get(ADMIN).totp_enrolled
    third = _start_enrolment(panel)
    assert third not in (abandoned, fresh)
    panel.totp_secrets[ADMIN] = third
    done = panel.post("/login/enroll/confirm", {"code": panel.code()})
    assert done.status_code == 303
    assert panel.cookie(SESSION)
    # Only the confirmed key counts from now on.
    panel.logout()
    assert panel.login_password().headers["location"].startswith("/login/totp")
    stale = pyotp.TOTP(abandoned).at(panel.clock())
    assert panel.post("/login/totp", {"code": stale}).status_code == 401
    assert panel.post("/login/totp", {"code": panel.code()}).status_code == 303


def test_the_confirmation_code_cannot_be_replayed_for_the_first_login(panel: Browser) -> None:
    secret = _start_enrolment(panel)
    panel.totp_secrets[ADMIN] = secret
    code = panel.code()
    assert panel.post("/login/enroll/confirm", {"code": code}).status_code == 303
    panel.logout()
    assert panel.login_password().headers["location"].startswith("/login/totp")
    replay = panel.post("/login/totp", {"code": code})
    assert replay.status_code == 401
    assert not panel.cookie(SESSION)
    assert "identity:totp:replay-refused" in audit_actions(panel.services)
    assert panel.post("/login/totp", {"code": panel.code()}).status_code == 303


def test_an_enrolment_finished_elsewhere_wins(panel: Browser) -> None:
    services = panel.services
    mine = _start_enrolment(panel)
    other = second_browser(panel)
    other.totp_secrets = {}
    theirs = _start_enrolment(other)
    other.totp_secrets[ADMIN] = theirs
    assert other.post("/login/enroll/confirm", {"code": other.code()}).status_code == 303
    late = panel.post("/login/enroll/confirm", {"code": pyotp.TOTP(mine).at(panel.clock())})
    assert late.status_code == 409
    assert "already" in late.text
    assert not panel.cookie(SESSION)
    blob = services.users.auth_row(ADMIN)["totp_secret"]
    user_id = services.users.get(ADMIN).id
    assert services.totp.matching_step(user_id, blob, other.code()) is not None
    # The pending login is gone: the page sends the browser back to the login.
    assert panel.get("/login/enroll").status_code == 303


def test_the_enrolment_qr_belongs_to_its_browser_only(panel: Browser) -> None:
    panel.login_password()
    panel.post("/login/enroll")
    other = second_browser(panel)
    other.fresh_page()
    assert other.get("/login/enroll/qr.svg").status_code == 404
    assert other.get("/login/enroll").status_code == 303


def test_enrolment_can_be_turned_off(panel: Browser) -> None:
    set_settings(panel, require_admin_totp=False)
    answer = panel.login_password()
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    assert panel.cookie(SESSION)


def test_next_is_a_local_path_only(panel: Browser) -> None:
    add_bob(panel.services)
    for target, expected in [
        ("/servers?tag=x", "/servers?tag=x"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
    ]:
        panel.client.cookies.clear()
        panel.fresh_page()
        answer = panel.post("/login", {"username": BOB, "password": BOB_PASSWORD,
                                       "next": target})
        assert answer.status_code == 303
        assert answer.headers["location"] == expected, target


def test_anonymous_pages_redirect_to_login_with_next(panel: Browser) -> None:
    answer = panel.get("/servers?tag=db")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/login?next=/servers%3Ftag%3Ddb"
    page = panel.get(answer.headers["location"])
    assert 'name="next" value="/servers?tag=db"' in page.text


def test_login_page_when_logged_in_goes_home(panel: Browser) -> None:
    panel.login()
    answer = panel.get("/login")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
