"""ID-06: a post without a token, with a wrong token or from another site is refused."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from tundra.core.acceptance.checks.identity.auth import shared_login
from tundra.core.acceptance.checks.identity.base import Inconclusive, _guard, _verdict
from tundra.core.acceptance.checks.identity.browser import Browser
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity
from tundra.core.acceptance.registry import check


def _csrf_cookie(browser: Browser) -> str | None:
    """The name of the cookie carrying the double-submit token, if there is one."""
    token = browser.csrf
    return next((k for k, v in browser.cookies.items() if v == token), None)


@check(
    "ID-06",
    "CSRF: no token, a wrong token or a cross-site origin is refused",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def csrf_refused(ctx: RunContext) -> Outcome:
    browser = shared_login(ctx).browser.fork()
    browser.get("/tokens")
    if not browser.csrf:
        raise Inconclusive("the /tokens page carries no CSRF token")
    valid = browser.csrf
    # A harmless unsafe request: issuing a token without a name is refused by validation
    # (422) once the CSRF layer let it through, and never changes anything.
    fields = [("name", ""), ("expires", "30")]
    control = browser.post_form("/tokens", fields, keep=False)
    results: dict[str, dict[str, Any]] = {
        "control (valid token, same origin)": {"status": control.status}
    }
    if control.status in (400, 403) or browser.is_login_redirect(control):
        raise Inconclusive(
            f"the valid same-origin post answered {control.status}: cannot tell a CSRF refusal "
            "from it",
            results=results,
        )
    forged = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    cookie_name = _csrf_cookie(browser)
    evil = "https://attacker.example"
    cases: list[tuple[str, str | None, list[tuple[str, str]], dict[str, str] | None]] = [
        ("no token", None, browser.same_origin_headers(), None),
        ("wrong token", forged, browser.same_origin_headers(), None),
        (
            "cross-site Origin and Sec-Fetch-Site",
            valid,
            [("Origin", evil), ("Sec-Fetch-Site", "cross-site")],
            None,
        ),
        ("cross-site Sec-Fetch-Site only", valid, [("Sec-Fetch-Site", "cross-site")], None),
        ("foreign Origin only", valid, [("Origin", evil)], None),
    ]
    if cookie_name is not None:
        # Cookie and field agree but the attacker chose both: a signed token is refused.
        forged_jar = {**browser.cookies, cookie_name: forged}
        cases.append(
            ("forged cookie and field pair", forged, browser.same_origin_headers(), forged_jar)
        )
    problems: list[str] = []
    for label, token, headers, jar in cases:
        answer = browser.post_form(
            "/tokens", fields, csrf=token or None, headers=headers, cookies=jar, keep=False
        )
        refused = answer.status in (400, 403)
        results[label] = {"status": answer.status, "refused": refused}
        if not refused:
            problems.append(f"{label}: answered {answer.status} like the valid post")
    return _verdict(
        problems,
        f"{len(cases)} forged or cross-site posts refused; the valid post answered "
        f"{control.status}",
        {"target": "POST /tokens (an invalid, harmless form)", "results": results},
    )
