"""One API endpoint as data, and the one generic handler that serves every endpoint.

An :class:`Endpoint` holds what the OpenAPI document publishes (path, parameters, body and
response schemas, the scope and the audit action) and the two functions that do the work: ``call``
(the one core service method, run in the API's thread pool, :mod:`~tundra.panel.api.threads`)
and ``render``. The handler:

1. takes the bearer token from the ``Authorization`` header (no cookie is ever looked at, so the
   API has no CSRF surface) and reads a JSON body, capped at :data:`MAX_BODY` bytes;
2. in *one* hop to the thread pool: verifies the token (format, checksum and env before any
   database access, in core), then validates path, query and body against the published
   schemas, then makes the core call with the principal and the request id;
3. renders the result: JSON, or a stream (see :mod:`tundra.panel.api.stream`).

Authentication comes before validation, so an anonymous caller learns nothing about the
parameters and always gets 401.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tundra.core.errors import TokenInvalid
from tundra.core.principal import Principal
from tundra.core.services import Services
from tundra.panel.api.schemas import COMPONENTS, Schema
from tundra.panel.api.stream import Streamed
from tundra.panel.api.threads import in_thread
from tundra.panel.api.validate import SchemaViolation, validate
from tundra.panel.errors import json_error, request_id

#: Largest request body accepted (bytes). Every documented body is far smaller.
MAX_BODY = 64 * 1024
AUTH_CHALLENGE = 'Bearer realm="tundra"'


class ApiError(Exception):
    """A refusal decided at the HTTP layer (malformed request), rendered in the error shape."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_input", message)


@dataclass(frozen=True)
class Param:
    name: str
    schema: Schema
    description: str
    required: bool = False


@dataclass(frozen=True)
class Call:
    """Everything a ``call`` needs: who, which request, and the validated arguments."""

    services: Services
    who: Principal | None
    request_id: str
    path: dict[str, Any]
    query: dict[str, Any]
    body: dict[str, Any]
    #: The query parameters the caller gave (``query`` also holds defaults).
    given: frozenset[str] = frozenset()

    @property
    def principal(self) -> Principal:
        if self.who is None:  # a public endpoint asked for a principal: a programming error
            raise RuntimeError("this endpoint is public and has no principal")
        return self.who


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    operation_id: str
    summary: str
    call: Callable[[Call], Any]
    render: Callable[[Any, Call], Response]
    #: Success status and its JSON schema (``None``: not JSON, see ``media_types``).
    ok: int = 200
    response: Schema | None = None
    #: Other success media types (name -> description), for streamed formats.
    media_types: Mapping[str, str] = field(default_factory=dict)
    path_params: tuple[Param, ...] = ()
    query: tuple[Param, ...] = ()
    body: Schema | None = None
    #: The scope the core requires (documentation; the core enforces it).
    scope: str | None = None
    #: Audit actions a success writes, in the same transaction as the change.
    audit: tuple[str, ...] = ()
    #: Error statuses this endpoint can answer (besides 401 and 500).
    errors: tuple[int, ...] = (403, 422)
    description: str = ""
    #: No token needed (only the OpenAPI document itself).
    public: bool = False

    @property
    def state_changing(self) -> bool:
        return self.method not in ("GET", "HEAD")


# --- the request side -----------------------------------------------------------------------


def bearer_token(request: Request) -> str:
    """The token of ``Authorization: Bearer …``; 401 when there is none."""
    values = request.headers.getlist("authorization")
    if not values:
        raise ApiError(
            401,
            "authentication_required",
            "this endpoint needs an API token (Authorization: Bearer tnd_…)",
            {"WWW-Authenticate": AUTH_CHALLENGE},
        )
    scheme, _, credentials = values[0].strip().partition(" ")
    if len(values) != 1 or scheme.lower() != "bearer" or not credentials.strip():
        # Someone tried to authenticate and failed: the same answer as any bad token.
        raise TokenInvalid("bad_header")
    return credentials.strip()


