"""The Starlette application: panel pages, ``/api/v1``, health probes, one error boundary.

``create_app(services)`` wires routes to the core through ``app.state.services``; a route parses,
calls one core service, renders. Middleware order (outermost first): security headers and request
id, then the access log, then the catch-all for unexpected errors, then routing and the
TundraError handler.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from tundra.core.errors import TundraError
from tundra.core.services import Services
from tundra.panel.errors import json_error, tundra_error_response
from tundra.panel.middleware import AccessLogMiddleware, CatchAllMiddleware, SecurityMiddleware


async def healthz(request: Request) -> Response:
    """Liveness: the process answers. Never touches storage, so it stays fast under load."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Readiness: the database and the KV store answer."""
    from starlette.concurrency import run_in_threadpool

    services: Services = request.app.state.services

    def probe() -> dict[str, str]:
        checks = {}
        try:
            services.db.schema_version()
            checks["database"] = "ok"
        except TundraError as exc:
            checks["database"] = exc.code
        try:
            services.kv.get("readyz")
            checks["kv"] = "ok"
        except TundraError as exc:
            checks["kv"] = exc.code
        return checks

    checks = await run_in_threadpool(probe)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
    )


_HTTP_CODES = {
    404: ("not_found", "no such API endpoint"),
    405: ("method_not_allowed", "this method is not allowed on this API path"),
}


def http_error(request: Request, exc: HTTPException) -> Response:
    """Routing errors (404, 405): the JSON error shape under /api/, an HTML page elsewhere."""
    if request.url.path.startswith("/api/"):
        code, message = _HTTP_CODES.get(exc.status_code, ("http_error", str(exc.detail)))
        return json_error(
            request, exc.status_code, code, message, dict(exc.headers) if exc.headers else None
        )
    from tundra.panel.pages.render import http_error_page

    return http_error_page(request, exc.status_code, exc.headers)


def routes() -> list[BaseRoute]:
    from tundra.panel import api, enroll, pages
    from tundra.panel.pages import acceptance as acceptance_pages

    return [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *api.routes(),
        *enroll.routes(),
        *pages.routes(),
        *acceptance_pages.routes(),
    ]


def create_app(services: Services) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Acceptance runs started from the panel replay a real signed command through the
        # agent's own guard (AG-06); core cannot import the agent package, so the panel lends it.
        from tundra.agent.guard import CommandGuard
        from tundra.core.acceptance.checks.agent import install_command_guard

        previous = install_command_guard(CommandGuard)
        try:
            yield
        finally:
            install_command_guard(previous)
            services.close()

    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(SecurityMiddleware),
            Middleware(AccessLogMiddleware),
            Middleware(CatchAllMiddleware),
        ],
        exception_handlers={
            TundraError: tundra_error_response,  # type: ignore[dict-item]
            HTTPException: http_error,  # type: ignore[dict-item]
        },
        lifespan=lifespan,
    )
    app.state.services = services
    return app
