"""Security headers and request ids on every response; the redirect-only HTTP app."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from tundra.core.errors import NotFound, TundraError
from tundra.panel.errors import tundra_error_response
from tundra.panel.middleware import (
    CSP,
    AccessLogMiddleware,
    CatchAllMiddleware,
    SecurityMiddleware,
)
from tundra.panel.redirect import RedirectToHttps


def boom(request):
    raise RuntimeError("secret-internal-detail")


def missing(request):
    raise NotFound("no server named 'x'")


def leaky(request):
    return PlainTextResponse(
        "hi", headers={"Server": "uvicorn/1.2.3", "X-Powered-By": "PHP", "Cache-Control": "public"}
    )


@pytest.fixture
def client() -> TestClient:
    app = Starlette(
        routes=[
            Route("/ok", lambda r: JSONResponse({"ok": True})),
            Route("/boom", boom),
            Route("/missing", missing),
            Route("/leaky", leaky),
            Route("/redirect", lambda r: RedirectResponse("/ok", status_code=303)),
        ],
        middleware=[
            Middleware(SecurityMiddleware),
            Middleware(AccessLogMiddleware),
            Middleware(CatchAllMiddleware),
        ],
        exception_handlers={TundraError: tundra_error_response},
    )
    return TestClient(
        app, base_url="https://testserver", raise_server_exceptions=False, follow_redirects=False
    )


@pytest.mark.parametrize("path", ["/ok", "/nope", "/boom", "/missing", "/redirect", "/leaky"])
def test_security_headers_on_every_response(client: TestClient, path: str) -> None:
    response = client.get(path)
    h = response.headers
    assert h.get_list("strict-transport-security") == ["max-age=63072000; includeSubDomains"]
    assert h["content-security-policy"] == CSP
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    assert h["cross-origin-opener-policy"] == "same-origin"
    assert h["cross-origin-resource-policy"] == "same-origin"
    assert h["cache-control"] == "no-store"
    assert "server" not in h and "x-powered-by" not in h
    assert "access-control-allow-origin" not in h


def test_unexpected_errors_are_json_without_traceback(client: TestClient) -> None:
    response = client.get("/boom", headers={"X-Request-ID": "req-12345678"})
    assert response.status_code == 500
    body = response.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["request_id"] == "req-12345678"
    assert "secret-internal-detail" not in response.text
    assert "Traceback" not in response.text


def test_tundra_errors_map_to_status_and_stable_code(client: TestClient) -> None:
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_request_id_is_accepted_when_well_formed_and_made_otherwise(client: TestClient) -> None:
    assert (
        client.get("/ok", headers={"X-Request-ID": "abc-123_456.789"}).headers["x-request-id"]
        == "abc-123_456.789"
    )
    for bad in ["short", "x" * 200, "bad id with spaces", "<script>alert(1)</script>"]:
        made = client.get("/ok", headers={"X-Request-ID": bad}).headers["x-request-id"]
        assert made != bad and len(made) == 24


def test_csp_forbids_inline_code_and_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CSP.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CSP


@pytest.fixture
def redirect() -> TestClient:
    return TestClient(
        RedirectToHttps(https_port=8443, fallback_host="localhost"),
        base_url="http://panel.example.com:8080",
        follow_redirects=False,
    )


def test_redirect_keeps_host_path_and_query(redirect: TestClient) -> None:
    response = redirect.get("/a/path?q=1&x=%20y")
    assert response.status_code == 308
    assert response.headers["location"] == "https://panel.example.com:8443/a/path?q=1&x=%20y"
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_redirect_answers_every_method_the_same(redirect: TestClient, method: str) -> None:
    response = redirect.request(method, "/login")
    assert response.status_code == 308
    assert response.headers["location"] == "https://panel.example.com:8443/login"


def test_redirect_ignores_a_malformed_host(redirect: TestClient) -> None:
    response = redirect.get("/", headers={"Host": "evil.example/@attacker"})
    assert response.headers["location"] == "https://localhost:8443/"


def test_redirect_to_port_443_has_no_port() -> None:
    client = TestClient(
        RedirectToHttps(https_port=443, fallback_host="localhost"),
        base_url="http://panel.example.com",
        follow_redirects=False,
    )
    assert client.get("/").headers["location"] == "https://panel.example.com/"
