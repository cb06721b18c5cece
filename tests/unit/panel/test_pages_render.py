"""Every page renders, carries no inline script or style, is accessible, and does its job:
servers, tokens (plaintext shown once), audit log (filters, pages, verify, export), settings."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from test_pages_support import (  # noqa: F401
    BOB,
    BOB_PASSWORD,
    Browser,
    add_bob,
    check_page,
    panel_fixture,
)

from tundra.core.principal import SYSTEM

PAGES = ["/", "/servers", "/servers/web-1", "/tokens", "/tokens?all=1", "/audit",
         "/audit?action=fleet:*", "/settings"]
PUBLIC = ["/login"]


@pytest.fixture
def admin(panel: Browser) -> Browser:
    panel.services.servers.add(SYSTEM, name="web-1", address="10.0.0.1", tags=("prod",))
    panel.login()
    return panel


def assert_clean(html: str, where: str) -> None:
    page = check_page(html)
    assert page.problems == [], f"{where}: {page.problems}"
    # Landmarks and headings.
    assert "main" in page.tags, where
    assert page.h1 == 1, f"{where}: {page.h1} h1 elements"
    # Every visible form control has a label pointing at it.
    for control in page.inputs:
        if control.get("type") in ("checkbox", "radio") or control.get("readonly") is not None:
            continue
        assert control.get("id") in page.label_for, f"{where}: unlabelled {control}"
    assert 'lang="en"' in html
    assert 'name="viewport"' in html


def test_every_page_renders_clean(admin: Browser) -> None:
    for path in PAGES:
        answer = admin.get(path)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/html")
        assert answer.headers["cache-control"] == "no-store"
        assert_clean(answer.text, path)
        assert "<nav" in answer.text
        assert 'aria-current="page"' in answer.text


def test_login_steps_render_clean(panel: Browser) -> None:
    assert_clean(panel.get("/login").text, "/login")
    panel.login_password()
    assert_clean(panel.get("/login/enroll").text, "/login/enroll")
    panel.post("/login/enroll")
    assert_clean(panel.get("/login/enroll").text, "/login/enroll (key)")
    svg = panel.get("/login/enroll/qr.svg").text
    assert "<script" not in svg
    assert "style" not in svg


def test_pages_that_answer_errors_render_clean(admin: Browser) -> None:
    for answer in (admin.get("/servers/nope"), admin.post("/servers", {"name": "BAD NAME",
                                                                        "address": "x"}),
                   admin.post("/servers", {"name": "web-1"}, token=None)):
        assert answer.status_code in (403, 404, 422)
        assert_clean(answer.text, str(answer.url))
    admin.clock.advance(admin.services.settings.reauth_window + 1)
    prompt = admin.post("/servers/web-1/delete")
    assert prompt.status_code == 403
    assert_clean(prompt.text, "re-auth page")


def test_anonymous_visitors_are_sent_to_login(panel: Browser) -> None:
    for path in [*PAGES, "/audit/export"]:
        answer = panel.get(path)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login?next="), path


def test_the_stylesheet_is_one_static_file(panel: Browser) -> None:
    html = panel.get("/login").text
    assert re.findall(r'rel="stylesheet" href="([^"]+)"', html) == ["/static/tundra.css"]
    css = panel.get("/static/tundra.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert "@media" in css.text  # responsive rules for phones
    assert panel.get("/static/../app.py").status_code == 404


def test_unknown_page_is_an_html_404(panel: Browser) -> None:
    answer = panel.get("/no/such/page")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("text/html")
    assert check_page(answer.text).problems == []


def test_add_and_show_and_delete_a_server(admin: Browser) -> None:
    added = admin.post("/servers", {"name": "db-1", "address": "10.0.0.2", "tags": "db, prod"})
    assert added.status_code == 303
    assert added.headers["location"].startswith("/servers/db-1")
    detail = admin.get(added.headers["location"])
    assert "The server was added." in detail.text
    assert "10.0.0.2" in detail.text
    listing = admin.get("/servers?tag=db")
    assert "db-1" in listing.text
    assert "web-1" not in listing.text.split("<main")[1]
    duplicate = admin.post("/servers", {"name": "db-1", "address": "10.0.0.3"})
    assert duplicate.status_code == 409
    assert "exists already" in duplicate.text
    bad = admin.post("/servers", {"name": "<b>x</b>", "address": "10.0.0.3"})
    assert bad.status_code == 422
    assert "<b>x</b>" not in bad.text
    gone = admin.post("/servers/db-1/delete")
    assert gone.status_code == 303
    assert [s.name for s in admin.services.servers.list(SYSTEM)] == ["web-1"]


def test_a_non_admin_sees_servers_but_cannot_change_them(panel: Browser) -> None:
    add_bob(panel.services)
    panel.services.servers.add(SYSTEM, name="web-1", address="10.0.0.1")
    panel.login(BOB, BOB_PASSWORD)
    listing = panel.get("/servers")
    assert "web-1" in listing.text
    assert "Add a server" not in listing.text
    refused = panel.post("/servers", {"name": "x", "address": "10.0.0.5"})
    assert refused.status_code == 403
    assert panel.post("/servers/web-1/delete").status_code == 403
    assert panel.get("/settings").status_code == 403
    assert "Keys" not in panel.get("/").text


def test_token_plaintext_is_shown_once(admin: Browser) -> None:
    created = admin.post("/tokens", {"name": "ci", "scopes": ["servers:read", "audit:read"],
                                     "servers": "web-1", "expires": "30"})
    assert created.status_code == 201
    plaintext = re.search(r'value="(tnd_live_[A-Za-z0-9_-]{43})"', created.text).group(1)
    assert admin.services.tokens.verify(plaintext).name
    listing = admin.get("/tokens")
    assert "ci" in listing.text
    assert plaintext not in listing.text
    token = admin.services.tokens.list(SYSTEM)[0]
    assert token.servers == ("web-1",)
    revoked = admin.post(f"/tokens/{token.id}/revoke")
    assert revoked.status_code == 303
    assert admin.services.tokens.list(SYSTEM) == []
    assert "revoked" in admin.get("/tokens?all=1").text
    again = admin.post(f"/tokens/{token.id}/revoke")
    assert again.status_code == 409


def test_token_form_errors_are_shown(admin: Browser) -> None:
    answer = admin.post("/tokens", {"name": "x", "expires": "30"})
    assert answer.status_code == 422
    assert "at least one scope" in answer.text
    answer = admin.post("/tokens", {"name": "x", "scopes": "servers:read", "expires": "soon"})
    assert answer.status_code == 422


def test_audit_log_filters_pages_and_verifies(admin: Browser) -> None:
    for n in range(60):
        admin.services.servers.add(SYSTEM, name=f"n{n}", address="10.0.1.1")
    first = admin.get("/audit?action=fleet:server:create")
    assert first.status_code == 200
    assert "Intact" in first.text
    seqs = [int(s) for s in re.findall(r'<th scope="row">(\d+)</th>', first.text)]
    assert len(seqs) == 50
    assert seqs == sorted(seqs, reverse=True)
    older = re.search(r'href="/audit\?([^"]+)">Older entries', first.text).group(1)
    second = admin.get("/audit?" + older.replace("&amp;", "&"))
    rest = [int(s) for s in re.findall(r'<th scope="row">(\d+)</th>', second.text)]
    assert len(rest) == 11
    assert max(rest) < min(seqs)
    bad = admin.get("/audit?since=yesterday")
    assert bad.status_code == 422
    assert "ISO 8601" in bad.text


def test_audit_log_shows_damage(admin: Browser) -> None:
    with admin.services.db.transaction() as tx:
        tx.execute("UPDATE audit_log SET resource = 'server:forged' WHERE seq = 2")
    page = admin.get("/audit")
    assert "Damaged" in page.text
    assert "modified" in page.text
    assert "Damaged" in admin.get("/").text


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_audit_export_downloads(admin: Browser, fmt: str) -> None:
    answer = admin.get(f"/audit/export?format={fmt}")
    assert answer.status_code == 200
    assert "attachment" in answer.headers["content-disposition"]
    body = answer.text
    if fmt == "jsonl":
        rows = [json.loads(line) for line in body.splitlines()]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(body)))
    else:
        loaded = json.loads(body)
        rows = loaded if isinstance(loaded, list) else loaded.get("entries", loaded.get("rows"))
    assert rows
    assert int(rows[0]["seq"]) == 1
    assert admin.get("/audit/export?format=xml").status_code == 422


def test_settings_shows_keys_and_tls(admin: Browser) -> None:
    page = admin.get("/settings")
    assert "master.key" in page.text
    assert "Active data key term" in page.text
    assert "Rotate the master key" in page.text
    assert "Panel certificate" in page.text


def test_dashboard_summarises(admin: Browser) -> None:
    page = admin.get("/")
    assert "Fleet" in page.text
    assert "1 <span>server</span>" in page.text
    assert "Keys" in page.text
    assert "Audit chain" in page.text
    assert "Intact" in page.text
