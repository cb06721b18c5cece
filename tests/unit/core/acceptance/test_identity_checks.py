"""The identity checks (ID-01…ID-08) against the real panel and against panels broken in one way.

The real panel (``create_app`` under uvicorn over its own TLS context, on both databases) must
pass every identity check, from the panel host (``--local``: ID-07's session half and the
throttle clean-up run) and from outside. Each check also meets a deployment wrapped so that
exactly the thing it looks at is wrong, and must fail there: a check that cannot fail proves
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from panelfixtures import (
    ADMIN,
    ADMIN_PASSWORD,
    AnonymousApi,
    AnonymousPage,
    CsrfFromCookie,
    DropSameSite,
    Fixation,
    IgnoreOrigin,
    LogoutKeepsSession,
    MalformedTokenAnswer,
    Panel,
    ResourceAsNotFound,
    SlowKnownUser,
    UnknownUserPage,
    Wrap,
    add_acceptance_user,
    cookie_over_http,
    enrol_totp,
    run,
    run_in,
    serve_panel,
)

from tundra.core.acceptance.checks import identity
from tundra.core.acceptance.checks.identity import failed_logins
from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome, Status
from tundra.core.services import Services

CHECKS: dict[str, Callable[[RunContext], Outcome]] = {
    "ID-01": identity.cookie_flags,
    "ID-02": identity.session_lifecycle,
    "ID-03": identity.anonymous_refused,
    "ID-04": identity.no_enumeration,
    "ID-05": identity.throttling,
    "ID-06": identity.csrf_refused,
    "ID-07": identity.reauthentication,
    "ID-08": identity.api_tokens,
}


def outcome(check_id: str, options: RunOptions) -> Outcome:
    return run(CHECKS[check_id], options, check_id)


def identity_run(ctx: RunContext, check_id: str) -> Outcome:
    return run_in(ctx, CHECKS[check_id], check_id)


def assert_status(result: Outcome, status: Status) -> None:
    assert result.status is status, f"{result.status}: {result.summary}\n{result.evidence}"


@pytest.fixture
def panel(services: Services) -> Iterator[Panel]:
    add_acceptance_user(services)
    with serve_panel(services) as running:
        yield running


@pytest.fixture
def one_db(tmp_path: Path) -> Iterator[Services]:
    """Services on SQLite only: the broken variants break HTTP behaviour, not storage."""
    from tundra.core.home import initialize
    from tundra.core.settings import Settings

    svc = Services(Settings(home=tmp_path / "home", database_url="", password_profile="test"))
    initialize(svc, admin_name=ADMIN, admin_password=ADMIN_PASSWORD)
    add_acceptance_user(svc)
    yield svc
    svc.close()


@pytest.fixture
def broken(one_db: Services) -> Callable[..., Any]:
    """``broken(wrap=…, http_app=…)``: the real panel with one thing broken."""

    def make(**kwargs: Any) -> Any:
        return serve_panel(one_db, **kwargs)

    return make


def test_every_identity_check_is_registered() -> None:
    from tundra.core.acceptance import registry

    # The module-level registry (importing identity registered into it); default_registry()
    # would import every section module.
    registered = {s.id: s for s in registry._default.all() if s.id.startswith("ID-")}
    assert sorted(registered) == sorted(CHECKS)
    for check_id, spec in registered.items():
        assert spec.fn.__name__ == CHECKS[check_id].__name__
    assert "credentials" not in registered["ID-03"].needs
    assert all("credentials" in registered[i].needs for i in CHECKS if i != "ID-03")


# --- the real panel passes ---------------------------------------------------------------


def test_real_panel_passes_every_identity_check_locally(panel: Panel) -> None:
    ctx = RunContext(panel.options(local=True))
    results = {cid: identity_run(ctx, cid) for cid in CHECKS}
    for result in results.values():
        assert_status(result, Status.PASS)
    # The session half of ID-07 ran (the session was aged and the password asked for).
    session_half = results["ID-07"].evidence["session_half"]
    assert session_half["evaluated"] is True
    assert session_half["POST /tokens"]["reauth_form"] is True
    assert session_half["POST /tokens with the password"]["gate_opened"] is True
    # ID-05 locked a spare loopback source after exactly the configured failures, then
    # removed the lock; the acceptance account can log in again at once.
    throttled = results["ID-05"].evidence
    assert throttled["failures_before_lock"] == panel.services.settings.login_max_failures
    assert throttled["right_password"]["status"] == 429
    assert throttled["unlocked"] is True
    assert throttled["source"] != "127.0.0.1"
    again = RunContext(panel.options(local=True))
    assert_status(identity_run(again, "ID-01"), Status.PASS)
    # Every test token was revoked.
    tokens = panel.services.tokens.list(
        panel.services.users.get("acceptance").as_principal(), include_revoked=True
    )
    assert tokens and all(t.revoked_at for t in tokens)


def test_real_panel_passes_with_valkey(tmp_path: Path, valkey_url: str) -> None:
    """The KV-touching parts (ID-05's clean-up, ID-07's aged session) on the real Valkey."""
    import secrets
    from dataclasses import replace

    from tundra.core.home import initialize
    from tundra.core.settings import Settings
    from tundra.core.storage.kv_valkey import ValkeyKV

    settings = Settings(home=tmp_path / "home", database_url="", password_profile="test")
    svc = Services(replace(settings, valkey_url=valkey_url))
    prefix = f"tundra-test:{secrets.token_hex(6)}:"
    kv = ValkeyKV(valkey_url, prefix=prefix)
    svc.kv = kv
    try:
        initialize(svc, admin_name=ADMIN, admin_password=ADMIN_PASSWORD)
        add_acceptance_user(svc)
        with serve_panel(svc) as running:
            ctx = RunContext(running.options(local=True))
            for check_id in ("ID-04", "ID-05", "ID-07"):
                assert_status(identity_run(ctx, check_id), Status.PASS)
            left = list(kv._client.scan_iter(match=prefix + "login:fail:*"))
            assert left == []  # every throttle key the checks made was removed
    finally:
        for key in kv._client.scan_iter(match=prefix + "*"):
            kv._client.delete(key)
        svc.close()


def test_the_runner_runs_the_section_concurrently(panel: Panel) -> None:
    """Through the real runner: eight workers at once, one shared login, then its logout."""
    from tundra.core.acceptance import registry, runner

    specs = [s for s in registry._default.all() if s.id in CHECKS]
    report = runner.run(panel.options(local=True, workers=8), checks=specs)
    for result in report.results:
        assert result.status is Status.PASS, (result.id, result.summary, result.evidence)
    assert report.exit_code == 0
    assert not report.notes  # every clean-up worked
    with panel.services.db.read() as tx:
        logouts = tx.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'identity:session:logout'"
            " AND actor = 'user:acceptance'"
        )
    assert logouts == 2  # ID-02's own session, and the shared one at the end of the run


def test_real_panel_passes_from_outside(panel: Panel) -> None:
    ctx = RunContext(panel.options(local=False))
    for check_id in ("ID-01", "ID-03", "ID-06", "ID-07", "ID-08"):
        result = identity_run(ctx, check_id)
        assert_status(result, Status.PASS)
    evidence = identity_run(ctx, "ID-07").evidence
    assert evidence["session_half"]["evaluated"] is False
    assert evidence["token_half"]["createToken"]["code"] == "reauth_required"
    assert evidence["token_half"]["documented_sensitive"] == ["createToken", "deleteServer"]
    assert "notes" not in evidence or not any("not probed" in n for n in evidence["notes"])


def test_an_administrator_with_totp_passes(services: Services) -> None:
    secret = enrol_totp(services, ADMIN)
    with serve_panel(services) as running:
        options = running.options(user=ADMIN, password=ADMIN_PASSWORD, totp_secret=secret)
        ctx = RunContext(options)
        first = identity_run(ctx, "ID-01")
        assert_status(first, Status.PASS)
        assert first.evidence["login"]["totp"] is True
        reauth = identity_run(ctx, "ID-07")
        assert_status(reauth, Status.PASS)
        # An administrator reaches the server-deletion gate; the password opens it and the
        # deletion of a server that does not exist answers 404 (nothing deleted).
        session_half = reauth.evidence["session_half"]
        deletion = next(k for k in session_half if k.endswith("/delete with the password"))
        assert session_half[deletion] == {"status": 404, "gate_opened": True}
        assert reauth.evidence["token_half"]["deleteServer"]["code"] == "reauth_required"


def test_one_source_address_locally_cleans_up_after_itself(
    panel: Panel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target that is not IPv4 loopback: every attempt comes from the runner's address.
    ID-04 stays under the limit, ID-05 locks the address, and --local removes both."""
    monkeypatch.setattr(failed_logins, "spare_loopback_source", lambda: None)
    ctx = RunContext(panel.options(local=True))
    enumeration = identity_run(ctx, "ID-04")
    assert_status(enumeration, Status.PASS)
    assert enumeration.evidence["samples_per_kind"] == identity.SAMPLES_ONE_SOURCE
    throttled = identity_run(ctx, "ID-05")
    assert_status(throttled, Status.PASS)
    assert throttled.evidence["source"] == "127.0.0.1"
    assert throttled.evidence["failures_before_lock"] == 5  # ID-04's failures were removed
    assert throttled.evidence["unlocked"] is True
    assert_status(identity_run(RunContext(panel.options(local=True)), "ID-01"), Status.PASS)


