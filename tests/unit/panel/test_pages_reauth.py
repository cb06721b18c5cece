"""Re-authentication in the panel: each sensitive operation, once the window has passed, answers
the password (+TOTP) form, which re-posts the original fields and then completes the operation.
The rule itself is core's; the page only catches ReauthRequired."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Any

import pytest
from test_pages_support import (  # noqa: F401
    ADMIN_PASSWORD,
    Browser,
    audit_actions,
    panel_fixture,
    panel_kv_fixture,
    second_browser,
)

from tundra.core.principal import SYSTEM


class ReauthForm(HTMLParser):
    """The re-authentication form as a browser sees it: action and every field it will post."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self.visible: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "form":
            self._inside = found.get("action") != "/logout" and self.action is None
            if self._inside:
                self.action = found.get("action")
        elif tag == "input" and self._inside:
            if found.get("type") == "hidden":
                self.fields.append((found.get("name") or "", found.get("value") or ""))
            else:
                self.visible.append(found.get("name") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def reauth_form(html: str) -> ReauthForm:
    form = ReauthForm()
    form.feed(html)
    return form


def submit(browser: Browser, page: Any, **typed: str) -> Any:
    """Fill in the re-auth form of ``page`` and submit it exactly as rendered."""
    form = reauth_form(page.text)
    assert form.action, page.text
    fields: list[tuple[str, str]] = [*form.fields, *typed.items()]
    return browser.client.post(form.action, data=_multi(fields),
                               headers={"Origin": "https://testserver",
                                        "Sec-Fetch-Site": "same-origin"})


def _multi(fields: list[tuple[str, str]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, value in fields:
        if name in data:
            data[name] = [*([data[name]] if isinstance(data[name], str) else data[name]), value]
        else:
            data[name] = value
    return data


def stale(browser: Browser) -> None:
    browser.login()
    browser.clock.advance(browser.services.settings.reauth_window + 1)


def add_server(browser: Browser, name: str = "web-1") -> None:
    browser.services.servers.add(SYSTEM, name=name, address="10.0.0.1")


def server_names(browser: Browser) -> list[str]:
    return [s.name for s in browser.services.servers.list(SYSTEM)]


def test_server_deletion_within_the_window_needs_no_prompt(panel: Browser) -> None:
    add_server(panel)
    panel.login()
    answer = panel.post("/servers/web-1/delete")
    assert answer.status_code == 303
    assert "server-deleted" in answer.headers["location"]
    assert server_names(panel) == []


def test_server_deletion_after_the_window_asks_then_completes(panel_kv: Browser) -> None:
    add_server(panel_kv)
    stale(panel_kv)
    prompt = panel_kv.post("/servers/web-1/delete")
    assert prompt.status_code == 403
    assert "Confirm it is you" in prompt.text
    form = reauth_form(prompt.text)
    assert form.action == "/servers/web-1/delete"
    assert form.visible == ["reauth_password", "reauth_totp"]
    assert server_names(panel_kv) == ["web-1"]
    wrong = submit(panel_kv, prompt, reauth_password="not the password",
                   reauth_totp=panel_kv.code())
    assert wrong.status_code == 401
    assert "Confirm it is you" in wrong.text
    assert server_names(panel_kv) == ["web-1"]
    done = submit(panel_kv, wrong, reauth_password=ADMIN_PASSWORD, reauth_totp=panel_kv.code())
    assert done.status_code == 303
    assert "server-deleted" in done.headers["location"]
    assert server_names(panel_kv) == []
    actions = audit_actions(panel_kv.services)
    assert actions.index("identity:reauth:grant") < actions.index("fleet:server:delete")


def test_totp_is_needed_too_when_enrolled(panel: Browser) -> None:
    add_server(panel)
    stale(panel)
    prompt = panel.post("/servers/web-1/delete")
    answer = submit(panel, prompt, reauth_password=ADMIN_PASSWORD)
    assert answer.status_code == 401
    assert "TOTP" in answer.text
    assert server_names(panel) == ["web-1"]


def test_master_key_rotation_after_the_window_asks_then_completes(panel: Browser) -> None:
    stale(panel)
    prompt = panel.post("/settings/rotate-master")
    assert prompt.status_code == 403
    assert "rotate-master" in (reauth_form(prompt.text).action or "")
    assert "keys:master:rotate" not in audit_actions(panel.services)
    done = submit(panel, prompt, reauth_password=ADMIN_PASSWORD, reauth_totp=panel.code())
    assert done.status_code == 303
    assert "master-rotated" in done.headers["location"]
    assert "keys:master:rotate" in audit_actions(panel.services)
    assert panel.get("/settings").status_code == 200


def test_admin_token_issuance_carries_the_form_through_reauth(panel_kv: Browser) -> None:
    stale(panel_kv)
    prompt = panel_kv.post("/tokens", {"name": "deploy bot", "scopes": ["admin", "audit:read"],
                                       "servers": "", "expires": "30"})
    assert prompt.status_code == 403
    carried = dict(reauth_form(prompt.text).fields)
    assert carried["name"] == "deploy bot"
    assert panel_kv.services.tokens.list(SYSTEM) == []
    done = submit(panel_kv, prompt, reauth_password=ADMIN_PASSWORD, reauth_totp=panel_kv.code())
    assert done.status_code == 201
    tokens = panel_kv.services.tokens.list(SYSTEM)
    assert [t.name for t in tokens] == ["deploy bot"]
    assert set(tokens[0].scopes) == {"admin", "audit:read"}
    assert "tnd_live_" in done.text


def test_a_non_admin_token_needs_no_reauth(panel: Browser) -> None:
    stale(panel)
    done = panel.post("/tokens", {"name": "reader", "scopes": "servers:read", "expires": "30"})
    assert done.status_code == 201


def test_freshness_belongs_to_the_session_not_the_user(panel: Browser) -> None:
    add_server(panel, "web-1")
    add_server(panel, "web-2")
    stale(panel)  # session A is old
    other = second_browser(panel)
    other.login()  # session B is fresh
    assert other.post("/servers/web-1/delete").status_code == 303
    prompt = panel.post("/servers/web-2/delete")
    assert prompt.status_code == 403
    assert server_names(panel) == ["web-2"]


def test_reauth_is_throttled(panel: Browser) -> None:
    from dataclasses import replace

    add_server(panel)
    stale(panel)
    panel.services.settings = replace(panel.services.settings, login_max_failures=2)
    page = panel.post("/servers/web-1/delete")
    for _ in range(2):
        page = submit(panel, page, reauth_password="wrong wrong wrong", reauth_totp="000000")
        assert page.status_code == 401
    locked = submit(panel, page, reauth_password=ADMIN_PASSWORD, reauth_totp=panel.code())
    assert locked.status_code == 429
    assert "Retry-After" in locked.headers
    assert server_names(panel) == ["web-1"]


@pytest.mark.parametrize("path", ["/servers/web-1/delete", "/settings/rotate-master"])
def test_reauth_form_needs_csrf(panel: Browser, path: str) -> None:
    add_server(panel)
    stale(panel)
    answer = panel.post(path, {"reauth_password": ADMIN_PASSWORD,
                               "reauth_totp": panel.code()}, token=None)
    assert answer.status_code == 403
    assert server_names(panel) == ["web-1"]
