"""Every state-changing route, taken from the route table, writes its audit row with the request
id in the same transaction as the change: the row is there after a success, and when the audit
append fails inside the transaction the change is rolled back with it. Reads write nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from test_api_support import Api, api_fixture, error_of  # noqa: F401

from tundra.core.principal import SYSTEM
from tundra.panel import api as api_package
from tundra.panel.api.endpoint import Call, Endpoint


@dataclass(frozen=True)
class Scenario:
    """How to exercise one route: set up, the request, and the state that shows the change."""

    setup: Callable[[Api], dict[str, str]]
    path: str
    body: dict[str, Any] | None
    state: Callable[[Api, dict[str, str]], Any]
    #: A token can never do it (sensitive): the success is driven with a fresh interactive
    #: session's principal through the route's own core call instead.
    session_only: bool = False
    #: Only an administrator's token (the admin scope) may do it.
    admin: bool = False
    #: Waits for the work the request left running in the background (``settle(api,
    #: response)``), and the rows that work writes with the request's id when it ends.
    settle: Callable[[Api, Any], None] | None = None
    later: tuple[str, ...] = ()


def _server(api: Api) -> dict[str, str]:
    api.add_server("walk-1")
    return {"name": "walk-1"}


def _victim(api: Api) -> dict[str, str]:
    admin = api.services.users.get("admin").as_principal()
    token = api.services.tokens.create(admin, name="victim", scopes=["servers:read"]).token
    return {"id": token.id}


def _admin_token(api: Api) -> str:
    admin = api.services.users.get("admin").as_principal()
    api.services.reauth.stamp(admin)
    return api.services.tokens.create(admin, name="walk-admin", scopes=["admin"]).plaintext


def _token(api: Api, scenario: Scenario) -> str:
    return _admin_token(api) if scenario.admin else api.token()


def _run_ends(api: Api, response: Any) -> None:
    assert api.services.acceptance.wait(response.json()["id"], timeout=60)


def _runs(api: Api, ctx: dict[str, str]) -> Any:
    # A run's state lives in the KV store under an id not known before the request; its
    # durable trace is the start row.
    return [r.resource for r in api.audit_rows(action="acceptance:run:start")]


def _servers(api: Api, ctx: dict[str, str]) -> Any:
    return [s.as_dict() for s in api.services.servers.list(SYSTEM)]


def _tokens(api: Api, ctx: dict[str, str]) -> Any:
    # last_used_at is bookkeeping of the calling token, not a change the route makes.
    return [{k: v for k, v in t.as_dict().items() if k != "last_used_at"}
            for t in api.services.tokens.list(SYSTEM, include_revoked=True)]


SCENARIOS: dict[str, Scenario] = {
    "createServer": Scenario(lambda api: {}, "/api/v1/servers",
                             {"name": "walk-1", "address": "10.0.0.9"}, _servers),
    "updateServer": Scenario(_server, "/api/v1/servers/{name}", {"tags": ["walked"]}, _servers),
    "deleteServer": Scenario(_server, "/api/v1/servers/{name}", None, _servers,
                             session_only=True),
    "createToken": Scenario(lambda api: {}, "/api/v1/tokens",
                            {"name": "walk", "scopes": ["servers:read"]}, _tokens),
    "revokeToken": Scenario(_victim, "/api/v1/tokens/{id}", None, _tokens),
    # AU-01 alone: a real check, fast and offline (it verifies the local chain).
    "createAcceptanceRun": Scenario(lambda api: {}, "/api/v1/acceptance-runs",
                                    {"checks": ["AU-01"]}, _runs, admin=True,
                                    settle=_run_ends, later=("acceptance:run:finish",)),
}

CHANGING = [e for e in api_package.ENDPOINTS if e.state_changing]


def test_every_state_changing_route_has_a_scenario() -> None:
    assert {e.operation_id for e in CHANGING} == set(SCENARIOS)
    assert all(e.audit for e in CHANGING)


def _request(api: Api, endpoint: Endpoint, scenario: Scenario, ctx: dict[str, str],
             request_id: str) -> Any:
    path = scenario.path.format(**ctx)
    return api.call(endpoint.method, path, _token(api, scenario), request_id=request_id,
                    json=scenario.body)


def _direct(api: Api, endpoint: Endpoint, ctx: dict[str, str], request_id: str) -> Any:
    """The route's own core call, as a session that has just re-authenticated."""
    admin = api.services.users.get("admin").as_principal()
    api.services.reauth.stamp(admin)
    return endpoint.call(Call(services=api.services, who=admin, request_id=request_id,
                              path=ctx, query={}, body={}))


