"""The small HTTPS browser the identity checks speak to the panel with, and its HTML forms.

The checks speak to the panel like a browser does: :class:`Browser` keeps cookies, reads the
forms' CSRF token, and sends ``Origin``/``Sec-Fetch-Site`` as a same-origin form post would. It
has its own small transport (not :class:`~tundra.core.acceptance.context.HttpClient`) for two
reasons: it can bind a chosen source address, and it times a request from after the TLS
handshake, so ID-04 compares the server's work and not connection set-up.
"""

from __future__ import annotations

import http.client
import json
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from tundra.core.acceptance.checks.identity.base import Inconclusive
from tundra.core.acceptance.context import (
    USER_AGENT,
    HttpResponse,
    RunContext,
    SetCookie,
    make_ssl_context,
)

#: Statuses that mean "redirected".
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_REQUEST_SECRETS = frozenset({"authorization", "cookie", "x-csrf-token"})
_CSRF_FIELD = "csrf_token"
_REAUTH_PASSWORD = "reauth_password"  # noqa: S105 - a form field name


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


def _normalised(response: HttpResponse, secrets_: Iterable[str]) -> bytes:
    body = response.body
    request_id = response.header("x-request-id")
    for value in sorted({s for s in [*secrets_, request_id or ""] if len(s) >= 3}, key=len)[::-1]:
        body = body.replace(value.encode(), b"<varies>")
    return body
