"""/api/v1/tokens: list your own, create non-admin tokens within your own scopes, revoke."""

from __future__ import annotations

import pytest
from test_api_support import Api, api_fixture, error_of  # noqa: F401

from tundra.core.audit.actions import Action
from tundra.core.identity import token_format
from tundra.core.principal import SYSTEM

BOB, BOB_PASSWORD = "bob", "bob's long password 1"


@pytest.fixture
def bob(api: Api) -> str:
    api.services.users.add(SYSTEM, name=BOB, password=BOB_PASSWORD)
    return BOB


def test_a_non_admin_lists_only_their_own_tokens(api: Api, bob: str) -> None:
    api.token("servers:read", name="admin's")
    mine = api.token("tokens:read", owner=bob, name="bob's")
    listed = api.call("GET", "/api/v1/tokens", mine).json()["tokens"]
    assert [(t["name"], t["owner"]) for t in listed] == [("bob's", "bob")]
    assert all(set(t) >= {"id", "prefix", "scopes", "status"} for t in listed)
    assert mine not in str(listed)


def test_revoked_tokens_are_listed_on_request(api: Api, bob: str) -> None:
    mine = api.token("tokens:read", owner=bob)
    old = api.token("tokens:read", owner=bob, name="old")
    api.services.tokens.revoke(SYSTEM, token_format.display_prefix(old))
    assert len(api.call("GET", "/api/v1/tokens", mine).json()["tokens"]) == 1
    everything = api.call("GET", "/api/v1/tokens?include_revoked=true", mine).json()["tokens"]
    assert sorted(t["status"] for t in everything) == ["active", "revoked"]
    assert api.call("GET", "/api/v1/tokens?include_revoked=yes", mine).status_code == 422


def test_create_returns_the_plaintext_once_and_it_works(api: Api) -> None:
    token = api.token("tokens:write", "servers:read")
    response = api.call("POST", "/api/v1/tokens", token, request_id="req-token-create",
                        json={"name": "ci", "scopes": ["servers:read"], "expires_in": 3600})
    assert response.status_code == 201
    body = response.json()
    plaintext = body["plaintext"]
    assert body["token"]["prefix"] == token_format.display_prefix(plaintext)
    assert body["token"]["owner"] == "admin"
    assert body["token"]["scopes"] == ["servers:read"]
    assert body["token"]["expires_at"] is not None
    assert api.call("GET", "/api/v1/servers", plaintext).status_code == 200
    assert api.call("POST", "/api/v1/servers", plaintext,
                    json={"name": "web-1", "address": "10.0.0.1"}).status_code == 403
    (row,) = [r for r in api.audit_rows(action=Action.TOKEN_CREATE)
              if r.request_id == "req-token-create"]
    assert plaintext not in str(row.details)
    listed = api.services.tokens.list(SYSTEM)
    assert plaintext not in str([t.as_dict() for t in listed])


def test_defaults_a_90_day_lifetime_and_null_never_expires(api: Api) -> None:
    token = api.token("tokens:write", "servers:read")
    default = api.call("POST", "/api/v1/tokens", token,
                       json={"name": "a", "scopes": ["servers:read"]}).json()["token"]
    never = api.call("POST", "/api/v1/tokens", token,
                     json={"name": "b", "scopes": ["servers:read"], "expires_in": None}).json()
    assert default["expires_at"] is not None
    assert never["token"]["expires_at"] is None


def test_an_admin_token_cannot_be_issued_with_a_token(api: Api) -> None:
    token = api.token("tokens:write", "servers:read")
    response = api.call("POST", "/api/v1/tokens", token, json={"name": "x", "scopes": ["admin"]})
    assert response.status_code == 403
    assert error_of(response)["code"] == "reauth_required"
    assert not [r for r in api.audit_rows(action=Action.TOKEN_CREATE)
                if "admin" in r.details["scopes"]]


