"""What a check receives: the target, the run's options, shared memo, and small network clients.

:class:`RunContext` is handed to every check. It carries the parsed :class:`Target`, the
:class:`RunOptions`, a thread-safe :meth:`RunContext.memo` for work several checks share (one
login session for all identity checks), the check's own deadline, and factories for the two
clients checks use:

- :class:`HttpClient` over ``http.client`` + ``ssl``: keeps raw response headers as a list of
  ``(name, value)`` in order with duplicates (two HSTS headers are two entries), never follows a
  redirect unless asked, keeps cookies only when asked, and records every exchange in an
  evidence-friendly form (cookie values and credentials redacted).
- :func:`tls_probe` over ``ssl``: one handshake with chosen versions, a group, a client
  certificate, ALPN, and (by default) a read after the handshake, because a TLS 1.3 server
  reports a refused client certificate only on the first read.

Example::

    @check("TR-01", "HTTP redirects to HTTPS", section=Section.TRANSPORT, severity=Severity.HIGH)
    def http_redirects(ctx: RunContext) -> Outcome:
        client = ctx.http()
        response = client.get(ctx.target.http_url("/a/path?q=1"))
        location = response.header("location")
        evidence = {"exchanges": client.evidence()}
        if response.status not in (301, 308):
            return failed(f"http answered {response.status}, not 301/308", **evidence)
        if location != ctx.target.https_url("/a/path?q=1"):
            return failed(f"redirects to {location!r}", **evidence)
        if response.header_values("set-cookie"):
            return failed("the redirect sets a cookie over http", **evidence)
        return passed("one hop to the same path over https", **evidence)

    probe = tls_probe(ctx.target.host, ctx.target.port,
                      min_version=ssl.TLSVersion.TLSv1_2, max_version=ssl.TLSVersion.TLSv1_2,
                      read_after=False, timeout=ctx.io_timeout())
    if probe.handshake_ok: ...            # TLS 1.2 was accepted
    evidence = probe.evidence()

Only the standard library is used here; checks may also use the project's dependencies.
"""

from __future__ import annotations

import http.client
import ipaddress
import json as jsonlib
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tundra import __version__
from tundra.core.acceptance.model import Severity
from tundra.core.errors import InvalidInput

if TYPE_CHECKING:
    from tundra.core.services import Services

T = TypeVar("T")

USER_AGENT = f"tundra-acceptance/{__version__}"
DEFAULT_GATEWAY_PORT = 7447
#: Response headers whose values never go into evidence (cookie values are redacted separately).
_SECRET_REQUEST_HEADERS = frozenset({"authorization", "cookie", "x-csrf-token", "x-api-key"})


# --------------------------------------------------------------------------------------------
# Target and options


def _format_host(host: str) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]"
    except ValueError:
        pass
    return host


