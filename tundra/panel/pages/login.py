"""Login, the TOTP step, forced TOTP enrolment for administrators, and logout.

The password is checked by core (``users.authenticate``: Argon2id in the thread pool under the
hasher's semaphore, throttling, audit rows). Unknown user and wrong password render the same
page, byte for byte (the typed name is not echoed back). A session exists only once every step
is done: a password-only state is a *pending login* bound to the pre-session cookie.

Forced enrolment stores nothing until the administrator confirms a first code: the new secret
travels in the pending login (its otpauth URI sealed under the keyring), and only the
confirmation calls ``totp.complete_enrollment``. Leaving the page abandons it; the next login
starts a fresh one.
"""

from __future__ import annotations

import io
from dataclasses import replace
from urllib.parse import parse_qs, urlparse

from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from tundra.core.errors import AuthenticationFailed, Conflict, Throttled, TotpRequired
from tundra.core.identity.sessions import PendingLogin
from tundra.core.identity.users import LOGIN_FAILED_MESSAGE, User
from tundra.panel.auth import (
    CSRF_COOKIE,
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    Ctx,
    cookie,
    expired_cookie,
    page,
    public_page,
    redirect,
    safe_next,
)


def _next(ctx: Ctx) -> str:
    source = ctx.field("next") if ctx.form is not None else ctx.request.query_params.get("next")
    return safe_next(source)


def _throttled(ctx: Ctx, template: str, exc: Throttled, **values: object) -> Response:
    return ctx.render(
        template,
        status=429,
        headers={"Retry-After": str(max(1, exc.retry_after))},
        error="Too many failed attempts. Try again later.",
        next=_next(ctx),
        **values,
    )


async def _start_session(ctx: Ctx, user: User, *, totp: bool) -> Response:
    """The login is complete: a brand-new session id, a new CSRF token, no pre-session."""
    assert ctx.pre_session_id is not None
    session_id, _ = await ctx.call(
        ctx.services.sessions.create,
        user,
        source=ctx.source,
        replaces=ctx.request.cookies.get(SESSION_COOKIE),
        totp=totp,
        request_id=ctx.request_id,
    )
    await ctx.call(ctx.services.sessions.clear_pending, ctx.pre_session_id)
    response = redirect(_next(ctx))
    ctx.set_cookie(SESSION_COOKIE, cookie(SESSION_COOKIE, session_id))
    ctx.set_cookie(PRESESSION_COOKIE, expired_cookie(PRESESSION_COOKIE))
    token = await ctx.call(ctx.services.csrf.issue, session_id)
    ctx.set_cookie(CSRF_COOKIE, cookie(CSRF_COOKIE, token))
    return response


async def _pending(ctx: Ctx, stage: str) -> PendingLogin | None:
    if ctx.pre_session_id is None:
        return None
    found = await ctx.call(ctx.services.sessions.pending, ctx.pre_session_id)
    return found if found is not None and found.stage == stage else None


@public_page
async def login_form(ctx: Ctx) -> Response:
    if ctx.user is not None:
        return redirect(_next(ctx))
    return ctx.render("login.html", title="Log in", next=_next(ctx), error=None)


@public_page
async def login_submit(ctx: Ctx) -> Response:
    if ctx.user is not None:
        return redirect(_next(ctx))
    assert ctx.pre_session_id is not None
    services = ctx.services
    name = ctx.field("username")
    password = str(ctx.form.get("password") or "") if ctx.form is not None else ""
    try:
        user = await ctx.call(
            services.users.authenticate,
            name,
            password,
            None,
            source=ctx.source,
            request_id=ctx.request_id,
        )
    except Throttled as exc:
        return _throttled(ctx, "login.html", exc)
    except TotpRequired:
        row = await ctx.call(services.users.get, name)
        await ctx.call(
            services.sessions.start_pending,
            ctx.pre_session_id,
            row,
            stage="totp",
            source=ctx.source,
        )
        return redirect(f"/login/totp?next={_quoted_next(ctx)}")
    except AuthenticationFailed:
        return ctx.render(
            "login.html", status=401, title="Log in", next=_next(ctx), error=LOGIN_FAILED_MESSAGE
        )
    if user.is_admin and not user.totp_enrolled and services.settings.require_admin_totp:
        await ctx.call(
            services.sessions.start_pending,
            ctx.pre_session_id,
            user,
            stage="enroll",
            source=ctx.source,
        )
        return redirect(f"/login/enroll?next={_quoted_next(ctx)}")
    return await _start_session(ctx, user, totp=False)


def _quoted_next(ctx: Ctx) -> str:
    from urllib.parse import quote

    return quote(_next(ctx), safe="/")


@public_page
async def totp_form(ctx: Ctx) -> Response:
    if await _pending(ctx, "totp") is None:
        return redirect("/login?notice=login-expired")
    return ctx.render("totp.html", title="Authenticator code", next=_next(ctx), error=None)


@public_page
async def totp_submit(ctx: Ctx) -> Response:
    pending = await _pending(ctx, "totp")
    if pending is None:
        return redirect("/login?notice=login-expired")
    services = ctx.services
    try:
        await ctx.call(
            services.totp.verify,
            pending.user_name,
            ctx.field("code"),
            source=ctx.source,
            request_id=ctx.request_id,
        )
    except Throttled as exc:
        return _throttled(ctx, "totp.html", exc)
    except AuthenticationFailed as exc:
        return ctx.render(
            "totp.html", status=401, title="Authenticator code", next=_next(ctx), error=exc.message
        )
    user = await ctx.call(services.users.get_by_id, pending.user_id)
    if user.disabled:
        return redirect("/login")
    return await _start_session(ctx, user, totp=True)