def test_a_token_cannot_widen_its_scopes_or_servers(api: Api) -> None:
    token = api.token("tokens:write", "servers:read", servers=("web-1",))
    wider = api.call("POST", "/api/v1/tokens", token,
                     json={"name": "x", "scopes": ["servers:write"], "servers": ["web-1"]})
    assert wider.status_code == 403
    unrestricted = api.call("POST", "/api/v1/tokens", token,
                            json={"name": "x", "scopes": ["servers:read"]})
    assert unrestricted.status_code == 403
    narrower = api.call("POST", "/api/v1/tokens", token,
                        json={"name": "x", "scopes": ["servers:read"], "servers": ["web-1"]})
    assert narrower.status_code == 201


def test_create_needs_tokens_write(api: Api) -> None:
    token = api.token("tokens:read", "servers:read")
    response = api.call("POST", "/api/v1/tokens", token, request_id="req-no-write",
                        json={"name": "x", "scopes": ["servers:read"]})
    assert response.status_code == 403
    (denied,) = api.audit_rows(action=Action.TOKEN_DENIED)
    assert denied.request_id == "req-no-write"


@pytest.mark.parametrize("body", [
    {"name": "x"}, {"scopes": ["servers:read"]}, {"name": "", "scopes": ["servers:read"]},
    {"name": "x", "scopes": []}, {"name": "x", "scopes": ["servers:fly"]},
    {"name": "x", "scopes": ["servers:read", "servers:read"]},
    {"name": "x", "scopes": ["servers:read"], "expires_in": 0},
    {"name": "x", "scopes": ["servers:read"], "expires_in": 1.5},
    {"name": "x", "scopes": ["servers:read"], "expires_in": True},
    {"name": "x", "scopes": ["servers:read"], "kind": "root"},
    {"name": "x", "scopes": ["servers:read"], "owner": "admin"},
    {"name": "a\x07b", "scopes": ["servers:read"]},
    {"name": "   ", "scopes": ["servers:read"]},
])
def test_invalid_token_requests_are_422(api: Api, body: dict[str, object]) -> None:
    token = api.token("tokens:write", "servers:read")
    response = api.call("POST", "/api/v1/tokens", token, json=body)
    assert response.status_code == 422, response.text
    assert error_of(response)["code"] == "invalid_input"


def test_revoke_own_token_by_id_or_prefix(api: Api, bob: str) -> None:
    caller = api.token("tokens:write", "tokens:read", owner=bob)
    victim = api.services.tokens.create(
        api.services.users.get(bob).as_principal(), name="v", scopes=["tokens:read"]).token
    response = api.call("DELETE", f"/api/v1/tokens/{victim.id}", caller, request_id="req-revoke")
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    (row,) = api.audit_rows(action=Action.TOKEN_REVOKE)
    assert row.request_id == "req-revoke"
    again = api.call("DELETE", f"/api/v1/tokens/{victim.display_prefix}", caller)
    assert again.status_code == 409
    assert error_of(again)["code"] == "conflict"


def test_another_users_token_is_not_found(api: Api, bob: str) -> None:
    caller = api.token("tokens:write", owner=bob)
    admins = api.services.tokens.create(
        api.services.users.get("admin").as_principal(), name="a", scopes=["servers:read"]).token
    response = api.call("DELETE", f"/api/v1/tokens/{admins.id}", caller)
    assert response.status_code == 404
    assert api.services.tokens.get(admins.id).status == "active"


def test_revoking_the_calling_token_takes_effect_at_once(api: Api) -> None:
    token = api.token("tokens:write", "servers:read")
    prefix = token_format.display_prefix(token)
    assert api.call("DELETE", f"/api/v1/tokens/{prefix}", token).status_code == 200
    assert api.call("GET", "/api/v1/servers", token).status_code == 401


@pytest.mark.parametrize("ref", ["x", "0" * 31, "tnd_live_short", "../etc"])
def test_a_malformed_token_reference_is_404(api: Api, ref: str) -> None:
    response = api.call("DELETE", f"/api/v1/tokens/{ref}", api.token("tokens:write"))
    assert response.status_code == 404
