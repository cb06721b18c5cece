"""ID-07: sensitive operations ask for re-authentication, and a token can never perform one.

ID-07 cannot age a session from outside. The token half ("an API token can never perform one")
runs anywhere: with a token holding every scope the account may have, each sensitive API
operation must answer 403 ``reauth_required`` (or be refused by scope first, where the account
cannot hold the scope). The session half runs only with ``--local``: the check moves its own
session's ``authenticated_at`` back past ``reauth_window`` in the KV store (a local-only probe
that touches nothing but the runner's session), then shows that the sensitive posts answer the
re-authentication form and that the password opens the gate (on a server that does not exist,
so nothing is deleted). Remotely the evidence says that half was not evaluated.
"""

from __future__ import annotations

import json
import threading
import time
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.checks.identity.api import (
    _NEW_TOKEN,
    api_error_code,
    create_token,
    display,
    offered_scopes,
    openapi,
    operations,
    probe_name,
    revoke_token,
)
from tundra.core.acceptance.checks.identity.auth import (
    Login,
    authenticator,
    reauth_fields,
    shared_login,
)
from tundra.core.acceptance.checks.identity.base import Inconclusive, _guard, _verdict, services_of
from tundra.core.acceptance.checks.identity.browser import (
    _CSRF_FIELD,
    _REAUTH_PASSWORD,
    forms_of,
    has_reauth_form,
)
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.services import Services


_SESSION_KEY = "session:{handle}"  # the session record in the KV store (core.identity.sessions)


#: Sensitive API operations and a request that would perform one on nothing that exists.
def _sensitive_api(probe: str) -> list[tuple[str, str, str, Any, str]]:
    """(operationId, METHOD, path, body, scope needed to reach the gate)."""
    return [
        ("deleteServer", "DELETE", f"/api/v1/servers/{probe}", None, "servers:write"),
        (
            "createToken",
            "POST",
            "/api/v1/tokens",
            {"name": f"{probe}-admin", "scopes": ["admin"], "expires_in": 3600},
            "tokens:write",
        ),
    ]


def _backdate(services: Services, session_id: str) -> dict[str, Any]:
    """Move the session's last authentication back past the re-auth window (local probe).

    Under the session's own write lock (the one core's session service takes), so a touch of
    the record by a concurrent request cannot write the old stamp back.
    """
    from tundra.core.identity.sessions import handle_of
    from tundra.core.storage.kv import LockNotAcquired

    handle = handle_of(session_id)
    if handle is None:
        raise Inconclusive("the session id is not in Tundra's format; cannot age it")
    key = _SESSION_KEY.format(handle=handle)
    window = services.settings.reauth_window
    for _ in range(50):
        try:
            with services.kv.lock(key, ttl=5.0):
                raw = services.kv.get(key)
                if raw is None:
                    raise Inconclusive(
                        "the session is not in the local KV store (is --local right?)"
                    )
                record = json.loads(raw)
                record["authenticated_at"] = time.time() - window - 60
                ttl = services.kv.ttl(key)
                keep = ttl if ttl is not None and 0 < ttl < float("inf") else None
                services.kv.set(key, json.dumps(record).encode(), ttl=keep)
                return {"reauth_window": window, "aged_by_s": window + 60}
        except LockNotAcquired:
            time.sleep(0.02)
    raise Inconclusive("the session's lock stayed busy; cannot age it")


