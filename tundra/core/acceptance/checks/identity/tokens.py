"""ID-08: bad API tokens are refused alike; a token's scope and resources are enforced.

ID-08 cannot see whether the server looked a token up; it shows that malformed, bad-checksum,
wrong-env, unknown and revoked tokens get one byte-identical answer, and records the timings.
Test tokens are issued through the panel's form and revoked before the check returns.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from typing import Any

from tundra.core.acceptance.checks.identity.api import (
    ME_PATH,
    create_token,
    display,
    fill,
    openapi,
    operations,
    probe_name,
    revoke_token,
)
from tundra.core.acceptance.checks.identity.auth import shared_login
from tundra.core.acceptance.checks.identity.base import Inconclusive, _guard, _verdict
from tundra.core.acceptance.checks.identity.browser import _normalised
from tundra.core.acceptance.context import HttpResponse, RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity
from tundra.core.acceptance.registry import check


def _bad_tokens(token: str) -> dict[str, str]:
    from tundra.core.identity import token_format

    match = re.match(r"tnd_([a-z0-9]{1,16})_", token)
    env = match.group(1) if match else "live"
    prefix = f"tnd_{env}_"
    secret = token[len(prefix) :]
    flipped = secret[:5] + ("B" if secret[5] == "A" else "A") + secret[6:]
    other_env = "acceptance" if env != "acceptance" else "acceptancex"
    return {
        "malformed (not a token)": "not-a-token-" + secrets.token_hex(8),
        "malformed (bad last character)": prefix + secret[:-1] + "!",
        "bad checksum": prefix + flipped,
        "unknown (well-formed, valid checksum)": token_format.generate(env),
        "wrong env": token_format.generate(other_env),
    }


@check(
    "ID-08",
    "API tokens: bad tokens refused alike; scope and resource enforced",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def api_tokens(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    browser = done.browser.fork()
    document = openapi(browser)
    allowed, other = probe_name(), probe_name()
    scopes = ["servers:read"]
    token = create_token(browser, f"tundra-acceptance-{allowed}", scopes, [allowed])
    problems: list[str] = []
    evidence: dict[str, Any] = {"token": display(token), "scopes": scopes, "servers": [allowed]}
    fixed_id = "acceptance-" + secrets.token_hex(8)

    def answer_of(value: str) -> tuple[HttpResponse, dict[str, Any]]:
        response = browser.request(
            "GET",
            ME_PATH,
            headers=[("Authorization", f"Bearer {value}"), ("X-Request-ID", fixed_id)],
            cookies={},
            keep=False,
        )
        body = _normalised(response, [fixed_id])
        shape = {
            "status": response.status,
            "www_authenticate": response.header("www-authenticate"),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("utf-8", "replace")[:300],
        }
        return response, shape

    try:
        me = browser.api("GET", ME_PATH, token)
        evidence["control"] = {"path": ME_PATH, "status": me.status}
        if me.status != 200:
            raise Inconclusive(f"the new token is refused on {ME_PATH} ({me.status})", **evidence)

        bad = _bad_tokens(token)
        shapes: dict[str, dict[str, Any]] = {}
        timings: dict[str, float] = {}
        for label, value in bad.items():
            response, shapes[label] = answer_of(value)
            timings[label] = round(response.elapsed_ms, 1)
        reference = shapes["unknown (well-formed, valid checksum)"]
        if reference["status"] != 401:
            problems.append(f"an unknown token answered {reference['status']}, not 401")
        for label, shape in shapes.items():
            if shape != reference:
                problems.append(f"{label} answers differently from an unknown token: {shape}")
        evidence["bad_tokens"] = shapes
        evidence["bad_token_ms"] = timings

        # Outside the scope: every GET without path parameters whose scope the token lacks.
        out_of_scope: list[dict[str, Any]] = []
        for method, path, op in operations(document):
            scope = op.get("x-tundra-scope")
            if method != "GET" or "{" in path or not scope or scope in scopes:
                continue
            response = browser.api("GET", path, token)
            out_of_scope.append({"path": path, "scope": scope, "status": response.status})
            if response.status != 403:
                problems.append(f"GET {path} (needs {scope}) answered {response.status}, not 403")
        if not out_of_scope:
            problems.append("the OpenAPI document names no operation outside the token's scope")
        evidence["out_of_scope"] = out_of_scope

        # Outside the resource: another server by name; the token's own server is the control.
        item = next(
            (
                p
                for m, p, o in operations(document)
                if m == "GET" and o.get("x-tundra-scope") == "servers:read" and "{" in p
            ),
            None,
        )
        if item is None:
            problems.append("the OpenAPI document has no per-server read operation")
        else:
            outside = browser.api("GET", fill(item, other), token)
            inside = browser.api("GET", fill(item, allowed), token)
            evidence["out_of_resource"] = {
                "path": fill(item, other),
                "status": outside.status,
                "control_own_server": {"path": fill(item, allowed), "status": inside.status},
            }
            if outside.status != 403:
                problems.append(
                    f"GET {fill(item, other)} outside the token's servers answered "
                    f"{outside.status}, not 403"
                )
            if inside.status == 403:
                problems.append("the token is refused its own server too: resource rules unclear")
    finally:
        evidence["cleanup"] = revoke_token(browser, token)
    if evidence["cleanup"].get("revoked"):
        _, revoked_shape = answer_of(token)
        evidence["bad_tokens"]["revoked"] = revoked_shape
        if revoked_shape != evidence["bad_tokens"]["unknown (well-formed, valid checksum)"]:
            problems.append(f"a revoked token answers differently: {revoked_shape}")
    notes = [
        "no-lookup evidence is the identical answer: one indexed lookup is below network "
        "jitter, so the timings are recorded, not judged"
    ]
    return _verdict(
        problems,
        f"{len(bad)} bad tokens and a revoked one get one identical 401; "
        f"{len(evidence['out_of_scope'])} out-of-scope calls and another server get 403",
        evidence,
        notes=notes,
    )
