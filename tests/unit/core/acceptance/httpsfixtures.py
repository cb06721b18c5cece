"""Local HTTPS servers and certificates for the transport and headers acceptance checks.

- :class:`Pki`: a throw-away CA and leaf certificates made with ``cryptography``, good ones and
  each kind of bad one (expired, 10 days left, RSA-1024, SHA-1 signed, wrong host name). SHA-1:
  ``cryptography`` no longer signs certificates with SHA-1, so :func:`_resign_sha1` rebuilds the
  DER of a SHA-256 certificate with an RSA PKCS#1 v1.5 SHA-1 signature over the same TBS (the two
  algorithm identifiers have the same length, so only one OID byte changes).
- :func:`tls_server_context`: a server context of any shape (versions, one group, security
  level, session tickets).
- :class:`SiteProfile` and :func:`https_site`: a small threaded HTTPS server that behaves like
  the panel (login form with CSRF and optional TOTP, redirects, a 401 API, 404s) with every
  security header taken from the profile, so a test breaks exactly one thing.
- :func:`http_redirector`: the plain-HTTP twin (TR-01), good or broken.
- :func:`openssl_server`: ``openssl s_server`` for what Python's ``ssl`` cannot serve (0-RTT
  early data, TLS 1.3 CCM suites).
- :func:`real_panel`: the real panel app (``create_app``) under uvicorn with
  ``tundra.panel.tls.server_context`` plus the real redirect app, in threads, on port 0.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.server
import ipaddress
import secrets
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

HOSTS = ("127.0.0.1", "localhost")
USER = "acceptance"
PASSWORD = "correct horse battery staple"

# --- certificates ------------------------------------------------------------------------------

_SHA256_RSA_OID = bytes.fromhex("06092a864886f70d01010b")
_SHA1_RSA_OID = bytes.fromhex("06092a864886f70d010105")


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _resign_sha1(cert: x509.Certificate, ca_key: rsa.RSAPrivateKey) -> x509.Certificate:
    tbs = cert.tbs_certificate_bytes
    assert tbs.count(_SHA256_RSA_OID) == 1, "expected one sha256WithRSAEncryption in the TBS"
    tbs = tbs.replace(_SHA256_RSA_OID, _SHA1_RSA_OID)
    signature = ca_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303 - the point
    algorithm = _der(0x30, _SHA1_RSA_OID + b"\x05\x00")
    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True)
class Issued:
    cert: Path  # the chain the server presents: leaf (+ intermediate)
    key: Path
    ca: Path  # the trust anchor a client passes as --ca-file
    leaf: x509.Certificate


class Pki:
    """A CA (RSA-2048, SHA-256) under ``directory`` and the leaf certificates it issues."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceptance test CA")])
        now = dt.datetime.now(dt.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(_pem(self.ca_cert))

    def issue(
        self,
        name: str,
        *,
        hosts: tuple[str, ...] = HOSTS,
        days_left: float = 90,
        expired: bool = False,
        key: str = "ec256",
        sha1: bool = False,
        intermediate_sha1: bool | None = None,
    ) -> Issued:
        """A leaf for ``hosts``; ``key`` is ec256, ec384, rsa2048 or rsa1024.

        ``intermediate_sha1`` not None: the leaf is issued by an intermediate CA (which the
        server presents after the leaf), itself signed by the root with SHA-1 when True.
        """
        signer_key, signer_name, extra_pem = self.ca_key, self.ca_cert.subject, b""
        if intermediate_sha1 is not None:
            signer_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            signer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} issuing CA")])
            now = dt.datetime.now(dt.UTC)
            middle = (
                x509.CertificateBuilder()
                .subject_name(signer_name)
                .issuer_name(self.ca_cert.subject)
                .public_key(signer_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .sign(self.ca_key, hashes.SHA256())
            )
            if intermediate_sha1:
                middle = _resign_sha1(middle, self.ca_key)
            extra_pem = _pem(middle)
        if key.startswith("ec"):
            curve: ec.EllipticCurve = ec.SECP256R1() if key == "ec256" else ec.SECP384R1()
            leaf_key: Any = ec.generate_private_key(curve)
        else:
            size = int(key.removeprefix("rsa"))
            leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=size)
        now = dt.datetime.now(dt.UTC)
        if expired:
            start, end = now - dt.timedelta(days=60), now - dt.timedelta(days=1)
        else:
            start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=days_left)
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(signer_name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(signer_key, hashes.SHA256())
        )
        if sha1:
            cert = _resign_sha1(cert, signer_key)
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(_pem(cert) + extra_pem)
        key_file.write_bytes(_key_pem(leaf_key))
        key_file.chmod(0o600)
        return Issued(cert_file, key_file, self.ca_file, cert)


