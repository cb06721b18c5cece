"""/api/v1/servers end to end through the app, and strict request validation (422/413/415 in
the error shape, never a 500)."""

from __future__ import annotations

import json

import pytest
from test_api_support import Api, api_fixture, error_of  # noqa: F401

from tundra.core.audit.actions import Action
from tundra.core.principal import SYSTEM
from tundra.panel.api.endpoint import MAX_BODY


def test_create_show_list_update(api: Api) -> None:
    token = api.token("servers:read", "servers:write")
    created = api.call("POST", "/api/v1/servers", token, request_id="req-create-web-1",
                       json={"name": "web-1", "address": "10.0.0.7", "tags": ["prod", "eu"]})
    assert created.status_code == 201
    assert created.headers["location"] == "/api/v1/servers/web-1"
    body = created.json()
    assert (body["name"], body["address"], body["tags"], body["status"]) == (
        "web-1", "10.0.0.7", ["eu", "prod"], "pending")
    assert api.call("GET", "/api/v1/servers/web-1", token).json() == body
    assert api.call("GET", "/api/v1/servers", token).json() == {"servers": [body]}
    assert api.call("GET", "/api/v1/servers?tag=eu", token).json() == {"servers": [body]}
    assert api.call("GET", "/api/v1/servers?tag=us", token).json() == {"servers": []}

    changed = api.call("PATCH", "/api/v1/servers/web-1", token, json={"address": "web1.example"})
    assert changed.status_code == 200
    assert changed.json()["address"] == "web1.example"
    assert api.services.servers.get(SYSTEM, "web-1").address == "web1.example"
    (row,) = api.audit_rows(action=Action.SERVER_CREATE)
    assert row.request_id == "req-create-web-1"


def test_a_duplicate_is_409(api: Api) -> None:
    api.add_server("web-1")
    response = api.call("POST", "/api/v1/servers", api.token(),
                        json={"name": "web-1", "address": "10.0.0.2"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "already_exists"


def test_unknown_server_is_404(api: Api) -> None:
    token = api.token()
    for method, body in (("GET", None), ("PATCH", {"tags": []}), ("DELETE", None)):
        response = api.call(method, "/api/v1/servers/nope", token, json=body)
        assert response.status_code in (404, 403), method
        assert error_of(response)["code"] in ("not_found", "reauth_required")
    assert api.call("GET", "/api/v1/servers/nope", token).status_code == 404


@pytest.mark.parametrize("name", ["UPPER", "a" * 64, "-x", "bad name", "%00", "%C3%A9", "a%2Fb"])
def test_a_name_that_cannot_exist_is_404(api: Api, name: str) -> None:
    response = api.call("GET", f"/api/v1/servers/{name}", api.token())
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


BAD_BODIES = [
    ({"name": "web-1"}, "'address' is required"),
    ({"name": "web-1", "address": "10.0.0.1", "extra": 1}, "unknown field"),
    ({"name": 5, "address": "10.0.0.1"}, "expected string"),
    ({"name": "web-1", "address": "10.0.0.1", "tags": "prod"}, "expected array"),
    ({"name": "web-1", "address": "10.0.0.1", "tags": [1]}, "expected string"),
    ({"name": "web-1", "address": "10.0.0.1", "tags": ["UP"]}, "invalid format"),
    ({"name": "Web 1", "address": "10.0.0.1"}, "invalid format"),
    ({"name": "web-1", "address": ""}, "at least 1"),
    ({"name": "web-1", "address": "not an address!"}, "invalid server address"),
    ({"name": "web-1", "address": "10.0.0.1", "tags": ["t"] * 65}, "at most 64"),
    ({"name": "web-1\n", "address": "10.0.0.1"}, "invalid format"),
    ([], "expected object"),
    ("web-1", "expected object"),
    ("null", "expected object"),
]


@pytest.mark.parametrize(("body", "problem"), BAD_BODIES)
def test_invalid_bodies_are_422(api: Api, body: object, problem: str) -> None:
    raw = body.encode() if body == "null" else json.dumps(body).encode()  # type: ignore[union-attr]
    response = api.call("POST", "/api/v1/servers", api.token(), content=raw,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["code"] == "invalid_input"
    assert problem in error["message"]
    assert api.services.servers.list(SYSTEM) == []


@pytest.mark.parametrize(("raw", "problem"), [
    (b"", "body is required"),
    (b"{", "not valid JSON"),
    (b'{"name": "a", "name": "b", "address": "10.0.0.1"}', "duplicate field 'name'"),
    (b'{"name": "web-1", "address": NaN}', "not valid JSON"),
    (b'{"name": "web-1", "address": "10.0.0.1", "tags": [' + b"1" * 5000 + b"]}", "not valid"),
    (b"[" * 20000 + b"]" * 20000, "not valid JSON"),
    (b'{"name": "\\ud800", "address": "10.0.0.1"}', "not valid Unicode"),
    (b'{"name": "web-1", "address": "10.0.0.1\\u0000"}', "invalid server address"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_json_is_422(api: Api, raw: bytes, problem: str) -> None:
    response = api.call("POST", "/api/v1/servers", api.token(), content=raw,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert problem in error["message"]


def test_an_oversized_body_is_413(api: Api) -> None:
    huge = json.dumps({"name": "web-1", "address": "x" * MAX_BODY}).encode()
    response = api.call("POST", "/api/v1/servers", api.token(), content=huge,
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert error_of(response)["code"] == "payload_too_large"

    def chunks():  # no Content-Length: the limit holds for a streamed body too
        for _ in range(MAX_BODY // 1000 + 2):
            yield b" " * 1000

    streamed = api.call("POST", "/api/v1/servers", api.token(), content=chunks(),
                        headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413


def test_an_oversized_body_without_a_token_is_still_401(api: Api) -> None:
    response = api.call("POST", "/api/v1/servers", None, content=b"x" * (MAX_BODY + 10),
                        headers={"Content-Type": "application/json"})
    assert response.status_code == 401


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_body_that_is_not_json_is_415(api: Api, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = api.call("POST", "/api/v1/servers", api.token(),
                        content=b'{"name": "web-1", "address": "10.0.0.1"}', headers=headers)
    assert response.status_code == 415
    assert error_of(response)["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(api: Api) -> None:
    response = api.call("POST", "/api/v1/servers", api.token(),
                        content=b'{"name": "web-1", "address": "10.0.0.1"}',
                        headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201


@pytest.mark.parametrize("body", [{}, {"name": "other"}, {"tags": None}, {"address": 1}])
def test_patch_needs_a_valid_change(api: Api, body: dict[str, object]) -> None:
    api.add_server("web-1")
    response = api.call("PATCH", "/api/v1/servers/web-1", api.token(), json=body)
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_input"


def test_patch_without_a_change_writes_no_audit_row(api: Api) -> None:
    api.add_server("web-1", tags=("a",))
    token = api.token()
    before = len(api.audit_rows())
    response = api.call("PATCH", "/api/v1/servers/web-1", token, json={"tags": ["a"]})
    assert response.status_code == 200
    assert len(api.audit_rows()) == before


@pytest.mark.parametrize("query", ["tag=UPPER", "tag=", "other=1", "tag=a&tag=b", "tag=%00"])
def test_invalid_query_parameters_are_422(api: Api, query: str) -> None:
    response = api.call("GET", f"/api/v1/servers?{query}", api.token())
    assert response.status_code == 422
    assert error_of(response)["code"] == "invalid_input"
