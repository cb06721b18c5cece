"""The REST API ``/api/v1``: bearer tokens only, one JSON error shape, an OpenAPI 3.1 document.

:data:`ENDPOINTS` is the one table: it builds the routes and the OpenAPI document, and the tests
walk it (every route documented, every state-changing route audited).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router

from tundra.panel.api import acceptance, audit, servers, tokens
from tundra.panel.api.endpoint import Endpoint, handler, json_response
from tundra.panel.api.schemas import ref

PREFIX = "/api/v1"


@cache
def document() -> dict[str, Any]:
    from tundra.panel.api.openapi import build

    return build(ENDPOINTS)


OPENAPI = Endpoint(
    "GET",
    f"{PREFIX}/openapi.json",
    "getOpenApi",
    "This OpenAPI 3.1 document",
    call=lambda c: document(),
    render=json_response(lambda doc: doc),
    response=ref("OpenApi"),
    errors=(),
    public=True,
    description="Public: it lets a client (and `tundra acceptance run`) discover the routes.",
)

ENDPOINTS: tuple[Endpoint, ...] = (
    *servers.ENDPOINTS,
    *tokens.ENDPOINTS,
    *audit.ENDPOINTS,
    *acceptance.ENDPOINTS,
    OPENAPI,
)


def _dispatch(handlers: dict[str, Any]) -> Any:
    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        response: Response = await handlers[method](request)
        return response

    return dispatch


def routes() -> list[BaseRoute]:
    """``/api/v1`` as one mount: one route per path (so a wrong method gets 405 with every
    allowed method in ``Allow``), and no trailing-slash redirects (a redirect could take a
    request to another resource; an unknown path is a JSON 404)."""
    by_path: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        by_path.setdefault(endpoint.path.removeprefix(PREFIX), {})[endpoint.method] = handler(
            endpoint
        )
    inner = [
        Route(path, _dispatch(handlers), methods=list(handlers))
        for path, handlers in by_path.items()
    ]
    return [Mount(PREFIX, app=Router(inner, redirect_slashes=False))]
