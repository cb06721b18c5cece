"""Bearer authentication of /api/v1: 401 versus 403, one answer for every bad token, scopes and
resources enforced by the core with an audit row carrying the request id, no cookies, no CORS."""

from __future__ import annotations

import base64
import zlib
from datetime import timedelta

import pytest
from test_api_support import (  # noqa: F401
    ALL_SCOPES,
    Api,
    api_fixture,
    api_kv_fixture,
    error_of,
)

from tundra.core.audit.actions import Action
from tundra.core.identity import token_format
from tundra.core.principal import SYSTEM
from tundra.panel import api as api_package

CHALLENGE = 'Bearer realm="tundra", error="invalid_token"'
BOB = "bob"
BOB_PASSWORD = "bob's long password 1"


def _with_checksum(env: str, body: bytes) -> str:
    crc = (zlib.crc32(f"tnd_{env}_".encode() + body) & 0xFFFFFFFF).to_bytes(4, "big")
    return f"tnd_{env}_" + base64.urlsafe_b64encode(body + crc).rstrip(b"=").decode()


def bad_tokens(api: Api) -> dict[str, str]:
    """One token of every kind the API must refuse, with the same 401."""
    good = api.token("servers:read")
    flipped = good[:-2] + ("A" if good[-2] != "A" else "B") + good[-1]
    expired = api.token("servers:read", expires_in=timedelta(seconds=1))
    api.services.db  # noqa: B018 - opened
    with api.services.db.transaction() as tx:  # expire it without waiting
        tx.execute("UPDATE api_tokens SET expires_at = '2000-01-01T00:00:00.000000Z'"
                   " WHERE display_prefix = :p", {"p": token_format.display_prefix(expired)})
    revoked = api.token("servers:read")
    api.services.tokens.revoke(SYSTEM, token_format.display_prefix(revoked))
    return {
        "garbage": "hello",
        "malformed": "tnd_live_" + "x" * 10,
        "bad_checksum": flipped,
        "wrong_env": _with_checksum("staging", b"\x01" * 28),
        "unknown": token_format.generate("live"),
        "expired": expired,
        "revoked": revoked,
        "mcp_kind": api.token("servers:read", kind="mcp"),
        "too_long": "tnd_live_" + "A" * 5000,
    }


def test_a_valid_token_is_accepted(api_kv: Api) -> None:
    response = api_kv.call("GET", "/api/v1/servers", api_kv.token("servers:read"))
    assert response.status_code == 200
    assert response.json() == {"servers": []}


def test_every_bad_token_gets_the_same_401(api_kv: Api) -> None:
    bodies = {}
    for kind, token in bad_tokens(api_kv).items():
        response = api_kv.call("GET", "/api/v1/servers", token, request_id="same-request-id")
        assert response.status_code == 401, kind
        assert response.headers["www-authenticate"] == CHALLENGE
        assert error_of(response)["code"] == "token_invalid"
        bodies[kind] = response.content
    assert len(set(bodies.values())) == 1, bodies


@pytest.mark.parametrize("header", ["Basic YWRtaW46cGFzcw==", "Bearer", "Bearer ", "Token abc",
                                    "bearer  tnd_live_x"])
def test_other_authorization_headers_are_a_bad_token(api: Api, header: str) -> None:
    response = api.client.get("/api/v1/servers", headers={"Authorization": header})
    assert response.status_code == 401
    assert error_of(response)["code"] == "token_invalid"


def test_no_token_is_401_with_a_challenge_on_every_route(api: Api) -> None:
    for endpoint in api_package.ENDPOINTS:
        path = endpoint.path.replace("{name}", "web-1").replace("{id}", "0" * 32)
        response = api.client.request(endpoint.method, path, json={} if endpoint.body else None)
        if endpoint.public:
            assert response.status_code == 200
            continue
        assert response.status_code == 401, endpoint.path
        assert response.headers["www-authenticate"] == 'Bearer realm="tundra"'
        assert error_of(response)["code"] == "authentication_required"


def test_malformed_tokens_are_refused_without_touching_the_database(api: Api) -> None:
    class NoDatabase:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the database was used ({name}) for a token without lookup")

    tokens = bad_tokens(api)
    real = api.services.db
    api.services.__dict__["db"] = NoDatabase()
    try:
        for kind in ("garbage", "malformed", "bad_checksum", "wrong_env", "too_long"):
            response = api.call("GET", "/api/v1/servers", tokens[kind])
            assert response.status_code == 401, kind
    finally:
        api.services.__dict__["db"] = real


def test_a_session_cookie_does_not_authenticate_the_api(api: Api) -> None:
    api.client.cookies.set("__Host-tundra_session", "anything")
    response = api.client.get("/api/v1/me")
    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_required"