def _secret_of(uri: str) -> str:
    return parse_qs(urlparse(uri).query).get("secret", [""])[0]


async def _enroll_page(
    ctx: Ctx, pending: PendingLogin, *, error: str | None = None, status: int = 200
) -> Response:
    assert ctx.pre_session_id is not None
    uri = None
    if pending.sealed_uri:
        uri = await ctx.call(ctx.services.sessions.open_uri, ctx.pre_session_id, pending.sealed_uri)
    return ctx.render(
        "enroll.html",
        status=status,
        title="Set up two-factor authentication",
        next=_next(ctx),
        uri=uri,
        secret=_secret_of(uri) if uri else None,
        error=error,
    )


@public_page
async def enroll_form(ctx: Ctx) -> Response:
    pending = await _pending(ctx, "enroll")
    if pending is None:
        return redirect("/login?notice=login-expired")
    return await _enroll_page(ctx, pending)


@public_page
async def enroll_start(ctx: Ctx) -> Response:
    pending = await _pending(ctx, "enroll")
    if pending is None or ctx.pre_session_id is None:
        return redirect("/login?notice=login-expired")
    if pending.sealed_uri is None:
        services = ctx.services
        user = await ctx.call(services.users.get_by_id, pending.user_id)
        try:
            # Stores nothing: the secret lives only in this pending login (sealed, below) until
            # the confirmation; an abandoned page leaves the account as it was.
            enrollment = await ctx.call(
                services.totp.begin_enrollment,
                user.as_principal(),
                user.name,
                request_id=ctx.request_id,
            )
        except Conflict as exc:
            return await _enroll_page(ctx, pending, error=exc.message, status=409)
        # The URI carries the secret: it is kept only sealed, and a reload shows the same key.
        sealed = await ctx.call(
            services.sessions.seal_uri, ctx.pre_session_id, enrollment.otpauth_uri
        )
        pending = replace(pending, sealed_uri=sealed)
        await ctx.call(services.sessions.set_pending, ctx.pre_session_id, pending)
    return redirect(f"/login/enroll?next={_quoted_next(ctx)}")


@public_page
async def enroll_qr(ctx: Ctx) -> Response:
    pending = await _pending(ctx, "enroll")
    uri = None
    if pending is not None and pending.sealed_uri and ctx.pre_session_id:
        uri = await ctx.call(ctx.services.sessions.open_uri, ctx.pre_session_id, pending.sealed_uri)
    if uri is None:
        return Response(status_code=404)
    import segno

    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer, kind="svg", scale=5, border=4, xmldecl=False, dark="#000", light="#fff"
    )
    return Response(buffer.getvalue(), media_type="image/svg+xml")


@public_page
async def enroll_confirm(ctx: Ctx) -> Response:
    pending = await _pending(ctx, "enroll")
    uri = None
    if pending is not None and pending.sealed_uri and ctx.pre_session_id:
        uri = await ctx.call(ctx.services.sessions.open_uri, ctx.pre_session_id, pending.sealed_uri)
    if pending is None or uri is None:
        return redirect("/login?notice=login-expired")
    services = ctx.services
    user = await ctx.call(services.users.get_by_id, pending.user_id)
    if user.disabled:
        await ctx.call(services.sessions.clear_pending, ctx.pre_session_id)
        return redirect("/login")
    try:
        # Checks the code against the pending secret, then stores it with the code's step
        # marked used: the confirming code cannot be replayed at the next login.
        await ctx.call(
            services.totp.complete_enrollment,
            user.as_principal(),
            user.name,
            _secret_of(uri),
            ctx.field("code"),
            request_id=ctx.request_id,
        )
    except AuthenticationFailed as exc:
        return await _enroll_page(ctx, pending, error=exc.message, status=401)
    except Conflict as exc:
        # Enrolled meanwhile (another browser finished first): this key is not the one stored.
        await ctx.call(services.sessions.clear_pending, ctx.pre_session_id)
        return ctx.render(
            "error.html",
            status=409,
            title="Two-factor authentication is already set up",
            message=f"{exc.message}; log in again with your authenticator code",
            code=exc.code,
            back="/login",
        )
    return await _start_session(ctx, user, totp=False)


@page
async def logout(ctx: Ctx) -> Response:
    assert ctx.session_id is not None
    await ctx.call(
        ctx.services.sessions.logout, ctx.session_id, ctx.principal, request_id=ctx.request_id
    )
    ctx.set_cookie(SESSION_COOKIE, expired_cookie(SESSION_COOKIE))
    ctx.set_cookie(CSRF_COOKIE, expired_cookie(CSRF_COOKIE))
    return redirect("/login?notice=logged-out")


def routes() -> list[BaseRoute]:
    return [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login_submit, methods=["POST"]),
        Route("/login/totp", totp_form, methods=["GET"]),
        Route("/login/totp", totp_submit, methods=["POST"]),
        Route("/login/enroll", enroll_form, methods=["GET"]),
        Route("/login/enroll", enroll_start, methods=["POST"]),
        Route("/login/enroll/qr.svg", enroll_qr, methods=["GET"]),
        Route("/login/enroll/confirm", enroll_confirm, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
    ]
