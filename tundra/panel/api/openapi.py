"""The OpenAPI 3.1 document of ``/api/v1``, generated from the endpoint table.

The same :class:`~tundra.panel.api.endpoint.Endpoint` objects build the routes and this document,
and the same schemas validate requests, so the document cannot describe an API that is not there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tundra import __version__
from tundra.panel.api.endpoint import Endpoint, Param
from tundra.panel.api.schemas import COMPONENTS, ref

REASONS = {
    401: "No token, or one that is malformed, has a bad checksum, is unknown, expired, revoked "
    "or of kind mcp (one answer for all)",
    403: "The token lacks the scope or the resource, or the operation is sensitive "
    "(code reauth_required)",
    404: "Not found",
    409: "Conflicts with the current state (exists already, revoked already)",
    413: "The request body is larger than 64 KiB",
    415: "The request body is not application/json",
    422: "A parameter or the body does not match the schema",
    500: "An unexpected error (details in the server log under the request id)",
}

DESCRIPTION = (
    "Tundra's REST API. Authenticate every request (except this document) with an API token: "
    "`Authorization: Bearer tnd_live_…`. Cookie sessions are not accepted here, so the API has no "
    "CSRF surface. Every error has one shape: "
    '`{"error": {"code", "message", "request_id"}}`; the request id is also in the '
    "`X-Request-ID` response header and in every audit row the request writes. See docs/api.md."
)


def _parameter(param: Param, where: str) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": where,
        "required": param.required or where == "path",
        "description": param.description,
        "schema": param.schema,
    }


def _error(status: int) -> dict[str, Any]:
    return {
        "description": REASONS[status],
        "content": {"application/json": {"schema": ref("Error")}},
    }


def operation(endpoint: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "tags": [endpoint.path.split("/")[3]],
    }
    description = endpoint.description
    if endpoint.scope:
        description = f"Scope: `{endpoint.scope}`. {description}".strip()
    if description:
        op["description"] = description
    params = [_parameter(p, "path") for p in endpoint.path_params]
    params += [_parameter(p, "query") for p in endpoint.query]
    if params:
        op["parameters"] = params
    if endpoint.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": endpoint.body}},
        }
    content: dict[str, Any] = {}
    if endpoint.response is not None:
        content["application/json"] = {"schema": endpoint.response}
    for media, text in endpoint.media_types.items():
        content[media] = {"schema": {"type": "string", "description": text}}
    responses: dict[str, Any] = {
        str(endpoint.ok): {"description": endpoint.summary, "content": content}
    }
    # Every endpoint checks its query string (an unknown parameter is 422).
    statuses = set(endpoint.errors) | {422, 500}
    if not endpoint.public:
        statuses.add(401)
        op["security"] = [{"bearerAuth": []}]
    else:
        op["security"] = []
    for status in sorted(statuses):
        responses[str(status)] = _error(status)
    op["responses"] = responses
    if endpoint.scope:
        op["x-tundra-scope"] = endpoint.scope
    if endpoint.audit:
        op["x-tundra-audit"] = [str(a) for a in endpoint.audit]
    return op


def build(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tundra API",
            "version": f"1 (tundra {__version__})",
            "description": DESCRIPTION,
        },
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token: tnd_{env}_{43 base64url characters}",
                }
            },
        },
    }
