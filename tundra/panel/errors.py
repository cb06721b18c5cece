"""The HTTP boundary for the error tree: one JSON shape for the API, one page for the panel.

``{"error": {"code": "<stable code>", "message": "<one line>", "request_id": "<id>"}}``.
Unexpected exceptions answer 500 with the same shape and no traceback; the traceback goes to the
server log with the request id, never to the client.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tundra.core import errors

log = logging.getLogger("tundra.panel")

# Most specific first.
STATUS: tuple[tuple[type[errors.TundraError], int], ...] = (
    (errors.Throttled, 429),
    (errors.TotpRequired, 401),
    (errors.AuthenticationFailed, 401),
    (errors.ReauthRequired, 403),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.Conflict, 409),
    (errors.InvalidInput, 422),
    (errors.InvalidFile, 422),
    (errors.IntegrityError, 409),
    (errors.StorageUnavailable, 503),
    (errors.KeyMaterialError, 500),
    (errors.ConfigError, 500),
)


def status_for(error: errors.TundraError) -> int:
    for cls, status in STATUS:
        if isinstance(error, cls):
            return status
    return 500


def request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def error_body(code: str, message: str, request: Request) -> dict[str, object]:
    return {"error": {"code": code, "message": message, "request_id": request_id(request)}}


def json_error(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, request), status_code=status, headers=headers)


def tundra_error_response(request: Request, exc: errors.TundraError) -> Response:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, errors.Throttled):
        headers["Retry-After"] = str(max(1, exc.retry_after))
    if status == 401 and request.url.path.startswith("/api/"):
        headers["WWW-Authenticate"] = 'Bearer realm="tundra"' + (
            ', error="invalid_token"' if isinstance(exc, errors.TokenInvalid) else ""
        )
    # Server-side problems are described generically to the client; details go to the log.
    message = str(exc) if status < 500 else "the server could not complete the request"
    if status >= 500:
        log.error("request %s failed: %s", request_id(request), exc)
    return json_error(request, status, exc.code, message, headers)
