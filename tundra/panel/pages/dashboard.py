"""The dashboard: fleet summary, key status and the audit chain's state."""

from __future__ import annotations

from collections import Counter

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.panel.auth import Ctx, page


@page
async def dashboard(ctx: Ctx) -> Response:
    services, principal = ctx.services, ctx.principal
    rid = ctx.request_id
    servers = await ctx.call(services.servers.list, principal, request_id=rid)
    keys = await ctx.call(services.keys.status) if principal.is_admin else None
    chain = await ctx.call(services.audit.verify, principal=principal, request_id=rid)
    by_status = sorted(Counter(s.status for s in servers).items())
    return ctx.render(
        "dashboard.html",
        title="Dashboard",
        servers=servers,
        by_status=by_status,
        keys=keys,
        chain=chain,
    )


def routes() -> list[BaseRoute]:
    return [Route("/", dashboard, methods=["GET"])]
