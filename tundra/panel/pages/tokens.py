"""API tokens: list, create (the plaintext is shown once, on the answer to the post), revoke.

Issuing a token with the ``admin`` scope is sensitive: core asks for a fresh authentication and
the page answers the re-authentication form, which re-posts these fields.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import timedelta

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from tundra.core.identity.scopes import NON_ADMIN_SCOPES, SCOPES
from tundra.panel.auth import Ctx, page, redirect

#: Lifetimes offered by the form, in days ("" = never expires).
LIFETIMES = (("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("", "never"))


async def _tokens_page(
    ctx: Ctx,
    *,
    created: object = None,
    error: str | None = None,
    status: int = 200,
    form: Mapping[str, object] | None = None,
) -> Response:
    show_all = ctx.request.query_params.get("all") == "1"
    tokens = await ctx.call(
        ctx.services.tokens.list,
        ctx.principal,
        include_revoked=show_all,
        request_id=ctx.request_id,
    )
    offered = [(s, h) for s, h in SCOPES.items() if ctx.principal.is_admin or s in NON_ADMIN_SCOPES]
    return ctx.render(
        "tokens.html",
        status=status,
        title="API tokens",
        tokens=tokens,
        scopes=offered,
        lifetimes=LIFETIMES,
        created=created,
        error=error,
        show_all=show_all,
        form=form or {"scopes": [], "expires": "90"},
    )


@page
async def token_list(ctx: Ctx) -> Response:
    return await _tokens_page(ctx)


@page
async def token_create(ctx: Ctx) -> Response:
    services, principal = ctx.services, ctx.principal
    name, scopes = ctx.field("name"), ctx.fields("scopes")
    servers = [s for s in re.split(r"[\s,]+", ctx.field("servers")) if s]
    expires = ctx.field("expires")
    form = {"name": name, "scopes": scopes, "servers": ctx.field("servers"), "expires": expires}
    try:
        lifetime = timedelta(days=int(expires)) if expires else None
        if lifetime is not None and not 1 <= lifetime.days <= 3650:
            raise InvalidInput("choose a lifetime between 1 day and 10 years")
    except ValueError:
        return await _tokens_page(
            ctx, error="choose a lifetime from the list", status=422, form=form
        )
    except InvalidInput as exc:
        return await _tokens_page(ctx, error=str(exc), status=422, form=form)
    what = "issue an administrator token" if "admin" in scopes else "issue a token"
    try:
        created = await ctx.sensitive(
            lambda: services.tokens.create(
                principal,
                name=name,
                scopes=scopes,
                servers=servers,
                expires_in=lifetime,
                request_id=ctx.request_id,
            ),
            what=what,
        )
    except InvalidInput as exc:
        return await _tokens_page(ctx, error=str(exc), status=422, form=form)
    except (PermissionDenied, Conflict) as exc:
        return await _tokens_page(ctx, error=str(exc), status=403, form=form)
    if isinstance(created, Response):
        return created
    return await _tokens_page(ctx, created=created, status=201)


@page
async def token_revoke(ctx: Ctx) -> Response:
    try:
        await ctx.call(
            ctx.services.tokens.revoke,
            ctx.principal,
            ctx.request.path_params["token_id"],
            request_id=ctx.request_id,
        )
    except (NotFound, Conflict) as exc:
        return await _tokens_page(
            ctx, error=str(exc), status=404 if isinstance(exc, NotFound) else 409
        )
    return redirect("/tokens?notice=token-revoked")


def routes() -> list[BaseRoute]:
    return [
        Route("/tokens", token_list, methods=["GET"]),
        Route("/tokens", token_create, methods=["POST"]),
        Route("/tokens/{token_id}/revoke", token_revoke, methods=["POST"]),
    ]
