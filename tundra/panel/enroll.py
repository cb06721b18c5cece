"""Agent enrollment over the panel's HTTPS listener: ``POST /agent/v1/enroll`` and the public
``GET /agent/v1/ca.pem``.

An agent has no certificate before it enrolls, and the gateway has no method a caller without one
can reach, so enrollment comes here. The body is a serialized ``tundra.agent.v1.EnrollRequest``
(``application/x-protobuf``, at most MAX_BODY bytes) and the answer an ``EnrollResponse``; the
join token in the body is the only credential. No cookie or session is read, so CSRF does not
apply (these routes are plain Starlette routes, outside the page decorator's origin and token
checks). Errors are the panel's JSON error shape: 403 for a refusal, 422 for bad input, 415 for
another media type, 413 for a large body, 429 (with Retry-After) when the source address failed
too often.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.errors import TundraError
from tundra.core.services import Services
from tundra.panel.api.threads import in_thread
from tundra.panel.errors import json_error, request_id, tundra_error_response

MEDIA_TYPE = "application/x-protobuf"
PEM_TYPE = "application/x-pem-file"
#: An EnrollRequest is a token, a CSR of a few hundred bytes and two short strings.
MAX_BODY = 64 * 1024


async def _read_body(request: Request) -> bytes | None:
    """The body, or None when it is larger than MAX_BODY (stops reading at the limit)."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def enroll(request: Request) -> Response:
    from google.protobuf.message import DecodeError

    from tundra.agent.v1 import agent_pb2

    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != MEDIA_TYPE:
        return json_error(request, 415, "unsupported_media_type", f"the body must be {MEDIA_TYPE}")
    body = await _read_body(request)
    if body is None:
        return json_error(
            request, 413, "payload_too_large", f"the request body exceeds {MAX_BODY} bytes"
        )
    message = agent_pb2.EnrollRequest()
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError):
        return json_error(request, 422, "invalid_input", "the body is not an EnrollRequest")
    if not message.join_token:
        return json_error(request, 422, "invalid_input", "the EnrollRequest has no join token")
    services: Services = request.app.state.services
    client = request.client
    source = client.host if client else "unknown"
    try:
        done = await in_thread(
            lambda: services.enrollment.enroll(
                join_token=message.join_token,
                csr_pem=message.csr_pem,
                agent_version=message.agent_version,
                hostname=message.hostname,
                source_address=source,
                request_id=request_id(request),
            )
        )
    except TundraError as exc:
        return tundra_error_response(request, exc)
    answer = agent_pb2.EnrollResponse(
        agent_id=done.agent_id,
        server_name=done.server_name,
        certificate_pem=done.certificate_pem,
        ca_bundle_pem=done.ca_bundle_pem,
        gateway_address=done.gateway_address,
        command_keys=[
            agent_pb2.CommandKey(key_id=key_id, public_key=public_key)
            for key_id, public_key in done.command_keys
        ],
    )
    return Response(answer.SerializeToString(), media_type=MEDIA_TYPE)


async def ca_bundle(request: Request) -> Response:
    """The CA bundle (public): an agent checks it against its join token's pin before enrolling."""
    services: Services = request.app.state.services
    try:
        pem = await in_thread(services.pki.ca_bundle_pem)
    except TundraError as exc:
        return tundra_error_response(request, exc)
    return Response(pem, media_type=PEM_TYPE)


def routes() -> list[BaseRoute]:
    return [
        Route("/agent/v1/enroll", enroll, methods=["POST"]),
        Route("/agent/v1/ca.pem", ca_bundle, methods=["GET"]),
    ]