# --- TLS server contexts -----------------------------------------------------------------------


def tls_server_context(
    issued: Issued,
    *,
    minimum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    maximum: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
    group: str | None = "X25519",
    seclevel0: bool = False,
    tickets: bool = True,
) -> ssl.SSLContext:
    """A server context; ``seclevel0`` lets OpenSSL load weak keys/SHA-1 and speak TLS 1.0."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if seclevel0:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        # Old protocol versions are what the misconfigured fixtures are for.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = minimum
        context.maximum_version = maximum
    context.options |= ssl.OP_NO_COMPRESSION
    if not tickets:
        context.options |= ssl.OP_NO_TICKET
    context.load_cert_chain(str(issued.cert), str(issued.key))
    if group is not None:
        context.set_ecdh_curve(group)
    return context


# --- a panel-like HTTPS site -------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
HSTS = "max-age=63072000; includeSubDomains"
GOOD_HEADERS: tuple[tuple[str, str], ...] = (
    ("Strict-Transport-Security", HSTS),
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
SESSION = "__Host-tundra_session"
PRESESSION = "__Host-tundra_presession"
CSRF = "__Host-tundra_csrf"
AUTH_PAGES = ("/", "/servers", "/tokens", "/settings", "/audit")


@dataclass(frozen=True)
class SiteProfile:
    """What the site sends; the defaults are the panel's. Each field breaks one thing."""

    headers: tuple[tuple[str, str], ...] = GOOD_HEADERS
    #: Extra headers on every response (e.g. a ``Server`` banner, ``X-Powered-By``).
    extra: tuple[tuple[str, str], ...] = ()
    #: Headers removed from responses whose status is in this set (e.g. no HSTS on 404).
    strip_on_status: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: Cache-Control of responses to a logged-in browser.
    authenticated_cache: str | None = "no-store"
    #: Cache-Control of anonymous responses.
    anonymous_cache: str | None = "no-store"
    #: CORS: "none", "reflect" (foreign Origin + credentials) or "star" (``*`` everywhere).
    cors: str = "none"
    #: A ``<meta http-equiv="Content-Security-Policy">`` in every HTML page.
    meta_csp: str | None = None
    #: TOTP secret of the user; None: a password-only login.
    totp_secret: str | None = None


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""


def _html(title: str, inner: str, meta_csp: str | None) -> bytes:
    meta = f'<meta http-equiv="Content-Security-Policy" content="{meta_csp}">' if meta_csp else ""
    return (
        f"<!doctype html><html><head><title>{title}</title>{meta}</head><body>{inner}</body></html>"
    ).encode()


