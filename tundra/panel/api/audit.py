"""``/api/v1/audit-log``: pages of the log, streamed exports, and chain verification.

``format=json`` (the default) answers one page, with every filter and a ``next`` cursor.
``format=jsonl`` and ``format=csv`` stream an *export*: the contiguous range of the chain between
``since`` and ``until``, in the core's export format, so that the file verifies on its own with
``tundra audit verify --file``. A selection by actor, action or resource would cut holes in the
chain, so those filters (and the page cursor) belong to ``format=json`` only.
"""

from __future__ import annotations

from typing import IO, Any

from starlette.responses import JSONResponse, Response

from tundra.panel.api.endpoint import Call, Endpoint, Param, invalid, json_response
from tundra.panel.api.schemas import CURSOR, FILTER_TEXT, TIME_PARAM, ref
from tundra.panel.api.stream import Streamed

MAX_PAGE = 1000
EXPORT_MEDIA = {"jsonl": "application/jsonl", "csv": "text/csv; charset=utf-8"}
_PAGE_ONLY = ("actor", "action", "resource", "cursor", "limit")


def _page(c: Call) -> Any:
    query = c.query
    if query["format"] != "json":
        given = [name for name in _PAGE_ONLY if name in c.given]
        if given:
            raise invalid(
                f"{', '.join(given)}: only with format=json; an export (jsonl, csv) "
                "is the whole range between since and until, so that it verifies on "
                "its own"
            )
        return query["format"]
    limit = query["limit"]
    rows = c.services.audit.list(
        since=query.get("since"),
        until=query.get("until"),
        actor=query.get("actor"),
        action=query.get("action"),
        resource=query.get("resource"),
        limit=limit + 1,
        after_seq=int(query["cursor"]) if "cursor" in query else None,
        principal=c.principal,
        request_id=c.request_id,
    )
    return rows[:limit], (str(rows[limit - 1].seq) if len(rows) > limit else None)


def _render(result: Any, c: Call) -> Response:
    if isinstance(result, str):
        fmt = result
        services, principal, query = c.services, c.principal, c.query

        def produce(out: IO[bytes]) -> None:
            services.audit.export(
                out,
                format=fmt,
                since=query.get("since"),
                until=query.get("until"),
                principal=principal,
                request_id=c.request_id,
            )

        return Streamed(
            produce,
            media_type=EXPORT_MEDIA[fmt],
            headers={"Content-Disposition": f'attachment; filename="tundra-audit.{fmt}"'},
        )
    rows, next_cursor = result
    return JSONResponse({"entries": [row.as_dict() for row in rows], "next": next_cursor})


ENDPOINTS = (
    Endpoint(
        "GET",
        "/api/v1/audit-log",
        "listAuditLog",
        "Read or export the audit log",
        call=_page,
        render=_render,
        response=ref("AuditPage"),
        media_types={
            "application/jsonl": "format=jsonl: one canonical JSON row per line",
            "text/csv": "format=csv: a header line, then one row per line",
        },
        scope="audit:read",
        errors=(403, 422),
        query=(
            Param(
                "format",
                {"type": "string", "enum": ["json", "jsonl", "csv"], "default": "json"},
                "json: a page with a `next` cursor; jsonl or csv: a streamed export",
            ),
            Param("since", TIME_PARAM, "rows at or after this time"),
            Param("until", TIME_PARAM, "rows before this time"),
            Param(
                "actor",
                FILTER_TEXT,
                "exact actor (user:NAME, token:PREFIX, …); a trailing "
                "* matches a prefix (format=json only)",
            ),
            Param(
                "action",
                FILTER_TEXT,
                "exact action (fleet:server:create); a trailing * "
                "matches a prefix (format=json only)",
            ),
            Param(
                "resource",
                FILTER_TEXT,
                "exact resource (server:web-1); a trailing * matches a prefix (format=json only)",
            ),
            Param("cursor", CURSOR, "the `next` of the previous page (format=json only)"),
            Param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
                "rows per page (format=json only)",
            ),
        ),
        description="Rows in sequence order. A page's `next` is null on the last page.",
    ),
    Endpoint(
        "GET",
        "/api/v1/audit-log/verify",
        "verifyAuditLog",
        "Verify the audit chain",
        call=lambda c: c.services.audit.verify(principal=c.principal, request_id=c.request_id),
        render=json_response(lambda result: result.as_dict()),
        response=ref("AuditVerify"),
        scope="audit:read",
        errors=(403,),
        description="Walks the whole chain; a damaged chain is a 200 with `ok: false`, the "
        "first bad sequence number and the kind of damage.",
    ),
)
