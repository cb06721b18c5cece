"""Acceptance checks of the headers section: HD-01 … HD-06 (../shared/design/ACCEPTANCE.md).

Every check judges *every* sampled response (the app, the login page, an API 401, a 404, a
redirect, ``--page`` extras; fetched once per run by :func:`.transport.sample`), not just the
home page as most scanners do. Where tundra is stricter than public scanners:

- CSP: a real ``Content-Security-Policy`` header on every response, exactly one policy, no
  repeated directive (browsers silently ignore the repeat), ``default-src`` exactly ``'self'``
  or ``'none'``; in the *effective* script and style sources (``-elem``/``-attr`` variants,
  falling back to ``script-src``/``style-src`` then ``default-src``) no ``'unsafe-inline'``,
  ``'unsafe-eval'``, ``'unsafe-hashes'``, wildcard, or scheme-only source (``data:``,
  ``http:``, ``https:``, ``blob:``, ``filesystem:``) and no ``http://`` source.
- Referrer-Policy: "strict" means the panel never tells another site anything: every listed
  policy is ``no-referrer`` or ``same-origin``. ``strict-origin(-when-cross-origin)``, which
  Observatory accepts, still sends the panel's origin (an internal host name) cross-site.
  The panel sends ``no-referrer`` (tundra/panel/middleware.py).
- HD-04 needs a session: it uses the identity section's one login per run
  (:func:`.identity.shared_login`: the login form, then TOTP when the account has it).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tundra.core.acceptance.checks.identity import Inconclusive, is_login_redirect, shared_login
from tundra.core.acceptance.checks.transport import judge_responses, sample_or_error
from tundra.core.acceptance.context import HttpClient, HttpResponse, RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check

STRICT_REFERRER = ("no-referrer", "same-origin")
#: Pages a logged-in user sees in tundra's panel (HD-04, HD-06), besides ``--page`` extras.
AUTHENTICATED_PAGES = ("/", "/servers", "/tokens", "/settings", "/audit")
#: Headers that name the software stack, with or without a version.
BANNER_HEADERS = ("x-powered-by", "x-aspnet-version", "x-aspnetmvc-version", "x-generator")
FOREIGN_ORIGIN = "https://acceptance-probe.example"

# --- CSP ---------------------------------------------------------------------------------------

_DIRECTIVE_NAME = re.compile(r"[a-z0-9-]+")
_META_CSP = re.compile(
    r"<meta[^>]+http-equiv\s*=\s*[\"']?content-security-policy[\"'\s>]", re.IGNORECASE
)
_UNSAFE_KEYWORDS = ("'unsafe-inline'", "'unsafe-eval'", "'unsafe-hashes'")
_LOOSE_SCHEMES = ("data:", "http:", "https:", "blob:", "filesystem:")
_SCRIPT_FAMILY = ("script-src", "script-src-elem", "script-src-attr")
_STYLE_FAMILY = ("style-src", "style-src-elem", "style-src-attr")


@dataclass(frozen=True)
class Policy:
    directives: dict[str, list[str]]
    problems: list[str]


def parse_csp(value: str) -> list[Policy]:
    """Each policy in a CSP header value (a comma separates policies), parsed per CSP3 §2.2.1;
    unlike browsers, every oddity is reported instead of being skipped."""
    policies = []
    for text in value.split(","):
        directives: dict[str, list[str]] = {}
        problems: list[str] = []
        if not text.isascii():
            problems.append("non-ASCII characters")
        for token in text.split(";"):
            words = token.split()
            if not words:
                continue
            name = words[0].lower()
            if not _DIRECTIVE_NAME.fullmatch(name):
                problems.append(f"cannot parse directive {words[0]!r}")
                continue
            if name in directives:
                problems.append(f"directive {name} repeated (browsers ignore the repeat)")
                continue
            directives[name] = words[1:]
        policies.append(Policy(directives, problems))
    return policies


def _effective(policy: Policy, name: str) -> tuple[str, list[str]] | None:
    """The directive a browser applies for ``name`` (CSP3 fallback lists), or None."""
    chain = {
        "script-src-elem": ("script-src-elem", "script-src", "default-src"),
        "script-src-attr": ("script-src-attr", "script-src", "default-src"),
        "style-src-elem": ("style-src-elem", "style-src", "default-src"),
        "style-src-attr": ("style-src-attr", "style-src", "default-src"),
    }.get(name, (name, "default-src"))
    for candidate in chain:
        if candidate in policy.directives:
            return candidate, policy.directives[candidate]
    return None


def _loose(source: str) -> str | None:
    """Why ``source`` lets in more than the panel's own files, or None."""
    lowered = source.lower()
    if lowered in _UNSAFE_KEYWORDS:
        return lowered
    if "*" in lowered:
        return f"wildcard {source}"
    if lowered in _LOOSE_SCHEMES:
        return f"scheme source {lowered}"
    if lowered.startswith("http://"):
        return f"plain-http source {source}"
    return None


