"""The OpenAPI document matches the routes exactly: every route documented, every documented
operation routed, parameters and schemas consistent with what the handlers accept."""

from __future__ import annotations

import re
from typing import Any

import pytest
from starlette.routing import Mount, Route
from test_api_support import Api, api_fixture, error_of  # noqa: F401

from tundra.core.identity.scopes import SCOPES
from tundra.panel import api as api_package
from tundra.panel.api.schemas import COMPONENTS
from tundra.panel.api.validate import KEYWORDS, SchemaViolation, check_schema, validate
from tundra.panel.app import create_app

METHODS = {"get", "post", "put", "patch", "delete"}


def served_operations(routes: Any, prefix: str = "") -> set[tuple[str, str]]:
    """(path, method) of every API route the application really serves."""
    result = set()
    for route in routes:
        if isinstance(route, Mount):
            result |= served_operations(route.routes, prefix + route.path)
        elif isinstance(route, Route) and (prefix + route.path).startswith("/api/"):
            for method in route.methods or ():
                if method != "HEAD":
                    result.add((prefix + route.path, method.lower()))
    return result


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items()
            for method in item if method in METHODS}


def test_the_served_document_is_the_built_one(api: Api) -> None:
    response = api.client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.json() == api_package.document()
    assert response.json()["openapi"].startswith("3.1")


def test_the_document_is_valid_openapi_3_1() -> None:
    from openapi_spec_validator import validate as validate_spec
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    validate_spec(api_package.document())
    broken = {**api_package.document(), "paths": {"/x": {"get": {"responses": "nope"}}}}
    with pytest.raises(OpenAPIValidationError):
        validate_spec(broken)


def test_every_route_is_documented_and_every_operation_routed(api: Api) -> None:
    app = create_app(api.services)
    assert served_operations(app.routes) == documented_operations(api_package.document())
    assert {(e.path, e.method.lower()) for e in api_package.ENDPOINTS} == \
        documented_operations(api_package.document())


def test_documented_operations_answer_and_others_do_not(api: Api) -> None:
    token = api.token()
    for path, method in documented_operations(api_package.document()):
        concrete = re.sub(r"\{[^}]+\}", "zz-missing", path)
        response = api.call(method.upper(), concrete, token, json={} if method in
                            ("post", "patch") else None)
        assert response.status_code != 405, (method, path)
        if "{" not in path:  # with a path parameter, 404 is the missing object
            assert response.status_code != 404, (method, path)
    for method in METHODS:
        for path in api_package.document()["paths"]:
            if method not in api_package.document()["paths"][path]:
                concrete = re.sub(r"\{[^}]+\}", "zz-missing", path)
                assert api.call(method.upper(), concrete, token).status_code == 405


def test_operation_ids_are_unique_and_paths_match_path_parameters() -> None:
    ids = [e.operation_id for e in api_package.ENDPOINTS]
    assert len(ids) == len(set(ids))
    for endpoint in api_package.ENDPOINTS:
        in_path = set(re.findall(r"\{([^}]+)\}", endpoint.path))
        assert in_path == {p.name for p in endpoint.path_params}, endpoint.path
        op = api_package.document()["paths"][endpoint.path][endpoint.method.lower()]
        params = {(p["name"], p["in"]) for p in op.get("parameters", [])}
        assert params == {(p.name, "path") for p in endpoint.path_params} | {
            (p.name, "query") for p in endpoint.query}
        assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
        assert ("requestBody" in op) == (endpoint.body is not None)
        assert str(endpoint.ok) in op["responses"]
        assert ("401" in op["responses"]) == (not endpoint.public)
        assert op["security"] == ([] if endpoint.public else [{"bearerAuth": []}])
        if endpoint.scope:
            assert endpoint.scope in SCOPES
            assert op["x-tundra-scope"] == endpoint.scope
        assert bool(endpoint.audit) == endpoint.state_changing, endpoint.path


def _schemas(node: Any) -> list[Any]:
    """Every schema object in the document (parameters, bodies, responses, components)."""
    found = []
    if isinstance(node, dict):
        if "schema" in node and isinstance(node["schema"], dict):
            found.append(node["schema"])
        for key, value in node.items():
            if key != "schema":
                found += _schemas(value)
    elif isinstance(node, list):
        for value in node:
            found += _schemas(value)
    return found


