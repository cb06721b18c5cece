"""The plain-HTTP listener: it only answers 308 to the same host, path and query over https.

It never sets a cookie and serves nothing else. The host is taken from the Host header only when
it is a well-formed host name or address (anything else goes to the first configured panel
name), so the redirect cannot be turned into an open redirect to a hostile host with odd syntax.
"""

from __future__ import annotations

import re

from starlette.types import Receive, Scope, Send

_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9-]{1,63}"
    r"|\[[0-9A-Fa-f:.]+\]|[0-9.]+"
)


class RedirectToHttps:
    def __init__(self, *, https_port: int, fallback_host: str) -> None:
        self.https_port = https_port
        self.fallback_host = fallback_host

    def location(self, scope: Scope) -> str:
        host = self.fallback_host
        for name, value in scope.get("headers", ()):
            if name == b"host":
                raw = value.decode("latin-1")
                candidate = raw.rsplit(":", 1)[0] if not raw.endswith("]") else raw
                if _HOST.fullmatch(candidate):
                    host = candidate
                break
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        port = "" if self.https_port == 443 else f":{self.https_port}"
        path = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string", b"")
        target = f"https://{host}{port}{path.decode('latin-1')}"
        return target + (f"?{query.decode('latin-1')}" if query else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 308,
                "headers": [
                    (b"location", self.location(scope).encode("latin-1")),
                    (b"content-length", b"0"),
                    (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})
