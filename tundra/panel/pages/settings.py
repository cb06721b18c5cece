"""Settings: key status, TLS status, master key rotation (sensitive: fresh authentication)."""

from __future__ import annotations

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.identity.users import require_admin
from tundra.panel.auth import Ctx, page, redirect


@page
async def settings_page(ctx: Ctx) -> Response:
    services = ctx.services
    require_admin(services, ctx.principal, request_id=ctx.request_id)
    keys = await ctx.call(services.keys.status)
    tls = await ctx.call(services.pki.status)
    return ctx.render(
        "settings.html", title="Settings", keys=keys, tls=tls, settings=services.settings
    )


@page
async def rotate_master(ctx: Ctx) -> Response:
    services, principal = ctx.services, ctx.principal
    # Core refuses non-administrators (before asking for a re-authentication).
    done = await ctx.sensitive(
        lambda: services.keys.rotate_master(principal, request_id=ctx.request_id),
        what="rotate the master key",
    )
    if isinstance(done, Response):
        return done
    return redirect("/settings?notice=master-rotated")


def routes() -> list[BaseRoute]:
    return [
        Route("/settings", settings_page, methods=["GET"]),
        Route("/settings/rotate-master", rotate_master, methods=["POST"]),
    ]
