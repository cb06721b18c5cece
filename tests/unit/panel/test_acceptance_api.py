"""``/api/v1/acceptance-runs``: 202 with a Location, progress then the report (valid against
report.schema.json), admin only (a refusal is audited and starts nothing), 404 for unknown ids,
one run at a time, the target restricted to this panel, audited start and finish; and runs of
real checks: the audit section against this installation, the headers section against this
panel served over TLS on a loopback port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api_support import (  # noqa: F401
    ALL_SCOPES,
    Api,
    api_fixture,
    api_kv_fixture,
    error_of,
)
from test_pages_support import close_worker_connections

from tundra.core.acceptance import registry as registry_module
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import Outcome, Section, Severity, failed, passed
from tundra.core.acceptance.registry import Registry
from tundra.core.acceptance.reporters import json as json_reporter
from tundra.core.acceptance.service import check_target
from tundra.core.audit.actions import Action
from tundra.core.errors import InvalidInput
from tundra.core.principal import SYSTEM
from tundra.panel import api as api_package
from tundra.panel.api.acceptance import RUN_CREATE
from tundra.panel.api.schemas import COMPONENTS
from tundra.panel.api.validate import validate

PATH = "/api/v1/acceptance-runs"
release = threading.Event()


def gated(ctx: RunContext) -> Outcome:
    release.wait(10)
    return passed("released", waited=True)


def home_seen(ctx: RunContext) -> Outcome:
    return passed("home seen", home=str(ctx.services.settings.home))


@pytest.fixture
def fake() -> Iterator[Registry]:
    """Four quick checks: a pass (held until ``release``), a failure, one needing credentials
    (which the panel never has) and one needing this installation's services."""
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
    reg.check("ST-04", "local", section=Section.STORAGE, severity=Severity.LOW, needs=["services"])(
        home_seen
    )
    release.set()
    with registry_module.use(reg):
        yield reg
    release.set()


def admin_token(api: Api) -> str:
    """An API token with the admin scope (issuing one needs a fresh authentication)."""
    admin = api.services.users.get("admin").as_principal()
    api.services.reauth.stamp(admin)
    return api.services.tokens.create(admin, name="acceptance", scopes=["admin"]).plaintext


def report_validator() -> jsonschema.Draft202012Validator:
    schema = json_reporter.load_schema()
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def documented(method: str, path: str, status: int) -> dict[str, Any]:
    op = api_package.document()["paths"][path][method.lower()]
    assert str(status) in op["responses"], (method, path, status)
    schema: dict[str, Any] = op["responses"][str(status)]["content"]["application/json"]["schema"]
    return schema


def finish(api: Api, run_id: str) -> dict[str, Any]:
    assert api.services.acceptance.wait(run_id, timeout=60)
    answer = api.call("GET", f"{PATH}/{run_id}", admin_token(api))
    assert answer.status_code == 200, answer.text
    validate(answer.json(), documented("GET", PATH + "/{id}", 200), COMPONENTS, "run")
    body: dict[str, Any] = answer.json()
    return body


def rows(api: Api, **filters: Any) -> list[tuple[str, str, str]]:
    return [(r.action, r.resource, r.request_id) for r in api.audit_rows(**filters)]


def test_a_run_answers_202_with_its_location_then_the_report(api: Api, fake: Registry) -> None:
    release.clear()
    token = admin_token(api)
    answer = api.call("POST", PATH, token, json={}, request_id="req-acceptance-api-1")
    assert answer.status_code == 202, answer.text
    started = answer.json()
    validate(started, documented("POST", PATH, 202), COMPONENTS, "started")
    assert answer.headers["location"] == f"{PATH}/{started['id']}"
    assert started["state"] == "running"
    assert started["target"] == "https://localhost:8443"  # the panel's own URL
    assert started["report"] is None and started["exit_code"] is None

    # While the gated check holds the run: progress without a report.
    seen = api.call("GET", answer.headers["location"], token).json()
    assert seen["state"] == "running"
    assert seen["report"] is None
    assert seen["progress"]["done"] < 4
    release.set()

    run = finish(api, started["id"])
    assert run["state"] == "finished"
    assert run["progress"] == {"done": 4, "total": 4}
    assert run["running"] == []
    assert run["exit_code"] == 1  # HD-01 fails
    report = run["report"]
    report_validator().validate(report)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses == {"TR-01": "pass", "HD-01": "fail", "ID-01": "skip", "ST-04": "pass"}
    skip = next(c for c in report["checks"] if c["id"] == "ID-01")
    assert "credentials" in skip["summary"]
    assert report["options"]["credentials"] is False
    assert report["options"]["local"] is True
    assert report["target"] == "https://localhost:8443"
    resource = f"acceptance-run:{started['id']}"
    assert rows(api, resource=resource) == [
        (Action.ACCEPTANCE_RUN_START, resource, "req-acceptance-api-1"),
        (Action.ACCEPTANCE_RUN_FINISH, resource, "req-acceptance-api-1"),
    ]
    # The run's lock is released: the next one starts.
    again = api.call("POST", PATH, token, json={"checks": ["HD-01"], "fail_on": "critical"})
    assert again.status_code == 202, again.text
    second = finish(api, again.json()["id"])
    assert second["exit_code"] == 0  # a high failure does not count with fail_on critical
    assert [c["id"] for c in second["report"]["checks"]] == ["HD-01"]


