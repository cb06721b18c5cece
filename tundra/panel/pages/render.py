"""Jinja2 rendering for the panel: autoescaped templates, the values every page gets.

Templates hold no script and no style (the CSP allows neither inline); the one stylesheet is
``/static/tundra.css``.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

if TYPE_CHECKING:
    from tundra.panel.auth import Ctx

NAV = (
    ("/", "Dashboard"),
    ("/servers", "Servers"),
    ("/tokens", "API tokens"),
    ("/audit", "Audit log"),
    ("/settings", "Settings"),
)

#: Messages shown after a post/redirect/get, by code: nothing from the URL is echoed.
NOTICES = {
    "server-added": "The server was added.",
    "server-deleted": "The server was deleted.",
    "token-revoked": "The token was revoked.",
    "master-rotated": "The master key was rotated.",
    "logged-out": "You are logged out.",
    "login-expired": "The login took too long; start again.",
}


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("tundra.panel", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["nav"] = NAV
    return env


def render(
    ctx: Ctx,
    template: str,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    path = ctx.request.url.path
    notice = NOTICES.get(ctx.request.query_params.get("notice", ""))
    context = {
        "user": ctx.user,
        "csrf_token": ctx.csrf_token,
        "path": path,
        "section": "/" + path.strip("/").split("/")[0] if path != "/" else "/",
        "notice": notice,
        "request_id": ctx.request_id,
        "title": "Tundra",
        **values,
    }
    body = environment().get_template(template).render(context)
    return HTMLResponse(body, status_code=status, headers=dict(headers or {}))


_HTTP_TITLES = {404: "Page not found", 405: "Method not allowed"}


def http_error_page(request: Request, status: int, headers: Mapping[str, str] | None) -> Response:
    """A routing error (404, 405) outside /api/ as an HTML page; no session is loaded."""
    from tundra.panel.auth import Ctx

    ctx = Ctx(request=request, services=request.app.state.services)
    title = _HTTP_TITLES.get(status, "Error")
    return render(
        ctx,
        "error.html",
        status=status,
        headers=headers,
        title=title,
        message=f"{title}.",
        code="http_error",
    )