async def read_body(request: Request) -> bytes | ApiError:
    """The body, at most MAX_BODY bytes; an oversized one becomes a 413 raised after auth."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return ApiError(413, "payload_too_large", f"the request body exceeds {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return ApiError(413, "payload_too_large", f"the request body exceeds {MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate field {key[:40]!r}")
        result[key] = value
    return result


def parse_body(
    endpoint: Endpoint, raw: bytes | ApiError | None, content_type: str | None
) -> dict[str, Any]:
    if endpoint.body is None:
        return {}
    if isinstance(raw, ApiError):
        raise raw
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the request body as application/json")
    if not raw:
        raise invalid("a JSON request body is required")
    try:
        value = json.loads(
            raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except UnicodeDecodeError:
        raise invalid("the request body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        message = str(exc) if str(exc).startswith("duplicate field") else "malformed JSON"
        raise invalid(f"the request body is not valid JSON: {message}") from None
    check(value, endpoint.body, "body")
    assert isinstance(value, dict)
    return value


def check(value: Any, schema: Schema, where: str) -> None:
    try:
        validate(value, schema, COMPONENTS, where)
    except SchemaViolation as exc:
        raise invalid(str(exc)) from None


def parse_query(endpoint: Endpoint, items: list[tuple[str, str]]) -> dict[str, Any]:
    declared = {p.name: p for p in endpoint.query}
    values: dict[str, Any] = {}
    for name, raw in items:
        param = declared.get(name)
        if param is None:
            raise invalid(f"unknown query parameter {name[:40]!r}")
        if name in values:
            raise invalid(f"the query parameter {name!r} is given more than once")
        values[name] = _coerce(raw, param.schema, f"query.{name}")
    for param in endpoint.query:
        if param.required and param.name not in values:
            raise invalid(f"the query parameter {param.name!r} is required")
        if param.name not in values and "default" in param.schema:
            values[param.name] = param.schema["default"]
    return values


def _coerce(raw: str, schema: Schema, where: str) -> Any:
    """A query or path string as the schema's type, then validated."""
    value: Any = raw
    kind = schema.get("type")
    if kind == "integer":
        if not re.fullmatch(r"-?[0-9]{1,18}", raw):
            raise invalid(f"{where}: expected an integer")
        value = int(raw)
    elif kind == "boolean":
        if raw not in ("true", "false"):
            raise invalid(f"{where}: expected true or false")
        value = raw == "true"
    check(value, schema, where)
    return value


def parse_path(endpoint: Endpoint, params: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in endpoint.path_params:
        raw = str(params.get(param.name, ""))
        try:
            validate(raw, param.schema, COMPONENTS, f"path.{param.name}")
        except SchemaViolation:
            # A name that cannot exist names nothing: the same answer as an unknown one.
            raise ApiError(404, "not_found", f"no {param.description} {raw[:60]!r}") from None
        values[param.name] = raw
    return values


# --- the handler ----------------------------------------------------------------------------


def handler(endpoint: Endpoint) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        rid = request_id(request)
        services: Services = request.app.state.services
        try:
            token = None if endpoint.public else bearer_token(request)
            raw = await read_body(request) if endpoint.body is not None else None
            content_type = request.headers.get("content-type")
            query_items = request.query_params.multi_items()

            def work() -> tuple[Any, Call]:
                who = None if token is None else services.tokens.verify(token, kind="api")
                call = Call(
                    services=services,
                    who=who,
                    request_id=rid,
                    path=parse_path(endpoint, request.path_params),
                    query=parse_query(endpoint, query_items),
                    body=parse_body(endpoint, raw, content_type),
                    given=frozenset(name for name, _ in query_items),
                )
                return endpoint.call(call), call

            result, call = await in_thread(work)
            return await _finish(endpoint.render(result, call))
        except ApiError as exc:
            return json_error(request, exc.status, exc.code, exc.message, exc.headers)

    return handle


async def _finish(response: Response) -> Response:
    if isinstance(response, Streamed):
        await response.started()
    return response


def json_response(
    present: Callable[[Any], Any], status: int = 200
) -> Callable[[Any, Call], Response]:
    """A renderer: ``present(result)`` as JSON with ``status``."""

    def render(result: Any, call: Call) -> Response:
        return JSONResponse(present(result), status_code=status)

    return render