def test_every_schema_uses_only_what_the_validator_enforces() -> None:
    document = api_package.document()
    schemas = _schemas(document["paths"]) + list(document["components"]["schemas"].values())
    assert len(schemas) > 20
    for schema in schemas:
        check_schema(schema, COMPONENTS)
    with pytest.raises(ValueError, match="unsupported keyword"):
        check_schema({"type": "string", "oneOf": []}, COMPONENTS)
    assert "oneOf" not in KEYWORDS


def test_every_pattern_is_anchored() -> None:
    def patterns(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
            return own + [p for v in node.values() for p in patterns(v)]
        if isinstance(node, list):
            return [p for v in node for p in patterns(v)]
        return []

    found = patterns(api_package.document())
    assert found
    for pattern in found:
        assert pattern.startswith("^"), pattern
        assert pattern.endswith("$"), pattern


@pytest.mark.parametrize(("value", "schema", "ok"), [
    (True, {"type": "integer"}, False),
    (1.0, {"type": "integer"}, False),
    (1, {"type": "integer"}, True),
    ("a\n", {"type": "string", "pattern": "^a$"}, False),
    ("\ud800", {"type": "string"}, False),
    (None, {"type": ["string", "null"]}, True),
    ([1, 1], {"type": "array", "uniqueItems": True}, False),
    ([1, True], {"type": "array", "uniqueItems": True}, True),
    ({"a": 1}, {"type": "object", "additionalProperties": False}, False),
    ("api", {"enum": ["api", "mcp"]}, True),
    (1, {"enum": [True]}, False),
])
def test_validator_is_strict(value: Any, schema: dict[str, Any], ok: bool) -> None:
    if ok:
        validate(value, schema, COMPONENTS, "v")
    else:
        with pytest.raises(SchemaViolation):
            validate(value, schema, COMPONENTS, "v")


def test_responses_match_their_documented_schemas(api: Api) -> None:
    api.add_server("web-1", tags=("prod",))
    token = api.token()
    document = api_package.document()
    checks = [("GET", "/api/v1/servers", "/api/v1/servers", None),
              ("GET", "/api/v1/servers/web-1", "/api/v1/servers/{name}", None),
              ("PATCH", "/api/v1/servers/web-1", "/api/v1/servers/{name}", {"tags": ["x"]}),
              ("POST", "/api/v1/servers", "/api/v1/servers",
               {"name": "web-2", "address": "10.0.0.2"}),
              ("GET", "/api/v1/tokens", "/api/v1/tokens", None),
              ("POST", "/api/v1/tokens", "/api/v1/tokens",
               {"name": "n", "scopes": ["servers:read"]}),
              ("GET", "/api/v1/me", "/api/v1/me", None),
              ("GET", "/api/v1/audit-log?limit=3", "/api/v1/audit-log", None),
              ("GET", "/api/v1/audit-log/verify", "/api/v1/audit-log/verify", None),
              ("DELETE", "/api/v1/servers/web-1", "/api/v1/servers/{name}", None),
              ("GET", "/api/v1/servers/nope", "/api/v1/servers/{name}", None)]
    for method, url, path, body in checks:
        response = api.call(method, url, token, json=body)
        op = document["paths"][path][method.lower()]
        assert str(response.status_code) in op["responses"], (method, url, response.text)
        schema = op["responses"][str(response.status_code)]["content"]["application/json"][
            "schema"]
        validate(response.json(), schema, COMPONENTS, f"{method} {url}")
        if response.status_code >= 400:
            error_of(response)


@pytest.mark.parametrize("path", ["/api/v1/servers/", "/api/v1/servers/web-1/", "/api/v1/me/",
                                  "/api/v1/servers/%2F", "/api/v1/nothing", "/api/v1/"])
def test_unknown_api_paths_are_a_json_404_never_a_redirect(api: Api, path: str) -> None:
    for method in ("GET", "PATCH", "DELETE"):
        response = api.call(method, path, api.token())
        assert response.status_code == 404, (method, path, response.status_code)
        assert error_of(response)["code"] == "not_found"
