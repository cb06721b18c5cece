"""The ``/acceptance`` page: administrators only, a CSRF-protected form without URL or password
fields, a run page that reloads itself (a ``Refresh`` header, no script) while the run goes on and
shows the report as a table with the evidence in ``<details>`` once it has ended."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import pytest
from test_pages_support import (  # noqa: F401
    BOB,
    BOB_PASSWORD,
    Browser,
    add_bob,
    audit_actions,
    check_page,
    panel_fixture,
)

from tundra.core.acceptance import registry as registry_module
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity, failed, passed
from tundra.core.acceptance.registry import Registry
from tundra.core.audit.actions import Action

release = threading.Event()
RUN_URL = re.compile(r"^/acceptance/runs/([0-9a-f]{32})$")


def gated(ctx: RunContext) -> Outcome:
    release.wait(10)
    return passed("released", detail="<script>alert(1)</script>")


@pytest.fixture
def fake() -> Iterator[Registry]:
    reg = Registry(strict_catalogue=False)
    reg.check("TR-01", "gated", section=Section.TRANSPORT, severity=Severity.HIGH)(gated)
    reg.check("HD-01", "fails", section=Section.HEADERS, severity=Severity.HIGH)(
        lambda ctx: failed("no csp", header=None)
    )
    reg.check(
        "ID-01",
        "needs a login",
        section=Section.IDENTITY,
        severity=Severity.HIGH,
        needs=["credentials"],
    )(lambda ctx: passed("never runs here"))
    release.set()
    with registry_module.use(reg):
        yield reg
    release.set()


@pytest.fixture
def admin(panel: Browser, fake: Registry) -> Browser:
    panel.login()
    return panel


def assert_clean(html: str, where: str) -> None:
    page = check_page(html)
    assert page.problems == [], f"{where}: {page.problems}"
    assert page.h1 == 1, where
    for control in page.inputs:
        if control.get("type") in ("checkbox", "radio"):
            continue
        assert control.get("id") in page.label_for, f"{where}: unlabelled {control}"


def starts(browser: Browser) -> list[str]:
    return [a for a in audit_actions(browser.services) if a == Action.ACCEPTANCE_RUN_START]


def start(browser: Browser, sections: list[str], **fields: str) -> str:
    answer = browser.post("/acceptance", {"section": sections, "local": "1", **fields})
    assert answer.status_code == 303, answer.text
    match = RUN_URL.match(answer.headers["location"])
    assert match, answer.headers["location"]
    return match.group(1)


def test_an_admin_sees_the_form(admin: Browser) -> None:
    answer = admin.get("/acceptance")
    assert answer.status_code == 200
    html = answer.text
    assert_clean(html, "/acceptance")
    assert 'href="/acceptance" aria-current="page"' in html  # the nav link, for admins
    assert 'name="csrf_token"' in html
    for section in Section:
        assert f'name="section" value="{section}" checked' in html
    assert 'type="password"' not in html and 'name="url"' not in html
    # Before any run: which checks will skip here, and why.
    assert "never asks for a password" in html
    assert "<strong>ID-01</strong> needs a login (needs a login (user and password))" in html
    assert "https://localhost:8443" in html


def test_a_run_started_from_the_page_finishes_and_shows_its_report(admin: Browser) -> None:
    release.clear()
    run_id = start(admin, ["transport", "headers", "identity"], fail_on="high")
    running = admin.get(f"/acceptance/runs/{run_id}")
    assert running.status_code == 200
    assert running.headers["refresh"] == "2"
    assert "<progress" in running.text
    assert_clean(running.text, "running")
    release.set()
    assert admin.services.acceptance.wait(run_id, timeout=30)

    done = admin.get(f"/acceptance/runs/{run_id}")
    assert done.status_code == 200
    assert "refresh" not in done.headers
    html = done.text
    assert_clean(html, "finished")
    assert "<progress" not in html
    rows = re.findall(
        r'<tr><th scope="row">([A-Z]{2}-[0-9]{2})</th><td>([^<]*)</td><td>(\w+)</td>'
        r"<td>(\w+)</td>\s*<td>(\w+)</td>",
        html,
    )
    assert rows == [
        ("TR-01", "gated", "transport", "high", "pass"),
        ("HD-01", "fails", "headers", "high", "fail"),
        ("ID-01", "needs a login", "identity", "high", "skip"),
    ]
    assert html.count("<details><summary>Evidence</summary>") == 3
    assert "<script>alert" not in html  # evidence is escaped
    assert "\\u003cscript\\u003ealert(1)" in html
    assert "Exit code</dt><dd>1" in html
    report = admin.services.acceptance.get(
        admin.services.users.get("admin").as_principal(), run_id
    ).report
    assert report is not None and report["fail_on"] == "high"
    assert starts(admin) == [Action.ACCEPTANCE_RUN_START]


def test_the_form_needs_a_section_and_valid_values(admin: Browser) -> None:
    none = admin.post("/acceptance", {"fail_on": "low"})
    assert none.status_code == 422
    assert "at least one section" in none.text
    bad = admin.post("/acceptance", {"section": ["transport", "nope"]})
    assert bad.status_code == 422
    assert "unknown section" in bad.text
    severity = admin.post("/acceptance", {"section": ["transport"], "fail_on": "worst"})
    assert severity.status_code == 422
    assert_clean(severity.text, "422")
    assert starts(admin) == []


def test_a_second_run_is_refused_while_one_runs(admin: Browser) -> None:
    release.clear()
    run_id = start(admin, ["transport"])
    try:
        second = admin.post("/acceptance", {"section": ["headers"]})
        assert second.status_code == 409
        assert "running already" in second.text
    finally:
        release.set()
        assert admin.services.acceptance.wait(run_id, timeout=30)


def test_csrf_is_enforced(admin: Browser) -> None:
    for token in (None, "not-a-token"):
        answer = admin.post("/acceptance", {"section": ["transport"]}, token=token)
        assert answer.status_code == 403
    cross = admin.post(
        "/acceptance",
        {"section": ["transport"]},
        headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
    )
    assert cross.status_code == 403
    assert starts(admin) == []


def test_non_admins_and_anonymous_visitors_are_refused(panel: Browser, fake: Registry) -> None:
    anonymous = panel.get("/acceptance")
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/login")
    panel.login()
    run_id = start(panel, ["headers"])
    assert panel.services.acceptance.wait(run_id, timeout=30)
    panel.logout()
    add_bob(panel.services)
    panel.login(BOB, BOB_PASSWORD)
    home = panel.get("/")
    assert 'href="/acceptance"' not in home.text  # no nav link for non-admins
    for answer in (
        panel.get("/acceptance"),
        panel.get(f"/acceptance/runs/{run_id}"),
        panel.post("/acceptance", {"section": ["headers"]}),
    ):
        assert answer.status_code == 403
        assert_clean(answer.text, "403")
        assert "no csp" not in answer.text
    assert starts(panel) == [Action.ACCEPTANCE_RUN_START]  # only the admin's


def test_unknown_runs_are_404(admin: Browser) -> None:
    for run_id in ("0" * 32, "not-an-id"):
        answer = admin.get(f"/acceptance/runs/{run_id}")
        assert answer.status_code == 404
        assert_clean(answer.text, "404")
