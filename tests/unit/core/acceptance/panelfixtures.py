"""The real panel for the identity checks, and ASGI wrappers that each break one thing.

:func:`serve_panel` runs ``create_app(services)`` under uvicorn with the panel's own TLS context
(``tundra.panel.tls.server_context``) on a port-0 socket, plus a plain-HTTP twin (the real
redirect app, or a broken one), in threads. ``wrap`` puts one middleware around the real app:
each class below is a deployment that is wrong in exactly one way, so the check that looks at
that thing must fail while the real panel passes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pyotp
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tundra.core.acceptance.context import RunContext, RunOptions
from tundra.core.acceptance.model import Outcome
from tundra.core.principal import SYSTEM
from tundra.core.services import Services

SESSION = "__Host-tundra_session"
CSRF = "__Host-tundra_csrf"
USER = "acceptance"
PASSWORD = "acceptance check passphrase"
ADMIN = "admin"
ADMIN_PASSWORD = "correct horse battery staple"

Wrap = Callable[[ASGIApp], ASGIApp]


@dataclass(frozen=True)
class Panel:
    url: str
    port: int
    http_port: int
    ca: Path
    services: Services

    def options(self, *, local: bool = True, **changes: Any) -> RunOptions:
        values: dict[str, Any] = {
            "url": self.url,
            "ca_file": self.ca,
            "user": USER,
            "password": PASSWORD,
            "http_port": self.http_port,
            "local": local,
            "services": self.services if local else None,
        }
        values.update(changes)
        return RunOptions(**values)


def add_acceptance_user(services: Services, name: str = USER, password: str = PASSWORD) -> None:
    services.users.add(SYSTEM, name=name, password=password, is_acceptance=True)


def enrol_totp(services: Services, name: str) -> str:
    """Enrol TOTP for ``name`` through core, confirming with the *previous* time step's code,
    so the checks can use the current and the next step at once."""
    principal = services.users.get(name).as_principal()
    enrollment = services.totp.begin_enrollment(principal, name)
    secret = re.search(r"secret=([A-Z2-7]+)", enrollment.otpauth_uri)
    assert secret is not None
    previous = pyotp.TOTP(secret.group(1)).at(time.time() - 30)
    if 30 - time.time() % 30 < 3:  # the previous step is about to leave the server's window
        time.sleep(3.5)
        previous = pyotp.TOTP(secret.group(1)).at(time.time() - 30)
    services.totp.complete_enrollment(principal, name, secret.group(1), previous)
    return secret.group(1)


def run(spec_fn: Callable[[RunContext], Outcome], options: RunOptions, check_id: str) -> Outcome:
    """Run one check function the way the runner does: a bound context with a deadline."""
    ctx = RunContext(options)
    return run_in(ctx, spec_fn, check_id)


def run_in(ctx: RunContext, spec_fn: Callable[[RunContext], Outcome], check_id: str) -> Outcome:
    return spec_fn(ctx.bind(check_id, deadline=time.monotonic() + 120))


# --- the server ------------------------------------------------------------------------------


def close_worker_connections(services: Services) -> None:
    """Close PostgreSQL connections opened by server worker threads that are still alive
    (``Database.close`` closes only those of ended threads; see tests/unit/panel)."""
    databases = [services.__dict__.get("db")]
    keys = services.__dict__.get("keys")
    if keys is not None:
        databases.append(getattr(keys, "_reader_db", None))
    for db in databases:
        for _, conn in list(getattr(db, "_opened", ())):
            conn.close()


@contextlib.contextmanager
def serve_panel(
    services: Services, *, wrap: Wrap | None = None, http_app: ASGIApp | None = None
) -> Iterator[Panel]:
    import uvicorn

    from tundra.panel.app import create_app
    from tundra.panel.redirect import RedirectToHttps
    from tundra.panel.tls import server_context

    services.pki.ensure_panel_cert(SYSTEM)
    https_sock, http_sock = socket.socket(), socket.socket()
    # Accepted sockets inherit TCP_NODELAY: without it asyncio's TLS transport answers every
    # request ~40 ms late (Nagle against the client's delayed ACK), which only slows the tests.
    https_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    https_sock.bind(("127.0.0.1", 0))
    http_sock.bind(("127.0.0.1", 0))
    port, http_port = int(https_sock.getsockname()[1]), int(http_sock.getsockname()[1])
    app: ASGIApp = create_app(services)
    if wrap is not None:
        app = wrap(app)
    https_config = uvicorn.Config(
        app,
        log_config=None,
        server_header=False,
        proxy_headers=False,
        access_log=False,
        lifespan="off",  # the fixture owns the services and closes them
    )
    https_config.load()
    https_config.ssl = server_context(services.pki.panel_cert_path, services.pki.panel_key_path)
    plain = http_app or RedirectToHttps(https_port=port, fallback_host="127.0.0.1")
    http_config = uvicorn.Config(
        plain, log_config=None, server_header=False, access_log=False, lifespan="off"
    )
    servers = [uvicorn.Server(https_config), uvicorn.Server(http_config)]
    threads = [
        threading.Thread(target=servers[0].run, kwargs={"sockets": [https_sock]}, daemon=True),
        threading.Thread(target=servers[1].run, kwargs={"sockets": [http_sock]}, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while not all(s.started for s in servers):
            if time.monotonic() > deadline or not all(t.is_alive() for t in threads):
                raise AssertionError("the panel did not start")
            time.sleep(0.02)
        yield Panel(
            f"https://127.0.0.1:{port}", port, http_port, services.pki.ca_cert_path, services
        )
    finally:
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(timeout=20)
        https_sock.close()
        http_sock.close()
        close_worker_connections(services)


# --- ASGI helpers ----------------------------------------------------------------------------


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # a disconnect never comes in these tests
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def cookies_of(scope: Scope) -> dict[str, str]:
    raw = header(scope, b"cookie") or ""
    pairs = (part.strip().partition("=") for part in raw.split(";") if part.strip())
    return {k: v for k, _, v in pairs}


def with_header(scope: Scope, name: bytes, value: str | None) -> Scope:
    headers = [(k, v) for k, v in scope["headers"] if k != name]
    if value is not None:
        headers.append((name, value.encode("latin-1")))
    return {**scope, "headers": headers}


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Middleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


# --- one broken thing each -------------------------------------------------------------------


class DropSameSite(Middleware):
    """ID-01: the session cookie goes out without SameSite=Strict."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def patched(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, v.replace(b"; SameSite=Strict", b""))
                    if k == b"set-cookie" and v.startswith(SESSION.encode())
                    else (k, v)
                    for k, v in message["headers"]
                ]
            await send(message)

        await self.app(scope, receive, patched)


