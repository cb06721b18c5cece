"""The audit log: filters, newest-first pages, the chain's verification, export downloads."""

from __future__ import annotations

from typing import IO
from urllib.parse import urlencode

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.errors import InvalidInput
from tundra.core.identity.scopes import require
from tundra.panel.auth import Ctx, page

PAGE_SIZE = 50
FILTERS = ("actor", "action", "resource", "since", "until")
EXPORT_MEDIA = {
    "jsonl": "application/jsonl",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


@page
async def audit_log(ctx: Ctx) -> Response:
    services, principal = ctx.services, ctx.principal
    query = ctx.request.query_params
    filters = {name: query.get(name, "").strip() for name in FILTERS}
    before = query.get("before", "")
    rows, error, status = [], None, 200
    try:
        if before and not before.isdigit():
            raise InvalidInput("the page cursor is not a sequence number")
        rows = await ctx.call(
            services.audit.list,
            **{k: v or None for k, v in filters.items()},
            limit=PAGE_SIZE + 1,
            before_seq=int(before) if before else None,
            newest_first=True,
            principal=principal,
            request_id=ctx.request_id,
        )
    except InvalidInput as exc:
        error, status = str(exc), 422
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    chain = await ctx.call(services.audit.verify, principal=principal, request_id=ctx.request_id)
    older = (
        {**{k: v for k, v in filters.items() if v}, "before": str(rows[-1].seq)}
        if more and rows
        else None
    )
    export = {k: filters[k] for k in ("since", "until") if filters[k]}
    links = [(fmt, urlencode({"format": fmt, **export})) for fmt in EXPORT_MEDIA]
    return ctx.render(
        "audit.html",
        status=status,
        title="Audit log",
        rows=rows,
        filters=filters,
        chain=chain,
        older=older,
        first_page=bool(before),
        export_links=links,
        error=error,
    )


@page
async def audit_export(ctx: Ctx) -> Response:
    services, principal = ctx.services, ctx.principal
    query = ctx.request.query_params
    fmt = query.get("format", "jsonl")
    if fmt not in EXPORT_MEDIA:
        raise InvalidInput(f"unknown export format {fmt[:20]!r}", hint="jsonl, csv or json")
    since, until = query.get("since") or None, query.get("until") or None
    await ctx.call(require, services, principal, "audit:read", request_id=ctx.request_id)
    from tundra.core.audit.service import parse_time

    # Bad dates are refused before the download starts (a page, not a cut-short file).
    parse_time(since, name="since")
    parse_time(until, name="until")
    from tundra.panel.api.stream import Streamed

    rid = ctx.request_id

    def produce(out: IO[bytes]) -> None:
        services.audit.export(
            out, format=fmt, since=since, until=until, principal=principal, request_id=rid
        )

    response = Streamed(
        produce,
        media_type=EXPORT_MEDIA[fmt],
        headers={"Content-Disposition": f'attachment; filename="tundra-audit.{fmt}"'},
    )
    await response.started()  # an early error is still answered as a page
    return response


def routes() -> list[BaseRoute]:
    return [
        Route("/audit", audit_log, methods=["GET"]),
        Route("/audit/export", audit_export, methods=["GET"]),
    ]