def csp_weaknesses(policy: Policy) -> list[str]:
    """What HD-02 finds in one policy (empty: the policy is strict)."""
    problems: list[str] = []
    for name in (*_SCRIPT_FAMILY, *_STYLE_FAMILY):
        effective = _effective(policy, name)
        if effective is None:
            problems.append(f"{name}: no {name} and no default-src (anything goes)")
            continue
        directive, sources = effective
        for source in sources:
            why = _loose(source)
            if why:
                problems.append(f"{name} (from {directive}): {why}")
    objects = _effective(policy, "object-src")
    if objects is None or [s.lower() for s in objects[1]] != ["'none'"]:
        got = " ".join(objects[1]) if objects else "unset"
        problems.append(f"object-src is not 'none' ({got})")
    for name in ("base-uri", "frame-ancestors", "form-action"):
        if name not in policy.directives:
            problems.append(f"{name} is not set")
            continue
        # An empty source list means 'none': the strictest value.
        for source in policy.directives[name]:
            why = _loose(source)
            if why:
                problems.append(f"{name}: {why}")
    return problems


def _csp_values(response: HttpResponse) -> list[str]:
    return response.header_values("content-security-policy")


def _hd01_judge(response: HttpResponse) -> list[str]:
    values = _csp_values(response)
    if not values:
        if response.header_values("content-security-policy-report-only"):
            return ["only Content-Security-Policy-Report-Only (reports, enforces nothing)"]
        if _META_CSP.search(response.text):
            return ["CSP only in a <meta> tag (no frame-ancestors, set after parsing starts)"]
        return ["no Content-Security-Policy header"]
    policies = [p for v in values for p in parse_csp(v)]
    problems: list[str] = []
    if len(policies) != 1:
        problems.append(f"{len(policies)} policies (need exactly one)")
    for policy in policies:
        problems.extend(policy.problems)
        default = [s.lower() for s in policy.directives.get("default-src", ["<unset>"])]
        if default not in (["'self'"], ["'none'"]):
            problems.append(f"default-src is {' '.join(default)} (need 'self' or 'none')")
    return problems


def _hd02_judge(response: HttpResponse) -> list[str]:
    policies = [p for v in _csp_values(response) for p in parse_csp(v)]
    if not policies:
        return ["no enforced CSP: nothing is restricted"]
    # Several policies are all enforced: a weakness counts only if every policy has it.
    common = set(csp_weaknesses(policies[0]))
    for policy in policies[1:]:
        common &= set(csp_weaknesses(policy))
    return [p for p in csp_weaknesses(policies[0]) if p in common]


def _sampled(ctx: RunContext) -> tuple[list[HttpResponse], dict[str, Any]] | Outcome:
    result = sample_or_error(ctx)
    if isinstance(result, Outcome):
        return result
    return list(result.responses), {"errors": list(result.errors)}


def _verdict(
    responses: Sequence[HttpResponse],
    judge: Any,
    *,
    show: Sequence[str],
    ok: str,
    extra: dict[str, Any],
) -> Outcome:
    rows, problems = judge_responses(responses, judge)
    for row, response in zip(rows, responses, strict=True):
        row["headers"] = {name: response.header_values(name) for name in show}
    problems.extend(extra.get("errors", []))
    evidence = {"responses": rows, **extra}
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        return failed("; ".join(problems[:4]) + more, **evidence)
    return passed(f"{ok} on all {len(rows)} sampled responses", **evidence)


@check(
    "HD-01",
    "A real CSP header: one policy, parses, default-src 'self' or 'none'",
    section=Section.HEADERS,
    severity=Severity.HIGH,
    timeout=30.0,
)
def csp_present(ctx: RunContext) -> Outcome:
    sampled = _sampled(ctx)
    if isinstance(sampled, Outcome):
        return sampled
    responses, extra = sampled
    return _verdict(
        responses,
        _hd01_judge,
        show=("content-security-policy", "content-security-policy-report-only"),
        ok="one parseable CSP header with a strict default-src",
        extra=extra,
    )


@check(
    "HD-02",
    "Effective CSP: no unsafe or wildcard script/style sources; object-src, base-uri, "
    "frame-ancestors, form-action locked",
    section=Section.HEADERS,
    severity=Severity.HIGH,
    timeout=30.0,
)
def csp_effective(ctx: RunContext) -> Outcome:
    sampled = _sampled(ctx)
    if isinstance(sampled, Outcome):
        return sampled
    responses, extra = sampled
    return _verdict(
        responses,
        _hd02_judge,
        show=("content-security-policy",),
        ok="a strict effective CSP",
        extra=extra,
    )