async def cookie_over_http(scope: Scope, receive: Receive, send: Send) -> None:
    """ID-01: an http twin that redirects but also sets a cookie over plain http."""
    if scope["type"] != "http":
        return
    await respond(
        send,
        301,
        b"",
        [(b"location", b"https://127.0.0.1/"), (b"set-cookie", b"visitor=1; Path=/")],
    )


class Fixation(Middleware):
    """ID-02: the session id a browser brings to the login becomes its session id."""

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.aliases: dict[str, str] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        brought = cookies_of(scope).get(SESSION)
        if brought in self.aliases:
            cookies = {**cookies_of(scope), SESSION: self.aliases[brought]}
            line = "; ".join(f"{k}={v}" for k, v in cookies.items())
            scope = with_header(scope, b"cookie", line)

        async def patched(message: Message) -> None:
            if (
                message["type"] == "http.response.start"
                and brought
                and brought not in (self.aliases)
            ):
                headers = []
                for k, v in message["headers"]:
                    text = v.decode("latin-1")
                    if k == b"set-cookie" and text.startswith(SESSION + "="):
                        real = text.split(";", 1)[0].split("=", 1)[1]
                        if real:
                            self.aliases[brought] = real
                            v = text.replace(real, brought, 1).encode("latin-1")
                    headers.append((k, v))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, patched)


