"""CSRF: the signed double-submit token on every unsafe request, and the Origin /
Sec-Fetch-Site second layer. A refused request changes nothing."""

from __future__ import annotations

from test_pages_support import (  # noqa: F401
    ADMIN,
    ADMIN_PASSWORD,
    CSRF,
    Browser,
    panel_fixture,
    panel_kv_fixture,
    second_browser,
)

from tundra.core.principal import SYSTEM

ADD = {"name": "web-1", "address": "10.0.0.1"}


def servers(browser: Browser) -> list[str]:
    return [s.name for s in browser.services.servers.list(SYSTEM)]


def test_a_same_origin_post_with_the_token_works(panel_kv: Browser) -> None:
    panel_kv.login()
    answer = panel_kv.post("/servers", ADD)
    assert answer.status_code == 303
    assert servers(panel_kv) == ["web-1"]


def test_missing_or_wrong_token_is_refused(panel: Browser) -> None:
    panel.login()
    for token, why in [
        (None, "missing"),
        ("", "missing"),
        ("v1.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "match"),
        ("not-a-token", "match"),
    ]:
        answer = panel.post("/servers", ADD, token=token)
        assert answer.status_code == 403, token
        assert why in answer.text
    assert servers(panel) == []


def test_cookie_and_field_both_forged_alike_is_refused(panel: Browser) -> None:
    """Double submit alone is not enough: the token must be the server's HMAC for this session."""
    panel.login()
    forged = "v1.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    panel.client.cookies.set(CSRF, forged, domain="testserver.local")
    answer = panel.post("/servers", ADD, token=forged)
    assert answer.status_code == 403
    assert servers(panel) == []


def test_a_token_of_another_session_is_refused(panel_kv: Browser) -> None:
    other = second_browser(panel_kv)
    other.login()
    foreign = other.cookie(CSRF)
    panel_kv.login()
    # Both the cookie and the field carry the other session's (valid) token.
    panel_kv.client.cookies.set(CSRF, foreign, domain="testserver.local")
    answer = panel_kv.post("/servers", ADD, token=foreign)
    assert answer.status_code == 403
    assert "not valid for this session" in answer.text
    assert servers(panel_kv) == []


def test_the_pre_login_token_is_dead_after_login(panel: Browser) -> None:
    panel.fresh_page()
    before = panel.cookie(CSRF)
    panel.login()
    after = panel.cookie(CSRF)
    assert before != after
    panel.client.cookies.set(CSRF, before, domain="testserver.local")
    assert panel.post("/servers", ADD, token=before).status_code == 403


def test_the_header_can_carry_the_token(panel: Browser) -> None:
    panel.login()
    token = panel.cookie(CSRF)
    answer = panel.post("/servers", ADD, token=None, headers={"X-CSRF-Token": token})
    assert answer.status_code == 303


CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},
    {"Origin": "https://evil.example"},
    {"Origin": "http://testserver"},
    {"Origin": "https://testserver.evil.example"},
    {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
]


def test_cross_site_requests_are_refused_even_with_a_valid_token(panel: Browser) -> None:
    panel.login()
    for headers in CROSS_SITE:
        sent = {"Origin": "", "Sec-Fetch-Site": "", **headers}
        answer = panel.post("/servers", ADD, headers=sent)
        assert answer.status_code == 403, headers
        assert "cross-site request refused" in answer.text
    assert servers(panel) == []


def test_uninformative_origin_headers_fall_back_to_the_token(panel: Browser) -> None:
    panel.login()
    for n, headers in enumerate([
        {"Origin": "null", "Sec-Fetch-Site": "same-origin"},  # Referrer-Policy: no-referrer
        {"Origin": "", "Sec-Fetch-Site": ""},  # not a browser: the token alone decides
        {"Origin": "https://testserver", "Sec-Fetch-Site": ""},
    ]):
        form = {"name": f"web-{n}", "address": "10.0.0.1"}
        assert panel.post("/servers", form, headers=headers).status_code == 303, headers
    assert len(servers(panel)) == 3


def test_login_form_needs_its_pre_session_token(panel: Browser) -> None:
    panel.fresh_page()
    answer = panel.post("/login", {"username": ADMIN, "password": ADMIN_PASSWORD}, token=None)
    assert answer.status_code == 403
    # A token made for another browser's pre-session is refused too.
    other = second_browser(panel)
    other.fresh_page()
    panel.client.cookies.set(CSRF, other.cookie(CSRF), domain="testserver.local")
    answer = panel.post("/login", {"username": ADMIN, "password": ADMIN_PASSWORD})
    assert answer.status_code == 403
    assert "__Host-tundra_session" not in answer.headers.get("set-cookie", "")


def test_a_cross_site_login_post_is_refused(panel: Browser) -> None:
    panel.fresh_page()
    answer = panel.post("/login", {"username": ADMIN, "password": ADMIN_PASSWORD},
                        headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"})
    assert answer.status_code == 403
    assert not panel.cookie("__Host-tundra_session")


def test_logout_needs_the_token_too(panel: Browser) -> None:
    panel.login()
    assert panel.post("/logout", token=None).status_code == 403
    assert panel.get("/").status_code == 200  # still logged in


def test_an_anonymous_unsafe_request_goes_to_login(panel: Browser) -> None:
    panel.fresh_page()
    answer = panel.post("/servers", ADD)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login")
    assert servers(panel) == []
