"""The browser's identity: cookies -> session -> Principal, CSRF and origin checks, re-auth.

Every page goes through :func:`page`: it loads the session (or the pre-session of an anonymous
browser), sends an anonymous visitor to the login page, checks ``Sec-Fetch-Site``/``Origin`` and
the signed double-submit CSRF token on every unsafe method, turns a TundraError into an HTML
page, and sets the cookies the request needs. Cookies (all ``__Host-``, so no Domain and only
over https; exact flags in :func:`cookie`):

- ``__Host-tundra_session``: the session id (HttpOnly; Secure; SameSite=Strict; Path=/), set
  only at login, with no expiry: the server enforces the idle and absolute timeouts.
- ``__Host-tundra_presession``: a random id for an anonymous browser; binds the login form's
  CSRF token and the pending login (TOTP step, enrolment). Same flags.
- ``__Host-tundra_csrf``: the CSRF token, bound by HMAC to the session (or pre-session) id.
  HttpOnly too: no script needs it, the forms carry it in a hidden field.

Sensitive operations call core, which raises ReauthRequired when the session authenticated more
than ``reauth_window`` seconds ago; :meth:`Ctx.sensitive` then answers the re-authentication
page, a form that re-posts the original fields to the original URL together with the password
(and TOTP code), with CSRF; the second post re-authenticates and completes the operation.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tundra.core.crypto.primitives import constant_time_equal
from tundra.core.errors import (
    AuthenticationFailed,
    NotFound,
    ReauthRequired,
    Throttled,
    TundraError,
)
from tundra.core.identity.sessions import Session, handle_of, new_id
from tundra.core.identity.users import User
from tundra.core.principal import Principal
from tundra.core.services import Services
from tundra.panel.errors import request_id, status_for

log = logging.getLogger("tundra.panel")

SESSION_COOKIE = "__Host-tundra_session"
PRESESSION_COOKIE = "__Host-tundra_presession"
CSRF_COOKIE = "__Host-tundra_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
REAUTH_PASSWORD = "reauth_password"  # noqa: S105 - a form field name
REAUTH_TOTP = "reauth_totp"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Form fields never carried into the re-authentication page.
_NOT_CARRIED = frozenset({CSRF_FIELD, REAUTH_PASSWORD, REAUTH_TOTP})

T = TypeVar("T")


def cookie(name: str, value: str, *, max_age: int | None = None) -> str:
    """A Set-Cookie value with exactly the flags Tundra uses for every cookie."""
    text = f"{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/"
    return text if max_age is None else f"{text}; Max-Age={max_age}"


def expired_cookie(name: str) -> str:
    return cookie(name, "", max_age=0)


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (another host, odd syntax) is ``/``."""
    if not target or not target.startswith("/") or target.startswith("//"):
        return "/"
    if any(ch in target for ch in "\\\r\n\t") or len(target) > 512:
        return "/"
    return target


def same_origin(request: Request) -> bool:
    """The second CSRF layer: a browser's cross-site request is refused before anything else.

    ``Sec-Fetch-Site`` (every current browser) must be ``same-origin`` (or ``none``, typed by
    the user). ``Origin``, when it names one, must be this origin. ``Origin: null`` carries no
    information (browsers send it for same-origin posts under ``Referrer-Policy: no-referrer``),
    and a client sending neither header is not a browser: the token still has to match.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        return constant_time_equal(origin.lower(), f"https://{host}".lower())
    return True


class CsrfRefused(Exception):
    """An unsafe request failed the origin or token check."""


@dataclass
class Ctx:
    """One page request: who is asking, its CSRF token, the form, the cookies to set."""

    request: Request
    services: Services
    session_id: str | None = None
    session: Session | None = None
    user: User | None = None
    pre_session_id: str | None = None
    csrf_token: str = ""
    form: FormData | None = None
    cookies: dict[str, str] = field(default_factory=dict)

    @property
    def principal(self) -> Principal:
        if self.session is None or self.user is None:
            raise AuthenticationFailed("log in first")
        return self.session.principal(self.user)

    @property
    def request_id(self) -> str:
        return request_id(self.request)

    @property
    def source(self) -> str | None:
        client = self.request.client
        return client.host if client else None

    @property
    def binding(self) -> str:
        """What the CSRF token is bound to: the session id, else the pre-session id."""
        return (
            self.session_id
            if self.session is not None and self.session_id
            else (self.pre_session_id or "")
        )

    def field(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else default

    def fields(self, name: str) -> list[str]:
        if self.form is None:
            return []
        return [v.strip() for v in self.form.getlist(name) if isinstance(v, str) and v.strip()]

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a core call off the event loop (storage I/O, Argon2)."""
        return await run_in_threadpool(fn, *args, **kwargs)

    def set_cookie(self, name: str, header: str) -> None:
        self.cookies[name] = header  # a later value for the same cookie replaces an earlier one

    def render(
        self,
        template: str,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        **values: Any,
    ) -> HTMLResponse:
        from tundra.panel.pages.render import render

        return render(self, template, status=status, headers=headers, **values)

    def new_csrf_for(self, binding: str) -> None:
        self.csrf_token = self.services.csrf.issue(binding)
        self.set_cookie(CSRF_COOKIE, cookie(CSRF_COOKIE, self.csrf_token))

    async def sensitive(self, operation: Callable[[], T], *, what: str) -> T | Response:
        """Run a sensitive ``operation``; answer the re-auth page while core refuses it."""
        if self.form is not None and REAUTH_PASSWORD in self.form:
            try:
                await self.call(
                    self.services.sessions.reauthenticate,
                    self.principal,
                    password=str(self.form.get(REAUTH_PASSWORD) or ""),
                    totp_code=self.field(REAUTH_TOTP) or None,
                    source=self.source,
                    request_id=self.request_id,
                )
            except Throttled as exc:
                return self.reauth_page(
                    what,
                    error=str(exc),
                    status=429,
                    headers={"Retry-After": str(max(1, exc.retry_after))},
                )
            except AuthenticationFailed as exc:
                return self.reauth_page(what, error=exc.message, status=401)
        try:
            return await self.call(operation)
        except ReauthRequired:
            return self.reauth_page(what, status=403)

    def reauth_page(
        self,
        what: str,
        *,
        error: str | None = None,
        status: int = 403,
        headers: Mapping[str, str] | None = None,
    ) -> HTMLResponse:
        carried = (
            []
            if self.form is None
            else [
                (k, v)
                for k, v in self.form.multi_items()
                if k not in _NOT_CARRIED and isinstance(v, str)
            ]
        )
        return self.render(
            "reauth.html",
            status=status,
            headers=headers,
            what=what,
            action=self.request.url.path,
            carried=carried,
            error=error,
            totp=bool(self.user and self.user.totp_enrolled),
        )