def test_one_source_address_remotely_stays_locked_and_says_so(
    panel: Panel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(failed_logins, "spare_loopback_source", lambda: None)
    throttled = outcome("ID-05", panel.options(local=False))
    assert_status(throttled, Status.PASS)
    assert throttled.evidence["unlocked"] is False
    assert throttled.evidence["lock_seconds"] == panel.services.settings.login_lock_seconds
    assert "run ID-05 last" in throttled.evidence["locked"]
    # Until the lock ends, a login from this address is refused: the run cannot log in.
    later = outcome("ID-01", panel.options(local=False))
    assert_status(later, Status.ERROR)
    assert "throttled" in later.summary


def test_a_login_that_cannot_succeed_is_an_error_not_a_failure(panel: Panel) -> None:
    result = outcome("ID-01", panel.options(password="not the password"))
    assert_status(result, Status.ERROR)
    assert "did not succeed" in result.summary


# --- each broken thing fails its check ---------------------------------------------------


def expect_failure(
    make: Callable[..., Any],
    check_id: str,
    *,
    local: bool = True,
    wrap: Wrap | None = None,
    http_app: Any = None,
) -> Outcome:
    with make(wrap=wrap, http_app=http_app) as running:
        result = outcome(check_id, running.options(local=local))
    assert_status(result, Status.FAIL)
    return result


def test_id01_fails_without_samesite(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-01", wrap=DropSameSite)
    assert "has no SameSite attribute" in result.summary


def test_id01_fails_on_a_cookie_over_http(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-01", http_app=cookie_over_http)
    assert "over http: visitor" in result.summary


def test_id02_fails_when_a_planted_session_id_is_kept(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-02", wrap=Fixation)
    assert "fixation" in result.summary


def test_id02_fails_when_logout_leaves_the_session(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-02", wrap=LogoutKeepsSession)
    assert "after logout the old session cookie still opens /" in result.summary


def test_id03_fails_on_an_open_api_route(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-03", wrap=AnonymousApi)
    assert "GET /api/v1/servers answered 200" in result.summary


def test_id03_fails_on_an_open_page(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-03", wrap=AnonymousPage)
    assert "GET /audit answered 200" in result.summary


def test_id04_fails_when_unknown_users_get_their_own_page(
    broken: Callable[..., Any], one_db: Services
) -> None:
    result = expect_failure(broken, "ID-04", wrap=lambda app: UnknownUserPage(app, one_db))
    assert any("bodies differ" in p for p in result.evidence["problems"])


def test_id04_fails_when_only_known_users_pay_the_hash(
    broken: Callable[..., Any], one_db: Services
) -> None:
    result = expect_failure(broken, "ID-04", wrap=lambda app: SlowKnownUser(app, one_db))
    assert "timing differs" in result.summary


def test_id05_fails_without_throttling(
    broken: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tundra.core.identity.throttle import LoginThrottle

    monkeypatch.setattr(LoginThrottle, "check", lambda *args, **kwargs: None)
    result = expect_failure(broken, "ID-05")
    assert "still got through" in result.summary


def test_id06_fails_when_a_missing_token_is_accepted(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-06", wrap=CsrfFromCookie)
    assert result.summary.startswith("no token:")


def test_id06_fails_when_the_origin_is_ignored(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-06", wrap=IgnoreOrigin)
    assert "cross-site Origin and Sec-Fetch-Site" in result.summary


@pytest.mark.parametrize("local", [True, False], ids=["local", "remote"])
def test_id07_fails_without_the_gate(
    broken: Callable[..., Any], one_db: Services, monkeypatch: pytest.MonkeyPatch, local: bool
) -> None:
    monkeypatch.setattr(one_db.reauth, "require_fresh_auth", lambda principal: None)
    result = expect_failure(broken, "ID-07", local=local)
    problems = result.evidence["problems"]
    assert any("not 403 reauth_required" in p for p in problems)
    if local:
        assert any("without asking for the password" in p for p in problems)


def test_id08_fails_when_malformed_tokens_answer_differently(
    broken: Callable[..., Any],
) -> None:
    result = expect_failure(broken, "ID-08", wrap=MalformedTokenAnswer)
    assert result.summary.startswith("malformed (not a token) answers differently")


def test_id08_fails_when_another_resource_is_not_found(broken: Callable[..., Any]) -> None:
    result = expect_failure(broken, "ID-08", wrap=ResourceAsNotFound)
    assert "outside the token's servers answered 404" in result.summary


# --- helpers -----------------------------------------------------------------------------


def test_forms_and_redirects() -> None:
    html = (
        '<form method="post" action="/logout"><input type="hidden" name="csrf_token" '
        'value="abc"></form><form method="post" action="/x"><input name="reauth_password" '
        'type="password"></form>'
    )
    assert identity.csrf_in(html) == "abc"
    assert identity.has_reauth_form(html)
    assert not identity.has_reauth_form(html.replace("reauth_password", "password"))


def test_cookie_rules_are_strict() -> None:
    from tundra.core.acceptance.context import parse_set_cookie

    good = parse_set_cookie("__Host-s=v; HttpOnly; Secure; SameSite=Strict; Path=/")
    assert identity._cookie_problems(good, session=True) == []
    lax = parse_set_cookie("__Host-s=v; HttpOnly; Secure; SameSite=Lax; Path=/")
    assert identity._cookie_problems(lax, session=True)
    domain = parse_set_cookie("s=v; HttpOnly; Secure; SameSite=Strict; Path=/; Domain=a.example")
    assert len(identity._cookie_problems(domain, session=True)) == 2  # prefix and Domain
    other = parse_set_cookie("pref=1; Path=/")
    assert identity._cookie_problems(other, session=False) == ["pref is set without Secure"]