class LogoutKeepsSession(Middleware):
    """ID-02: logout clears the cookies but leaves the session alive on the server."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "POST" and scope["path"] == "/logout":
            await respond(
                send,
                303,
                b"",
                [
                    (b"location", b"/login?notice=logged-out"),
                    (
                        b"set-cookie",
                        f"{SESSION}=; HttpOnly; Secure; SameSite=Strict; Path=/; "
                        "Max-Age=0".encode(),
                    ),
                ],
            )
            return
        await self.app(scope, receive, send)


class AnonymousApi(Middleware):
    """ID-03: the server list answers without a token."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/api/v1/servers" and header(scope, b"authorization") is None:
            await respond(send, 200, b'{"servers": []}', [(b"content-type", b"application/json")])
            return
        await self.app(scope, receive, send)


class AnonymousPage(Middleware):
    """ID-03: the audit page is shown to anyone."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"] == "/audit" and SESSION not in cookies_of(scope):
            await respond(send, 200, b"<h1>Audit log</h1>", [(b"content-type", b"text/html")])
            return
        await self.app(scope, receive, send)


def _login_name(body: bytes) -> str:
    return dict(parse_qsl(body.decode())).get("username", "")


class UnknownUserPage(Middleware):
    """ID-04: an unknown user name gets its own message."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        super().__init__(app)
        self.services = services

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST" or scope["path"] != "/login":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        row = await run_in_threadpool(self.services.users.auth_row, _login_name(body))
        if row is None:
            await respond(send, 401, b"<p>no such user</p>", [(b"content-type", b"text/html")])
            return
        await self.app(scope, replay(body), send)


class SlowKnownUser(Middleware):
    """ID-04: only a known user pays the password hash (no dummy hash for unknown ones)."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        super().__init__(app)
        self.services = services

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST" or scope["path"] != "/login":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        row = await run_in_threadpool(self.services.users.auth_row, _login_name(body))
        if row is not None:
            await asyncio.sleep(0.3)
        await self.app(scope, replay(body), send)


class CsrfFromCookie(Middleware):
    """ID-06: a post without a CSRF field is completed with the cookie's token."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)
        fields = parse_qsl(body.decode(), keep_blank_values=True)
        token = cookies_of(scope).get(CSRF)
        if token and not any(k == "csrf_token" for k, _ in fields):
            body = urlencode([*fields, ("csrf_token", token)]).encode()
            scope = with_header(scope, b"content-length", str(len(body)))
        await self.app(scope, replay(body), send)


class IgnoreOrigin(Middleware):
    """ID-06: Origin and Sec-Fetch-Site never reach the app (no second CSRF layer)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope = with_header(with_header(scope, b"origin", None), b"sec-fetch-site", None)
        await self.app(scope, receive, send)


class MalformedTokenAnswer(Middleware):
    """ID-08: a malformed token gets a different answer (a format check that talks)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        value = header(scope, b"authorization") or ""
        token = value.partition(" ")[2]
        if scope["path"].startswith("/api/") and value and not token.startswith("tnd_"):
            await respond(
                send,
                400,
                b'{"error": {"code": "malformed_token", "message": "not a token"}}',
                [(b"content-type", b"application/json")],
            )
            return
        await self.app(scope, receive, send)


class ResourceAsNotFound(Middleware):
    """ID-08: a server outside the token's resources is answered 404, not 403."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not re.fullmatch(r"/api/v1/servers/[^/]+", scope["path"]):
            await self.app(scope, receive, send)
            return

        async def patched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 403:
                message["status"] = 404
            await send(message)

        await self.app(scope, receive, patched)