def _load(request: Request) -> Ctx:
    """Read the cookies and the session (blocking storage calls: run in the thread pool)."""
    services: Services = request.app.state.services
    ctx = Ctx(request=request, services=services)
    cookies = request.cookies
    sid = cookies.get(SESSION_COOKIE)
    if sid:
        session = services.sessions.get(sid)
        user = None
        if session is not None:
            try:
                user = services.users.get_by_id(session.user_id)
            except NotFound:
                user = None
            if user is None or user.disabled:
                services.sessions.revoke(sid)
                session = None
        if session is None:
            ctx.set_cookie(SESSION_COOKIE, expired_cookie(SESSION_COOKIE))
        else:
            ctx.session_id, ctx.session, ctx.user = sid, session, user
    if ctx.session is None:
        pre = cookies.get(PRESESSION_COOKIE)
        if not pre or handle_of(pre) is None:
            pre = new_id()
            ctx.set_cookie(PRESESSION_COOKIE, cookie(PRESESSION_COOKIE, pre))
        ctx.pre_session_id = pre
    token = cookies.get(CSRF_COOKIE, "")
    if token and services.csrf.verify(ctx.binding, token):
        ctx.csrf_token = token
    else:
        ctx.new_csrf_for(ctx.binding)
    return ctx


async def _checked_form(ctx: Ctx) -> FormData:
    request = ctx.request
    if not same_origin(request):
        raise CsrfRefused("cross-site request refused")
    form = await request.form()
    submitted = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    presented = request.cookies.get(CSRF_COOKIE, "")
    if not isinstance(submitted, str) or not submitted or not presented:
        raise CsrfRefused("the form's security token is missing")
    if not constant_time_equal(submitted, presented):
        raise CsrfRefused("the form's security token does not match")
    valid = await run_in_threadpool(ctx.services.csrf.verify, ctx.binding, presented)
    if not valid:
        raise CsrfRefused("the form's security token is not valid for this session")
    return form


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(safe_next(target), safe='/')}", status_code=303)


def error_response(ctx: Ctx, exc: TundraError) -> Response:
    status = status_for(exc)
    headers = {}
    if isinstance(exc, Throttled):
        headers["Retry-After"] = str(max(1, exc.retry_after))
    if status >= 500:
        log.error("request %s failed: %s", ctx.request_id, exc)
        message = "the server could not complete the request"
    else:
        message = str(exc)
    return ctx.render(
        "error.html", status=status, headers=headers, title="Error", message=message, code=exc.code
    )


Handler = Callable[[Ctx], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def page(fn: Handler) -> Endpoint:
    """A page for logged-in users; an anonymous visitor is sent to the login page."""
    return _wrap(fn, login=True)


def public_page(fn: Handler) -> Endpoint:
    """A page anyone may load (the login steps); CSRF still applies to its posts."""
    return _wrap(fn, login=False)


def _wrap(fn: Handler, *, login: bool) -> Endpoint:
    """Load identity, enforce login and CSRF, render errors as pages, set the cookies."""

    async def endpoint(request: Request) -> Response:
        unsafe = request.method in UNSAFE_METHODS
        if unsafe and not same_origin(request):
            # Before any storage access: a cross-site post costs us nothing.
            ctx = Ctx(request=request, services=request.app.state.services)
            return ctx.render(
                "error.html",
                status=403,
                title="Request refused",
                message="cross-site request refused",
                code="csrf",
            )
        ctx = await run_in_threadpool(_load, request)
        if login and ctx.user is None:
            response: Response = login_redirect(request)
        else:
            try:
                if unsafe:
                    ctx.form = await _checked_form(ctx)
                response = await fn(ctx)
            except CsrfRefused as exc:
                response = ctx.render(
                    "error.html",
                    status=403,
                    title="Request refused",
                    message=f"{exc}; reload the page and try again",
                    code="csrf",
                )
            except TundraError as exc:
                response = error_response(ctx, exc)
        for header in ctx.cookies.values():
            response.headers.append("set-cookie", header)
        return response

    endpoint.__name__ = fn.__name__
    endpoint.__doc__ = fn.__doc__
    return endpoint


def redirect(path: str) -> RedirectResponse:
    """Post/redirect/get: a 303 to a local path."""
    return RedirectResponse(safe_next(path), status_code=303)