class _Site:
    """The behaviour of the panel-like site: sessions, login (+TOTP), pages, API, errors."""

    def __init__(self, profile: SiteProfile) -> None:
        self.profile = profile
        self.sessions: set[str] = set()
        self.pending_totp: set[str] = set()
        self.lock = threading.Lock()

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply:
        parts = urlsplit(target)
        path = parts.path
        cookies = SimpleCookie()
        for value in headers.get_all("Cookie") or []:
            cookies.load(value)
        session = cookies[SESSION].value if SESSION in cookies else None
        with self.lock:
            logged_in = session is not None and session in self.sessions
        reply = self.route(method, path, parts.query, cookies, logged_in, body)
        return self.decorate(reply, headers, logged_in=logged_in, api=path.startswith("/api/"))

    def route(
        self,
        method: str,
        path: str,
        query: str,
        cookies: SimpleCookie,
        logged_in: bool,
        body: bytes,
    ) -> Reply:
        meta = self.profile.meta_csp
        if path == "/healthz":
            return Reply(200, [("Content-Type", "application/json")], b'{"status":"ok"}')
        if path.startswith("/api/"):
            return Reply(
                401,
                [
                    ("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Bearer realm="tundra"'),
                ],
                b'{"error":{"code":"authentication_failed"}}',
            )
        if path == "/login" and method == "GET":
            if logged_in:
                return Reply(303, [("Location", "/")])
            pre = secrets.token_hex(8)
            token = secrets.token_hex(8)
            form = (
                '<form method="post" action="/login">'
                f'<input type="hidden" name="csrf_token" value="{token}">'
                '<input type="hidden" name="next" value="/">'
                '<input name="username"><input name="password" type="password"></form>'
            )
            return Reply(
                200,
                [
                    ("Content-Type", "text/html; charset=utf-8"),
                    ("Set-Cookie", _cookie(PRESESSION, pre)),
                    ("Set-Cookie", _cookie(CSRF, token)),
                ],
                _html("Log in", form, meta),
            )
        if path == "/login" and method == "POST":
            form_data = parse_qs(body.decode())
            csrf_ok = CSRF in cookies and form_data.get("csrf_token") == [cookies[CSRF].value]
            good = form_data.get("username") == [USER] and form_data.get("password") == [PASSWORD]
            if not csrf_ok:
                return Reply(403, [("Content-Type", "text/html")], _html("CSRF", "", meta))
            if not good:
                return Reply(401, [("Content-Type", "text/html")], _html("Log in", "", meta))
            if self.profile.totp_secret:
                pre = cookies[PRESESSION].value if PRESESSION in cookies else ""
                with self.lock:
                    self.pending_totp.add(pre)
                return Reply(303, [("Location", "/login/totp?next=/")])
            return self.start_session()
        if path == "/login/totp" and method == "GET":
            token = secrets.token_hex(8)
            form = (
                '<form method="post" action="/login/totp">'
                f'<input type="hidden" name="csrf_token" value="{token}">'
                '<input type="hidden" name="next" value="/"><input name="code"></form>'
            )
            return Reply(
                200,
                [("Content-Type", "text/html"), ("Set-Cookie", _cookie(CSRF, token))],
                _html("Code", form, meta),
            )
        if path == "/login/totp" and method == "POST":
            import pyotp

            form_data = parse_qs(body.decode())
            pre = cookies[PRESESSION].value if PRESESSION in cookies else ""
            csrf_ok = CSRF in cookies and form_data.get("csrf_token") == [cookies[CSRF].value]
            code = (form_data.get("code") or [""])[0]
            with self.lock:
                pending = pre in self.pending_totp
            secret = self.profile.totp_secret or ""
            if not (csrf_ok and pending and pyotp.TOTP(secret).verify(code, valid_window=1)):
                return Reply(401, [("Content-Type", "text/html")], _html("Code", "", meta))
            return self.start_session()
        if method == "GET" and path in AUTH_PAGES:
            if not logged_in:
                return Reply(303, [("Location", f"/login?next={path}")])
            return Reply(200, [("Content-Type", "text/html")], _html(path, "<p>hello</p>", meta))
        return Reply(404, [("Content-Type", "text/html")], _html("Not found", "", meta))

    def start_session(self) -> Reply:
        session = secrets.token_hex(16)
        with self.lock:
            self.sessions.add(session)
        return Reply(
            303,
            [
                ("Location", "/"),
                ("Set-Cookie", _cookie(SESSION, session)),
                ("Set-Cookie", _cookie(PRESESSION, "", max_age=0)),
            ],
        )

    def decorate(self, reply: Reply, headers: Any, *, logged_in: bool, api: bool) -> Reply:
        profile = self.profile
        out = list(reply.headers)
        out.extend(profile.headers)
        out.extend(profile.extra)
        cache = profile.authenticated_cache if logged_in else profile.anonymous_cache
        if cache is not None:
            out.append(("Cache-Control", cache))
        origin = headers.get("Origin")
        if profile.cors == "reflect" and origin:
            out.append(("Access-Control-Allow-Origin", origin))
            out.append(("Access-Control-Allow-Credentials", "true"))
        elif profile.cors == "star":
            out.append(("Access-Control-Allow-Origin", "*"))
        stripped = {h.lower() for h in profile.strip_on_status.get(reply.status, ())}
        out = [(k, v) for k, v in out if k.lower() not in stripped]
        return Reply(reply.status, out, reply.body)


def _cookie(name: str, value: str, *, max_age: int | None = None) -> str:
    text = f"{name}={value}; HttpOnly; Secure; SameSite=Strict; Path=/"
    return text if max_age is None else f"{text}; Max-Age={max_age}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = 5

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.respond(self.command, self.path, self.headers, body)
        self.send_response_only(reply.status)  # no Server/Date banner unless the site sends one
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    do_GET = do_POST = do_HEAD = do_OPTIONS = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


Respond = Callable[[str, str, Any, bytes], Reply]


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, respond: Respond, context: ssl.SSLContext | None) -> None:
        self.respond = respond
        self.context = context
        super().__init__(("127.0.0.1", 0), _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(5)
        if self.context is None:
            _Handler(request, client_address, self)
            return
        try:
            # The handshake runs here, in the connection's thread, not in the accept loop.
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # probes abort handshakes on purpose


@dataclass(frozen=True)
class Running:
    host: str
    port: int
    ca: Path | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"


@contextlib.contextmanager
def _serving(respond: Respond, context: ssl.SSLContext | None) -> Iterator[_Server]:
    server = _Server(respond, context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@contextlib.contextmanager
def https_site(
    context: ssl.SSLContext, profile: SiteProfile | None = None, *, ca: Path | None = None
) -> Iterator[Running]:
    """The panel-like site over ``context`` on 127.0.0.1, a fresh port."""
    site = _Site(profile or SiteProfile())
    with _serving(site.handle, context) as server:
        yield Running("127.0.0.1", server.server_address[1], ca)


@contextlib.contextmanager
def http_redirector(
    https_port: int,
    *,
    status: int = 308,
    host: str | None = None,
    keep_query: bool = True,
    cookie: bool = False,
    via_http: bool = False,
) -> Iterator[int]:
    """The plain-HTTP twin; the keyword arguments break it (wrong host, status, query, ...)."""

    def respond(method: str, target: str, headers: Any, body: bytes) -> Reply:
        parts = urlsplit(target)
        name = host or (headers.get("Host") or "127.0.0.1").rsplit(":", 1)[0]
        path = parts.path + (f"?{parts.query}" if parts.query and keep_query else "")
        if via_http and not parts.path.startswith("/hop/"):
            location = f"http://{name}:{server.server_address[1]}/hop{path}"
        else:
            path = path.removeprefix("/hop")
            location = f"https://{name}:{https_port}{path}"
        out = [("Location", location)]
        if cookie:
            out.append(("Set-Cookie", "tracking=1; Path=/"))
        return Reply(status, out)

    with _serving(respond, None) as server:
        yield server.server_address[1]


# --- openssl s_server --------------------------------------------------------------------------


def openssl_binary() -> str | None:
    return shutil.which("openssl")


@contextlib.contextmanager
def openssl_server(issued: Issued, *args: str, www: bool = True) -> Iterator[int]:
    """``openssl s_server`` on 127.0.0.1 with ``args``; ``-www`` (a status page) unless not
    ``www`` (``-early_data`` refuses it). Its stdin stays open: EOF there would stop it."""
    binary = openssl_binary()
    assert binary is not None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    process = subprocess.Popen(
        [
            binary,
            "s_server",
            "-accept",
            f"127.0.0.1:{port}",
            "-cert",
            str(issued.cert),
            "-key",
            str(issued.key),
            *(["-www"] if www else []),
            "-quiet",
            *args,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    err = process.stderr.read().decode() if process.stderr else ""
                    raise AssertionError(f"openssl s_server did not start: {err}") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stderr):
            if stream is not None:
                stream.close()


# --- the real panel ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RealPanel:
    port: int
    http_port: int
    ca: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


@contextlib.contextmanager
def real_panel(services: Any) -> Iterator[RealPanel]:
    """``create_app(services)`` over ``tundra.panel.tls.server_context`` plus the redirect app."""
    import uvicorn

    from tundra.core.principal import SYSTEM
    from tundra.panel.app import create_app
    from tundra.panel.redirect import RedirectToHttps
    from tundra.panel.tls import server_context

    services.pki.ensure_panel_cert(SYSTEM)
    https_sock = socket.socket()
    http_sock = socket.socket()
    https_sock.bind(("127.0.0.1", 0))
    http_sock.bind(("127.0.0.1", 0))
    port = int(https_sock.getsockname()[1])
    http_port = int(http_sock.getsockname()[1])
    https_config = uvicorn.Config(
        create_app(services),
        log_config=None,
        server_header=False,
        proxy_headers=False,
        access_log=False,
        lifespan="off",  # the test owns the services and closes them
    )
    https_config.load()
    https_config.ssl = server_context(services.pki.panel_cert_path, services.pki.panel_key_path)
    http_config = uvicorn.Config(
        RedirectToHttps(https_port=port, fallback_host="127.0.0.1"),
        log_config=None,
        server_header=False,
        access_log=False,
        lifespan="off",
    )
    servers = [uvicorn.Server(https_config), uvicorn.Server(http_config)]
    threads = [
        threading.Thread(target=servers[0].run, kwargs={"sockets": [https_sock]}),
        threading.Thread(target=servers[1].run, kwargs={"sockets": [http_sock]}),
    ]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while not all(s.started for s in servers):
            if time.monotonic() > deadline or not all(t.is_alive() for t in threads):
                raise AssertionError("the panel did not start")
            time.sleep(0.02)
        yield RealPanel(port, http_port, services.pki.ca_cert_path)
    finally:
        for server in servers:
            server.should_exit = True
        for thread in threads:
            thread.join(timeout=20)
        https_sock.close()
        http_sock.close()


def headers_with(name: str, *values: str) -> tuple[tuple[str, str], ...]:
    """The panel's headers with ``name`` replaced by ``values`` (none: removed)."""
    rest = [h for h in GOOD_HEADERS if h[0].lower() != name.lower()]
    return (*rest, *((name, v) for v in values))
