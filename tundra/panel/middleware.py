"""Pure-ASGI middleware on every HTTPS response: request ids and the security headers.

Pure ASGI (no BaseHTTPMiddleware) so streaming responses stream and the per-request cost stays a
few microseconds. The headers go on every response, 404s, 401s, redirects and errors included.
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"strict-transport-security", b"max-age=63072000; includeSubDomains"),
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
)
_MANAGED = {name for name, _ in SECURITY_HEADERS} | {b"server", b"x-powered-by", b"x-request-id"}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")
STATIC_PREFIX = "/static/"


def request_id_from(scope: Scope) -> str:
    """A caller's well-formed ``X-Request-ID``, else a new random one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = str(value.decode("latin-1"))
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return secrets.token_hex(12)


class SecurityMiddleware:
    """Assigns the request id (``scope["state"]["request_id"]``) and sets the headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        static = scope["path"].startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if k.lower() not in _MANAGED
                    and not (k.lower() == b"cache-control" and not static)
                ]
                headers.extend(SECURITY_HEADERS)
                headers.append((b"x-request-id", request_id.encode()))
                headers.append(
                    (b"cache-control", b"public, max-age=3600" if static else b"no-store")
                )
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AccessLogMiddleware:
    """One structured line per request: no query string, no headers, no bodies (no secrets)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        import logging

        self.log = logging.getLogger("tundra.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        import json
        import time

        start = time.perf_counter()
        status = 0

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            client = scope.get("client")
            self.log.info(
                json.dumps(
                    {
                        "request_id": scope.get("state", {}).get("request_id"),
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round((time.perf_counter() - start) * 1000, 2),
                        "client": client[0] if client else None,
                    },
                    separators=(",", ":"),
                )
            )


class CatchAllMiddleware:
    """Turn an unexpected exception into the JSON 500 *inside* the security middleware.

    Starlette's own handler for ``Exception`` runs outermost, where the security headers would be
    missing; this one runs inside them. The traceback goes to the log, never to the client.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            import json
            import logging

            request_id = scope.get("state", {}).get("request_id", "")
            logging.getLogger("tundra.panel").exception(
                "unexpected error in request %s", request_id
            )
            if started:
                raise
            body = json.dumps(
                {
                    "error": {
                        "code": "internal_error",
                        "message": "the server could not complete the request",
                        "request_id": request_id,
                    }
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
