"""The panel's API as the identity checks see it: its operations (from the OpenAPI
document), and test tokens issued and revoked through the panel's token form (ID-07, ID-08).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from tundra.core.acceptance.checks.identity.base import Inconclusive
from tundra.core.acceptance.checks.identity.browser import Browser, forms_of
from tundra.core.acceptance.context import HttpResponse

OPENAPI_PATH = "/api/v1/openapi.json"
ME_PATH = "/api/v1/me"


_NEW_TOKEN = re.compile(r"tnd_[a-z0-9]{1,16}_[A-Za-z0-9_-]{43}")


def offered_scopes(browser: Browser) -> list[str]:
    page = browser.get("/tokens")
    if page.status != 200:
        raise Inconclusive(f"/tokens answered {page.status}")
    return [
        i.get("value", "")
        for f in forms_of(page.text)
        for i in f.inputs
        if i.get("name") == "scopes" and i.get("value")
    ]


def create_token(
    browser: Browser, name: str, scopes: Iterable[str], servers: Iterable[str] = ()
) -> str:
    """Issue a token through the panel's form with the session; returns the plaintext."""
    browser.get("/tokens")
    fields = [("name", name), *(("scopes", s) for s in scopes)]
    fields += [("servers", ",".join(servers)), ("expires", "30")]
    answer = browser.post_form("/tokens", fields)
    found = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
    if found is None:
        raise Inconclusive(
            f"issuing a test token through /tokens answered {answer.status}",
            exchange=answer.evidence(),
        )
    return found.group(0)


def token_id(browser: Browser, token: str) -> str | None:
    me = browser.api("GET", ME_PATH, token)
    try:
        value = me.json()["token"]["id"] if me.status == 200 else None
    except (ValueError, KeyError, TypeError):
        value = None
    return str(value) if value else None


def revoke_token(browser: Browser, token: str) -> dict[str, Any]:
    """Revoke through the panel; evidence of what happened (never raises)."""
    try:
        ident = token_id(browser, token)
        if ident is None:
            return {"revoked": False, "reason": "the token's id could not be read"}
        browser.get("/tokens")
        answer = browser.post_form(f"/tokens/{ident}/revoke", [])
        after = browser.api("GET", ME_PATH, token)
        return {
            "revoked": after.status == 401,
            "revoke_status": answer.status,
            "after_status": after.status,
        }
    except Inconclusive as exc:
        return {"revoked": False, "reason": exc.message}


def display(token: str) -> str:
    """What Tundra itself shows of a token: ``tnd_{env}_`` and 8 characters."""
    env_end = token.find("_", 4) + 1
    return token[: env_end + 8] + "…"


def api_error_code(response: HttpResponse) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def openapi(browser: Browser) -> dict[str, Any]:
    answer = browser.request("GET", OPENAPI_PATH, cookies={}, keep=False)
    if answer.status != 200:
        raise Inconclusive(f"{OPENAPI_PATH} answered {answer.status}")
    try:
        document = answer.json()
    except ValueError:
        raise Inconclusive(f"{OPENAPI_PATH} is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise Inconclusive(f"{OPENAPI_PATH} has no paths")
    return document


def operations(document: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) for every operation of the document."""
    found = []
    for path, item in document["paths"].items():
        if not isinstance(item, dict):
            continue
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch") and isinstance(op, dict):
                found.append((method.upper(), str(path), op))
    return found


def protected(document: Mapping[str, Any], op: Mapping[str, Any]) -> bool:
    security = op.get("security", document.get("security", []))
    return bool(security)


def fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def probe_name() -> str:
    """A lower-case name no deployment has (valid as a server name, token ref, user name)."""
    return "acc-probe-" + secrets.token_hex(5)
