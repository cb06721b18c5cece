"""Fixtures and helpers shared by the API tests (imported by the test_api_* modules).

``api`` is a client on both databases with the embedded KV; ``api_kv`` adds the real Valkey/Redis
KV (a second Services on the same home and database whose ``valkey_url`` is the test server).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.panel.app import create_app

ALL_SCOPES = ("servers:read", "servers:write", "tokens:read", "tokens:write", "audit:read")


@dataclass
class Api:
    services: Services
    client: TestClient

    def token(self, *scopes: str, servers: tuple[str, ...] = (), owner: str = "admin",
              kind: str = "api", expires_in: timedelta | None = None, name: str = "test") -> str:
        """A new token's plaintext, issued by the core for ``owner``."""
        user = self.services.users.get(owner)
        created = self.services.tokens.create(
            user.as_principal(), name=name, scopes=scopes or ALL_SCOPES, servers=servers,
            kind=kind, expires_in=expires_in)
        return created.plaintext

    def call(self, method: str, path: str, token: str | None = None, *,
             request_id: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if request_id is not None:
            headers["X-Request-ID"] = request_id
        return self.client.request(method, path, headers=headers, **kwargs)

    def audit_rows(self, **filters: Any) -> list[Any]:
        return self.services.audit.list(limit=10_000, **filters)

    def add_server(self, name: str, address: str = "10.0.0.1", tags: tuple[str, ...] = ()) -> None:
        self.services.servers.add(SYSTEM, name=name, address=address, tags=tags)


def make_client(services: Services) -> TestClient:
    # Not entered as a context manager: the lifespan would close the fixture's services.
    return TestClient(create_app(services), base_url="https://testserver",
                      raise_server_exceptions=False, follow_redirects=False)


# Registered as ``api`` / ``api_kv``; modules import the *_fixture names (no shadowing).
@pytest.fixture(name="api")
def api_fixture(services: Services) -> Api:
    return Api(services, make_client(services))


@pytest.fixture(name="api_kv", params=["embedded-kv", "valkey-kv"])
def api_kv_fixture(request: pytest.FixtureRequest, services: Services) -> Iterator[Api]:
    if request.param == "embedded-kv":
        yield Api(services, make_client(services))
        return
    url = request.getfixturevalue("valkey_url")
    other = Services(replace(services.settings, valkey_url=url))
    assert type(other.kv).__name__ == "ValkeyKV"
    yield Api(other, make_client(other))
    other.close()


def error_of(response: Any) -> dict[str, Any]:
    """The error object, after checking the one error shape and the request id."""
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return dict(error)
