"""Servers: list (with a tag filter, each server's agent), detail (agent, facts, a new join
token shown once), add, delete (sensitive: fresh authentication)."""

from __future__ import annotations

import re

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.agents.enrollment import JoinToken
from tundra.core.agents.models import facts_summary
from tundra.core.errors import AlreadyExists, InvalidInput, PermissionDenied
from tundra.panel.auth import Ctx, page, redirect


def _tags(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,]+", text) if t]


async def _list_page(
    ctx: Ctx, *, error: str | None = None, status: int = 200, form: dict[str, str] | None = None
) -> Response:
    tag = ctx.request.query_params.get("tag") or None
    servers = await ctx.call(
        ctx.services.servers.list, ctx.principal, tag=tag, request_id=ctx.request_id
    )
    return ctx.render(
        "servers.html",
        status=status,
        title="Servers",
        servers=servers,
        tag=tag,
        error=error,
        form=form or {},
    )


@page
async def server_list(ctx: Ctx) -> Response:
    return await _list_page(ctx)


@page
async def server_add(ctx: Ctx) -> Response:
    values = {k: ctx.field(k) for k in ("name", "address", "tags")}
    try:
        server = await ctx.call(
            ctx.services.servers.add,
            ctx.principal,
            name=values["name"],
            address=values["address"],
            tags=_tags(values["tags"]),
            request_id=ctx.request_id,
        )
    except InvalidInput as exc:
        return await _list_page(ctx, error=str(exc), status=422, form=values)
    except AlreadyExists as exc:
        return await _list_page(ctx, error=str(exc), status=409, form=values)
    except PermissionDenied as exc:
        return await _list_page(ctx, error=str(exc), status=403, form=values)
    return redirect(f"/servers/{server.name}?notice=server-added")


async def _detail_page(
    ctx: Ctx, *, join_token: JoinToken | None = None, status: int = 200
) -> Response:
    server = await ctx.call(
        ctx.services.servers.get,
        ctx.principal,
        ctx.request.path_params["name"],
        request_id=ctx.request_id,
    )
    return ctx.render(
        "server.html",
        status=status,
        title=f"Server {server.name}",
        server=server,
        facts=facts_summary(server.agent.facts) if server.agent else [],
        join_token=join_token,
    )


@page
async def server_detail(ctx: Ctx) -> Response:
    return await _detail_page(ctx)


@page
async def server_token(ctx: Ctx) -> Response:
    """A new join token, shown on the answer to the post and never again."""
    token = await ctx.call(
        ctx.services.enrollment.create_join_token,
        ctx.principal,
        ctx.request.path_params["name"],
        request_id=ctx.request_id,
    )
    return await _detail_page(ctx, join_token=token, status=201)


@page
async def server_delete(ctx: Ctx) -> Response:
    name = ctx.request.path_params["name"]
    services, principal = ctx.services, ctx.principal
    done = await ctx.sensitive(
        lambda: services.servers.remove(principal, name, request_id=ctx.request_id),
        what=f"delete server {name}",
    )
    if isinstance(done, Response):
        return done
    return redirect("/servers?notice=server-deleted")


def routes() -> list[BaseRoute]:
    return [
        Route("/servers", server_list, methods=["GET"]),
        Route("/servers", server_add, methods=["POST"]),
        Route("/servers/{name}", server_detail, methods=["GET"]),
        Route("/servers/{name}/token", server_token, methods=["POST"]),
        Route("/servers/{name}/delete", server_delete, methods=["POST"]),
    ]