def _rows_of(api: Api, request_id: str) -> list[Any]:
    return [r for r in api.audit_rows() if r.request_id == request_id]


@pytest.mark.parametrize("endpoint", CHANGING, ids=lambda e: e.operation_id)
def test_success_writes_the_audit_row_with_the_request_id(api: Api, endpoint: Endpoint) -> None:
    scenario = SCENARIOS[endpoint.operation_id]
    ctx = scenario.setup(api)
    before = scenario.state(api, ctx)
    request_id = f"walk-ok-{endpoint.operation_id}"
    if scenario.session_only:
        refused = _request(api, endpoint, scenario, ctx, request_id + "-token")
        assert refused.status_code == 403
        assert error_of(refused)["code"] == "reauth_required"
        assert scenario.state(api, ctx) == before
        _direct(api, endpoint, ctx, request_id)
    else:
        response = _request(api, endpoint, scenario, ctx, request_id)
        assert response.status_code == endpoint.ok, response.text
        if scenario.settle is not None:
            scenario.settle(api, response)
    assert scenario.state(api, ctx) != before
    rows = _rows_of(api, request_id)
    assert [r.action for r in rows] == [str(a) for a in endpoint.audit] + list(scenario.later)


@pytest.mark.parametrize("endpoint", CHANGING, ids=lambda e: e.operation_id)
def test_a_failed_audit_append_rolls_the_change_back(api: Api, endpoint: Endpoint,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = SCENARIOS[endpoint.operation_id]
    ctx = scenario.setup(api)
    token = _token(api, scenario)
    before = scenario.state(api, ctx)
    head = len(api.audit_rows())

    def broken_append(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the audit append failed inside the transaction")

    # The unit of work imports the chain's append when it commits: break it at its source.
    monkeypatch.setattr("tundra.core.audit.chain.append", broken_append)
    request_id = f"walk-fail-{endpoint.operation_id}"
    if scenario.session_only:
        with pytest.raises(RuntimeError, match="audit append failed"):
            _direct(api, endpoint, ctx, request_id)
    else:
        response = api.call(endpoint.method, scenario.path.format(**ctx), token,
                            request_id=request_id, json=scenario.body)
        assert response.status_code == 500
        assert error_of(response)["code"] == "internal_error"
        assert "audit append failed" not in response.text
    monkeypatch.undo()
    assert scenario.state(api, ctx) == before
    assert _rows_of(api, request_id) == []
    assert len(api.audit_rows()) == head


@pytest.mark.parametrize("endpoint", CHANGING, ids=lambda e: e.operation_id)
def test_a_refused_request_changes_nothing(api: Api, endpoint: Endpoint) -> None:
    scenario = SCENARIOS[endpoint.operation_id]
    ctx = scenario.setup(api)
    reader = api.token("servers:read", "tokens:read", "audit:read")
    before = scenario.state(api, ctx)
    request_id = f"walk-denied-{endpoint.operation_id}"
    response = api.call(endpoint.method, scenario.path.format(**ctx), reader,
                        request_id=request_id, json=scenario.body)
    assert response.status_code == 403
    assert scenario.state(api, ctx) == before
    # The only row the refusal writes is the refusal itself.
    assert [r.action for r in _rows_of(api, request_id)] == ["identity:token:denied"]


def test_reads_write_no_audit_rows(api: Api) -> None:
    api.add_server("web-1")
    token = _admin_token(api)  # every read, the admin-only ones included
    run = api.call("POST", "/api/v1/acceptance-runs", token, json={"checks": ["AU-01"]})
    _run_ends(api, run)
    for endpoint in api_package.ENDPOINTS:
        if endpoint.state_changing:
            continue
        path = endpoint.path.replace("{name}", "web-1").replace("{id}", run.json()["id"])
        head = len(api.audit_rows())
        response = api.call("GET", path, token)
        assert response.status_code == 200, path
        assert len(api.audit_rows()) == head, path
