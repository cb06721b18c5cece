"""The HTML panel: server-rendered pages over cookie sessions (see tundra.panel.auth).

Each page parses the request, calls core, renders an autoescaped Jinja2 template. No page has
inline script or style; the one stylesheet is served from ``/static``.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles


def routes() -> list[BaseRoute]:
    from tundra.panel.pages import audit, dashboard, login, servers, settings, tokens

    return [
        *login.routes(),
        *dashboard.routes(),
        *servers.routes(),
        *tokens.routes(),
        *audit.routes(),
        *settings.routes(),
        Mount("/static", app=StaticFiles(packages=[("tundra.panel", "static")]), name="static"),
    ]