def test_options_reach_the_run(api: Api, fake: Registry) -> None:
    answer = api.call(
        "POST",
        PATH,
        admin_token(api),
        json={"sections": ["storage"], "local": False, "url": "https://127.0.0.1:8443/"},
    )
    assert answer.status_code == 202, answer.text
    run = finish(api, answer.json()["id"])
    assert run["target"] == "https://127.0.0.1:8443"
    check = run["report"]["checks"][0]
    assert (check["id"], check["status"]) == ("ST-04", "skip")  # not local: skipped
    assert "local" in check["summary"]


def test_non_admin_tokens_are_refused_and_audited(api: Api, fake: Registry) -> None:
    everything = api.token(*ALL_SCOPES)  # the admin's own token, without the admin scope
    api.services.users.add(SYSTEM, name="bob", password="bob's long passphrase")
    bobs = api.token("servers:read", "audit:read", owner="bob")
    for token in (everything, bobs):
        answer = api.call("POST", PATH, token, json={}, request_id="req-acceptance-denied")
        assert answer.status_code == 403, answer.text
        assert error_of(answer)["code"] == "permission_denied"
    assert [r[0] for r in rows(api) if r[2] == "req-acceptance-denied"] == [
        Action.TOKEN_DENIED,
        Action.TOKEN_DENIED,
    ]
    assert not [r for r in rows(api) if r[0] == Action.ACCEPTANCE_RUN_START]
    # A real run's id is not readable with them either.
    run_id = api.call("POST", PATH, admin_token(api), json={}).json()["id"]
    finish(api, run_id)
    for token in (everything, bobs):
        answer = api.call("GET", f"{PATH}/{run_id}", token)
        assert answer.status_code == 403
        assert "report" not in answer.text
    assert api.call("GET", f"{PATH}/{run_id}").status_code == 401


def test_unknown_and_malformed_ids_are_404(api: Api) -> None:
    token = admin_token(api)
    for run_id in ("0" * 32, "zz-missing", "A" * 32, "0" * 33):
        answer = api.call("GET", f"{PATH}/{run_id}", token)
        assert answer.status_code == 404, run_id
        assert error_of(answer)["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"url": "https://example.com"}, "not this panel"),
        ({"url": "https://localhost:9999"}, "not this panel"),
        ({"url": "https://10.0.0.1:8443"}, "not this panel"),
        ({"url": "https://localhost.example.com:8443"}, "not this panel"),
        ({"url": "http://localhost:8443"}, "body.url"),
        ({"url": "https://localhost:8443/admin"}, "body.url"),
        ({"url": "https://user@localhost:8443"}, "body.url"),
        ({"url": "https://[::1]:99999"}, "invalid port"),
        ({"url": "https://[ffff::zz]"}, "body.url"),
        ({"sections": ["nope"]}, "body.sections"),
        ({"checks": ["XX-99"]}, "body.checks"),
        ({"fail_on": "whatever"}, "body.fail_on"),
        ({"password": "hunter2"}, "password"),
        ({"local": "yes"}, "body.local"),
    ],
)
def test_the_target_is_this_panel_and_the_body_is_strict(
    api: Api, fake: Registry, body: dict[str, Any], why: str
) -> None:
    answer = api.call("POST", PATH, admin_token(api), json=body)
    assert answer.status_code == 422, answer.text
    assert why in error_of(answer)["message"]
    assert not [r for r in rows(api) if r[0] == Action.ACCEPTANCE_RUN_START]