@dataclass(frozen=True, slots=True)
class Target:
    """The deployment under test, parsed from ``--url`` (an https origin)."""

    host: str
    port: int
    #: Port of the plain-HTTP twin that must redirect (TR-01): ``--http-port``, default 80.
    http_port: int = 80

    @classmethod
    def parse(cls, url: str, *, http_port: int | None = None) -> Target:
        try:
            parts = urllib.parse.urlsplit(url.strip())
            parts.hostname  # noqa: B018 - parsing a bracketed host may raise only here
        except ValueError as exc:
            raise InvalidInput(f"--url {url!r} is not a URL: {exc}") from None
        if parts.scheme != "https":
            raise InvalidInput(
                f"--url must be an https URL, got {url!r}",
                hint="for example --url https://panel.example.com",
            )
        if not parts.hostname:
            raise InvalidInput(f"--url has no host: {url!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise InvalidInput(
                f"--url must be the panel's origin, without a path: {url!r}",
                hint=f"use --url https://{parts.netloc}",
            )
        if parts.username or parts.password:
            raise InvalidInput(
                "--url must not carry credentials", hint="use --user and --password-env"
            )
        try:
            port = parts.port or 443
        except ValueError:
            raise InvalidInput(f"--url has an invalid port: {url!r}") from None
        if http_port is not None and not 0 < http_port < 65536:
            raise InvalidInput(f"--http-port {http_port} is not a port")
        return cls(host=parts.hostname, port=port, http_port=http_port or 80)

    @property
    def netloc(self) -> str:
        host = _format_host(self.host)
        return host if self.port == 443 else f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.netloc}"

    def https_url(self, path: str = "/") -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def http_url(self, path: str = "/") -> str:
        host = _format_host(self.host)
        netloc = host if self.http_port == 80 else f"{host}:{self.http_port}"
        return f"http://{netloc}" + (path if path.startswith("/") else "/" + path)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """Everything a run is given. Secrets are excluded from ``repr`` and :meth:`summary`."""

    url: str
    sections: tuple[str, ...] = ()
    checks: tuple[str, ...] = ()
    ca_file: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    totp_secret: str | None = field(default=None, repr=False)
    agent_cert: Path | None = None
    agent_key: Path | None = None
    #: "host:port" of the agent gateway; default the target host on 7447.
    gateway: str | None = None
    #: The runner is on the panel host: host-local checks run.
    local: bool = False
    #: The local control plane (``--local`` with an initialised home); checks needing it skip
    #: without it.
    services: Services | None = field(default=None, repr=False, compare=False)
    #: Overrides every check's own time limit (seconds) when set.
    timeout: float | None = None
    #: Limit of a single network operation (connect, handshake, one request).
    io_timeout: float = 5.0
    #: Newest audit checkpoint to verify against (AU-01); default: newest in $TUNDRA_HOME.
    checkpoint: Path | None = None
    #: Extra panel pages the identity checks probe besides the built-in list.
    pages: tuple[str, ...] = ()
    #: argv prefix that runs the "outside" probes (NX-02, AG-05) elsewhere, e.g. in a network
    #: namespace: ("ip", "netns", "exec", "outside").
    outside_probe: tuple[str, ...] = ()
    http_port: int | None = None
    workers: int = 8
    judge: bool = False
    fail_on: Severity = Severity.LOW
    #: Wildcard listeners the operator accepts besides the panel and the gateway (NX-01), each
    #: "HOST:PORT", ":PORT" or "PORT" — sshd on 0.0.0.0:22, say.
    allowed_listeners: tuple[str, ...] = ()
    #: The user `tundra serve` runs as (ST-01 owner rule); default: found from the running
    #: process, else the owner of $TUNDRA_HOME.
    service_user: str | None = None

    @property
    def has_credentials(self) -> bool:
        return bool(self.user) and self.password is not None

    @property
    def has_agent_identity(self) -> bool:
        return self.agent_cert is not None and self.agent_key is not None

    def gateway_address(self, target: Target) -> tuple[str, int]:
        if not self.gateway:
            return target.host, DEFAULT_GATEWAY_PORT
        host, sep, port = self.gateway.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidInput(f"--gateway must be HOST:PORT, got {self.gateway!r}")
        return (host.strip("[]") or target.host), int(port)

    def summary(self) -> dict[str, Any]:
        """The options as they appear in reports: no secrets, paths as strings."""
        return {
            "url": self.url,
            "sections": list(self.sections),
            "checks": list(self.checks),
            "local": self.local,
            "user": self.user,
            "credentials": self.has_credentials,
            "totp": self.totp_secret is not None,
            "agent_identity": self.has_agent_identity,
            "gateway": self.gateway,
            "ca_file": str(self.ca_file) if self.ca_file else None,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "timeout": self.timeout,
            "fail_on": str(self.fail_on),
            "judge": self.judge,
            "allowed_listeners": list(self.allowed_listeners),
            "service_user": self.service_user,
        }


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True, slots=True)
class SetCookie:
    """One parsed ``Set-Cookie`` header. Attribute names are lower-cased; flags map to True."""

    name: str
    value: str
    attributes: Mapping[str, str | bool]
    raw: str

    @property
    def secure(self) -> bool:
        return "secure" in self.attributes

    @property
    def http_only(self) -> bool:
        return "httponly" in self.attributes

    @property
    def same_site(self) -> str | None:
        value = self.attributes.get("samesite")
        return value if isinstance(value, str) else None

    @property
    def path(self) -> str | None:
        value = self.attributes.get("path")
        return value if isinstance(value, str) else None

    @property
    def domain(self) -> str | None:
        value = self.attributes.get("domain")
        return value if isinstance(value, str) else None

    @property
    def deletes(self) -> bool:
        """The header removes the cookie (Max-Age <= 0 or an empty value)."""
        max_age = self.attributes.get("max-age")
        if isinstance(max_age, str):
            try:
                return int(max_age) <= 0
            except ValueError:
                return False
        return self.value == ""

    def evidence(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": f"<redacted, {len(self.value)} chars>",
            "attributes": dict(self.attributes),
        }