def _session_half(ctx: RunContext, services: Services, done: Login, probe: str) -> dict[str, Any]:
    browser = done.browser.fork()
    result: dict[str, Any] = {"aged": _backdate(services, done.session_id)}
    problems: list[str] = []
    gated: list[tuple[str, list[tuple[str, str]]]] = []
    admin_token = f"{probe}-admin"
    posts = [
        ("/tokens", [("name", admin_token), ("scopes", "admin"), ("expires", "30")]),
        (f"/servers/{probe}/delete", []),
    ]
    for path, fields in posts:
        browser.get("/tokens")
        answer = browser.post_form(path, fields)
        asked = answer.status == 403 and has_reauth_form(answer.text)
        entry: dict[str, Any] = {"status": answer.status, "reauth_form": asked}
        created = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
        if created is not None:
            entry["cleanup"] = revoke_token(browser, created.group(0))
        if asked:
            form = next(f for f in forms_of(answer.text) if f.has(_REAUTH_PASSWORD))
            carried = [
                (i["name"], i.get("value", ""))
                for i in form.inputs
                if i.get("name") and i.get("type") == "hidden" and i["name"] != _CSRF_FIELD
            ]
            gated.append((path, carried))
        elif answer.status == 403 and path.startswith("/servers"):
            entry["note"] = "refused before the gate (this account may not delete servers)"
        else:
            problems.append(
                f"POST {path} with a session older than the re-auth window answered "
                f"{answer.status} without asking for the password"
            )
        result[f"POST {path}"] = entry
    if gated:
        # Prefer the server deletion of a server that does not exist: passing the gate then
        # deletes nothing; an administrator token is never issued on purpose.
        path, carried = gated[-1]
        auth = authenticator(ctx)
        lock = auth.lock if auth is not None else threading.Lock()
        with lock:
            answer = browser.post_form(path, [*carried, *reauth_fields(ctx)])
        opened = not has_reauth_form(answer.text) and answer.status != 401
        created = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
        entry = {"status": answer.status, "gate_opened": opened}
        if created is not None:
            entry["cleanup"] = revoke_token(browser, created.group(0))
        result[f"POST {path} with the password"] = entry
        if not opened:
            problems.append(f"POST {path} with the password still asked for it ({answer.status})")
    result["problems"] = problems
    return result


@check(
    "ID-07",
    "Re-authentication for sensitive operations; never by a token",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def reauthentication(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    browser = done.browser.fork()
    probe = probe_name()
    scopes = [s for s in offered_scopes(browser) if s != "admin"]
    token = create_token(browser, f"tundra-acceptance-{probe}", scopes, [probe])
    problems: list[str] = []
    notes: list[str] = []
    token_half: dict[str, Any] = {"token": display(token), "scopes": scopes}
    try:
        # The API documents its sensitive operations (403 reauth_required); those the runner
        # has no harmless request for are named in the evidence, not silently passed over.
        documented = {
            str(op.get("operationId"))
            for _, _, op in operations(openapi(browser))
            if "reauth_required" in str(op.get("description", ""))
        }
        probes = _sensitive_api(probe)
        untested = sorted(documented - {p[0] for p in probes})
        token_half["documented_sensitive"] = sorted(documented)
        if untested:
            notes.append(f"documented as sensitive but not probed: {', '.join(untested)}")
        for op_id, method, path, body, scope in probes:
            answer = browser.api(method, path, token, body)
            code = api_error_code(answer)
            token_half[op_id] = {
                "method": method,
                "path": path,
                "status": answer.status,
                "code": code,
            }
            if answer.status == 201 and op_id == "createToken":
                # Should never happen: an administrator token issued by a token. Revoke it.
                try:
                    minted = str(answer.json()["plaintext"])
                    token_half[op_id]["cleanup"] = revoke_token(browser, minted)
                except (ValueError, KeyError, TypeError):
                    pass
            if answer.status == 403 and code == "reauth_required":
                continue
            if answer.status == 403 and scope not in scopes:
                notes.append(f"{op_id}: refused by scope first (the account cannot hold {scope})")
                continue
            problems.append(
                f"a token's {method} {path} answered {answer.status} {code or ''}".rstrip()
                + ", not 403 reauth_required"
            )
    finally:
        token_half["cleanup"] = revoke_token(browser, token)

    services = services_of(ctx)
    session_half: dict[str, Any]
    if services is None:
        session_half = {
            "evaluated": False,
            "reason": "a session cannot be aged from outside; run with --local for this half",
        }
        notes.append("session half not evaluated (needs --local)")
    else:
        session_half = _session_half(ctx, services, done, probe)
        problems += session_half.pop("problems")
        session_half["evaluated"] = True
    evidence = {"token_half": token_half, "session_half": session_half}
    ok = "a token is refused every sensitive operation (403 reauth_required)" + (
        "; an aged session is asked for the password, which opens the gate"
        if services is not None
        else "; the session half needs --local"
    )
    return _verdict(problems, ok, evidence, notes=notes)