URL_PATTERN = RUN_CREATE["properties"]["url"]["pattern"]


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    url=st.from_regex(URL_PATTERN, fullmatch=True)
    | st.text(max_size=40).map(lambda t: "https://" + t)
)
def test_the_target_rule_only_ever_refuses_with_invalid_input(services: Any, url: str) -> None:
    """Whatever the string (the schema's own pattern, or anything after https://), the rule
    answers a target on this panel or InvalidInput, never another exception."""
    try:
        target = check_target(services, url)
    except InvalidInput:
        return
    assert target.host in {"localhost", "127.0.0.1", "::1"}
    assert target.port == 8443


def test_the_target_rule_follows_the_settings(api: Api, fake: Registry) -> None:
    api.services.settings = replace(
        api.services.settings,
        panel_hostnames="panel.test",
        public_https_port=443,
        panel_listen="0.0.0.0:8443",
    )
    token = admin_token(api)
    refused = api.call("POST", PATH, token, json={"url": "https://localhost:8443"})
    assert refused.status_code == 422
    assert "panel.test" in error_of(refused)["message"]
    for url, target in (
        ("https://panel.test", "https://panel.test"),
        ("https://PANEL.test:8443", "https://panel.test:8443"),
    ):
        answer = api.call("POST", PATH, token, json={"url": url, "checks": ["HD-01"]})
        assert answer.status_code == 202, answer.text
        assert finish(api, answer.json()["id"])["target"] == target


def test_one_run_at_a_time(api_kv: Api, fake: Registry) -> None:
    release.clear()
    token = admin_token(api_kv)
    first = api_kv.call("POST", PATH, token, json={})
    assert first.status_code == 202
    try:
        second = api_kv.call("POST", PATH, token, json={})
        assert second.status_code == 409
        assert error_of(second)["code"] == "conflict"
    finally:
        release.set()
        finish(api_kv, first.json()["id"])


def test_the_real_audit_section_against_this_installation(api: Api) -> None:
    """No fake checks: AU-01 verifies this installation's chain, AU-02 makes a harmless change
    for the acceptance account and finds its rows; both without any network."""
    api.services.users.add(
        SYSTEM, name="acceptance", password="acceptance passphrase", is_acceptance=True
    )
    answer = api.call("POST", PATH, admin_token(api), json={"sections": ["audit"]})
    assert answer.status_code == 202, answer.text
    run = finish(api, answer.json()["id"])
    report = run["report"]
    report_validator().validate(report)
    results = {c["id"]: c for c in report["checks"]}
    assert set(results) == {"AU-01", "AU-02"}
    assert results["AU-01"]["status"] == "pass", results["AU-01"]
    assert results["AU-01"]["evidence"]["vantage"] == "local database"
    assert results["AU-02"]["status"] == "pass", results["AU-02"]
    assert run["exit_code"] == 0


@contextlib.contextmanager
def served(api: Api) -> Iterator[int]:
    """This panel's app under uvicorn with its own TLS context, on a loopback port-0 socket."""
    import uvicorn

    from tundra.panel.app import create_app
    from tundra.panel.tls import server_context

    services = api.services
    services.pki.ensure_panel_cert(SYSTEM)
    sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(services),
        log_config=None,
        server_header=False,
        proxy_headers=False,
        access_log=False,
        lifespan="off",
    )
    config.load()
    config.ssl = server_context(services.pki.panel_cert_path, services.pki.panel_key_path)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the panel did not start"
            time.sleep(0.02)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()
        close_worker_connections(services)


def test_the_real_headers_section_against_this_panel_over_tls(api: Api) -> None:
    with served(api) as port:
        # The panel is reachable on this port: make it the public one, so the target rule
        # admits it and the run trusts the panel's own CA.
        api.services.settings = replace(api.services.settings, public_https_port=port)
        answer = api.call(
            "POST",
            PATH,
            admin_token(api),
            json={"sections": ["headers"], "url": f"https://127.0.0.1:{port}"},
        )
        assert answer.status_code == 202, answer.text
        run = finish(api, answer.json()["id"])
    report = run["report"]
    report_validator().validate(report)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses == {
        "HD-01": "pass",
        "HD-02": "pass",
        "HD-03": "pass",
        "HD-04": "skip",
        "HD-05": "pass",
        "HD-06": "pass",
    }, report["checks"]
    csp = next(c for c in report["checks"] if c["id"] == "HD-01")
    assert csp["evidence"], "a pass carries evidence too"
    assert run["exit_code"] == 0
