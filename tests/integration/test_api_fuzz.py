"""Property-based fuzz of /api/v1 from its own OpenAPI document (hypothesis).

Requests are generated from the published document: an operation, path parameters, query
parameters and a body drawn from their schemas (valid values) or from anything at all (invalid
values, unknown parameters, malformed JSON, wrong media types), sent with one of several
credentials (full scopes, read-only, resource-restricted, none, garbage, an MCP token). Every
answer must be a documented status below 500 with no traceback, errors in the one error shape,
and successes matching their documented schema. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tundra.core.principal import SYSTEM
from tundra.panel import api as api_package
from tundra.panel.api.schemas import COMPONENTS
from tundra.panel.api.validate import resolve, validate
from tundra.panel.app import create_app

EXAMPLES = 400
DOCUMENT = api_package.document()
OPERATIONS = [(path, method, op) for path, item in DOCUMENT["paths"].items()
              for method, op in item.items()]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def valid(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values that match ``schema`` (the validator's JSON Schema subset)."""
    schema = dict(resolve(schema, COMPONENTS))
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([valid({**schema, "type": k}) for k in kind])
    if kind == "null":
        return st.none()
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**40)), schema.get("maximum", 2**40))
    if kind == "string" and schema.get("format") == "date-time" and "pattern" in schema:
        moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1),
                               timezones=st.just(UTC))
        return st.one_of(moments.map(lambda m: m.isoformat().replace("+00:00", "Z")),
                         moments.map(lambda m: m.date().isoformat()),
                         st.from_regex(schema["pattern"], fullmatch=True))
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 40), 80)
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: low <= len(s) <= schema.get("maxLength", 10**6))
        return st.text(min_size=low, max_size=max(low, high))
    if kind == "array":
        items = valid(schema.get("items", {}))
        return st.lists(items, min_size=schema.get("minItems", 0),
                        max_size=min(schema.get("maxItems", 4), 4),
                        unique_by=(lambda v: json.dumps(v)) if schema.get("uniqueItems")
                        else None)
    if kind == "object":
        properties = schema.get("properties", {})
        required = {k: valid(v) for k, v in properties.items() if k in schema.get("required", ())}
        optional = {k: valid(v) for k, v in properties.items() if k not in required}
        return st.fixed_dictionaries(required, optional=optional)
    return JSON_VALUES


def fuzzed(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Mostly valid values (so the success paths are reached), sometimes anything."""
    return st.integers(0, 5).flatmap(lambda n: JSON_VALUES if n == 0 else valid(schema))


def as_query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    path, method, op = draw(st.sampled_from(OPERATIONS))
    params = op.get("parameters", [])
    url = path
    for param in (p for p in params if p["in"] == "path"):
        text = draw(st.one_of(valid(param["schema"]), st.text(min_size=1, max_size=30)))
        url = url.replace("{" + param["name"] + "}", quote(str(text), safe="") or "x")
    query: list[tuple[str, str]] = []
    for param in (p for p in params if p["in"] == "query"):
        if draw(st.booleans()):
            query.append((param["name"], as_query_text(draw(fuzzed(param["schema"])))))
    if draw(st.integers(0, 9)) == 0:
        query.append((draw(st.text(min_size=1, max_size=10)), draw(st.text(max_size=10))))
    content: bytes | None = None
    content_type = "application/json"
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        choice = draw(st.integers(0, 9))
        if choice < 7:
            content = json.dumps(draw(fuzzed(schema))).encode()
        elif choice < 9:
            content = draw(st.binary(max_size=200))
        else:
            content = json.dumps(draw(valid(schema))).encode()
            content_type = draw(st.sampled_from(["text/plain", "application/xml", ""]))
    return {"method": method.upper(), "url": url, "params": query, "content": content,
            "content_type": content_type, "credential": draw(st.sampled_from(CREDENTIALS)),
            "op": op}


CREDENTIALS = ["full", "read", "restricted", "none", "garbage", "mcp"]


@pytest.fixture
def fuzz_target(services: Any) -> tuple[TestClient, dict[str, str | None]]:
    admin = services.users.get("admin").as_principal()
    services.servers.add(SYSTEM, name="web-1", address="10.0.0.1", tags=("prod",))

    def token(*scopes: str, **kwargs: Any) -> str:
        return str(services.tokens.create(admin, name="fuzz", scopes=scopes, **kwargs).plaintext)

    everything = ("servers:read", "servers:write", "tokens:read", "tokens:write", "audit:read")
    credentials: dict[str, str | None] = {
        "full": token(*everything),
        "read": token("servers:read", "tokens:read", "audit:read"),
        "restricted": token(*everything, servers=["web-1"]),
        "none": None,
        "garbage": "tnd_live_" + "A" * 43,
        "mcp": token("servers:read", kind="mcp"),
    }
    client = TestClient(create_app(services), base_url="https://testserver",
                        raise_server_exceptions=False, follow_redirects=False)
    return client, credentials


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(request=requests())
def test_api_fuzz(fuzz_target: tuple[TestClient, dict[str, str | None]],
                  request: dict[str, Any]) -> None:
    client, credentials = fuzz_target
    headers = {"Content-Type": request["content_type"]} if request["content"] is not None else {}
    credential = credentials[request["credential"]]
    if credential is not None:
        headers["Authorization"] = f"Bearer {credential}"
    response = client.request(request["method"], request["url"], params=request["params"],
                              content=request["content"], headers=headers)
    where = f"{request['method']} {request['url']} {request['params']} -> {response.status_code}"
    event(f"{request['op']['operationId']} {response.status_code}")
    assert response.status_code < 500, f"{where}: {response.text[:500]}"
    for marker in ("Traceback", 'File "'):
        assert marker not in response.text, where
    op = request["op"]
    assert str(response.status_code) in op["responses"], f"{where}: {response.text[:300]}"
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}
        assert set(body["error"]) == {"code", "message", "request_id"}
        assert body["error"]["request_id"] == response.headers["x-request-id"]
    else:
        documented = op["responses"][str(response.status_code)]["content"]
        assert media in documented, f"{where}: undocumented media type {media}"
        if media == "application/json":
            validate(response.json(), documented[media]["schema"], COMPONENTS, where)
