"""ID-03: every protected API operation and panel page refuses an anonymous request (and
the API refuses a session cookie without a token).
"""

from __future__ import annotations

from typing import Any

from tundra.core.acceptance.checks.identity.api import (
    fill,
    openapi,
    operations,
    probe_name,
    protected,
)
from tundra.core.acceptance.checks.identity.auth import shared_login
from tundra.core.acceptance.checks.identity.base import Inconclusive, _guard, _verdict
from tundra.core.acceptance.checks.identity.browser import Browser
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity, errored
from tundra.core.acceptance.registry import check

#: The panel's pages the runner probes anonymously besides ``--page`` (GET, then POST).
PAGES: tuple[str, ...] = (
    "/",
    "/servers",
    "/servers/{probe}",
    "/tokens",
    "/audit",
    "/audit/export",
    "/settings",
)
POST_PAGES: tuple[str, ...] = (
    "/servers",
    "/servers/{probe}/delete",
    "/tokens",
    "/tokens/{probe}/revoke",
    "/settings/rotate-master",
    "/logout",
)


@check(
    "ID-03",
    "Every protected route refuses an anonymous request",
    section=Section.IDENTITY,
    severity=Severity.CRITICAL,
    timeout=60.0,
)
@_guard
def anonymous_refused(ctx: RunContext) -> Outcome:
    browser = Browser(ctx)
    problems: list[str] = []
    notes: list[str] = []
    api: list[dict[str, Any]] = []
    probe = probe_name()
    try:
        document: dict[str, Any] | None = openapi(browser)
    except Inconclusive as exc:
        document = None
        notes.append(f"no route list: {exc.message}")
    if document is not None:
        for method, template, op in operations(document):
            if not protected(document, op):
                continue
            path = fill(template, probe)
            payload: dict[str, Any] | None = {} if "requestBody" in op else None
            answer = browser.request(method, path, json_body=payload, cookies={}, keep=False)
            challenge = answer.header("www-authenticate") or ""
            api.append(
                {"method": method, "path": path, "status": answer.status, "challenge": challenge}
            )
            if answer.status != 401:
                problems.append(f"{method} {path} answered {answer.status} to an anonymous call")
            elif not challenge.lower().startswith("bearer"):
                problems.append(f"{method} {path}: 401 without a Bearer WWW-Authenticate")
        if not api:
            problems.append("the OpenAPI document lists no protected operation")

    pages: list[dict[str, Any]] = []
    wanted = list(dict.fromkeys([*PAGES, *ctx.options.pages]))
    for template in wanted:
        path = fill(template, probe)
        answer = browser.request("GET", path, cookies={}, keep=False)
        pages.append(
            {
                "method": "GET",
                "path": path,
                "status": answer.status,
                "location": answer.header("location"),
            }
        )
        if not browser.is_login_redirect(answer):
            problems.append(f"GET {path} answered {answer.status}, not a redirect to /login")
    for template in POST_PAGES:
        path = fill(template, probe)
        answer = browser.post_form(path, [], csrf=None, cookies={}, keep=False)
        pages.append(
            {
                "method": "POST",
                "path": path,
                "status": answer.status,
                "location": answer.header("location"),
            }
        )
        if not (browser.is_login_redirect(answer) or answer.status in (401, 403)):
            problems.append(f"POST {path} answered {answer.status} to an anonymous post")

    # With a session cookie but no token the API is still anonymous: it takes no cookies
    # (which is why it needs no CSRF defence).
    cookie_api: list[dict[str, Any]] = []
    if document is not None and ctx.options.has_credentials:
        try:
            jar = shared_login(ctx).browser.cookies
        except Inconclusive as exc:
            notes.append(f"session-cookie probe of the API skipped: {exc.message}")
        else:
            for method, template, op in operations(document):
                if method != "GET" or not protected(document, op):
                    continue
                path = fill(template, probe)
                answer = browser.request("GET", path, cookies=dict(jar), keep=False)
                cookie_api.append({"path": path, "status": answer.status})
                if answer.status != 401:
                    problems.append(
                        f"GET {path} with only a session cookie answered {answer.status}, not 401"
                    )
    evidence: dict[str, Any] = {"api": api, "pages": pages, "api_with_session_cookie": cookie_api}
    if document is None and not problems:
        return errored(notes[0], **evidence, notes=notes)
    return _verdict(
        problems,
        f"{len(api)} API operations answer 401 (Bearer challenge), {len(pages)} page requests "
        "redirect to /login or are refused",
        evidence,
        notes=notes,
    )
