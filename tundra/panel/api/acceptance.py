"""``/api/v1/acceptance-runs``: start a security acceptance run of this panel, and read it.

Both routes call :class:`~tundra.core.acceptance.service.AcceptanceService` (admin only, audited,
one run at a time); the panel's ``/acceptance`` page builds its options with the same
:func:`run_options`, so the two front ends run exactly the same thing.

The target rule (SSRF): the server makes the connections of a run, so a run may only target
*this* panel, an https origin whose host is one of ``panel_hostnames`` and whose port is
``public_https_port`` or the port of ``panel_listen``. Anything else is refused (422) before any
connection is made; other deployments are tested from a shell with ``tundra acceptance run``.
The panel never takes a password for a run: checks that need credentials or an agent identity
skip, each naming what it needs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse, Response

from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import CATALOGUE, Section, Severity
from tundra.core.acceptance.service import RunState, check_target, local_defaults
from tundra.core.audit.actions import Action
from tundra.core.errors import InvalidInput
from tundra.core.identity.scopes import ADMIN
from tundra.core.identity.users import require_admin
from tundra.core.principal import Principal
from tundra.core.services import Services
from tundra.panel.api.endpoint import Call, Endpoint, Param, json_response
from tundra.panel.api.schemas import NULLABLE_TIME, TIME, Schema

PATH = "/api/v1/acceptance-runs"
#: Run ids are ``new_id()``: 32 lowercase hex characters.
RUN_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "The run's id"}
STATES = ["running", "finished", "crashed"]

RUN_CREATE: Schema = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sections": {
            "type": "array",
            "maxItems": len(Section),
            "uniqueItems": True,
            "items": {"type": "string", "enum": [s.value for s in Section]},
            "description": "Run these sections (with `checks`: either); none: every section",
        },
        "checks": {
            "type": "array",
            "maxItems": len(CATALOGUE),
            "uniqueItems": True,
            "items": {"type": "string", "enum": list(CATALOGUE)},
            "description": "Run these check ids too (see `tundra acceptance list`)",
        },
        "url": {
            "type": "string",
            "maxLength": 300,
            "pattern": r"^https://(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?/?$",
            "description": "The panel's own origin (default: the first of panel_hostnames on "
            "public_https_port). Only this panel's hostnames and ports are accepted: the run's "
            "connections are made by the server",
        },
        "local": {
            "type": "boolean",
            "default": True,
            "description": "Also run the host-local checks (files, listeners, units, the local "
            "database), with this panel's own services",
        },
        "fail_on": {
            "type": "string",
            "enum": [s.value for s in Severity],
            "default": Severity.LOW.value,
            "description": "Failures at or above this severity make exit_code 1",
        },
    },
}

RESULT: Schema = {
    "type": "object",
    "required": ["id", "title", "section", "severity", "status", "summary", "evidence"],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "section": {"type": "string", "enum": [s.value for s in Section]},
        "severity": {"type": "string", "enum": [s.value for s in Severity]},
        "status": {"type": "string", "enum": ["pass", "fail", "error", "skip", "waived"]},
        "summary": {"type": "string"},
        "evidence": {"type": "object"},
        "duration_ms": {"type": "integer"},
        "waiver": {"type": ["object", "null"]},
    },
}

RUN: Schema = {
    "type": "object",
    "additionalProperties": False,
    "required": [
        "id",
        "state",
        "started_by",
        "started_at",
        "finished_at",
        "target",
        "progress",
        "running",
        "results",
        "exit_code",
        "error",
        "options",
        "report",
    ],
    "properties": {
        "id": RUN_ID,
        "state": {
            "type": "string",
            "enum": STATES,
            "description": "running, then finished (report set) or crashed (error set)",
        },
        "started_by": {"type": "string", "description": "The audit actor who started it"},
        "started_at": TIME,
        "finished_at": NULLABLE_TIME,
        "target": {"type": "string"},
        "progress": {
            "type": "object",
            "additionalProperties": False,
            "required": ["done", "total"],
            "properties": {
                "done": {"type": "integer", "minimum": 0},
                "total": {"type": "integer", "minimum": 0, "description": "0 until selected"},
            },
        },
        "running": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Ids of the checks running now",
        },
        "results": {
            "type": "array",
            "items": RESULT,
            "description": "Results so far, in the order they finished",
        },
        "exit_code": {
            "type": ["integer", "null"],
            "description": "0, 1 or 2, as `tundra acceptance run` would exit; null until finished",
        },
        "error": {"type": ["string", "null"], "description": "Why a crashed run crashed"},
        "options": {"type": "object", "description": "The run's options, without secrets"},
        "report": {
            "type": ["object", "null"],
            "description": "Once finished: the report of `tundra acceptance run --format json` "
            "(its JSON Schema is tundra/core/acceptance/schemas/report.schema.json)",
        },
    },
}


# --- the options, shared with the panel page ------------------------------------------------


def run_options(
    services: Services,
    *,
    url: str | None = None,
    sections: Iterable[str] = (),
    checks: Iterable[str] = (),
    local: bool = True,
    fail_on: str = Severity.LOW.value,
) -> RunOptions:
    """The options of a run of this panel, with the panel's own URL, CA and redirect port.

    No credentials and no agent identity: the checks that need them skip with the reason.
    """
    defaults = local_defaults(services)
    target = check_target(services, url or defaults["url"])
    try:
        severity = Severity(fail_on)
    except ValueError:
        raise InvalidInput(
            f"unknown severity {fail_on[:20]!r}", hint="one of " + ", ".join(Severity)
        ) from None
    return RunOptions(
        url=target.base_url,
        sections=tuple(sections),
        checks=tuple(checks),
        ca_file=defaults["ca_file"],
        http_port=defaults["http_port"],
        local=local,
        fail_on=severity,
    )


def start_run(
    services: Services,
    principal: Principal,
    *,
    request_id: str,
    url: str | None = None,
    sections: Iterable[str] = (),
    checks: Iterable[str] = (),
    local: bool = True,
    fail_on: str = Severity.LOW.value,
) -> RunState:
    """Start a run of this panel. A non-administrator is refused first, so a refusal reveals
    nothing about the target rule."""
    require_admin(services, principal, request_id=request_id)
    options = run_options(
        services, url=url, sections=sections, checks=checks, local=local, fail_on=fail_on
    )
    return services.acceptance.start(principal, options, request_id=request_id)


# --- the API --------------------------------------------------------------------------------


def run_view(state: RunState) -> dict[str, Any]:
    return {
        "id": state.id,
        "state": state.status,
        "started_by": state.started_by,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "target": state.target,
        "progress": {"done": state.done, "total": state.total},
        "running": list(state.running),
        "results": list(state.results),
        "exit_code": state.exit_code,
        "error": state.error,
        "options": state.options,
        "report": state.report,
    }


def _start(c: Call) -> RunState:
    body = c.body
    return start_run(
        c.services,
        c.principal,
        request_id=c.request_id,
        url=body.get("url"),
        sections=body.get("sections", ()),
        checks=body.get("checks", ()),
        local=body.get("local", True),
        fail_on=body.get("fail_on", Severity.LOW.value),
    )


def _started(state: RunState, call: Call) -> Response:
    return JSONResponse(
        run_view(state), status_code=202, headers={"Location": f"{PATH}/{state.id}"}
    )


ENDPOINTS = (
    Endpoint(
        "POST",
        PATH,
        "createAcceptanceRun",
        "Start an acceptance run of this panel",
        call=_start,
        render=_started,
        ok=202,
        response=RUN,
        body=RUN_CREATE,
        scope=ADMIN,
        audit=(Action.ACCEPTANCE_RUN_START,),
        errors=(403, 409, 413, 415, 422),
        description="Administrators only. The run goes on in the background; poll the "
        "`Location` it answers. One run at a time (409 while another runs). The target must "
        "be this panel (422 otherwise): the server makes the run's connections. No "
        "credentials are taken here, so checks that need a login or an agent identity skip "
        "with their reason. `acceptance:run:finish` is written with the same request id when "
        "the run ends.",
    ),
    Endpoint(
        "GET",
        f"{PATH}/{{id}}",
        "getAcceptanceRun",
        "Show an acceptance run: progress, then the report",
        call=lambda c: c.services.acceptance.get(
            c.principal, c.path["id"], request_id=c.request_id
        ),
        render=json_response(run_view),
        response=RUN,
        path_params=(Param("id", RUN_ID, "acceptance run", required=True),),
        scope=ADMIN,
        errors=(403, 404, 422),
        description="Administrators only. Runs are kept for 7 days.",
    ),
)