def parse_set_cookie(header: str) -> SetCookie:
    """Parse one Set-Cookie value strictly as sent (no normalisation of the attributes)."""
    first, *attrs = header.split(";")
    name, _, value = first.partition("=")
    attributes: dict[str, str | bool] = {}
    for attr in attrs:
        key, eq, val = attr.strip().partition("=")
        if key:
            attributes[key.strip().lower()] = val.strip() if eq else True
    return SetCookie(name.strip(), value.strip(), attributes, header)


def _redact_header(name: str, value: str) -> str:
    if name.lower() == "set-cookie":
        # Keep the attributes exactly as sent (case included); only the value is secret.
        first, sep, rest = value.partition(";")
        cookie_name, _, cookie_value = first.partition("=")
        return f"{cookie_name}=<redacted, {len(cookie_value.strip())} chars>{sep}{rest}"
    return value


@dataclass(frozen=True, slots=True)
class HttpResponse:
    method: str
    url: str
    status: int
    reason: str
    #: Raw response headers in the order received, duplicates kept.
    headers: tuple[tuple[str, str], ...]
    body: bytes
    elapsed_ms: float
    #: Earlier responses when redirects were followed (oldest first).
    history: tuple[HttpResponse, ...] = ()

    def header(self, name: str) -> str | None:
        """The first header called ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        """Every header called ``name``, in order (duplicates are separate entries)."""
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    def set_cookies(self) -> list[SetCookie]:
        return [parse_set_cookie(v) for v in self.header_values("set-cookie")]

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return jsonlib.loads(self.body)

    def evidence(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "status": self.status,
            "headers": [[k, _redact_header(k, v)] for k, v in self.headers],
            "body_bytes": len(self.body),
            "elapsed_ms": round(self.elapsed_ms, 1),
        }


class HttpClient:
    """A small raw HTTP(S) client for checks. Not thread-safe: one per check.

    Relative paths resolve against ``base_url``; absolute ``http://``/``https://`` URLs are used
    as given. Every request opens a fresh connection (checks must see what a new client sees).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: Path | None = None,
        verify: bool = True,
        timeout: float = 5.0,
        keep_cookies: bool = False,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.keep_cookies = keep_cookies
        self.user_agent = user_agent
        #: Cookies sent with every request to the target host (name -> value).
        self.cookies: dict[str, str] = {}
        self.exchanges: list[dict[str, Any]] = []
        self._ssl = make_ssl_context(ca_file=ca_file, verify=verify)

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith(("http://", "https://")):
            return path_or_url
        return self.base_url + (path_or_url if path_or_url.startswith("/") else "/" + path_or_url)

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        json: Any = None,
        form: Mapping[str, str] | None = None,
        follow_redirects: bool = False,
        max_redirects: int = 5,
    ) -> HttpResponse:
        url = self.url(path_or_url)
        header_list = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        if json is not None:
            body = jsonlib.dumps(json).encode()
            header_list.append(("Content-Type", "application/json"))
        elif form is not None:
            body = urllib.parse.urlencode(form).encode()
            header_list.append(("Content-Type", "application/x-www-form-urlencoded"))
        history: list[HttpResponse] = []
        while True:
            response = self._send(method, url, header_list, body)
            location = response.header("location")
            if (
                not follow_redirects
                or response.status not in (301, 302, 303, 307, 308)
                or not location
                or len(history) >= max_redirects
            ):
                return replace(response, history=tuple(history))
            history.append(response)
            url = urllib.parse.urljoin(url, location)
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
                header_list = [(k, v) for k, v in header_list if k.lower() != "content-type"]

    def get(self, path_or_url: str, **kwargs: Any) -> HttpResponse:
        return self.request("GET", path_or_url, **kwargs)

    def post(self, path_or_url: str, **kwargs: Any) -> HttpResponse:
        return self.request("POST", path_or_url, **kwargs)

    def delete(self, path_or_url: str, **kwargs: Any) -> HttpResponse:
        return self.request("DELETE", path_or_url, **kwargs)

    def evidence(self) -> list[dict[str, Any]]:
        """Every exchange so far (requests with header names only, responses redacted)."""
        return list(self.exchanges)

    def _send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> HttpResponse:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                host, parts.port or 443, timeout=self.timeout, context=self._ssl
            )
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(host, parts.port or 80, timeout=self.timeout)
        else:
            raise ValueError(f"not an http(s) URL: {url!r}")
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        names = {k.lower() for k, _ in headers}
        all_headers = list(headers)
        if "user-agent" not in names:
            all_headers.append(("User-Agent", self.user_agent))
        if (
            self.cookies
            and "cookie" not in names
            and host == urllib.parse.urlsplit(self.base_url).hostname
        ):
            all_headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.cookies.items())))
        started = time.perf_counter()
        try:
            # skip_host/skip_accept_encoding: send exactly the headers a check chose.
            conn.putrequest(method, target, skip_accept_encoding=True)
            for name, value in all_headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            raw = conn.getresponse()
            data = raw.read()
            elapsed = (time.perf_counter() - started) * 1000
            response = HttpResponse(
                method=method,
                url=url,
                status=raw.status,
                reason=raw.reason,
                headers=tuple((k, v) for k, v in raw.getheaders()),
                body=data,
                elapsed_ms=elapsed,
            )
        except Exception as exc:
            self.exchanges.append(
                {
                    "request": {"method": method, "url": url, "headers": sorted(names)},
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
            raise
        finally:
            conn.close()
        self.exchanges.append(
            {
                "request": {
                    "method": method,
                    "url": url,
                    "headers": [
                        [k, "<redacted>" if k.lower() in _SECRET_REQUEST_HEADERS else v]
                        for k, v in all_headers
                    ],
                },
                "response": response.evidence(),
            }
        )
        if self.keep_cookies:
            for cookie in response.set_cookies():
                if cookie.deletes:
                    self.cookies.pop(cookie.name, None)
                else:
                    self.cookies[cookie.name] = cookie.value
        return response


def make_ssl_context(
    *,
    ca_file: Path | None = None,
    verify: bool = True,
    cert: Path | None = None,
    key: Path | None = None,
) -> ssl.SSLContext:
    """A client context: verifying against ``ca_file`` (only) or the system store."""
    if verify:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(str(cert), str(key) if key else None)
    return context


# --------------------------------------------------------------------------------------------
# TLS probe

#: OpenSSL reasons that mean this client could not even offer what was asked.
_LOCAL_FAILURES = ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE", "NO_SUITABLE_")


@dataclass(frozen=True, slots=True)
class TlsProbeResult:
    host: str
    port: int
    offered: dict[str, Any]
    connected: bool = False
    handshake_ok: bool = False
    #: Handshake completed and the read afterwards saw no alert and no close.
    accepted: bool = False
    version: str | None = None
    cipher: str | None = None
    cipher_bits: int | None = None
    alpn: str | None = None
    compression: str | None = None
    peer_cert_der: bytes | None = field(default=None, repr=False)
    #: Connect or handshake failure text.
    error: str | None = None
    #: The failure was on our side (we could not offer the version/suite): inconclusive.
    local_error: bool = False
    #: What the read after the handshake saw: "data", "timeout", "closed", "alert: ...", None.
    after_read: str | None = None
    first_bytes: bytes = field(default=b"", repr=False)

    @property
    def refused(self) -> bool:
        """The peer refused: it failed the handshake or alerted/closed on the first read."""
        return self.connected and not self.local_error and not self.accepted

    def evidence(self) -> dict[str, Any]:
        import hashlib

        return {
            "host": self.host,
            "port": self.port,
            "offered": self.offered,
            "connected": self.connected,
            "handshake_ok": self.handshake_ok,
            "accepted": self.accepted,
            "version": self.version,
            "cipher": self.cipher,
            "cipher_bits": self.cipher_bits,
            "alpn": self.alpn,
            "compression": self.compression,
            "peer_cert_sha256": (
                hashlib.sha256(self.peer_cert_der).hexdigest() if self.peer_cert_der else None
            ),
            "error": self.error,
            "local_error": self.local_error,
            "after_read": self.after_read,
        }


def tls_probe(
    host: str,
    port: int,
    *,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    groups: Sequence[str] | None = None,
    ciphers: str | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    alpn: Sequence[str] | None = None,
    read_after: bool = True,
    send: bytes | None = None,
    read_timeout: float = 1.0,
    timeout: float = 5.0,
    verify: bool = False,
    ca_file: Path | None = None,
    server_hostname: str | None = None,
) -> TlsProbeResult:
    """One TLS handshake to ``host:port`` offering exactly what is asked; never raises for
    network or TLS failures (they are in the result).

    ``groups``: Python 3.11's ssl can restrict the offer to ONE elliptic curve by its OpenSSL
    name (``prime256v1``, ``secp384r1``, ``secp521r1``); X25519 cannot be offered alone.
    ``ciphers`` restricts TLS <= 1.2 suites only (TLS 1.3 suites cannot be chosen from Python;
    use ``openssl s_client -ciphersuites`` for that). ``read_after`` reads once after the
    handshake (``send`` is written first): a TLS 1.3 server that refuses the client
    certificate says so only then. For HTTP servers pass ``send`` (a request) or
    ``read_after=False``, otherwise the read waits ``read_timeout`` for nothing.
    """
    offered: dict[str, Any] = {
        "min_version": min_version.name if min_version else None,
        "max_version": max_version.name if max_version else None,
        "groups": list(groups) if groups else None,
        "ciphers": ciphers,
        "client_cert": str(cert) if cert else None,
        "alpn": list(alpn) if alpn else None,
    }
    base: dict[str, Any] = {"host": host, "port": port, "offered": offered}
    try:
        context = make_ssl_context(ca_file=ca_file, verify=verify, cert=cert, key=key)
        if min_version is not None:
            context.minimum_version = min_version
        if max_version is not None:
            context.maximum_version = max_version
        old = max_version is not None and max_version < ssl.TLSVersion.TLSv1_2
        if ciphers or old:
            # OpenSSL 3 refuses SHA-1 (so TLS 1.0/1.1) at the default security level; lower it
            # on our side so a failed handshake means the server refused, not this client.
            context.set_ciphers((ciphers or "ALL") + ":@SECLEVEL=0")
        if groups:
            if len(groups) != 1:
                raise ValueError("Python's ssl can offer exactly one group")
            context.set_ecdh_curve(groups[0])
        if alpn:
            context.set_alpn_protocols(list(alpn))
    except (ValueError, ssl.SSLError, OSError) as exc:
        return TlsProbeResult(**base, error=f"client setup: {exc}", local_error=True)

    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return TlsProbeResult(**base, error=f"connect: {exc}")
    try:
        try:
            tls = context.wrap_socket(raw, server_hostname=server_hostname or host)
        except (ssl.SSLError, OSError) as exc:
            text = f"{type(exc).__name__}: {exc}"
            local = isinstance(exc, ssl.SSLError) and any(r in text for r in _LOCAL_FAILURES)
            return TlsProbeResult(**base, connected=True, error=text, local_error=local)
        raw = tls  # closed below
        cipher = tls.cipher()
        info: dict[str, Any] = {
            "connected": True,
            "handshake_ok": True,
            "version": tls.version(),
            "cipher": cipher[0] if cipher else None,
            "cipher_bits": cipher[2] if cipher else None,
            "alpn": tls.selected_alpn_protocol(),
            "compression": tls.compression(),
            "peer_cert_der": tls.getpeercert(binary_form=True),
        }
        if not read_after:
            return TlsProbeResult(**base, **info, accepted=True)
        tls.settimeout(read_timeout)
        after: str
        first = b""
        try:
            if send:
                tls.sendall(send)
            first = tls.recv(4096)
            after = "data" if first else "closed"
        except TimeoutError:
            after = "timeout"
        except ssl.SSLError as exc:
            after = "closed" if isinstance(exc, ssl.SSLEOFError) else f"alert: {exc}"
        except OSError as exc:
            after = f"closed: {exc}"
        return TlsProbeResult(
            **base,
            **info,
            accepted=after in ("data", "timeout"),
            after_read=after,
            first_bytes=first,
        )
    finally:
        raw.close()


# --------------------------------------------------------------------------------------------
# The context


class _Shared:
    """State shared by all checks of one run: the memo table."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.slots: dict[str, _MemoSlot] = {}
        self.cleanups: list[tuple[str, Callable[[], None]]] = []


class _MemoSlot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.value: Any = None
        self.error: BaseException | None = None


class RunContext:
    """What every check receives. The runner binds one per check (own deadline, shared memo)."""

    def __init__(
        self,
        options: RunOptions,
        *,
        target: Target | None = None,
        check_id: str | None = None,
        deadline: float | None = None,
        _shared: _Shared | None = None,
    ) -> None:
        self.options = options
        self.target = target or Target.parse(options.url, http_port=options.http_port)
        self.check_id = check_id
        #: time.monotonic() by which the check must be done, or None.
        self.deadline = deadline
        #: Set by the runner when the check overran; long loops should stop when it is set.
        self.cancelled = threading.Event()
        self._shared = _shared or _Shared()

    def bind(self, check_id: str, *, deadline: float | None) -> RunContext:
        """A context for one check, sharing this run's memo."""
        return RunContext(
            self.options,
            target=self.target,
            check_id=check_id,
            deadline=deadline,
            _shared=self._shared,
        )

    @property
    def local(self) -> bool:
        return self.options.local

    @property
    def services(self) -> Services:
        """The local control plane; only for checks declared with ``needs=("services",)``."""
        if self.options.services is None:
            raise RuntimeError("this check needs the local services (declare needs=services)")
        return self.options.services

    def remaining(self) -> float | None:
        """Seconds left before the check's deadline (None: no deadline)."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def io_timeout(self) -> float:
        """Timeout for one network operation: the option, capped by the time left."""
        remaining = self.remaining()
        limit = self.options.io_timeout
        return limit if remaining is None else max(0.05, min(limit, remaining))

    def http(self, *, verify: bool = True, keep_cookies: bool = False) -> HttpClient:
        """A fresh client for the target (``--ca-file`` trusted when given)."""
        return HttpClient(
            self.target.base_url,
            ca_file=self.options.ca_file,
            verify=verify,
            timeout=self.io_timeout(),
            keep_cookies=keep_cookies,
        )

    def at_end(self, name: str, fn: Callable[[], None]) -> None:
        """Run ``fn`` once all checks have finished (newest first): log out a shared session,
        revoke a token the run created. A failure becomes a note in the report."""
        with self._shared.lock:
            self._shared.cleanups.append((name, fn))

    def run_cleanups(self) -> list[str]:
        """For the runner: run and forget the registered clean-ups; their failures as text."""
        with self._shared.lock:
            cleanups, self._shared.cleanups = self._shared.cleanups, []
        problems: list[str] = []
        for name, fn in reversed(cleanups):
            try:
                fn()
            except Exception as exc:
                problems.append(f"clean-up {name!r} failed: {type(exc).__name__}: {exc}")
        return problems

    def memo(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` computed once per run and shared by every check asking for ``key``.

        Concurrent callers of the same key wait for the first; different keys run in parallel.
        A failure is remembered too: a login that failed is not retried by every identity check
        (which would also trip the brute-force throttle).
        """
        with self._shared.lock:
            slot = self._shared.slots.setdefault(key, _MemoSlot())
        with slot.lock:
            if not slot.done:
                try:
                    slot.value = fn()
                except Exception as exc:
                    slot.error = exc
                slot.done = True
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[no-any-return]
