"""Acceptance: start a security acceptance run of this panel, watch it, read its report.

Administrators only (core refuses anyone else; the page answers 403). The form posts with the
CSRF token like every panel form and takes no URL and no password: the run targets this panel
(``run_options``, shared with ``POST /api/v1/acceptance-runs``), and the checks that need a
login or an agent identity skip with their reason, which the page says before the run starts.

While a run is going on, its page is answered with a ``Refresh`` header: the browser reloads it
every few seconds without any script (the CSP allows none inline), and stops once the run has
ended, when the page shows the report.
"""

from __future__ import annotations

import re
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.acceptance.model import Section, Severity
from tundra.core.acceptance.registry import NEEDS, all_checks
from tundra.core.acceptance.service import local_defaults
from tundra.core.errors import Conflict, InvalidInput, NotFound
from tundra.core.identity.users import require_admin
from tundra.panel.api.acceptance import start_run
from tundra.panel.auth import Ctx, page, redirect

#: Seconds between reloads of a running run's page.
REFRESH_SECONDS = 2
_RUN_ID = re.compile(r"[0-9a-f]{32}")
#: What the panel cannot give a run, per ``needs`` of a check.
_MISSING = {
    "credentials": "a login (user and password)",
    "agent_identity": "a test agent identity (certificate and key)",
}
#: The order of the statuses in a finished run's summary: what needs attention first.
STATUS_ORDER = ("fail", "error", "waived", "skip", "pass")


def _catalogue() -> list[dict[str, Any]]:
    """Every check with what would make it skip when run from here."""
    rows = []
    for spec in all_checks():
        missing = [_MISSING[n] for n in spec.needs if n in _MISSING]
        rows.append(
            {
                "id": spec.id,
                "title": spec.title,
                "section": str(spec.section),
                "severity": str(spec.severity),
                "local": spec.local,
                "skips": missing,
                "needs": [NEEDS[n] for n in spec.needs],
            }
        )
    return rows


async def _form(
    ctx: Ctx,
    *,
    error: str | None = None,
    status: int = 200,
    chosen: list[str] | None = None,
    fail_on: str = Severity.LOW.value,
    local: bool = True,
) -> Response:
    services = ctx.services
    await ctx.call(require_admin, services, ctx.principal, request_id=ctx.request_id)
    defaults = await ctx.call(local_defaults, services)
    catalogue = await ctx.call(_catalogue)
    return ctx.render(
        "acceptance.html",
        status=status,
        title="Acceptance",
        error=error,
        target=defaults["url"],
        sections=[s.value for s in Section],
        severities=[s.value for s in Severity],
        chosen=chosen if chosen is not None else [s.value for s in Section],
        fail_on=fail_on,
        local=local,
        catalogue=catalogue,
    )


@page
async def acceptance_page(ctx: Ctx) -> Response:
    return await _form(ctx)


@page
async def acceptance_start(ctx: Ctx) -> Response:
    chosen = ctx.fields("section")
    fail_on = ctx.field("fail_on", Severity.LOW.value)
    local = ctx.field("local") == "1"
    values: dict[str, Any] = {"chosen": chosen, "fail_on": fail_on, "local": local}
    if not chosen:
        return await _form(ctx, error="Choose at least one section.", status=422, **values)
    try:
        state = await ctx.call(
            lambda: start_run(
                ctx.services,
                ctx.principal,
                request_id=ctx.request_id,
                sections=chosen,
                local=local,
                fail_on=fail_on,
            )
        )
    except InvalidInput as exc:
        return await _form(ctx, error=str(exc), status=422, **values)
    except Conflict as exc:
        return await _form(ctx, error=str(exc), status=409, **values)
    return redirect(f"/acceptance/runs/{state.id}")


@page
async def acceptance_run(ctx: Ctx) -> Response:
    run_id = ctx.request.path_params["run_id"]
    if not _RUN_ID.fullmatch(run_id):
        raise NotFound("no such acceptance run", hint="runs are kept for 7 days")
    state = await ctx.call(
        ctx.services.acceptance.get, ctx.principal, run_id, request_id=ctx.request_id
    )
    running = state.status == "running"
    report = state.report or {}
    results = report.get("checks") if report else list(state.results)
    counts = report.get("counts", {})
    return ctx.render(
        "acceptance_run.html",
        headers={"Refresh": str(REFRESH_SECONDS)} if running else None,
        title="Acceptance run",
        run=state,
        running=running,
        refresh=REFRESH_SECONDS,
        results=results or [],
        counts=[(s, counts.get(s, 0)) for s in STATUS_ORDER],
        report=state.report,
    )


def routes() -> list[BaseRoute]:
    return [
        Route("/acceptance", acceptance_page, methods=["GET"]),
        Route("/acceptance", acceptance_start, methods=["POST"]),
        Route("/acceptance/runs/{run_id}", acceptance_run, methods=["GET"]),
    ]
