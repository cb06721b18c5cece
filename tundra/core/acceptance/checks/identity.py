"""Identity checks ID-01…ID-08: cookies, the session's life, anonymous access, enumeration,
brute-force throttling, CSRF, re-authentication and API tokens (ACCEPTANCE.md "identity").

The checks speak to the panel like a browser does: :class:`Browser` keeps cookies, reads the
forms' CSRF token, and sends ``Origin``/``Sec-Fetch-Site`` as a same-origin form post would. It
has its own small transport (not :class:`~tundra.core.acceptance.context.HttpClient`) for two
reasons: it can bind a chosen source address, and it times a request from after the TLS
handshake, so ID-04 compares the server's work and not connection set-up.

One login (``--user``, password, TOTP secret) is shared by the checks through ``ctx.memo``;
ID-02 logs in once more (it logs its own session out) and ID-07 re-authenticates. TOTP codes are
handed out by one :class:`_Authenticator` per run, each for a time step never used before, and
sent while holding its lock so the server sees them in order (it refuses a step at or below the
last one it accepted).

Failed logins are counted per account and per source address, and ``login_max_failures``
(default 5) failures from one address lock that address. ID-04 and ID-05 therefore fail on
purpose as little as they can:

- When the target is an IPv4 loopback address (the runner on the panel host), each failing
  attempt comes from its own random ``127.x.y.z`` source: the runner's own address is never
  locked and the other checks keep working while ID-05 holds its lock.
- Otherwise ID-04 makes at most 4 failures (2 per kind), under the default limit, and ID-05's
  storm locks the runner's address for ``login_lock_seconds``: it should run last (its evidence
  says how long the lock lasts).
- With ``--local`` (the runner has the local services) both checks afterwards delete the throttle
  counters their own attempts created, so the next run starts clean.

ID-04 compares status, headers and body (with the request id, CSRF token and typed name masked)
of unknown-user and wrong-password answers, and their timing: a leak is reported when the
medians *and* the minimums differ by more than max(50 ms, 25 % of the slower median) in the same
direction. Load from concurrent checks only adds time, so it moves the medians but rarely the
minimums; a missing dummy hash moves both. With ``--local`` a leak must show in a second batch.

ID-05's storm uses a random user name that does not exist, never the acceptance account: the
account is not locked for anyone else. The lock is shown with the *right* password of the
acceptance account from the locked source, which must be refused. A panel that counted failures
per account only would fail this (the spec wants both); per-account and per-source counting
cannot be told apart from one address.

ID-07 cannot age a session from outside. The token half ("an API token can never perform one")
runs anywhere: with a token holding every scope the account may have, each sensitive API
operation must answer 403 ``reauth_required`` (or be refused by scope first, where the account
cannot hold the scope). The session half runs only with ``--local``: the check moves its own
session's ``authenticated_at`` back past ``reauth_window`` in the KV store (a local-only probe
that touches nothing but the runner's session), then shows that the sensitive posts answer the
re-authentication form and that the password opens the gate (on a server that does not exist,
so nothing is deleted). Remotely the evidence says that half was not evaluated.

ID-08 cannot see whether the server looked a token up; it shows that malformed, bad-checksum,
wrong-env, unknown and revoked tokens get one byte-identical answer, and records the timings.
Test tokens are issued through the panel's form and revoked before the check returns; the shared
session is logged out when the run ends.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import json
import re
import secrets
import socket
import ssl
import statistics
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from tundra.core.acceptance.context import (
    USER_AGENT,
    HttpResponse,
    RunContext,
    SetCookie,
    make_ssl_context,
)
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.services import Services

#: The panel's pages the runner probes anonymously besides ``--page`` (GET, then POST).
PAGES: tuple[str, ...] = (
    "/",
    "/servers",
    "/servers/{probe}",
    "/tokens",
    "/audit",
    "/audit/export",
    "/settings",
)
POST_PAGES: tuple[str, ...] = (
    "/servers",
    "/servers/{probe}/delete",
    "/tokens",
    "/tokens/{probe}/revoke",
    "/settings/rotate-master",
    "/logout",
)
OPENAPI_PATH = "/api/v1/openapi.json"
ME_PATH = "/api/v1/me"
#: ID-04: unknown-user and wrong-password answers may differ (medians and minimums) by at most
#: this many ms, or this fraction of the slower median, whichever is larger. A missing dummy
#: hash shows as the full Argon2 time (hundreds of ms with the production parameters).
TIMING_TOLERANCE_MS = 50.0
TIMING_TOLERANCE_RATIO = 0.25
#: ID-04 attempts per kind: from one address (stays under the default limit of 5 failures),
#: or with a fresh loopback source per attempt.
SAMPLES_ONE_SOURCE = 2
SAMPLES_SPREAD = 3
#: ID-05: most failed attempts before a remote run gives up on seeing a lock.
STORM_LIMIT = 20
#: Statuses that mean "redirected".
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REQUEST_SECRETS = frozenset({"authorization", "cookie", "x-csrf-token"})
_CSRF_FIELD = "csrf_token"
_REAUTH_PASSWORD = "reauth_password"  # noqa: S105 - a form field name
_REAUTH_TOTP = "reauth_totp"
_SESSION_KEY = "session:{handle}"  # the session record in the KV store (core.identity.sessions)


class Inconclusive(Exception):
    """The check cannot decide (login impossible, unexpected answer): an error result."""

    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.message = message
        self.evidence = evidence


# --------------------------------------------------------------------------------------------
# HTML forms


@dataclass
class Form:
    action: str
    method: str
    inputs: list[dict[str, str]] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return any(item.get("name") == name for item in self.inputs)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self.loose: list[dict[str, str]] = []
        self._open: Form | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k.lower(): (v or "") for k, v in attrs}
        if tag == "form":
            self._open = Form(values.get("action", ""), values.get("method", "get").lower())
            self.forms.append(self._open)
        elif tag == "input":
            (self._open.inputs if self._open is not None else self.loose).append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._open = None


def forms_of(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


def _all_inputs(html: str) -> list[dict[str, str]]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return [i for f in parser.forms for i in f.inputs] + parser.loose


def csrf_in(html: str) -> str | None:
    for item in _all_inputs(html):
        if item.get("name") == _CSRF_FIELD and item.get("value"):
            return item["value"]
    return None


def has_reauth_form(html: str) -> bool:
    return any(form.has(_REAUTH_PASSWORD) for form in forms_of(html))


# --------------------------------------------------------------------------------------------
# The browser


def loopback_v4(host: str) -> bool:
    """The target is reached over IPv4 loopback (where any 127/8 source address works)."""
    if host == "localhost":
        try:
            infos = socket.getaddrinfo(host, None, socket.AF_INET)
        except OSError:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.version == 4 and address.is_loopback


def spare_loopback_source() -> str | None:
    """A random 127.a.b.c (never 127.0.0.1) this host can bind, or None."""
    for _ in range(5):
        a, b, c = secrets.randbelow(254) + 1, secrets.randbelow(256), secrets.randbelow(254) + 1
        candidate = f"127.{a}.{b}.{c}"
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((candidate, 0))
            return candidate
        except OSError:
            continue
    return None


class Browser:
    """Cookies, forms and same-origin headers over a fresh TLS connection per request."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        source: str | None = None,
        cookies: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ctx = ctx
        self.target = ctx.target
        self.source = source
        self.cookies: dict[str, str] = dict(cookies or {})
        self.csrf: str | None = None
        #: Every Set-Cookie received: (url, parsed cookie).
        self.set_cookies: list[tuple[str, SetCookie]] = []
        self.exchanges: list[dict[str, Any]] = []
        self._ssl = ssl_context or make_ssl_context(ca_file=ctx.options.ca_file)

    @property
    def origin(self) -> str:
        return self.target.base_url

    def fork(self, *, source: str | None = None) -> Browser:
        """Another browser with a copy of this one's cookies (the same session)."""
        other = Browser(self.ctx, source=source, cookies=self.cookies, ssl_context=self._ssl)
        other.csrf = self.csrf
        return other

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Sequence[tuple[str, str]] = (),
        form: Sequence[tuple[str, str]] | None = None,
        json_body: Any = None,
        cookies: Mapping[str, str] | None = None,
        keep: bool = True,
    ) -> HttpResponse:
        """One request; ``cookies`` replaces the jar for this request; ``keep`` stores the
        cookies the answer sets."""
        sent = list(headers)
        body: bytes | None = None
        if form is not None:
            body = urllib.parse.urlencode(list(form)).encode()
            sent.append(("Content-Type", "application/x-www-form-urlencoded"))
        elif json_body is not None:
            body = json.dumps(json_body).encode()
            sent.append(("Content-Type", "application/json"))
        jar = self.cookies if cookies is None else cookies
        if jar and not any(k.lower() == "cookie" for k, _ in sent):
            sent.append(("Cookie", "; ".join(f"{k}={v}" for k, v in jar.items())))
        sent.append(("User-Agent", USER_AGENT))
        response = self._send(method, path, sent, body)
        for cookie in response.set_cookies():
            self.set_cookies.append((response.url, cookie))
            if keep:
                if cookie.deletes:
                    self.cookies.pop(cookie.name, None)
                else:
                    self.cookies[cookie.name] = cookie.value
        if keep:
            token = csrf_in(response.text) if _is_html(response) else None
            if token:
                self.csrf = token
        return response

    def _send(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> HttpResponse:
        url = self.target.https_url(path)
        conn = http.client.HTTPSConnection(
            self.target.host,
            self.target.port,
            timeout=self.ctx.io_timeout(),
            context=self._ssl,
            source_address=(self.source, 0) if self.source else None,
        )
        record: dict[str, Any] = {
            "request": {
                "method": method,
                "url": url,
                "source": self.source,
                "headers": [
                    [k, "<redacted>" if k.lower() in _REQUEST_SECRETS else v] for k, v in headers
                ],
            }
        }
        try:
            conn.connect()  # the handshake is not part of the timing
            started = time.perf_counter()
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            raw = conn.getresponse()
            data = raw.read()
            elapsed = (time.perf_counter() - started) * 1000
        except (OSError, http.client.HTTPException) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.exchanges.append(record)
            raise Inconclusive(
                f"{method} {path} failed: {type(exc).__name__}: {exc}",
                exchanges=self.exchanges[-5:],
            ) from exc
        finally:
            conn.close()
        response = HttpResponse(
            method=method,
            url=url,
            status=raw.status,
            reason=raw.reason,
            headers=tuple(raw.getheaders()),
            body=data,
            elapsed_ms=elapsed,
        )
        record["response"] = response.evidence()
        self.exchanges.append(record)
        return response

    # -- browser-like helpers -------------------------------------------------------------

    def get(self, path: str, **kwargs: Any) -> HttpResponse:
        return self.request("GET", path, **kwargs)

    def same_origin_headers(self) -> list[tuple[str, str]]:
        return [("Origin", self.origin), ("Sec-Fetch-Site", "same-origin")]

    def post_form(
        self,
        path: str,
        fields: Sequence[tuple[str, str]],
        *,
        csrf: str | bool | None = True,
        headers: Sequence[tuple[str, str]] | None = None,
        cookies: Mapping[str, str] | None = None,
        keep: bool = True,
    ) -> HttpResponse:
        """A form post as the panel's own pages send it: ``csrf=True`` adds the page's token,
        a string adds that token, None/False sends none."""
        body = list(fields)
        token = self.csrf if csrf is True else (csrf or None)
        if token:
            body.append((_CSRF_FIELD, token))
        sent = self.same_origin_headers() if headers is None else list(headers)
        return self.request("POST", path, headers=sent, form=body, cookies=cookies, keep=keep)

    def api(self, method: str, path: str, token: str, json_body: Any = None) -> HttpResponse:
        """An API call with a bearer token and no cookies."""
        return self.request(
            method,
            path,
            headers=[("Authorization", f"Bearer {token}")],
            json_body=json_body,
            cookies={},
            keep=False,
        )

    def is_login_redirect(self, response: HttpResponse) -> bool:
        return is_login_redirect(self.target.base_url, response)


def _is_html(response: HttpResponse) -> bool:
    return "html" in (response.header("content-type") or "")


def is_login_redirect(base_url: str, response: HttpResponse) -> bool:
    """A redirect to this origin's /login (with any query)."""
    location = response.header("location")
    if response.status not in REDIRECTS or not location:
        return False
    resolved = urllib.parse.urlsplit(urllib.parse.urljoin(base_url + "/", location))
    base = urllib.parse.urlsplit(base_url)
    return (resolved.scheme, resolved.netloc) == (base.scheme, base.netloc) and (
        resolved.path == "/login"
    )


def _location_path(response: HttpResponse) -> str:
    return urllib.parse.urlsplit(response.header("location") or "").path


def password_accepted(response: HttpResponse) -> bool:
    """The login post got past the password: a redirect anywhere but back to /login (the
    TOTP step and the enrolment count: the password was right)."""
    return response.status in REDIRECTS and _location_path(response) != "/login"


# --------------------------------------------------------------------------------------------
# TOTP and login


class _Authenticator:
    """TOTP codes for one run: each for a time step above every step handed out before."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.replace(" ", "").upper()
        self.last = -1
        self.lock = threading.Lock()

    def code(self, ctx: RunContext) -> str:
        """Call with :attr:`lock` held. Waits for the next step when the window is used up."""
        import pyotp

        totp = pyotp.TOTP(self.secret)
        while True:
            step = int(time.time() // 30)
            # The server accepts the current and the next step (and the previous one, which
            # another client may have used: never relied on here).
            usable = [s for s in (step, step + 1) if s > self.last]
            if usable:
                self.last = usable[0]
                return str(totp.at(self.last * 30))
            wait = (step + 1) * 30 - time.time() + 0.2
            remaining = ctx.remaining()
            if remaining is not None and remaining < wait + 2:
                raise Inconclusive(
                    "out of time waiting for a fresh TOTP time step",
                    hint="give the identity checks a longer --timeout",
                )
            time.sleep(wait)

    def skip_to_next(self) -> None:
        """The server refused a code as used: use only later steps."""
        self.last = max(self.last, int(time.time() // 30))


def authenticator(ctx: RunContext) -> _Authenticator | None:
    secret = ctx.options.totp_secret
    if not secret:
        return None
    return ctx.memo("identity:totp", lambda: _Authenticator(secret))


@dataclass
class Login:
    """A completed login: the browser holding the session and what happened on the way."""

    browser: Browser
    session_name: str
    session_id: str
    #: Cookie values the browser held before the step that completed the login.
    before: dict[str, str]
    steps: list[dict[str, Any]]
    totp: bool

    def evidence(self) -> dict[str, Any]:
        return {"session_cookie": self.session_name, "totp": self.totp, "steps": self.steps}


def _step(name: str, response: HttpResponse) -> dict[str, Any]:
    return {
        "step": name,
        "status": response.status,
        "location": response.header("location"),
        "set_cookie": [c.evidence() for c in response.set_cookies()],
    }


def login(
    ctx: RunContext,
    browser: Browser,
    *,
    plant: Mapping[str, str] | None = None,
) -> Login:
    """Log in with the run's credentials (and TOTP); ``plant`` adds cookies to the login post
    (ID-02's fixation probe)."""
    user, password = ctx.options.user or "", ctx.options.password or ""
    steps: list[dict[str, Any]] = []
    page = browser.get("/login")
    steps.append(_step("GET /login", page))
    if page.status != 200 or not browser.csrf:
        raise Inconclusive(
            f"the login page answered {page.status} without a form token", steps=steps
        )
    browser.cookies.update(plant or {})
    before = dict(browser.cookies)
    answer = browser.post_form(
        "/login", [("username", user), ("password", password), ("next", "/")]
    )
    steps.append(_step("POST /login", answer))
    used_totp = False
    if answer.status in REDIRECTS and _location_path(answer) == "/login/totp":
        auth = authenticator(ctx)
        if auth is None:
            raise Inconclusive(
                f"user {user!r} has TOTP enrolled: give its secret (--totp-secret-env)",
                steps=steps,
            )
        totp_page = browser.get("/login/totp?next=/")
        steps.append(_step("GET /login/totp", totp_page))
        before = dict(browser.cookies)
        for attempt in range(2):
            with auth.lock:
                code = auth.code(ctx)
                answer = browser.post_form("/login/totp", [("code", code), ("next", "/")])
            steps.append(_step("POST /login/totp", answer))
            if answer.status != 401 or attempt:
                break
            auth.skip_to_next()  # used by someone else (an earlier run): the next step
        used_totp = True
    if answer.status in REDIRECTS and _location_path(answer).startswith("/login/enroll"):
        raise Inconclusive(
            f"user {user!r} must enrol TOTP before it can log in: enrol it once in a browser "
            "(or use an acceptance account: `tundra user add --acceptance`)",
            steps=steps,
        )
    if answer.status == 429:
        raise Inconclusive(
            f"the login is throttled (Retry-After {answer.header('retry-after')}): an earlier "
            "run's failed attempts lock this source; wait and run again",
            steps=steps,
        )
    if answer.status not in REDIRECTS or _location_path(answer).startswith("/login"):
        raise Inconclusive(
            f"the login as {user!r} did not succeed (status {answer.status})", steps=steps
        )
    live = [c for c in answer.set_cookies() if not c.deletes]
    fresh = [c for c in live if c.name not in before]
    named = [c for c in live if "session" in c.name.lower() and "presession" not in c.name]
    # A name new to this browser is the session; else (a planted cookie of the same name)
    # the one called like a session.
    candidates = [c for c in fresh if c in named] or fresh or named
    if not candidates:
        raise Inconclusive("the login set no new session cookie", steps=steps)
    session = candidates[0]
    home = browser.get("/")
    steps.append(_step("GET /", home))
    if home.status != 200:
        raise Inconclusive(
            f"after the login, / answered {home.status}, not the dashboard", steps=steps
        )
    return Login(browser, session.name, session.value, before, steps, used_totp)


def shared_login(ctx: RunContext) -> Login:
    """The run's one login, shared by ID-01, ID-06, ID-07 and ID-08; logged out at the end."""

    def first() -> Login:
        done = login(ctx, Browser(ctx))

        def logout() -> None:
            # The checks' deadlines are over: a context without one for this last request.
            free = Browser(RunContext(ctx.options, target=ctx.target), cookies=done.browser.cookies)
            free.csrf = done.browser.csrf
            answer = free.post_form("/logout", [])
            if answer.status not in REDIRECTS:
                raise RuntimeError(f"POST /logout answered {answer.status}")

        ctx.at_end("identity: log out the shared session", logout)
        return done

    return ctx.memo("identity:login", first)


def reauth_fields(ctx: RunContext) -> list[tuple[str, str]]:
    """The password (and a TOTP code) for a re-authentication form; the caller holds the
    authenticator's lock while posting when a code is included."""
    fields = [(_REAUTH_PASSWORD, ctx.options.password or "")]
    auth = authenticator(ctx)
    if auth is not None:
        fields.append((_REAUTH_TOTP, auth.code(ctx)))
    return fields


# --------------------------------------------------------------------------------------------
# Tokens through the panel


_NEW_TOKEN = re.compile(r"tnd_[a-z0-9]{1,16}_[A-Za-z0-9_-]{43}")


def offered_scopes(browser: Browser) -> list[str]:
    page = browser.get("/tokens")
    if page.status != 200:
        raise Inconclusive(f"/tokens answered {page.status}")
    return [
        i.get("value", "")
        for f in forms_of(page.text)
        for i in f.inputs
        if i.get("name") == "scopes" and i.get("value")
    ]


def create_token(
    browser: Browser, name: str, scopes: Iterable[str], servers: Iterable[str] = ()
) -> str:
    """Issue a token through the panel's form with the session; returns the plaintext."""
    browser.get("/tokens")
    fields = [("name", name), *(("scopes", s) for s in scopes)]
    fields += [("servers", ",".join(servers)), ("expires", "30")]
    answer = browser.post_form("/tokens", fields)
    found = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
    if found is None:
        raise Inconclusive(
            f"issuing a test token through /tokens answered {answer.status}",
            exchange=answer.evidence(),
        )
    return found.group(0)


def token_id(browser: Browser, token: str) -> str | None:
    me = browser.api("GET", ME_PATH, token)
    try:
        value = me.json()["token"]["id"] if me.status == 200 else None
    except (ValueError, KeyError, TypeError):
        value = None
    return str(value) if value else None


def revoke_token(browser: Browser, token: str) -> dict[str, Any]:
    """Revoke through the panel; evidence of what happened (never raises)."""
    try:
        ident = token_id(browser, token)
        if ident is None:
            return {"revoked": False, "reason": "the token's id could not be read"}
        browser.get("/tokens")
        answer = browser.post_form(f"/tokens/{ident}/revoke", [])
        after = browser.api("GET", ME_PATH, token)
        return {
            "revoked": after.status == 401,
            "revoke_status": answer.status,
            "after_status": after.status,
        }
    except Inconclusive as exc:
        return {"revoked": False, "reason": exc.message}


def display(token: str) -> str:
    """What Tundra itself shows of a token: ``tnd_{env}_`` and 8 characters."""
    env_end = token.find("_", 4) + 1
    return token[: env_end + 8] + "…"


def api_error_code(response: HttpResponse) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def openapi(browser: Browser) -> dict[str, Any]:
    answer = browser.request("GET", OPENAPI_PATH, cookies={}, keep=False)
    if answer.status != 200:
        raise Inconclusive(f"{OPENAPI_PATH} answered {answer.status}")
    try:
        document = answer.json()
    except ValueError:
        raise Inconclusive(f"{OPENAPI_PATH} is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
        raise Inconclusive(f"{OPENAPI_PATH} has no paths")
    return document


def operations(document: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(METHOD, path template, operation) for every operation of the document."""
    found = []
    for path, item in document["paths"].items():
        if not isinstance(item, dict):
            continue
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch") and isinstance(op, dict):
                found.append((method.upper(), str(path), op))
    return found


def protected(document: Mapping[str, Any], op: Mapping[str, Any]) -> bool:
    security = op.get("security", document.get("security", []))
    return bool(security)


def fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def probe_name() -> str:
    """A lower-case name no deployment has (valid as a server name, token ref, user name)."""
    return "acc-probe-" + secrets.token_hex(5)


# --------------------------------------------------------------------------------------------
# Local clean-up of throttle counters


def services_of(ctx: RunContext) -> Services | None:
    return ctx.options.services if ctx.options.local else None


def source_address(ctx: RunContext) -> str | None:
    """The address the panel sees this runner connect from: the kernel's route choice for
    the target (a connected UDP socket sends nothing)."""
    try:
        family, _, _, _, address = socket.getaddrinfo(
            ctx.target.host, ctx.target.port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            return str(sock.getsockname()[0])
    except OSError:
        return None


def clear_throttle(
    services: Services, names: Iterable[str], sources: Iterable[str | None]
) -> list[str]:
    """Delete the failed-login counters and locks of ``names`` and ``sources`` (local only)."""
    from tundra.core.identity.throttle import LoginThrottle

    throttle = LoginThrottle(services)
    keys: set[str] = set()
    for name in names:
        for source in [*sources, None]:
            keys.update(throttle._counters(name, source))  # the throttle's own key names
    deleted = []
    for key in sorted(keys):
        for suffix in ("", ":locked", ":audited"):
            if services.kv.delete(key + suffix):
                deleted.append(key + suffix)
    return deleted


# --------------------------------------------------------------------------------------------
# Small helpers


def _verdict(
    problems: list[str], ok: str, evidence: dict[str, Any], *, notes: Sequence[str] = ()
) -> Outcome:
    if notes:
        evidence["notes"] = list(notes)
    if problems:
        summary = problems[0] if len(problems) == 1 else f"{problems[0]} (+{len(problems) - 1})"
        return failed(summary, problems=problems, **evidence)
    return passed(ok, **evidence)


def _guard(fn: Callable[[RunContext], Outcome]) -> Callable[[RunContext], Outcome]:
    """Turn :class:`Inconclusive` into an error outcome with its evidence."""

    def run(ctx: RunContext) -> Outcome:
        try:
            return fn(ctx)
        except Inconclusive as exc:
            return errored(exc.message, **exc.evidence)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


def _cookie_problems(cookie: SetCookie, *, session: bool) -> list[str]:
    problems = []
    name = cookie.name
    if not cookie.secure:
        problems.append(f"{name} is set without Secure")
    if name.startswith("__Host-"):
        if cookie.path != "/":
            problems.append(f"{name} has the __Host- prefix but Path={cookie.path!r}")
        if "domain" in cookie.attributes:
            problems.append(f"{name} has the __Host- prefix and a Domain attribute")
    if not session:
        return problems
    if not name.startswith("__Host-"):
        problems.append(f"the session cookie {name} lacks the __Host- prefix")
    if not cookie.http_only:
        problems.append(f"the session cookie {name} is not HttpOnly")
    if (cookie.same_site or "").lower() != "strict":
        problems.append(
            f"the session cookie {name} has SameSite={cookie.same_site}, not Strict"
            if cookie.same_site
            else f"the session cookie {name} has no SameSite attribute (must be Strict)"
        )
    if cookie.path != "/":
        problems.append(f"the session cookie {name} has Path={cookie.path!r}, not /")
    if "domain" in cookie.attributes:
        problems.append(f"the session cookie {name} has a Domain attribute")
    return problems


# --------------------------------------------------------------------------------------------
# ID-01


@check(
    "ID-01",
    "Session cookie flags after a real login",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def cookie_flags(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    problems: list[str] = []
    seen: list[dict[str, Any]] = []
    session_seen = False
    for url, cookie in done.browser.set_cookies:
        is_session = cookie.name == done.session_name and not cookie.deletes
        session_seen = session_seen or is_session
        problems += [p for p in _cookie_problems(cookie, session=is_session) if p not in problems]
        seen.append({"url": url, **cookie.evidence()})
    if not session_seen:
        problems.append("the session cookie was not seen in the login answers")

    # Nothing may set a cookie over plain http (the http twin of TR-01).
    plain: list[dict[str, Any]] = []
    client = ctx.http()
    for path in ("/", "/login"):
        url = ctx.target.http_url(path)
        try:
            answer = client.get(url)
        except OSError as exc:
            plain.append({"url": url, "error": f"{type(exc).__name__}: {exc}"})
            continue
        names = [c.name for c in answer.set_cookies()]
        plain.append({"url": url, "status": answer.status, "set_cookie": names})
        if names:
            problems.append(f"{url} sets cookie(s) over http: {', '.join(names)}")
    evidence = {
        "session_cookie": done.session_name,
        "cookies": seen,
        "http": plain,
        "login": done.evidence(),
    }
    return _verdict(
        problems,
        f"{done.session_name}: __Host-, Secure, HttpOnly, SameSite=Strict, Path=/, no Domain;"
        f" every cookie Secure; none over http",
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-02


@check(
    "ID-02",
    "New session id at login; the old one refused after logout",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def session_lifecycle(ctx: RunContext) -> Outcome:
    name = shared_login(ctx).session_name
    browser = Browser(ctx)
    planted = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    done = login(ctx, browser, plant={name: planted})
    problems: list[str] = []
    new = done.session_id
    if new == planted:
        problems.append("the session id planted before the login became the session (fixation)")
    reused = sorted(k for k, v in done.before.items() if v == new and k != name)
    if reused:
        problems.append(f"the session id equals the pre-login cookie {reused[0]}")
    # The planted id alone must open nothing (a server that adopted it would answer the page).
    planted_only = browser.request("GET", "/", cookies={name: planted}, keep=False)
    if not browser.is_login_redirect(planted_only):
        problems.append(f"the planted session id opens / (status {planted_only.status})")

    logout = browser.post_form("/logout", [])
    replay = browser.request("GET", "/", cookies={name: new}, keep=False)
    replay_ok = browser.is_login_redirect(replay)
    if not replay_ok:
        problems.append(
            f"after logout the old session cookie still opens / (status {replay.status})"
        )
    evidence = {
        "session_cookie": name,
        "planted_differs": new != planted,
        "differs_from_pre_login_cookies": not reused,
        "planted_only": {
            "status": planted_only.status,
            "location": planted_only.header("location"),
        },
        "logout": {"status": logout.status, "location": logout.header("location")},
        "replay_after_logout": {"status": replay.status, "location": replay.header("location")},
        "login": done.evidence(),
    }
    return _verdict(
        problems,
        "a new session id at login (a planted one is ignored); logout revokes it server-side",
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-03


@check(
    "ID-03",
    "Every protected route refuses an anonymous request",
    section=Section.IDENTITY,
    severity=Severity.CRITICAL,
    timeout=60.0,
)
@_guard
def anonymous_refused(ctx: RunContext) -> Outcome:
    browser = Browser(ctx)
    problems: list[str] = []
    notes: list[str] = []
    api: list[dict[str, Any]] = []
    probe = probe_name()
    try:
        document: dict[str, Any] | None = openapi(browser)
    except Inconclusive as exc:
        document = None
        notes.append(f"no route list: {exc.message}")
    if document is not None:
        for method, template, op in operations(document):
            if not protected(document, op):
                continue
            path = fill(template, probe)
            payload: dict[str, Any] | None = {} if "requestBody" in op else None
            answer = browser.request(method, path, json_body=payload, cookies={}, keep=False)
            challenge = answer.header("www-authenticate") or ""
            api.append(
                {"method": method, "path": path, "status": answer.status, "challenge": challenge}
            )
            if answer.status != 401:
                problems.append(f"{method} {path} answered {answer.status} to an anonymous call")
            elif not challenge.lower().startswith("bearer"):
                problems.append(f"{method} {path}: 401 without a Bearer WWW-Authenticate")
        if not api:
            problems.append("the OpenAPI document lists no protected operation")

    pages: list[dict[str, Any]] = []
    wanted = list(dict.fromkeys([*PAGES, *ctx.options.pages]))
    for template in wanted:
        path = fill(template, probe)
        answer = browser.request("GET", path, cookies={}, keep=False)
        pages.append(
            {
                "method": "GET",
                "path": path,
                "status": answer.status,
                "location": answer.header("location"),
            }
        )
        if not browser.is_login_redirect(answer):
            problems.append(f"GET {path} answered {answer.status}, not a redirect to /login")
    for template in POST_PAGES:
        path = fill(template, probe)
        answer = browser.post_form(path, [], csrf=None, cookies={}, keep=False)
        pages.append(
            {
                "method": "POST",
                "path": path,
                "status": answer.status,
                "location": answer.header("location"),
            }
        )
        if not (browser.is_login_redirect(answer) or answer.status in (401, 403)):
            problems.append(f"POST {path} answered {answer.status} to an anonymous post")

    # With a session cookie but no token the API is still anonymous: it takes no cookies
    # (which is why it needs no CSRF defence).
    cookie_api: list[dict[str, Any]] = []
    if document is not None and ctx.options.has_credentials:
        try:
            jar = shared_login(ctx).browser.cookies
        except Inconclusive as exc:
            notes.append(f"session-cookie probe of the API skipped: {exc.message}")
        else:
            for method, template, op in operations(document):
                if method != "GET" or not protected(document, op):
                    continue
                path = fill(template, probe)
                answer = browser.request("GET", path, cookies=dict(jar), keep=False)
                cookie_api.append({"path": path, "status": answer.status})
                if answer.status != 401:
                    problems.append(
                        f"GET {path} with only a session cookie answered {answer.status}, not 401"
                    )
    evidence: dict[str, Any] = {"api": api, "pages": pages, "api_with_session_cookie": cookie_api}
    if document is None and not problems:
        return errored(notes[0], **evidence, notes=notes)
    return _verdict(
        problems,
        f"{len(api)} API operations answer 401 (Bearer challenge), {len(pages)} page requests "
        "redirect to /login or are refused",
        evidence,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# ID-04


def _normalised(response: HttpResponse, secrets_: Iterable[str]) -> bytes:
    body = response.body
    request_id = response.header("x-request-id")
    for value in sorted({s for s in [*secrets_, request_id or ""] if len(s) >= 3}, key=len)[::-1]:
        body = body.replace(value.encode(), b"<varies>")
    return body


_VARYING_HEADERS = frozenset({"date", "x-request-id", "content-length", "set-cookie"})


def _shape(response: HttpResponse) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": sorted({k.lower() for k, _ in response.headers} - _VARYING_HEADERS),
        "cookies": sorted(
            (c.name, tuple(sorted((k, str(v)) for k, v in c.attributes.items())))
            for c in response.set_cookies()
        ),
    }


def _sample(ctx: RunContext, samples: int, *, spread: bool) -> dict[str, Any]:
    """One batch: ``samples`` rounds of an unknown user and the real user with a wrong
    password, in alternating order, each from a fresh browser (and source when ``spread``)."""
    user = ctx.options.user or ""
    batch: dict[str, Any] = {
        "attempts": {"unknown_user": [], "wrong_password": []},
        "bodies": {"unknown_user": [], "wrong_password": []},
        "records": [],
        "names": [],
        "sources": [],
    }
    order = ["unknown_user", "wrong_password"]
    for round_ in range(samples):
        for kind in order if round_ % 2 == 0 else order[::-1]:
            source = spare_loopback_source() if spread else None
            batch["sources"].append(source)
            browser = Browser(ctx, source=source)
            page = browser.get("/login")
            if page.status != 200 or not browser.csrf:
                raise Inconclusive(f"the login page answered {page.status}")
            name = user
            if kind == "unknown_user":
                name = "acc" + secrets.token_hex(4)
                batch["names"].append(name)
            wrong = "wrong-" + secrets.token_urlsafe(12)
            answer = browser.post_form(
                "/login", [("username", name), ("password", wrong), ("next", "/")]
            )
            batch["records"].append(
                {
                    "kind": kind,
                    "source": source,
                    "status": answer.status,
                    "elapsed_ms": round(answer.elapsed_ms, 1),
                    "bytes": len(answer.body),
                }
            )
            if answer.status == 429:
                raise Inconclusive(
                    "throttled while sampling (an earlier run's failures lock this source; "
                    f"Retry-After {answer.header('retry-after')})",
                    attempts=batch["records"],
                )
            if password_accepted(answer):
                raise Inconclusive("a wrong password was accepted", attempts=batch["records"])
            varying = [*browser.cookies.values(), browser.csrf or "", name, wrong]
            batch["attempts"][kind].append(answer)
            batch["bodies"][kind].append(_normalised(answer, varying))
    return batch


def _timing(attempts: Mapping[str, list[HttpResponse]]) -> dict[str, Any]:
    """Medians and minimums per kind; a leak when both differ beyond the tolerance in the same
    direction. Load on the server only adds time, so a quiet sample of each kind brings the
    minimums together, while a missing dummy hash shifts every known-user answer."""
    times = {k: [r.elapsed_ms for r in v] for k, v in attempts.items()}
    medians = {k: statistics.median(v) for k, v in times.items()}
    minimums = {k: min(v) for k, v in times.items()}
    tolerance = max(TIMING_TOLERANCE_MS, TIMING_TOLERANCE_RATIO * max(medians.values()))
    d_median = medians["wrong_password"] - medians["unknown_user"]
    d_minimum = minimums["wrong_password"] - minimums["unknown_user"]
    leak = abs(d_median) > tolerance and abs(d_minimum) > tolerance and d_median * d_minimum > 0
    return {
        "medians_ms": {k: round(v, 1) for k, v in medians.items()},
        "minimums_ms": {k: round(v, 1) for k, v in minimums.items()},
        "median_delta_ms": round(d_median, 1),
        "minimum_delta_ms": round(d_minimum, 1),
        "tolerance_ms": round(tolerance, 1),
        "leak": leak,
    }


@check(
    "ID-04",
    "No user enumeration at login",
    section=Section.IDENTITY,
    severity=Severity.MEDIUM,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def no_enumeration(ctx: RunContext) -> Outcome:
    user = ctx.options.user or ""
    spread = loopback_v4(ctx.target.host) and spare_loopback_source() is not None
    samples = SAMPLES_SPREAD if spread else SAMPLES_ONE_SOURCE
    services = services_of(ctx)
    if services is not None:
        # Never reach a lock: it would refuse the other checks' logins. With a source per
        # attempt only the account counts (wrong passwords); otherwise the source counts all.
        most = services.settings.login_max_failures
        samples = max(1, min(samples, most - 2 if spread else (most - 1) // 2))

    def clean(batch: dict[str, Any]) -> None:
        if services is not None:
            clear_throttle(
                services, [user, *batch["names"]], [*batch["sources"], source_address(ctx)]
            )

    batch = _sample(ctx, samples, spread=spread)
    clean(batch)
    timing = [_timing(batch["attempts"])]
    if timing[0]["leak"] and services is not None:
        # Locally the counters were just reset: confirm with a second batch, so that a burst
        # of load from concurrent checks is not mistaken for a leak.
        second = _sample(ctx, samples, spread=spread)
        clean(second)
        timing.append(_timing(second["attempts"]))

    problems: list[str] = []
    attempts, bodies = batch["attempts"], batch["bodies"]
    shapes = {k: [_shape(r) for r in v] for k, v in attempts.items()}
    first = shapes["unknown_user"][0]
    if any(s != first for v in shapes.values() for s in v):
        problems.append(
            "wrong user and wrong password differ in status or headers: "
            f"{shapes['unknown_user'][0]} vs {shapes['wrong_password'][0]}"
        )
    reference = bodies["unknown_user"][0]
    if any(b != reference for v in bodies.values() for b in v):
        a, b = reference, bodies["wrong_password"][0]
        at = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
        problems.append(
            "the bodies differ (normalised for request id, CSRF token and the typed name) "
            f"at byte {at}: {a[max(0, at - 40) : at + 40]!r} vs {b[max(0, at - 40) : at + 40]!r}"
        )
    if all(t["leak"] for t in timing):
        last = timing[-1]
        problems.append(
            "timing differs: median {u} ms (unknown user) vs {w} ms (wrong password), minimum "
            "{mu} vs {mw} ms, tolerance {t} ms".format(
                u=last["medians_ms"]["unknown_user"],
                w=last["medians_ms"]["wrong_password"],
                mu=last["minimums_ms"]["unknown_user"],
                mw=last["minimums_ms"]["wrong_password"],
                t=last["tolerance_ms"],
            )
        )
    evidence = {
        "samples_per_kind": samples,
        "source_per_attempt": spread,
        "status": first["status"],
        "timing": timing,
        "tolerance_rule": f"a leak when the medians and the minimums both differ by more than "
        f"max({TIMING_TOLERANCE_MS:.0f} ms, {TIMING_TOLERANCE_RATIO:.0%} of the slower median)"
        ", in the same direction (and, with --local, again in a second batch)",
        "attempts": batch["records"],
        "local_cleanup": services is not None,
    }
    return _verdict(
        problems,
        f"unknown user and wrong password: same status {first['status']}, same body, medians "
        f"{abs(timing[-1]['median_delta_ms'])} ms apart (tolerance {timing[-1]['tolerance_ms']} "
        "ms)",
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-05


@check(
    "ID-05",
    "Brute-force throttling refuses even the right password",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=90.0,
    needs=("credentials",),
    # Its failure storm can lock the runner's address off a non-loopback target: run it alone,
    # after every other check has logged in.
    run_last=True,
)
@_guard
def throttling(ctx: RunContext) -> Outcome:
    user, password = ctx.options.user or "", ctx.options.password or ""
    shared_login(ctx)  # control: the credentials work (else a refusal would prove nothing)
    services = services_of(ctx)
    spare = spare_loopback_source() if loopback_v4(ctx.target.host) else None
    maximum = services.settings.login_max_failures if services is not None else None
    limit = STORM_LIMIT if maximum is None else maximum + 1
    storm_name = "acc" + secrets.token_hex(6)
    browser = Browser(ctx, source=spare)
    source = spare or source_address(ctx)
    statuses: list[int] = []
    lock: HttpResponse | None = None
    cleanup: dict[str, Any] = {"unlocked": False}
    try:
        page = browser.get("/login")
        if page.status != 200 or not browser.csrf:
            raise Inconclusive(f"the login page answered {page.status}")
        for _ in range(limit):
            if ctx.cancelled.is_set():
                raise Inconclusive("cancelled during the storm", statuses=statuses)
            answer = browser.post_form(
                "/login",
                [("username", storm_name), ("password", "wrong-" + secrets.token_urlsafe(12))],
            )
            statuses.append(answer.status)
            if answer.status == 429:
                lock = answer
                break
            if answer.status != 401:
                raise Inconclusive(
                    f"a failed login answered {answer.status}, not 401", statuses=statuses
                )
        # The right password of the real account, from the source that just failed.
        right = browser.post_form(
            "/login", [("username", user), ("password", password), ("next", "/")]
        )
        if password_accepted(right) and right.status in REDIRECTS:
            browser.post_form("/logout", [])  # best effort: end a session the lock let in
    finally:
        if services is not None:
            deleted = clear_throttle(services, [storm_name, user], [source])
            cleanup = {"unlocked": True, "keys_deleted": len(deleted)}
    accepted = password_accepted(right)
    failures = len(statuses) - (1 if lock is not None else 0)
    retry_after = (lock or right).header("retry-after")
    if maximum is not None and services is not None:
        lock_seconds: int | None = services.settings.login_lock_seconds
    else:
        lock_seconds = int(retry_after) if retry_after and retry_after.isdigit() else None
    evidence: dict[str, Any] = {
        "storm_user": "a random name that does not exist (the account itself is not locked)",
        "source": source,
        "source_is_spare_loopback_address": spare is not None,
        "failures_before_lock": failures,
        "statuses": statuses,
        "retry_after": retry_after,
        "right_password": {"status": right.status, "location": right.header("location")},
        "lock_seconds": lock_seconds,
        "configured_max_failures": maximum,
        **cleanup,
    }
    if not cleanup["unlocked"]:
        evidence["locked"] = (
            f"source {source} stays locked for {lock_seconds or 'login_lock_seconds'} s"
            + ("" if spare else ": logins from this runner fail until then (run ID-05 last)")
        )
    problems: list[str] = []
    if accepted:
        problems.append(
            f"after {failures} failed logins from {source}, the right password for {user!r} "
            "from the same source still got through (no lock per source)"
        )
    if maximum is not None and lock is not None and failures > maximum:
        problems.append(f"the lock came after {failures} failures; configured: {maximum}")
    signal = f"429, Retry-After {retry_after}" if lock is not None else "no 429"
    return _verdict(
        problems,
        f"locked after {failures} failures ({signal}); the right password was then refused "
        f"with {right.status}; lock {lock_seconds} s"
        + (", unlocked afterwards (--local)" if cleanup["unlocked"] else ""),
        evidence,
    )


# --------------------------------------------------------------------------------------------
# ID-06


def _csrf_cookie(browser: Browser) -> str | None:
    """The name of the cookie carrying the double-submit token, if there is one."""
    token = browser.csrf
    return next((k for k, v in browser.cookies.items() if v == token), None)


@check(
    "ID-06",
    "CSRF: no token, a wrong token or a cross-site origin is refused",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def csrf_refused(ctx: RunContext) -> Outcome:
    browser = shared_login(ctx).browser.fork()
    browser.get("/tokens")
    if not browser.csrf:
        raise Inconclusive("the /tokens page carries no CSRF token")
    valid = browser.csrf
    # A harmless unsafe request: issuing a token without a name is refused by validation
    # (422) once the CSRF layer let it through, and never changes anything.
    fields = [("name", ""), ("expires", "30")]
    control = browser.post_form("/tokens", fields, keep=False)
    results: dict[str, dict[str, Any]] = {
        "control (valid token, same origin)": {"status": control.status}
    }
    if control.status in (400, 403) or browser.is_login_redirect(control):
        raise Inconclusive(
            f"the valid same-origin post answered {control.status}: cannot tell a CSRF refusal "
            "from it",
            results=results,
        )
    forged = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    cookie_name = _csrf_cookie(browser)
    evil = "https://attacker.example"
    cases: list[tuple[str, str | None, list[tuple[str, str]], dict[str, str] | None]] = [
        ("no token", None, browser.same_origin_headers(), None),
        ("wrong token", forged, browser.same_origin_headers(), None),
        (
            "cross-site Origin and Sec-Fetch-Site",
            valid,
            [("Origin", evil), ("Sec-Fetch-Site", "cross-site")],
            None,
        ),
        ("cross-site Sec-Fetch-Site only", valid, [("Sec-Fetch-Site", "cross-site")], None),
        ("foreign Origin only", valid, [("Origin", evil)], None),
    ]
    if cookie_name is not None:
        # Cookie and field agree but the attacker chose both: a signed token is refused.
        forged_jar = {**browser.cookies, cookie_name: forged}
        cases.append(
            ("forged cookie and field pair", forged, browser.same_origin_headers(), forged_jar)
        )
    problems: list[str] = []
    for label, token, headers, jar in cases:
        answer = browser.post_form(
            "/tokens", fields, csrf=token or None, headers=headers, cookies=jar, keep=False
        )
        refused = answer.status in (400, 403)
        results[label] = {"status": answer.status, "refused": refused}
        if not refused:
            problems.append(f"{label}: answered {answer.status} like the valid post")
    return _verdict(
        problems,
        f"{len(cases)} forged or cross-site posts refused; the valid post answered "
        f"{control.status}",
        {"target": "POST /tokens (an invalid, harmless form)", "results": results},
    )


# --------------------------------------------------------------------------------------------
# ID-07


#: Sensitive API operations and a request that would perform one on nothing that exists.
def _sensitive_api(probe: str) -> list[tuple[str, str, str, Any, str]]:
    """(operationId, METHOD, path, body, scope needed to reach the gate)."""
    return [
        ("deleteServer", "DELETE", f"/api/v1/servers/{probe}", None, "servers:write"),
        (
            "createToken",
            "POST",
            "/api/v1/tokens",
            {"name": f"{probe}-admin", "scopes": ["admin"], "expires_in": 3600},
            "tokens:write",
        ),
    ]


def _backdate(services: Services, session_id: str) -> dict[str, Any]:
    """Move the session's last authentication back past the re-auth window (local probe).

    Under the session's own write lock (the one core's session service takes), so a touch of
    the record by a concurrent request cannot write the old stamp back.
    """
    from tundra.core.identity.sessions import handle_of
    from tundra.core.storage.kv import LockNotAcquired

    handle = handle_of(session_id)
    if handle is None:
        raise Inconclusive("the session id is not in Tundra's format; cannot age it")
    key = _SESSION_KEY.format(handle=handle)
    window = services.settings.reauth_window
    for _ in range(50):
        try:
            with services.kv.lock(key, ttl=5.0):
                raw = services.kv.get(key)
                if raw is None:
                    raise Inconclusive(
                        "the session is not in the local KV store (is --local right?)"
                    )
                record = json.loads(raw)
                record["authenticated_at"] = time.time() - window - 60
                ttl = services.kv.ttl(key)
                keep = ttl if ttl is not None and 0 < ttl < float("inf") else None
                services.kv.set(key, json.dumps(record).encode(), ttl=keep)
                return {"reauth_window": window, "aged_by_s": window + 60}
        except LockNotAcquired:
            time.sleep(0.02)
    raise Inconclusive("the session's lock stayed busy; cannot age it")


def _session_half(ctx: RunContext, services: Services, done: Login, probe: str) -> dict[str, Any]:
    browser = done.browser.fork()
    result: dict[str, Any] = {"aged": _backdate(services, done.session_id)}
    problems: list[str] = []
    gated: list[tuple[str, list[tuple[str, str]]]] = []
    admin_token = f"{probe}-admin"
    posts = [
        ("/tokens", [("name", admin_token), ("scopes", "admin"), ("expires", "30")]),
        (f"/servers/{probe}/delete", []),
    ]
    for path, fields in posts:
        browser.get("/tokens")
        answer = browser.post_form(path, fields)
        asked = answer.status == 403 and has_reauth_form(answer.text)
        entry: dict[str, Any] = {"status": answer.status, "reauth_form": asked}
        created = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
        if created is not None:
            entry["cleanup"] = revoke_token(browser, created.group(0))
        if asked:
            form = next(f for f in forms_of(answer.text) if f.has(_REAUTH_PASSWORD))
            carried = [
                (i["name"], i.get("value", ""))
                for i in form.inputs
                if i.get("name") and i.get("type") == "hidden" and i["name"] != _CSRF_FIELD
            ]
            gated.append((path, carried))
        elif answer.status == 403 and path.startswith("/servers"):
            entry["note"] = "refused before the gate (this account may not delete servers)"
        else:
            problems.append(
                f"POST {path} with a session older than the re-auth window answered "
                f"{answer.status} without asking for the password"
            )
        result[f"POST {path}"] = entry
    if gated:
        # Prefer the server deletion of a server that does not exist: passing the gate then
        # deletes nothing; an administrator token is never issued on purpose.
        path, carried = gated[-1]
        auth = authenticator(ctx)
        lock = auth.lock if auth is not None else threading.Lock()
        with lock:
            answer = browser.post_form(path, [*carried, *reauth_fields(ctx)])
        opened = not has_reauth_form(answer.text) and answer.status != 401
        created = _NEW_TOKEN.search(answer.text) if answer.status in (200, 201) else None
        entry = {"status": answer.status, "gate_opened": opened}
        if created is not None:
            entry["cleanup"] = revoke_token(browser, created.group(0))
        result[f"POST {path} with the password"] = entry
        if not opened:
            problems.append(f"POST {path} with the password still asked for it ({answer.status})")
    result["problems"] = problems
    return result


@check(
    "ID-07",
    "Re-authentication for sensitive operations; never by a token",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=60.0,
    needs=("credentials",),
)
@_guard
def reauthentication(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    browser = done.browser.fork()
    probe = probe_name()
    scopes = [s for s in offered_scopes(browser) if s != "admin"]
    token = create_token(browser, f"tundra-acceptance-{probe}", scopes, [probe])
    problems: list[str] = []
    notes: list[str] = []
    token_half: dict[str, Any] = {"token": display(token), "scopes": scopes}
    try:
        # The API documents its sensitive operations (403 reauth_required); those the runner
        # has no harmless request for are named in the evidence, not silently passed over.
        documented = {
            str(op.get("operationId"))
            for _, _, op in operations(openapi(browser))
            if "reauth_required" in str(op.get("description", ""))
        }
        probes = _sensitive_api(probe)
        untested = sorted(documented - {p[0] for p in probes})
        token_half["documented_sensitive"] = sorted(documented)
        if untested:
            notes.append(f"documented as sensitive but not probed: {', '.join(untested)}")
        for op_id, method, path, body, scope in probes:
            answer = browser.api(method, path, token, body)
            code = api_error_code(answer)
            token_half[op_id] = {
                "method": method,
                "path": path,
                "status": answer.status,
                "code": code,
            }
            if answer.status == 201 and op_id == "createToken":
                # Should never happen: an administrator token issued by a token. Revoke it.
                try:
                    minted = str(answer.json()["plaintext"])
                    token_half[op_id]["cleanup"] = revoke_token(browser, minted)
                except (ValueError, KeyError, TypeError):
                    pass
            if answer.status == 403 and code == "reauth_required":
                continue
            if answer.status == 403 and scope not in scopes:
                notes.append(f"{op_id}: refused by scope first (the account cannot hold {scope})")
                continue
            problems.append(
                f"a token's {method} {path} answered {answer.status} {code or ''}".rstrip()
                + ", not 403 reauth_required"
            )
    finally:
        token_half["cleanup"] = revoke_token(browser, token)

    services = services_of(ctx)
    session_half: dict[str, Any]
    if services is None:
        session_half = {
            "evaluated": False,
            "reason": "a session cannot be aged from outside; run with --local for this half",
        }
        notes.append("session half not evaluated (needs --local)")
    else:
        session_half = _session_half(ctx, services, done, probe)
        problems += session_half.pop("problems")
        session_half["evaluated"] = True
    evidence = {"token_half": token_half, "session_half": session_half}
    ok = "a token is refused every sensitive operation (403 reauth_required)" + (
        "; an aged session is asked for the password, which opens the gate"
        if services is not None
        else "; the session half needs --local"
    )
    return _verdict(problems, ok, evidence, notes=notes)


# --------------------------------------------------------------------------------------------
# ID-08


def _bad_tokens(token: str) -> dict[str, str]:
    from tundra.core.identity import token_format

    match = re.match(r"tnd_([a-z0-9]{1,16})_", token)
    env = match.group(1) if match else "live"
    prefix = f"tnd_{env}_"
    secret = token[len(prefix) :]
    flipped = secret[:5] + ("B" if secret[5] == "A" else "A") + secret[6:]
    other_env = "acceptance" if env != "acceptance" else "acceptancex"
    return {
        "malformed (not a token)": "not-a-token-" + secrets.token_hex(8),
        "malformed (bad last character)": prefix + secret[:-1] + "!",
        "bad checksum": prefix + flipped,
        "unknown (well-formed, valid checksum)": token_format.generate(env),
        "wrong env": token_format.generate(other_env),
    }


@check(
    "ID-08",
    "API tokens: bad tokens refused alike; scope and resource enforced",
    section=Section.IDENTITY,
    severity=Severity.HIGH,
    timeout=45.0,
    needs=("credentials",),
)
@_guard
def api_tokens(ctx: RunContext) -> Outcome:
    done = shared_login(ctx)
    browser = done.browser.fork()
    document = openapi(browser)
    allowed, other = probe_name(), probe_name()
    scopes = ["servers:read"]
    token = create_token(browser, f"tundra-acceptance-{allowed}", scopes, [allowed])
    problems: list[str] = []
    evidence: dict[str, Any] = {"token": display(token), "scopes": scopes, "servers": [allowed]}
    fixed_id = "acceptance-" + secrets.token_hex(8)

    def answer_of(value: str) -> tuple[HttpResponse, dict[str, Any]]:
        response = browser.request(
            "GET",
            ME_PATH,
            headers=[("Authorization", f"Bearer {value}"), ("X-Request-ID", fixed_id)],
            cookies={},
            keep=False,
        )
        body = _normalised(response, [fixed_id])
        shape = {
            "status": response.status,
            "www_authenticate": response.header("www-authenticate"),
            "body_sha256": hashlib.sha256(body).hexdigest(),
            "body": body.decode("utf-8", "replace")[:300],
        }
        return response, shape

    try:
        me = browser.api("GET", ME_PATH, token)
        evidence["control"] = {"path": ME_PATH, "status": me.status}
        if me.status != 200:
            raise Inconclusive(f"the new token is refused on {ME_PATH} ({me.status})", **evidence)

        bad = _bad_tokens(token)
        shapes: dict[str, dict[str, Any]] = {}
        timings: dict[str, float] = {}
        for label, value in bad.items():
            response, shapes[label] = answer_of(value)
            timings[label] = round(response.elapsed_ms, 1)
        reference = shapes["unknown (well-formed, valid checksum)"]
        if reference["status"] != 401:
            problems.append(f"an unknown token answered {reference['status']}, not 401")
        for label, shape in shapes.items():
            if shape != reference:
                problems.append(f"{label} answers differently from an unknown token: {shape}")
        evidence["bad_tokens"] = shapes
        evidence["bad_token_ms"] = timings

        # Outside the scope: every GET without path parameters whose scope the token lacks.
        out_of_scope: list[dict[str, Any]] = []
        for method, path, op in operations(document):
            scope = op.get("x-tundra-scope")
            if method != "GET" or "{" in path or not scope or scope in scopes:
                continue
            response = browser.api("GET", path, token)
            out_of_scope.append({"path": path, "scope": scope, "status": response.status})
            if response.status != 403:
                problems.append(f"GET {path} (needs {scope}) answered {response.status}, not 403")
        if not out_of_scope:
            problems.append("the OpenAPI document names no operation outside the token's scope")
        evidence["out_of_scope"] = out_of_scope

        # Outside the resource: another server by name; the token's own server is the control.
        item = next(
            (
                p
                for m, p, o in operations(document)
                if m == "GET" and o.get("x-tundra-scope") == "servers:read" and "{" in p
            ),
            None,
        )
        if item is None:
            problems.append("the OpenAPI document has no per-server read operation")
        else:
            outside = browser.api("GET", fill(item, other), token)
            inside = browser.api("GET", fill(item, allowed), token)
            evidence["out_of_resource"] = {
                "path": fill(item, other),
                "status": outside.status,
                "control_own_server": {"path": fill(item, allowed), "status": inside.status},
            }
            if outside.status != 403:
                problems.append(
                    f"GET {fill(item, other)} outside the token's servers answered "
                    f"{outside.status}, not 403"
                )
            if inside.status == 403:
                problems.append("the token is refused its own server too: resource rules unclear")
    finally:
        evidence["cleanup"] = revoke_token(browser, token)
    if evidence["cleanup"].get("revoked"):
        _, revoked_shape = answer_of(token)
        evidence["bad_tokens"]["revoked"] = revoked_shape
        if revoked_shape != evidence["bad_tokens"]["unknown (well-formed, valid checksum)"]:
            problems.append(f"a revoked token answers differently: {revoked_shape}")
    notes = [
        "no-lookup evidence is the identical answer: one indexed lookup is below network "
        "jitter, so the timings are recorded, not judged"
    ]
    return _verdict(
        problems,
        f"{len(bad)} bad tokens and a revoked one get one identical 401; "
        f"{len(evidence['out_of_scope'])} out-of-scope calls and another server get 403",
        evidence,
        notes=notes,
    )