# --- HD-03, HD-05 ------------------------------------------------------------------------------


def _exactly(response: HttpResponse, name: str, wanted: str, *, case: bool = False) -> list[str]:
    values = response.header_values(name)
    if len(values) != 1:
        return [f"{len(values)} {name} headers (need exactly one: {wanted})"]
    value = values[0].strip()
    if (value if case else value.lower()) != (wanted if case else wanted.lower()):
        return [f"{name} is {values[0]!r}, not {wanted!r}"]
    return []


def _hd03_judge(response: HttpResponse) -> list[str]:
    problems = _exactly(response, "x-content-type-options", "nosniff")
    problems += _exactly(response, "x-frame-options", "DENY")
    problems += _exactly(response, "cross-origin-opener-policy", "same-origin", case=True)
    problems += _exactly(response, "cross-origin-resource-policy", "same-origin", case=True)
    values = response.header_values("referrer-policy")
    tokens = [t.strip().lower() for v in values for t in v.split(",") if t.strip()]
    if not tokens:
        problems.append("no Referrer-Policy")
    loose = [t for t in tokens if t not in STRICT_REFERRER]
    if loose:
        problems.append(
            f"Referrer-Policy {', '.join(loose)} is not strict (no-referrer, same-origin)"
        )
    return problems


@check(
    "HD-03",
    "nosniff, X-Frame-Options DENY, strict Referrer-Policy, COOP and CORP same-origin",
    section=Section.HEADERS,
    severity=Severity.MEDIUM,
    timeout=30.0,
)
def isolation_headers(ctx: RunContext) -> Outcome:
    sampled = _sampled(ctx)
    if isinstance(sampled, Outcome):
        return sampled
    responses, extra = sampled
    extra["strict_referrer_policies"] = list(STRICT_REFERRER)
    return _verdict(
        responses,
        _hd03_judge,
        show=(
            "x-content-type-options",
            "x-frame-options",
            "referrer-policy",
            "cross-origin-opener-policy",
            "cross-origin-resource-policy",
        ),
        ok="nosniff, DENY, a strict Referrer-Policy, COOP and CORP same-origin",
        extra=extra,
    )


def _hd05_judge(response: HttpResponse) -> list[str]:
    problems = [
        f"{name} is sent ({', '.join(response.header_values(name))})"
        for name in BANNER_HEADERS
        if response.header_values(name)
    ]
    for server in response.header_values("server"):
        if any(ch.isdigit() for ch in server):
            problems.append(f"Server carries a version: {server!r}")
    return problems


@check(
    "HD-05",
    "No X-Powered-By; no version in Server",
    section=Section.HEADERS,
    severity=Severity.LOW,
    timeout=30.0,
)
def no_banner(ctx: RunContext) -> Outcome:
    sampled = _sampled(ctx)
    if isinstance(sampled, Outcome):
        return sampled
    responses, extra = sampled
    return _verdict(
        responses,
        _hd05_judge,
        show=("server", *BANNER_HEADERS),
        ok="no stack banner and no version",
        extra=extra,
    )


# --- the session (HD-04, HD-06) ---------------------------------------------------------------


def _session_client(ctx: RunContext) -> HttpClient | Outcome:
    """A client carrying the run's one panel session (the identity section's shared login:
    one login per run, and TOTP codes handed out in order, which a second login would break)."""
    try:
        login = shared_login(ctx)
    except Inconclusive as exc:
        return errored(f"cannot log in: {exc.message}", **exc.evidence)
    except OSError as exc:
        return errored(f"cannot log in: {type(exc).__name__}: {exc}")
    client = ctx.http()
    client.cookies[login.session_name] = login.session_id
    return client


def _pages(ctx: RunContext) -> list[str]:
    return list(dict.fromkeys([*AUTHENTICATED_PAGES, *ctx.options.pages]))


def _cache_directives(response: HttpResponse) -> list[str]:
    return [
        d.strip().split("=", 1)[0].lower()
        for v in response.header_values("cache-control")
        for d in v.split(",")
        if d.strip()
    ]


