"""Fixtures and helpers shared by the panel page tests (imported by test_pages_* and
test_sessions_* modules).

``panel`` is a browser-like client on both databases with the embedded KV; ``panel_kv`` runs
the same on the embedded KV and on the real Valkey/Redis (its own key prefix, removed
afterwards). Time is faked where timeouts matter: the session service's and the TOTP service's
clocks are one :class:`Clock` the test moves.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from typing import Any

import pyotp
import pytest
from starlette.testclient import TestClient

from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.panel.app import create_app

ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"
BOB = "bob"
BOB_PASSWORD = "bob's long passphrase"
SESSION = "__Host-tundra_session"
CSRF = "__Host-tundra_csrf"
PRESESSION = "__Host-tundra_presession"


class Clock:
    """A settable clock for the session and TOTP services (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Browser:
    """A TestClient that behaves like a browser on the panel: cookies, forms, CSRF tokens."""

    services: Services
    client: TestClient
    clock: Clock
    totp_secrets: dict[str, str] = field(default_factory=dict)
    _last_step: dict[str, int] = field(default_factory=dict)

    # -- plumbing -----------------------------------------------------------------------------

    def cookie(self, name: str) -> str | None:
        return self.client.cookies.get(name)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(path, **kwargs)

    def post(self, path: str, data: dict[str, Any] | None = None, *,
             token: str | None = "cookie",  # noqa: S107 - "take it from the cookie"
             headers: dict[str, str] | None = None) -> Any:
        """POST a form like the panel's own pages do: the CSRF token from the cookie, and the
        headers a browser sends for a same-origin form."""
        body = dict(data or {})
        if token == "cookie":
            token = self.cookie(CSRF)
        if token is not None:
            body["csrf_token"] = token
        sent = {"Origin": "https://testserver", "Sec-Fetch-Site": "same-origin"}
        sent.update(headers or {})
        return self.client.post(path, data=body, headers={k: v for k, v in sent.items() if v})

    def fresh_page(self, path: str = "/login") -> Any:
        """Load a page so the browser holds a pre-session and a CSRF cookie."""
        return self.get(path)

    # -- TOTP ---------------------------------------------------------------------------------

    def code(self, name: str = ADMIN) -> str:
        """A valid TOTP code never used before: the fake clock moves on a step when needed."""
        step = int(self.clock() // 30)
        if self._last_step.get(name, -1) >= step:
            self.clock.advance(30)
            step += 1
        self._last_step[name] = step
        return pyotp.TOTP(self.totp_secrets[name]).at(self.clock())

    # -- logging in ---------------------------------------------------------------------------

    def login_password(self, name: str = ADMIN, password: str = ADMIN_PASSWORD,
                       **extra: Any) -> Any:
        self.fresh_page()
        return self.post("/login", {"username": name, "password": password, **extra})

    def enroll(self, name: str = ADMIN, password: str = ADMIN_PASSWORD) -> Any:
        """Walk through the forced enrolment; returns the answer to the confirmation."""
        first = self.login_password(name, password)
        assert first.status_code == 303
        assert first.headers["location"].startswith("/login/enroll")
        assert self.post("/login/enroll").status_code == 303
        page = self.get("/login/enroll")
        secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page.text)
        assert secret is not None, page.text
        self.totp_secrets[name] = secret.group(1)
        return self.post("/login/enroll/confirm", {"code": self.code(name)})

    def login(self, name: str = ADMIN, password: str = ADMIN_PASSWORD) -> Any:
        """Log in completely (enrolling TOTP first when needed); asserts a session results."""
        if name not in self.totp_secrets and self._needs_enrolment(name):
            done = self.enroll(name, password)
        else:
            done = self.login_password(name, password)
            if done.status_code == 303 and done.headers["location"].startswith("/login/totp"):
                done = self.post("/login/totp", {"code": self.code(name)})
        assert done.status_code == 303, done.text
        assert self.cookie(SESSION), "no session cookie after login"
        return done

    def _needs_enrolment(self, name: str) -> bool:
        user = self.services.users.get(name)
        return (user.is_admin and not user.totp_enrolled
                and self.services.settings.require_admin_totp)

    def logout(self) -> Any:
        return self.post("/logout")


def make_browser(services: Services) -> Browser:
    clock = Clock()
    services.sessions.clock = clock
    services.totp.clock = clock
    # Not entered as a context manager: the lifespan would close the fixture's services.
    client = TestClient(create_app(services), base_url="https://testserver",
                        raise_server_exceptions=False, follow_redirects=False)
    return Browser(services, client, clock)


def second_browser(first: Browser) -> Browser:
    """Another browser on the same server (its own cookies, the same clock and secrets)."""
    other = Browser(first.services, TestClient(
        first.client.app, base_url="https://testserver", raise_server_exceptions=False,
        follow_redirects=False), first.clock)
    other.totp_secrets = first.totp_secrets
    other._last_step = first._last_step
    return other


def close_worker_connections(services: Services) -> None:
    """Close PostgreSQL connections opened by thread-pool workers that are still alive.

    ``Database.close`` closes only the calling thread's connection and those of threads that
    have ended; the test client's worker threads outlive the test by a few seconds, and a
    connection left to the garbage collector raises ResourceWarning (an error here).
    """
    databases = [services.__dict__.get("db")]
    keys = services.__dict__.get("keys")
    if keys is not None:
        databases.append(getattr(keys, "_reader_db", None))
    for db in databases:
        for _, conn in list(getattr(db, "_opened", ())):
            conn.close()


@pytest.fixture(name="panel")
def panel_fixture(services: Services) -> Iterator[Browser]:
    yield make_browser(services)
    close_worker_connections(services)


@pytest.fixture(name="panel_kv", params=["embedded-kv", "valkey-kv"])
def panel_kv_fixture(request: pytest.FixtureRequest, services: Services) -> Iterator[Browser]:
    """The panel on the embedded KV and on the real Valkey/Redis (a private key prefix)."""
    if request.param == "embedded-kv":
        yield make_browser(services)
        close_worker_connections(services)
        return
    url = request.getfixturevalue("valkey_url")
    from tundra.core.storage.kv_valkey import ValkeyKV

    prefix = f"tundra-test:{secrets.token_hex(6)}:"
    other = Services(replace(services.settings, valkey_url=url))
    other.kv = ValkeyKV(url, prefix=prefix)  # type: ignore[misc]
    yield make_browser(other)
    client = other.kv._client  # type: ignore[attr-defined]
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    close_worker_connections(other)
    close_worker_connections(services)
    other.close()


def add_bob(services: Services) -> None:
    services.users.add(SYSTEM, name=BOB, password=BOB_PASSWORD)


def set_settings(browser: Browser, **changes: Any) -> None:
    """Change settings of the running panel (the services read them on every call)."""
    browser.services.settings = replace(browser.services.settings, **changes)


def audit_actions(services: Services) -> list[str]:
    return [row.action for row in services.audit.list(limit=10_000)]


class PageCheck(HTMLParser):
    """Collects what the CSP and accessibility checks need from one HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.tags: list[str] = []
        self.ids: set[str] = set()
        self.label_for: set[str] = set()
        self.inputs: list[dict[str, str | None]] = []
        self.h1 = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.tags.append(tag)
        if found.get("id"):
            self.ids.add(found["id"])
        if tag == "script" and not found.get("src"):
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        if "style" in found:
            self.problems.append(f"style= attribute on <{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"event handler {name}= on <{tag}>")
            if value and value.strip().lower().startswith(("javascript:", "data:")):
                self.problems.append(f"{name}={value[:20]} on <{tag}>")
        if tag == "link" and found.get("rel") == "stylesheet" and not (
                found.get("href") or "").startswith("/static/"):
            self.problems.append("stylesheet not from /static/")
        if tag == "label" and found.get("for"):
            self.label_for.add(found["for"] or "")
        if tag in ("input", "select", "textarea") and found.get("type") not in ("hidden",
                                                                                 "submit"):
            self.inputs.append(found)
        if tag == "h1":
            self.h1 += 1


def check_page(html: str) -> PageCheck:
    checker = PageCheck()
    checker.feed(html)
    checker.close()
    return checker
