"""HD-01 … HD-06 against a panel-like local HTTPS site, well configured and broken one header at
a time, and against the real panel (``create_app`` under uvicorn with the panel's TLS context),
which must pass its own checks; HD-04 logs in through the real login form (password-only
acceptance account, and an administrator with TOTP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from httpsfixtures import (
    CSP,
    PASSWORD,
    USER,
    Issued,
    Pki,
    RealPanel,
    SiteProfile,
    headers_with,
    https_site,
    real_panel,
    tls_server_context,
)

from tundra.core.acceptance.checks import headers
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Status

Check = Callable[[RunContext], Outcome]


def run(
    check: Check,
    url: str,
    ca: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    totp: str | None = None,
) -> Outcome:
    options = RunOptions(
        url=url, ca_file=ca, user=user, password=password, totp_secret=totp, io_timeout=3.0
    )
    return check(RunContext(options))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> Issued:
    return Pki(tmp_path_factory.mktemp("pki")).issue("site")


def serve(cert: Issued, profile: SiteProfile | None = None) -> Iterator[str]:
    with https_site(tls_server_context(cert), profile or SiteProfile()) as site:
        yield site.url


@pytest.fixture(scope="module")
def good(cert: Issued) -> Iterator[str]:
    yield from serve(cert)


def outcome_on(cert: Issued, profile: SiteProfile, check: Check, **login: str) -> Outcome:
    with https_site(tls_server_context(cert), profile) as site:
        return run(check, site.url, cert.ca, **login)


ALL = [
    headers.csp_present,
    headers.csp_effective,
    headers.isolation_headers,
    headers.authenticated_no_store,
    headers.no_banner,
    headers.cors,
]


@pytest.mark.parametrize("check", ALL)
def test_a_well_configured_site_passes(good: str, cert: Issued, check: Check) -> None:
    outcome = run(check, good, cert.ca, user=USER, password=PASSWORD)
    assert outcome.status is Status.PASS, (outcome.summary, outcome.evidence)
    assert outcome.evidence


def test_the_sample_covers_every_kind_of_response(good: str, cert: Issued) -> None:
    outcome = run(headers.csp_present, good, cert.ca)
    statuses = {row["path"]: row["status"] for row in outcome.evidence["responses"]}
    assert statuses["/"] == 303
    assert statuses["/login"] == 200
    assert statuses["/api/v1/servers"] == 401
    assert 404 in statuses.values()


# --- HD-01 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (SiteProfile(headers=headers_with("Content-Security-Policy")),
         "no Content-Security-Policy header"),
        (SiteProfile(headers=headers_with("Content-Security-Policy"), meta_csp=CSP),
         "CSP only in a <meta> tag"),
        (SiteProfile(headers=(*headers_with("Content-Security-Policy"),
                              ("Content-Security-Policy-Report-Only", CSP))),
         "only Content-Security-Policy-Report-Only"),
        (SiteProfile(headers=headers_with("Content-Security-Policy", CSP + "; script-src *")),
         "directive script-src repeated"),
        (SiteProfile(headers=headers_with("Content-Security-Policy", CSP, CSP)),
         "2 policies (need exactly one)"),
        (SiteProfile(headers=headers_with("Content-Security-Policy",
                                          CSP.replace("default-src 'self'", "default-src https:"))),
         "default-src is https: (need 'self' or 'none')"),
        (SiteProfile(headers=headers_with("Content-Security-Policy", "script-src 'self'")),
         "default-src is <unset>"),
    ],
)  # fmt: skip
def test_hd01_fails(cert: Issued, profile: SiteProfile, expected: str) -> None:
    outcome = outcome_on(cert, profile, headers.csp_present)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


# --- HD-02 -------------------------------------------------------------------------------------


def _csp(old: str, new: str) -> SiteProfile:
    assert old in CSP
    return SiteProfile(headers=headers_with("Content-Security-Policy", CSP.replace(old, new)))


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (_csp("script-src 'self'", "script-src 'self' 'unsafe-inline'"),
         "script-src (from script-src): 'unsafe-inline'"),
        (_csp("script-src 'self'", "script-src 'self' 'unsafe-eval'"), "'unsafe-eval'"),
        (_csp("style-src 'self'", "style-src 'self' data:"), "scheme source data:"),
        (_csp("style-src 'self'", "style-src http://cdn.example"),
         "plain-http source http://cdn.example"),
        (_csp("script-src 'self'", "script-src 'self' https://*.example"), "wildcard"),
        # No script-src: the fallback is default-src, which is fine; but a lax -elem wins.
        (_csp("script-src 'self'", "script-src-elem *"), "script-src-elem (from script-src-elem)"),
        (_csp("object-src 'none'", "object-src 'self'"), "object-src is not 'none' ('self')"),
        (_csp("; base-uri 'none'", ""), "base-uri is not set"),
        (_csp("; frame-ancestors 'none'", ""), "frame-ancestors is not set"),
        (_csp("; form-action 'self'", ""), "form-action is not set"),
        (SiteProfile(headers=headers_with("Content-Security-Policy")),
         "no enforced CSP: nothing is restricted"),
    ],
)  # fmt: skip
def test_hd02_fails(cert: Issued, profile: SiteProfile, expected: str) -> None:
    outcome = outcome_on(cert, profile, headers.csp_effective)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


def test_hd02_falls_back_to_default_src_and_intersects_policies() -> None:
    lax = headers.parse_csp("default-src 'self' 'unsafe-inline'; object-src 'none'")[0]
    assert "script-src (from default-src): 'unsafe-inline'" in headers.csp_weaknesses(lax)
    strict_default = headers.parse_csp(
        "default-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
    )[0]
    assert headers.csp_weaknesses(strict_default) == []


# --- HD-03 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (SiteProfile(headers=headers_with("X-Frame-Options", "SAMEORIGIN")),
         "x-frame-options is 'SAMEORIGIN', not 'DENY'"),
        (SiteProfile(headers=headers_with("X-Content-Type-Options")),
         "0 x-content-type-options headers"),
        (SiteProfile(headers=headers_with("Referrer-Policy", "strict-origin-when-cross-origin")),
         "Referrer-Policy strict-origin-when-cross-origin is not strict"),
        (SiteProfile(headers=headers_with("Referrer-Policy", "no-referrer, unsafe-url")),
         "Referrer-Policy unsafe-url is not strict"),
        (SiteProfile(headers=headers_with("Cross-Origin-Opener-Policy",
                                          "same-origin-allow-popups")),
         "cross-origin-opener-policy is 'same-origin-allow-popups'"),
        (SiteProfile(headers=headers_with("Cross-Origin-Resource-Policy", "cross-origin")),
         "cross-origin-resource-policy is 'cross-origin'"),
        (SiteProfile(headers=headers_with("X-Frame-Options", "DENY", "DENY")),
         "2 x-frame-options headers"),
    ],
)  # fmt: skip
def test_hd03_fails(cert: Issued, profile: SiteProfile, expected: str) -> None:
    outcome = outcome_on(cert, profile, headers.isolation_headers)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


# --- HD-04 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", ["private, max-age=0", None])
def test_hd04_fails_without_no_store_on_authenticated_pages(
    cert: Issued, cache: str | None
) -> None:
    profile = SiteProfile(authenticated_cache=cache)
    outcome = outcome_on(
        cert, profile, headers.authenticated_no_store, user=USER, password=PASSWORD
    )
    assert outcome.status is Status.FAIL, outcome
    assert f"Cache-Control is {cache or 'none'}, not no-store" in outcome.summary


def test_hd04_logs_in_with_totp(cert: Issued) -> None:
    secret = pyotp.random_base32()
    profile = SiteProfile(totp_secret=secret)
    outcome = outcome_on(
        cert, profile, headers.authenticated_no_store, user=USER, password=PASSWORD, totp=secret
    )
    assert outcome.status is Status.PASS, outcome
    without = outcome_on(
        cert, profile, headers.authenticated_no_store, user=USER, password=PASSWORD
    )
    assert without.status is Status.ERROR
    assert "give its secret (--totp-secret-env)" in without.summary


def test_hd04_errors_when_the_login_is_refused(good: str, cert: Issued) -> None:
    outcome = run(headers.authenticated_no_store, good, cert.ca, user=USER, password="wrong")
    assert outcome.status is Status.ERROR
    assert outcome.summary == f"cannot log in: the login as {USER!r} did not succeed (status 401)"


# --- HD-05 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ((("Server", "nginx/1.25.3"),), "Server carries a version: 'nginx/1.25.3'"),
        ((("X-Powered-By", "PHP/8.1"),), "x-powered-by is sent (PHP/8.1)"),
        ((("X-AspNet-Version", "4.0.30319"),), "x-aspnet-version is sent"),
    ],
)
def test_hd05_fails(cert: Issued, extra: tuple[tuple[str, str], ...], expected: str) -> None:
    outcome = outcome_on(cert, SiteProfile(extra=extra), headers.no_banner)
    assert outcome.status is Status.FAIL, outcome
    assert expected in outcome.summary


def test_hd05_accepts_a_server_name_without_version(cert: Issued) -> None:
    outcome = outcome_on(cert, SiteProfile(extra=(("Server", "nginx"),)), headers.no_banner)
    assert outcome.status is Status.PASS


# --- HD-06 -------------------------------------------------------------------------------------


def test_hd06_fails_when_a_foreign_origin_is_reflected_with_credentials(cert: Issued) -> None:
    outcome = outcome_on(cert, SiteProfile(cors="reflect"), headers.cors)
    assert outcome.status is Status.FAIL
    assert (
        "GET /: Origin https://acceptance-probe.example reflected with "
        "Access-Control-Allow-Credentials: true"
    ) in outcome.summary
    origins = {row["origin"] for row in outcome.evidence["probes"] if row["problems"]}
    assert origins == set(outcome.evidence["origins"])  # "null" and the look-alike too


def test_hd06_fails_on_a_star_on_authenticated_paths(cert: Issued) -> None:
    outcome = outcome_on(cert, SiteProfile(cors="star"), headers.cors, user=USER, password=PASSWORD)
    assert outcome.status is Status.FAIL
    assert "GET /api/v1/servers: Access-Control-Allow-Origin: * on an authenticated path" in (
        outcome.summary
    )
    flagged = {row["path"] for row in outcome.evidence["probes"] if row["problems"]}
    assert flagged == {"/api/v1/servers", "/", "/servers"}  # API, then the session's pages
    assert "session" in outcome.evidence["session"]


# --- the real panel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    running: RealPanel
    admin_totp: str


@pytest.fixture(scope="module")
def panel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Panel]:
    from tundra.core.home import initialize
    from tundra.core.principal import SYSTEM
    from tundra.core.services import Services
    from tundra.core.settings import Settings

    home = tmp_path_factory.mktemp("panel") / "home"
    services = Services(Settings(home=home, database_url="", password_profile="test"))
    try:
        initialize(services, admin_name="admin", admin_password=PASSWORD)
        admin = services.users.get("admin").as_principal()
        services.users.add(admin, name=USER, password=PASSWORD, is_acceptance=True)
        secret = services.totp.enroll(SYSTEM, "admin").secret_b32
        with real_panel(services) as running:
            yield Panel(running, secret)
    finally:
        services.close()


@pytest.mark.parametrize("check", ALL)
def test_the_real_panel_passes_every_headers_check(panel: Panel, check: Check) -> None:
    outcome = run(check, panel.running.url, panel.running.ca, user=USER, password=PASSWORD)
    assert outcome.status is Status.PASS, (outcome.summary, outcome.evidence)


def test_the_real_panel_logs_in_an_administrator_with_totp(panel: Panel) -> None:
    outcome = run(
        headers.authenticated_no_store,
        panel.running.url,
        panel.running.ca,
        user="admin",
        password=PASSWORD,
        totp=panel.admin_totp,
    )
    assert outcome.status is Status.PASS, (outcome.summary, outcome.evidence)
    paths = [row["path"] for row in outcome.evidence["responses"]]
    assert paths[:2] == ["/", "/servers"]


def test_the_runner_passes_both_sections_on_the_real_panel(panel: Panel) -> None:
    import json

    from tundra.core.acceptance.runner import run as run_all

    options = RunOptions(
        url=panel.running.url,
        sections=("transport", "headers"),
        ca_file=panel.running.ca,
        http_port=panel.running.http_port,
        user=USER,
        password=PASSWORD,
        io_timeout=3.0,
    )
    report = run_all(options)
    statuses = {r.id: (str(r.status), r.summary) for r in report.results}
    assert len(statuses) == 12
    assert all(status == "pass" for status, _ in statuses.values()), statuses
    assert report.exit_code == 0
    json.dumps([r.to_dict() for r in report.results])  # evidence is JSON-able