@check(
    "HD-04",
    "Authenticated responses carry Cache-Control: no-store",
    section=Section.HEADERS,
    severity=Severity.MEDIUM,
    timeout=30.0,
    needs=("credentials",),
)
def authenticated_no_store(ctx: RunContext) -> Outcome:
    client = _session_client(ctx)
    if isinstance(client, Outcome):
        return client
    responses: list[HttpResponse] = []
    missing = f"/tundra-acceptance-missing-{secrets.token_hex(4)}"
    for path in [*_pages(ctx), missing]:
        try:
            responses.append(client.get(path))
        except OSError as exc:
            return errored(f"GET {path}: {exc}", exchanges=client.evidence())
    if any(is_login_redirect(ctx.target.base_url, r) for r in responses):
        return errored("the session was not accepted (sent back to /login)", **_ev(client))

    def judge(response: HttpResponse) -> list[str]:
        if "no-store" not in _cache_directives(response):
            got = ", ".join(response.header_values("cache-control")) or "none"
            return [f"Cache-Control is {got}, not no-store"]
        return []

    rows, problems = judge_responses(responses, judge)
    for row, response in zip(rows, responses, strict=True):
        row["cache_control"] = response.header_values("cache-control")
    evidence = {"responses": rows, **_ev(client)}
    if problems:
        return failed("; ".join(problems[:4]), **evidence)
    return passed(f"no-store on all {len(rows)} authenticated responses", **evidence)


def _ev(client: HttpClient) -> dict[str, Any]:
    return {"exchanges": client.evidence()}


# --- HD-06 -------------------------------------------------------------------------------------


def _origins(ctx: RunContext) -> list[str]:
    host = ctx.target.host
    return [
        FOREIGN_ORIGIN,
        "null",
        # A prefix/suffix match on the panel's name is a classic broken allow-list.
        f"https://{host}.acceptance-probe.example",
        f"http://{ctx.target.netloc}",
    ]


def _cors_problems(response: HttpResponse, origin: str, *, authenticated: bool) -> list[str]:
    allowed = [v.strip() for v in response.header_values("access-control-allow-origin")]
    credentials = any(
        v.strip().lower() == "true"
        for v in response.header_values("access-control-allow-credentials")
    )
    problems = []
    reflected = any(v.lower() == origin.lower() for v in allowed)
    if reflected and credentials:
        problems.append(f"Origin {origin} reflected with Access-Control-Allow-Credentials: true")
    elif reflected and authenticated:
        problems.append(f"Origin {origin} reflected on an authenticated path")
    if "*" in allowed and (authenticated or credentials):
        problems.append("Access-Control-Allow-Origin: * on an authenticated path")
    return problems


@check(
    "HD-06",
    "CORS: no foreign Origin reflected with credentials, no * on authenticated paths",
    section=Section.HEADERS,
    severity=Severity.HIGH,
    timeout=30.0,
)
def cors(ctx: RunContext) -> Outcome:
    client = ctx.http()
    probes: list[tuple[str, str, bool, dict[str, str]]] = [
        ("GET", "/", False, {}),
        ("GET", "/login", False, {}),
        # API paths are authenticated paths even when the request carries no token.
        ("GET", "/api/v1/servers", True, {}),
        (
            "OPTIONS",
            "/api/v1/servers",
            True,
            {
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        ),
    ]
    session_note = "no --user given: authenticated pages were probed only through /api/"
    session_client: HttpClient | None = None
    if ctx.options.has_credentials:
        session = _session_client(ctx)
        if isinstance(session, Outcome):
            return session
        session_client = session
        session_note = "pages also probed with the acceptance account's session"
    rows: list[dict[str, Any]] = []
    problems: list[str] = []

    def probe(
        using: HttpClient, method: str, path: str, authenticated: bool, headers: dict[str, str]
    ) -> None:
        for origin in _origins(ctx):
            response = using.request(method, path, headers={"Origin": origin, **headers})
            found = _cors_problems(response, origin, authenticated=authenticated)
            rows.append(
                {
                    "method": method,
                    "path": path,
                    "origin": origin,
                    "authenticated": authenticated,
                    "status": response.status,
                    "allow_origin": response.header_values("access-control-allow-origin"),
                    "allow_credentials": response.header_values("access-control-allow-credentials"),
                    "problems": found,
                }
            )
            problems.extend(f"{method} {path}: {p}" for p in found)

    try:
        for method, path, authenticated, headers in probes:
            probe(client, method, path, authenticated, headers)
        if session_client is not None:
            for path in _pages(ctx)[:2]:
                probe(session_client, "GET", path, True, {})
    except OSError as exc:
        return errored(f"CORS probe failed: {type(exc).__name__}: {exc}", probes=rows)
    evidence = {"probes": rows, "origins": _origins(ctx), "session": session_note}
    if problems:
        return failed("; ".join(_unique(problems)[:4]), **evidence)
    return passed(f"no CORS grant to a foreign origin in {len(rows)} probes", **evidence)


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
