"""Logging in as the run's account: TOTP codes, the login itself, and the one shared login.

One login (``--user``, password, TOTP secret) is shared by the checks through ``ctx.memo``;
ID-02 logs in once more (it logs its own session out) and ID-07 re-authenticates. TOTP codes are
handed out by one :class:`_Authenticator` per run, each for a time step never used before, and
sent while holding its lock so the server sees them in order (it refuses a step at or below the
last one it accepted). The shared session is logged out when the run ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tundra.core.acceptance.checks.identity.base import Inconclusive
from tundra.core.acceptance.checks.identity.browser import (
    _REAUTH_PASSWORD,
    REDIRECTS,
    Browser,
    _location_path,
)
from tundra.core.acceptance.context import HttpResponse, RunContext

_REAUTH_TOTP = "reauth_totp"


class _Authenticator:
    """TOTP codes for one run: each for a time step above every step handed out before."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.replace(" ", "").upper()
        self.last = -1
        self.lock = threading.Lock()

    def code(self, ctx: RunContext) -> str:
        """Call with :attr:`lock` held. Waits for the next step when the window is used up."""
        import pyotp

        totp = pyotp.TOTP(self.secret)
        while True:
            step = int(time.time() // 30)
            # The server accepts the current and the next step (and the previous one, which
            # another client may have used: never relied on here).
            usable = [s for s in (step, step + 1) if s > self.last]
            if usable:
                self.last = usable[0]
                return str(totp.at(self.last * 30))
            wait = (step + 1) * 30 - time.time() + 0.2
            remaining = ctx.remaining()
            if remaining is not None and remaining < wait + 2:
                raise Inconclusive(
                    "out of time waiting for a fresh TOTP time step",
                    hint="give the identity checks a longer --timeout",
                )
            time.sleep(wait)

    def skip_to_next(self) -> None:
        """The server refused a code as used: use only later steps."""
        self.last = max(self.last, int(time.time() // 30))


def authenticator(ctx: RunContext) -> _Authenticator | None:
    secret = ctx.options.totp_secret
    if not secret:
        return None
    return ctx.memo("identity:totp", lambda: _Authenticator(secret))


@dataclass
class Login:
    """A completed login: the browser holding the session and what happened on the way."""

    browser: Browser
    session_name: str
    session_id: str
    #: Cookie values the browser held before the step that completed the login.
    before: dict[str, str]
    steps: list[dict[str, Any]]
    totp: bool

    def evidence(self) -> dict[str, Any]:
        return {"session_cookie": self.session_name, "totp": self.totp, "steps": self.steps}


def _step(name: str, response: HttpResponse) -> dict[str, Any]:
    return {
        "step": name,
        "status": response.status,
        "location": response.header("location"),
        "set_cookie": [c.evidence() for c in response.set_cookies()],
    }


def login(
    ctx: RunContext,
    browser: Browser,
    *,
    plant: Mapping[str, str] | None = None,
) -> Login:
    """Log in with the run's credentials (and TOTP); ``plant`` adds cookies to the login post
    (ID-02's fixation probe)."""
    user, password = ctx.options.user or "", ctx.options.password or ""
    steps: list[dict[str, Any]] = []
    page = browser.get("/login")
    steps.append(_step("GET /login", page))
    if page.status != 200 or not browser.csrf:
        raise Inconclusive(
            f"the login page answered {page.status} without a form token", steps=steps
        )
    browser.cookies.update(plant or {})
    before = dict(browser.cookies)
    answer = browser.post_form(
        "/login", [("username", user), ("password", password), ("next", "/")]
    )
    steps.append(_step("POST /login", answer))
    used_totp = False
    if answer.status in REDIRECTS and _location_path(answer) == "/login/totp":
        auth = authenticator(ctx)
        if auth is None:
            raise Inconclusive(
                f"user {user!r} has TOTP enrolled: give its secret (--totp-secret-env)",
                steps=steps,
            )
        totp_page = browser.get("/login/totp?next=/")
        steps.append(_step("GET /login/totp", totp_page))
        before = dict(browser.cookies)
        for attempt in range(2):
            with auth.lock:
                code = auth.code(ctx)
                answer = browser.post_form("/login/totp", [("code", code), ("next", "/")])
            steps.append(_step("POST /login/totp", answer))
            if answer.status != 401 or attempt:
                break
            auth.skip_to_next()  # used by someone else (an earlier run): the next step
        used_totp = True
    if answer.status in REDIRECTS and _location_path(answer).startswith("/login/enroll"):
        raise Inconclusive(
            f"user {user!r} must enrol TOTP before it can log in: enrol it once in a browser "
            "(or use an acceptance account: `tundra user add --acceptance`)",
            steps=steps,
        )
    if answer.status == 429:
        raise Inconclusive(
            f"the login is throttled (Retry-After {answer.header('retry-after')}): an earlier "
            "run's failed attempts lock this source; wait and run again",
            steps=steps,
        )
    if answer.status not in REDIRECTS or _location_path(answer).startswith("/login"):
        raise Inconclusive(
            f"the login as {user!r} did not succeed (status {answer.status})", steps=steps
        )
    live = [c for c in answer.set_cookies() if not c.deletes]
    fresh = [c for c in live if c.name not in before]
    named = [c for c in live if "session" in c.name.lower() and "presession" not in c.name]
    # A name new to this browser is the session; else (a planted cookie of the same name)
    # the one called like a session.
    candidates = [c for c in fresh if c in named] or fresh or named
    if not candidates:
        raise Inconclusive("the login set no new session cookie", steps=steps)
    session = candidates[0]
    home = browser.get("/")
    steps.append(_step("GET /", home))
    if home.status != 200:
        raise Inconclusive(
            f"after the login, / answered {home.status}, not the dashboard", steps=steps
        )
    return Login(browser, session.name, session.value, before, steps, used_totp)


def shared_login(ctx: RunContext) -> Login:
    """The run's one login, shared by ID-01, ID-06, ID-07 and ID-08; logged out at the end."""

    def first() -> Login:
        done = login(ctx, Browser(ctx))

        def logout() -> None:
            # The checks' deadlines are over: a context without one for this last request.
            free = Browser(RunContext(ctx.options, target=ctx.target), cookies=done.browser.cookies)
            free.csrf = done.browser.csrf
            answer = free.post_form("/logout", [])
            if answer.status not in REDIRECTS:
                raise RuntimeError(f"POST /logout answered {answer.status}")

        ctx.at_end("identity: log out the shared session", logout)
        return done

    return ctx.memo("identity:login", first)


def reauth_fields(ctx: RunContext) -> list[tuple[str, str]]:
    """The password (and a TOTP code) for a re-authentication form; the caller holds the
    authenticator's lock while posting when a code is included."""
    fields = [(_REAUTH_PASSWORD, ctx.options.password or "")]
    auth = authenticator(ctx)
    if auth is not None:
        fields.append((_REAUTH_TOTP, auth.code(ctx)))
    return fields
