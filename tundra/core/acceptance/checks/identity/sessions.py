"""ID-01 and ID-02: the session cookie's flags after a real login, and the session id's
life (new at login, a planted one ignored, refused after logout).
"""

from __future__ import annotations

import base64
import secrets
from typing import Any

from tundra.core.acceptance.checks.identity.auth import login, shared_login
from tundra.core.acceptance.checks.identity.base import _guard, _verdict
from tundra.core.acceptance.checks.identity.browser import Browser
from tundra.core.acceptance.context import RunContext, SetCookie
from tundra.core.acceptance.model import Outcome, Section, Severity
from tundra.core.acceptance.registry import check


def _cookie_problems(cookie: SetCookie, *, session: bool) -> list[str]:
    problems = []
    name = cookie.name
    if not cookie.secure:
        problems.append(f"{name} is set without Secure")
    if name.startswith("__Host-"):
        if cookie.path != "/":
            problems.append(f"{name} has the __Host- prefix but Path={cookie.path!r}")
        if "domain" in cookie.attributes:
            problems.append(f"{name} has the __Host- prefix and a Domain attribute")
    if not session:
        return problems
    if not name.startswith("__Host-"):
        problems.append(f"the session cookie {name} lacks the __Host- prefix")
    if not cookie.http_only:
        problems.append(f"the session cookie {name} is not HttpOnly")
    if (cookie.same_site or "").lower() != "strict":
        problems.append(
            f"the session cookie {name} has SameSite={cookie.same_site}, not Strict"
            if cookie.same_site
            else f"the session cookie {name} has no SameSite attribute (must be Strict)"
        )
    if cookie.path != "/":
        problems.append(f"the session cookie {name} has Path={cookie.path!r}, not /")
    if "domain" in cookie.attributes:
        problems.append(f"the session cookie {name} has a Domain attribute")
    return problems


# --------------------------------------------------------------------------------------------
# ID-01


@check(
    "ID-01",
    "Session cookie flags after a real login",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def cookie_flags(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    problems: list[str] = []
    seen: list[dict[str, Any]] = []
    session_seen = False
    for url, cookie in done.browser.set_cookies:
        is_session = cookie.name == done.session_name and not cookie.deletes
        session_seen = session_seen or is_session
        problems += [p for p in _cookie_problems(cookie, session=is_session) if p not in problems]
        seen.append({"url": url, **cookie.evidence()})
    if not session_seen:
        problems.append("the session cookie was not seen in the login answers")

    # Nothing may set a cookie over plain http (the http twin of TR-01).
    plain: list[dict[str, Any]] = []
    client = ctx.http()
    for path in ("/", "/login"):
        url = ctx.target.http_url(path)
        try:
            answer = client.get(url)
        except OSError as exc:
            plain.append({"url": url, "error": f"{type(exc).__name__}: {exc}"})
            continue
        names = [c.name for c in answer.set_cookies()]
        plain.append({"url": url, "status": answer.status, "set_cookie": names})
        if names:
            problems.append(f"{url} sets cookie(s) over http: {', '.join(names)}")
    evidence = {
        "session_cookie": done.session_name,
        "cookies": seen,
        "http": plain,
        "login": done.evidence(),
    }
    return _verdict(
        problems,
        f"{done.session_name}: __Host-, Secure, HttpOnly, SameSite=Strict, Path=/, no Domain;"
        f" every cookie Secure; none over http",
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-02


@check(
    "ID-02",
    "New session id at login; the old one refused after logout",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def session_lifecycle(ctx: RunContext) -> Outcome:
    name = shared_login(ctx).session_name
    browser = Browser(ctx)
    planted = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    done = login(ctx, browser, plant={name: planted})
    problems: list[str] = []
    new = done.session_id
    if new == planted:
        problems.append("the session id planted before the login became the session (fixation)")
    reused = sorted(k for k, v in done.before.items() if v == new and k != name)
    if reused:
        problems.append(f"the session id equals the pre-login cookie {reused[0]}")
    # The planted id alone must open nothing (a server that adopted it would answer the page).
    planted_only = browser.request("GET", "/", cookies={name: planted}, keep=False)
    if not browser.is_login_redirect(planted_only):
        problems.append(f"the planted session id opens / (status {planted_only.status})")

    logout = browser.post_form("/logout", [])
    replay = browser.request("GET", "/", cookies={name: new}, keep=False)
    replay_ok = browser.is_login_redirect(replay)
    if not replay_ok:
        problems.append(
            f"after logout the old session cookie still opens / (status {replay.status})"
        )
    evidence = {
        "session_cookie": name,
        "planted_differs": new != planted,
        "differs_from_pre_login_cookies": not reused,
        "planted_only": {
            "status": planted_only.status,
            "location": planted_only.header("location"),
        },
        "logout": {"status": logout.status, "location": logout.header("location")},
        "replay_after_logout": {"status": replay.status, "location": replay.header("location")},
        "login": done.evidence(),
    }
    return _verdict(
        problems,
        "a new session id at login (a planted one is ignored); logout revokes it server-side",
        evidence,
    )