def test_out_of_scope_is_403_with_an_audit_row_carrying_the_request_id(api_kv: Api) -> None:
    token = api_kv.token("servers:read")
    response = api_kv.call("POST", "/api/v1/servers", token, request_id="req-out-of-scope",
                           json={"name": "web-1", "address": "10.0.0.1"})
    assert response.status_code == 403
    error = error_of(response)
    assert error["code"] == "permission_denied"
    assert error["request_id"] == "req-out-of-scope"
    rows = api_kv.audit_rows(action=Action.TOKEN_DENIED)
    assert [(r.request_id, r.actor, r.details["reason"]) for r in rows] == [
        ("req-out-of-scope", f"token:{token_format.display_prefix(token)}", "scope")]
    assert api_kv.services.servers.list(SYSTEM) == []


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/api/v1/servers", "servers:read"),
    ("GET", "/api/v1/tokens", "tokens:read"),
    ("GET", "/api/v1/audit-log", "audit:read"),
    ("GET", "/api/v1/audit-log?format=jsonl", "audit:read"),
    ("GET", "/api/v1/audit-log/verify", "audit:read"),
])
def test_each_read_needs_its_scope(api: Api, method: str, path: str, scope: str) -> None:
    others = tuple(s for s in ALL_SCOPES if s != scope)
    response = api.call(method, path, api.token(*others), request_id="req-scope-check")
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    assert "application/json" in response.headers["content-type"]
    denied = api.audit_rows(action=Action.TOKEN_DENIED, resource=f"scope:{scope}")
    assert [r.request_id for r in denied] == ["req-scope-check"]
    assert api.call(method, path, api.token(scope)).status_code == 200


def test_resource_restriction(api_kv: Api) -> None:
    api_kv.add_server("web-1")
    api_kv.add_server("web-2")
    token = api_kv.token("servers:read", "servers:write", servers=("web-1",))
    listed = api_kv.call("GET", "/api/v1/servers", token).json()["servers"]
    assert [s["name"] for s in listed] == ["web-1"]
    assert api_kv.call("GET", "/api/v1/servers/web-1", token).status_code == 200
    refused = api_kv.call("GET", "/api/v1/servers/web-2", token, request_id="req-resource-1")
    assert refused.status_code == 403
    assert error_of(refused)["code"] == "permission_denied"
    patched = api_kv.call("PATCH", "/api/v1/servers/web-2", token, json={"tags": ["x"]})
    assert patched.status_code == 403
    assert api_kv.services.servers.get(SYSTEM, "web-2").tags == ()
    rows = api_kv.audit_rows(action=Action.TOKEN_DENIED, resource="server:web-2")
    assert [r.details["reason"] for r in rows] == ["resource", "resource"]
    assert rows[0].request_id == "req-resource-1"


def test_a_token_never_performs_a_sensitive_operation(api_kv: Api) -> None:
    api_kv.add_server("web-1")
    token = api_kv.token("servers:read", "servers:write")
    response = api_kv.call("DELETE", "/api/v1/servers/web-1", token)
    assert response.status_code == 403
    assert error_of(response)["code"] == "reauth_required"
    assert api_kv.services.servers.get(SYSTEM, "web-1").name == "web-1"
    assert api_kv.audit_rows(action=Action.SERVER_DELETE) == []


def test_a_disabled_owner_disables_the_token(api: Api) -> None:
    api.services.users.add(SYSTEM, name=BOB, password=BOB_PASSWORD)
    token = api.token("servers:read", owner=BOB)
    assert api.call("GET", "/api/v1/servers", token).status_code == 200
    api.services.users.disable(SYSTEM, BOB)
    response = api.call("GET", "/api/v1/servers", token)
    assert response.status_code == 401
    assert error_of(response)["code"] == "token_invalid"


def test_last_used_at_is_recorded(api: Api) -> None:
    token = api.token("servers:read")
    prefix = token_format.display_prefix(token)
    assert api.services.tokens.list(SYSTEM)[0].last_used_at is None
    assert api.call("GET", "/api/v1/servers", token).status_code == 200
    (stored,) = [t for t in api.services.tokens.list(SYSTEM) if t.display_prefix == prefix]
    assert stored.last_used_at is not None


def test_me_describes_the_calling_token(api: Api) -> None:
    token = api.token("servers:read", servers=("web-1",), name="ci deploy")
    body = api.call("GET", "/api/v1/me", token).json()
    assert body["actor"] == f"token:{token_format.display_prefix(token)}"
    assert body["user"] == "admin"
    assert body["is_admin"] is False
    assert body["token"]["name"] == "ci deploy"
    assert body["token"]["servers"] == ["web-1"]
    assert token not in str(body)


def test_no_cors_even_for_a_foreign_origin(api_kv: Api) -> None:
    token = api_kv.token("servers:read")
    foreign = {"Origin": "https://evil.example"}
    for response in (
        api_kv.call("GET", "/api/v1/servers", token, headers=foreign),
        api_kv.call("GET", "/api/v1/servers", None, headers=foreign),
        api_kv.call("OPTIONS", "/api/v1/servers", None, headers={
            **foreign, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"}),
    ):
        assert not [h for h in response.headers if h.lower().startswith("access-control-")]
    preflight = api_kv.call("OPTIONS", "/api/v1/servers", None, headers=foreign)
    assert preflight.status_code == 405
    assert error_of(preflight)["code"] == "method_not_allowed"


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/api/v1/servers", 200), ("GET", "/api/v1/nothing-here", 404),
    ("PUT", "/api/v1/servers", 405), ("GET", "/api/v1/servers/web-9", 404),
    ("GET", "/api/v1/tokens", 401),
])
def test_every_api_answer_has_the_headers_and_no_store(api: Api, method: str, path: str,
                                                       status: int) -> None:
    token = None if status == 401 else api.token(*ALL_SCOPES)
    response = api.call(method, path, token)
    assert response.status_code == status
    assert response.headers["cache-control"] == "no-store"
    assert response.headers.get_list("strict-transport-security") == [
        "max-age=63072000; includeSubDomains"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-type"].startswith("application/json")
    if status >= 400:
        error_of(response)


def test_method_not_allowed_lists_the_allowed_methods(api: Api) -> None:
    response = api.call("PUT", "/api/v1/servers/web-1", api.token())
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "PATCH", "DELETE"}
