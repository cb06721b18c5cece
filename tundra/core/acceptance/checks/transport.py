"""Acceptance checks of the transport section: TR-01 … TR-06 (../shared/design/ACCEPTANCE.md).

Stricter than sslyze/testssl/Observatory where tundra's spec says so: only TLS 1.3, only the three
TLS 1.3 AEAD suites, groups within {X25519, P-256, P-384}, a 14-day certificate floor, no SHA-1
anywhere in the presented chain, HSTS of a year with includeSubDomains on *every* response.

What Python 3.11's ``ssl`` can and cannot observe, and how this module gets the rest:

- Handshake messages: CPython's (private, but present since 3.8) ``SSLContext._msg_callback``
  hands over every decrypted handshake message. From it come the ClientHello actually sent (did
  this OpenSSL even offer TLS 1.0?), the group in the ServerHello, the full presented chain (the
  ``Certificate`` message; ``getpeercert`` gives only the leaf and ``get_verified_chain`` is 3.13)
  and the NewSessionTickets with their ``max_early_data_size``. Without the hook the checks say
  what they could not see.
- Offers OpenSSL will not make from Python: ``ssl`` cannot choose TLS 1.3 suites, offer
  compression, or offer a version this OpenSSL build lacks. :func:`raw_hello` writes a ClientHello
  by hand and reads only the server's first answer (ServerHello, HelloRetryRequest or alert): that
  settles what the server *accepts* without completing a handshake, like sslyze does.
- 0-RTT: Python cannot send early data. A TLS 1.3 client may send early data only on a ticket
  whose ``early_data`` extension allows it (RFC 8446 4.6.1), so the tickets decide TR-05.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import ssl
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from tundra.core import clock
from tundra.core.acceptance.context import HttpClient, HttpResponse, RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check

# --- TLS vocabulary ---------------------------------------------------------------------------

#: The only suites tundra accepts (all TLS 1.3 AEAD).
ALLOWED_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}
#: TLS 1.3 suites that exist but are refused (AEAD too, yet outside tundra's profile).
OTHER_TLS13_SUITES = {0x1304: "TLS_AES_128_CCM_SHA256", 0x1305: "TLS_AES_128_CCM_8_SHA256"}
#: IANA group code -> (IANA name, OpenSSL name for ``set_ecdh_curve``).
GROUPS = {
    0x001D: ("x25519", "X25519"),
    0x0017: ("secp256r1", "prime256v1"),
    0x0018: ("secp384r1", "secp384r1"),
    0x0019: ("secp521r1", "secp521r1"),
    0x001E: ("x448", "X448"),
    0x0100: ("ffdhe2048", "ffdhe2048"),
    0x0101: ("ffdhe3072", "ffdhe3072"),
    0x0102: ("ffdhe4096", "ffdhe4096"),
    0x0103: ("ffdhe6144", "ffdhe6144"),
    0x0104: ("ffdhe8192", "ffdhe8192"),
}
ALLOWED_GROUPS = (0x001D, 0x0017, 0x0018)
FORBIDDEN_GROUPS = (0x0019, 0x001E, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104)
VERSION_CODES = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_VERSION_NAMES = {v: k for k, v in VERSION_CODES.items()}
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3).
_HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    109: "missing_extension",
    112: "unrecognized_name",
    120: "no_application_protocol",
}
HSTS_MIN_AGE = 31_536_000
CERT_MIN_DAYS = 14
CERT_WARN_DAYS = 30
LIMITS = (
    "Python 3.11's ssl cannot send 0-RTT early data, choose TLS 1.3 suites or offer "
    "compression; those are settled by hand-written ClientHellos (server's first answer only) "
    "and by the NewSessionTickets read through CPython's SSLContext._msg_callback."
)

# Setting TLS 1.0/1.1 on a context warns (DeprecationWarning): the filter change is global, so
# the probes that need it take turns.
_OLD_VERSION_LOCK = threading.Lock()


# --- handshakes through ssl, observed message by message ---------------------------------------


@dataclass
class Handshake:
    """One ``ssl`` handshake and everything observable about it."""

    offered: dict[str, Any]
    ok: bool = False
    error: str | None = None
    #: The failure happened before anything was sent (this client could not make the offer).
    local_error: bool = False
    #: What the ClientHello actually sent carried (None: no hook or nothing sent).
    client_hello: dict[str, Any] | None = None
    version: str | None = None
    cipher: str | None = None
    group: str | None = None
    compression: str | None = None
    chain: list[bytes] = field(default_factory=list)
    leaf: bytes | None = None
    tickets: list[dict[str, Any]] = field(default_factory=list)
    verify_error: str | None = None
    hooked: bool = False
    response: bytes = b""

    def evidence(self) -> dict[str, Any]:
        return {
            "offered": self.offered,
            "handshake_ok": self.ok,
            "error": self.error,
            "client_could_offer": None if self.client_hello is None else True,
            "client_hello": self.client_hello,
            "version": self.version,
            "cipher": self.cipher,
            "group": self.group,
            "compression": self.compression,
        }


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("truncated TLS message")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def number(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def vec(self, length_bytes: int) -> bytes:
        return self.take(self.number(length_bytes))

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


def _extensions(raw: bytes) -> dict[int, bytes]:
    reader = _Reader(raw)
    found: dict[int, bytes] = {}
    while reader.left:
        kind = reader.number(2)
        found[kind] = reader.vec(2)
    return found


@dataclass(frozen=True)
class ServerHello:
    version: int
    suite: int
    compression: int
    group: int | None
    retry: bool


def parse_server_hello(body: bytes) -> ServerHello:
    """A ServerHello (handshake body, after the 4-byte header)."""
    reader = _Reader(body)
    legacy = reader.number(2)
    random = reader.take(32)
    reader.vec(1)
    suite = reader.number(2)
    compression = reader.number(1)
    exts = _extensions(reader.vec(2)) if reader.left else {}
    version = legacy
    if 43 in exts and len(exts[43]) == 2:
        version = int.from_bytes(exts[43], "big")
    group = int.from_bytes(exts[51][:2], "big") if 51 in exts and len(exts[51]) >= 2 else None
    return ServerHello(version, suite, compression, group, random == _HRR_RANDOM)


def _parse_ticket(body: bytes) -> dict[str, Any]:
    reader = _Reader(body)
    lifetime = reader.number(4)
    reader.number(4)
    reader.vec(1)
    reader.vec(2)
    exts = _extensions(reader.vec(2)) if reader.left else {}
    early = int.from_bytes(exts[42], "big") if 42 in exts and len(exts[42]) == 4 else 0
    return {"lifetime_s": lifetime, "max_early_data": early, "early_data_extension": 42 in exts}


def _parse_certificates(body: bytes, tls13: bool) -> list[bytes]:
    reader = _Reader(body)
    if tls13:
        reader.vec(1)
    entries = _Reader(reader.vec(3))
    chain = []
    while entries.left:
        chain.append(entries.vec(3))
        if tls13:
            entries.vec(2)
    return chain


class _Observer:
    """The ``_msg_callback`` of one handshake: records the messages checks care about."""

    def __init__(self, result: Handshake) -> None:
        self.result = result

    def __call__(
        self, conn: Any, direction: str, version: Any, content_type: Any, msg_type: Any, data: bytes
    ) -> None:
        if int(content_type) != 22 or len(data) < 4:
            return
        kind, body = data[0], data[4:]
        try:
            if direction == "write" and kind == 1:
                reader = _Reader(body)
                legacy = reader.number(2)
                reader.take(32)
                reader.vec(1)
                suites = reader.vec(2)
                self.result.client_hello = {
                    "legacy_version": _VERSION_NAMES.get(legacy, hex(legacy)),
                    "suites": len(suites) // 2,
                }
            elif direction == "read" and kind == 2:
                hello = parse_server_hello(body)
                if hello.group is not None:
                    self.result.group = GROUPS.get(hello.group, (hex(hello.group), ""))[0]
            elif direction == "read" and kind == 11:
                tls13 = int(version) == ssl.TLSVersion.TLSv1_3
                self.result.chain = _parse_certificates(body, tls13)
            elif direction == "read" and kind == 4 and int(version) == ssl.TLSVersion.TLSv1_3:
                self.result.tickets.append(_parse_ticket(body))
        except ValueError:
            pass  # a message we cannot parse is simply not observed


def handshake(
    host: str,
    port: int,
    *,
    version: str | None = None,
    group: str | None = None,
    verify: bool = False,
    ca_file: Any = None,
    server_hostname: str | None = None,
    request: bytes | None = None,
    timeout: float = 5.0,
) -> Handshake:
    """One handshake with ``ssl`` offering exactly ``version`` (or TLS 1.2–1.3) and ``group``.

    Unverified probes lower this client's OpenSSL security level to 0, so a refusal is the
    server's and not this client's. ``request`` is sent after the handshake and the answer read
    to the end (that is when a server's session tickets arrive).
    """
    offered = {"version": version or "default", "group": group, "verify": verify}
    result = Handshake(offered=offered)
    try:
        if verify:
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            context.set_ciphers("DEFAULT:@SECLEVEL=0")
        if version is not None:
            wanted = _TLS_VERSIONS[version]
            with _OLD_VERSION_LOCK, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = wanted
                context.maximum_version = wanted
        if group is not None:
            context.set_ecdh_curve(group)
        if hasattr(context, "_msg_callback"):
            context._msg_callback = _Observer(result)
            result.hooked = True
    except (ValueError, ssl.SSLError) as exc:
        result.error = f"client setup: {exc}"
        result.local_error = True
        return result
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    with contextlib.closing(raw):
        try:
            tls = context.wrap_socket(raw, server_hostname=server_hostname or host)
        except ssl.SSLCertVerificationError as exc:
            result.error = f"certificate verification failed: {exc.verify_message}"
            result.verify_error = str(exc.verify_message)
            return result
        except (ssl.SSLError, OSError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            result.local_error = result.hooked and result.client_hello is None
            if not result.hooked:
                result.local_error = "NO_PROTOCOLS_AVAILABLE" in str(exc) or (
                    "NO_CIPHERS_AVAILABLE" in str(exc)
                )
            return result
        with contextlib.closing(tls):
            result.ok = True
            result.version = tls.version()
            cipher = tls.cipher()
            result.cipher = cipher[0] if cipher else None
            result.compression = tls.compression()
            result.leaf = tls.getpeercert(binary_form=True)
            if request is not None:
                with contextlib.suppress(OSError):
                    tls.sendall(request)
                    chunks: list[bytes] = []
                    while sum(len(c) for c in chunks) < 65536:
                        chunk = tls.recv(16384)
                        if not chunk:
                            break
                        chunks.append(chunk)
                    result.response = b"".join(chunks)
    return result


def _unreachable(shake: Handshake) -> bool:
    """No TCP connection (refused, no route, timeout): nothing else will work either."""
    return (shake.error or "").startswith("connect:")


def _server_answered(shake: Handshake) -> bool:
    """The handshake ended by the server's doing (completed, alert, close or reset), not by a
    timeout or on this side."""
    if shake.ok:
        return True
    error = shake.error or ""
    return not (
        shake.local_error
        or error.startswith(("connect:", "client setup:"))
        or "timed out" in error
        or "TimeoutError" in error
    )


# --- hand-written ClientHellos -----------------------------------------------------------------

_TLS12_SUITES = (
    0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0xC009, 0xC013, 0xC00A, 0xC014,
    0x009C, 0x009D, 0x002F, 0x0035, 0x000A, 0x0005, 0x0004,
)  # fmt: skip
_SIGNATURE_SCHEMES = (
    0x0403, 0x0503, 0x0603, 0x0804, 0x0805, 0x0806, 0x0807, 0x0808,
    0x0809, 0x080A, 0x080B, 0x0401, 0x0501, 0x0601, 0x0201, 0x0203,
)  # fmt: skip


def _vec(length_bytes: int, data: bytes) -> bytes:
    return len(data).to_bytes(length_bytes, "big") + data


def _ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2, "big") + _vec(2, data)


def _u16s(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(2, "big") for v in values)


def client_hello(
    host: str,
    *,
    version: int,
    suites: Sequence[int] | None = None,
    groups: Sequence[int] = tuple(GROUPS),
    compression: Sequence[int] = (0,),
) -> bytes:
    """A complete ClientHello record offering ``version`` (0x0301 … 0x0304) exactly."""
    exts = b""
    if not _is_ip(host):
        name = host.encode("idna")
        exts += _ext(0, _vec(2, b"\x00" + _vec(2, name)))
    exts += _ext(10, _vec(2, _u16s(groups)))
    exts += _ext(11, _vec(1, b"\x00"))
    exts += _ext(13, _vec(2, _u16s(_SIGNATURE_SCHEMES)))
    if version >= 0x0304:
        from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        exts += _ext(43, _vec(1, b"\x03\x04"))
        shares = b""
        if 0x001D in groups:
            public = X25519PrivateKey.generate().public_key()
            shares = b"\x00\x1d" + _vec(2, public.public_bytes(Encoding.Raw, PublicFormat.Raw))
        exts += _ext(51, _vec(2, shares))
        exts += _ext(45, _vec(1, b"\x01"))
        legacy = 0x0303
        offered = list(suites or ALLOWED_SUITES)
    else:
        exts += _ext(0xFF01, b"\x00")
        legacy = version
        offered = list(suites or _TLS12_SUITES)
    body = (
        legacy.to_bytes(2, "big")
        + secrets.token_bytes(32)
        + _vec(1, secrets.token_bytes(32))
        + _vec(2, _u16s(offered))
        + _vec(1, bytes(compression))
        + _vec(2, exts)
    )
    message = b"\x01" + _vec(3, body)
    return b"\x16\x03\x01" + _vec(2, message)


@dataclass(frozen=True)
class RawAnswer:
    """The server's first answer to a hand-written ClientHello."""

    kind: str  # server_hello, hello_retry, alert, closed, timeout, error, garbage
    hello: ServerHello | None = None
    alert: str | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.hello is not None

    def evidence(self) -> dict[str, Any]:
        out: dict[str, Any] = {"answer": self.kind}
        if self.hello is not None:
            out["version"] = _VERSION_NAMES.get(self.hello.version, hex(self.hello.version))
            out["suite"] = _suite_name(self.hello.suite)
            out["compression"] = self.hello.compression
            if self.hello.group is not None:
                out["group"] = GROUPS.get(self.hello.group, (hex(self.hello.group), ""))[0]
        if self.alert:
            out["alert"] = self.alert
        if self.error:
            out["error"] = self.error
        return out


def _suite_name(code: int) -> str:
    return ALLOWED_SUITES.get(code) or OTHER_TLS13_SUITES.get(code) or f"0x{code:04x}"


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def raw_hello(host: str, port: int, hello: bytes, *, timeout: float = 5.0) -> RawAnswer:
    """Send ``hello`` and classify the first answer; never completes a handshake."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return RawAnswer("error", error=f"connect: {exc}")
    with contextlib.closing(sock):
        try:
            sock.sendall(hello)
            buffered = b""
            while True:
                header = _read_exact(sock, 5)
                payload = _read_exact(sock, int.from_bytes(header[3:5], "big"))
                if header[0] == 21 and len(payload) >= 2:
                    return RawAnswer("alert", alert=_ALERTS.get(payload[1], str(payload[1])))
                if header[0] != 22:
                    return RawAnswer("garbage", error=f"record type {header[0]}")
                buffered += payload
                if len(buffered) >= 4:
                    size = int.from_bytes(buffered[1:4], "big")
                    if len(buffered) >= 4 + size:
                        if buffered[0] != 2:
                            return RawAnswer("garbage", error=f"handshake type {buffered[0]}")
                        parsed = parse_server_hello(buffered[4 : 4 + size])
                        kind = "hello_retry" if parsed.retry else "server_hello"
                        return RawAnswer(kind, hello=parsed)
        except (EOFError, ConnectionResetError):
            return RawAnswer("closed")
        except TimeoutError:
            return RawAnswer("timeout")
        except (OSError, ValueError) as exc:
            return RawAnswer("error", error=f"{type(exc).__name__}: {exc}")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- shared probes (memoised per run: TR-02, TR-03 and TR-05 look at the same handshakes) ------


def _version_probe(ctx: RunContext, version: str) -> dict[str, Any]:
    """Is ``version`` accepted? Through ``ssl`` (SECLEVEL=0) and a hand-written ClientHello."""

    def probe() -> dict[str, Any]:
        host, port = ctx.target.host, ctx.target.port
        shake = handshake(host, port, version=version, timeout=ctx.io_timeout())
        could_offer: bool | None
        if shake.hooked:
            sent = shake.client_hello
            could_offer = sent is not None and (
                version == "TLSv1.3" or sent.get("legacy_version") == version
            )
        else:
            could_offer = None if not shake.local_error else False
        answer = raw_hello(
            host, port, client_hello(host, version=VERSION_CODES[version]), timeout=ctx.io_timeout()
        )
        raw_accepted = answer.hello is not None and answer.hello.version == VERSION_CODES[version]
        ssl_accepted = shake.ok and shake.version == version
        # A refusal counts only when seen: an alert or a close, not a timeout or reset.
        refusal_seen = answer.kind in ("alert", "closed") or (
            bool(could_offer) and _server_answered(shake)
        )
        if not could_offer and not shake.ok:
            note = (
                f"this OpenSSL ({ssl.OPENSSL_VERSION}) could not offer {version} even at "
                "security level 0: the ssl probe says nothing about the server; the "
                "hand-written ClientHello decides"
            )
        else:
            note = f"{version} offered through ssl at security level 0 and by hand"
        return {
            "version": version,
            "accepted": ssl_accepted or raw_accepted,
            "refusal_seen": refusal_seen,
            "ssl": shake.evidence() | {"client_could_offer": could_offer},
            "raw_client_hello": answer.evidence(),
            "note": note,
        }

    return ctx.memo(f"transport.version.{version}", probe)


@check(
    "TR-01",
    "HTTP redirects to HTTPS in one hop",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
)
def http_redirects(ctx: RunContext) -> Outcome:
    client = ctx.http()
    problems: list[str] = []
    probes: list[dict[str, Any]] = []
    for path in ("/", "/a/path?q=1"):
        url = ctx.target.http_url(path)
        try:
            response = client.get(url)
        except TimeoutError as exc:
            return errored(f"{url} did not answer: {exc}", exchanges=client.evidence())
        except OSError as exc:
            problems.append(f"{url}: nothing answers ({exc})")
            continue
        location = response.header("location") or ""
        wanted = ctx.target.https_url(path)
        verdicts = []
        if response.status not in (301, 308):
            verdicts.append(f"status {response.status}, not 301/308")
        if len(response.header_values("location")) != 1:
            verdicts.append("not exactly one Location header")
        elif not _same_https_url(location, wanted):
            verdicts.append(f"Location {location!r} is not {wanted!r}")
        if response.header_values("set-cookie"):
            verdicts.append("sets a cookie over plain http")
        probes.append({"url": url, "location": location, "expected": wanted, "problems": verdicts})
        problems.extend(f"{url}: {v}" for v in verdicts)
    evidence = {"probes": probes, "exchanges": client.evidence()}
    if problems:
        return failed("; ".join(problems), **evidence)
    return passed("http answers 301/308 straight to the same URL over https, no cookie", **evidence)


def _same_https_url(location: str, wanted: str) -> bool:
    got, want = urlsplit(location), urlsplit(wanted)
    return (
        got.scheme == "https"
        and (got.hostname or "").lower() == (want.hostname or "").lower()
        and (got.port or 443) == (want.port or 443)
        and (got.path or "/") == (want.path or "/")
        and got.query == want.query
        and not got.fragment
        and not got.username
    )


@check(
    "TR-02",
    "Only TLS 1.3: TLS 1.0, 1.1 and 1.2 handshakes fail",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def tls_versions(ctx: RunContext) -> Outcome:
    modern = handshake(ctx.target.host, ctx.target.port, timeout=ctx.io_timeout())
    if _unreachable(modern):
        return errored(f"cannot reach {ctx.target.netloc}: {modern.error}", tls13=modern.evidence())
    probes = {v: _version_probe(ctx, v) for v in ("TLSv1", "TLSv1.1", "TLSv1.2")}
    evidence: dict[str, Any] = {
        "old_versions": probes,
        "tls13": modern.evidence(),
        "openssl": ssl.OPENSSL_VERSION,
        "limits": LIMITS,
    }
    accepted = [v for v, p in probes.items() if p["accepted"]]
    if accepted:
        return failed("accepted: " + ", ".join(accepted), **evidence)
    if not modern.ok or modern.version != "TLSv1.3":
        return failed(f"TLS 1.3 handshake failed: {modern.error or modern.version}", **evidence)
    unclear = [v for v, p in probes.items() if not p["refusal_seen"]]
    if unclear:
        return errored("no clear refusal (timeout or reset) for " + ", ".join(unclear), **evidence)
    return passed("TLS 1.0, 1.1 and 1.2 refused; TLS 1.3 accepted", **evidence)


@check(
    "TR-03",
    "Only TLS 1.3 AEAD suites; groups within X25519, P-256, P-384",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def suites_and_groups(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    default = handshake(host, port, timeout=ctx.io_timeout())
    if _unreachable(default):
        return errored(f"cannot reach {ctx.target.netloc}: {default.error}")
    problems: list[str] = []
    unclear: list[str] = []
    suites: dict[str, Any] = {}
    for code in (*ALLOWED_SUITES, *OTHER_TLS13_SUITES):
        answer = raw_hello(
            host, port, client_hello(host, version=0x0304, suites=[code]), timeout=ctx.io_timeout()
        )
        accepted = answer.hello is not None and answer.hello.suite == code
        suites[_suite_name(code)] = {"accepted": accepted, **answer.evidence()}
        if accepted and code not in ALLOWED_SUITES:
            problems.append(f"{_suite_name(code)} accepted")
        elif code not in ALLOWED_SUITES and answer.kind not in ("alert", "closed"):
            unclear.append(_suite_name(code))
    if not any(suites[name]["accepted"] for name in ALLOWED_SUITES.values()):
        problems.append("no TLS 1.3 AEAD suite of the profile is accepted")
    tls12 = _version_probe(ctx, "TLSv1.2")
    if tls12["accepted"]:
        problems.append("TLS 1.2 suites are negotiable (see TR-02)")
    groups: dict[str, Any] = {}
    for code in (*ALLOWED_GROUPS, *FORBIDDEN_GROUPS):
        iana, openssl_name = GROUPS[code]
        shake = handshake(
            host, port, version="TLSv1.3", group=openssl_name, timeout=ctx.io_timeout()
        )
        groups[iana] = {
            "accepted": shake.ok,
            "negotiated": shake.group,
            "error": shake.error,
            "client_could_offer": not shake.local_error,
        }
        if shake.ok and code in FORBIDDEN_GROUPS:
            problems.append(f"group {iana} accepted")
        elif code in FORBIDDEN_GROUPS and not shake.local_error and not _server_answered(shake):
            unclear.append(iana)
    if not any(groups[GROUPS[c][0]]["accepted"] for c in ALLOWED_GROUPS):
        problems.append("none of X25519, P-256, P-384 is accepted")
    if default.ok and default.cipher not in ALLOWED_SUITES.values():
        problems.append(f"default handshake negotiated {default.cipher}")
    untested = [name for name, g in groups.items() if not g["client_could_offer"]]
    evidence = {
        "tls13_suites": suites,
        "tls12_accepted": tls12["accepted"],
        "groups": groups,
        "default_handshake": default.evidence(),
        "groups_this_client_cannot_offer": untested,
        "limits": LIMITS,
    }
    if not default.ok and not any(g["accepted"] for g in groups.values()):
        return errored(
            f"no TLS 1.3 handshake with {ctx.target.netloc}: {default.error}", **evidence
        )
    if problems:
        return failed("; ".join(problems), **evidence)
    if unclear:
        return errored("no clear refusal (timeout or reset) for " + ", ".join(unclear), **evidence)
    working = [name for name, g in groups.items() if g["accepted"]]
    return passed("TLS 1.3 AEAD suites only; groups accepted: " + ", ".join(working), **evidence)


# --- TR-04 -------------------------------------------------------------------------------------


def describe_certificate(der: bytes, *, now: datetime) -> dict[str, Any]:
    """What TR-04 judges in one certificate, plus the verdicts on it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    problems: list[str] = []
    if isinstance(key, rsa.RSAPublicKey):
        kind, bits = "RSA", key.key_size
        if bits < 2048:
            problems.append(f"RSA key of {bits} bits (< 2048)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind, bits = f"EC {key.curve.name}", key.curve.key_size
        if bits < 256:
            problems.append(f"EC key of {bits} bits (< 256)")
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kind, bits = type(key).__name__.removesuffix("PublicKey"), 256
    elif isinstance(key, dsa.DSAPublicKey):
        kind, bits = "DSA", key.key_size
        problems.append("DSA key")
    else:
        kind, bits = type(key).__name__, 0
        problems.append(f"unknown key type {kind}")
    try:
        algorithm = cert.signature_hash_algorithm
        hash_name = algorithm.name if algorithm is not None else "none (EdDSA)"
    except Exception:  # an algorithm cryptography does not know
        hash_name = cert.signature_algorithm_oid.dotted_string
    if hash_name in ("sha1", "md5", "md2", "md4"):
        problems.append(f"signed with {hash_name.upper()}")
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    days_left = (not_after - now).total_seconds() / 86400
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(n.value) for n in names]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "subject_alt_names": sans,
        "not_before": clock.to_iso(not_before),
        "not_after": clock.to_iso(not_after),
        "days_left": round(days_left, 2),
        "not_yet_valid": not_before > now,
        "key": kind,
        "key_bits": bits,
        "signature_hash": hash_name,
        "problems": problems,
    }


@check(
    "TR-04",
    "Certificate: valid chain, host name, 14+ days left, strong key, no SHA-1",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=20.0,
)
def certificate(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    ca_file = ctx.options.ca_file
    verified = handshake(host, port, verify=True, ca_file=ca_file, timeout=ctx.io_timeout())
    chain, source = verified.chain, "Certificate handshake message (full presented chain)"
    if not chain:
        inspect = handshake(host, port, timeout=ctx.io_timeout())
        chain = inspect.chain or ([inspect.leaf] if inspect.leaf else [])
        if not inspect.chain and inspect.leaf:
            source = "leaf only (getpeercert): no handshake hook in this Python"
    evidence: dict[str, Any] = {
        "trust": str(ca_file) if ca_file else "system store",
        "hostname": host,
        "verified": verified.ok,
        "verify_error": verified.verify_error or (None if verified.ok else verified.error),
        "chain_source": source,
        "limits": (
            "Python 3.11 has no get_verified_chain(): the chain judged is the one the server "
            "presented; the anchor from the trust store is not re-checked here (OpenSSL's "
            "verification at security level 2 refuses SHA-1 and RSA < 2048 below the anchor)."
        ),
    }
    if not chain:
        if verified.error and verified.error.startswith("connect:"):
            return errored(f"cannot reach {ctx.target.netloc}: {verified.error}", **evidence)
        return errored(f"no certificate observed: {verified.error}", **evidence)
    now = clock.now()
    described = [describe_certificate(der, now=now) for der in chain]
    evidence["chain"] = described
    leaf = described[0]
    problems: list[str] = []
    if not verified.ok:
        problems.append(f"does not verify: {evidence['verify_error']}")
    if leaf["not_yet_valid"]:
        problems.append("the leaf is not valid yet")
    if leaf["days_left"] < CERT_MIN_DAYS:
        problems.append(f"{leaf['days_left']:.1f} days left (< {CERT_MIN_DAYS})")
    for position, info in enumerate(described):
        role = "leaf" if position == 0 else f"chain[{position}]"
        problems.extend(f"{role}: {p}" for p in info["problems"])
        if position and info["days_left"] < CERT_MIN_DAYS:
            problems.append(f"{role}: {info['days_left']:.1f} days left (< {CERT_MIN_DAYS})")
    warning = None
    if CERT_MIN_DAYS <= leaf["days_left"] < CERT_WARN_DAYS:
        warning = f"the certificate expires in {leaf['days_left']:.1f} days (< {CERT_WARN_DAYS})"
    evidence["warning"] = warning
    if problems:
        return failed("; ".join(problems), **evidence)
    summary = (
        f"verifies for {host}, {leaf['days_left']:.0f} days left, {leaf['key']} "
        f"{leaf['key_bits']}, {leaf['signature_hash']}"
    )
    return passed(summary + (f"; WARNING: {warning}" if warning else ""), **evidence)


# --- TR-05 -------------------------------------------------------------------------------------


@check(
    "TR-05",
    "No 0-RTT early data, no TLS compression",
    section=Section.TRANSPORT,
    severity=Severity.MEDIUM,
    timeout=20.0,
)
def no_early_data(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    request = f"GET / HTTP/1.1\r\nHost: {ctx.target.netloc}\r\nConnection: close\r\n\r\n".encode()
    shake = handshake(host, port, request=request, timeout=ctx.io_timeout())
    deflate = raw_hello(
        host, port, client_hello(host, version=0x0303, compression=(1, 0)), timeout=ctx.io_timeout()
    )
    compressed_tls12 = deflate.hello is not None and deflate.hello.compression != 0
    evidence: dict[str, Any] = {
        "handshake": shake.evidence(),
        "session_tickets": shake.tickets,
        "tickets_observable": shake.hooked,
        "tls12_deflate_offer": deflate.evidence(),
        "limits": LIMITS
        + " 0-RTT is judged from the tickets: early data is only possible on a ticket whose "
        "early_data extension allows it (RFC 8446 4.6.1).",
    }
    if not shake.ok:
        return errored(f"no TLS handshake with {ctx.target.netloc}: {shake.error}", **evidence)
    problems = []
    if shake.compression is not None:
        problems.append(f"the connection is compressed ({shake.compression})")
    if compressed_tls12:
        problems.append("a TLS 1.2 ClientHello offering DEFLATE got it")
    early = [t for t in shake.tickets if t["max_early_data"] > 0]
    if early:
        sizes = sorted({t["max_early_data"] for t in early})
        problems.append(f"session tickets allow 0-RTT early data (max_early_data {sizes})")
    if problems:
        return failed("; ".join(problems), **evidence)
    if not shake.hooked:
        return errored(
            "this Python cannot observe session tickets (no SSLContext._msg_callback)", **evidence
        )
    return passed(
        f"no compression; {len(shake.tickets)} session ticket(s), none allows early data",
        **evidence,
    )


# --- TR-06 and the shared HTTP sample ----------------------------------------------------------

#: Probe paths of the shared sample: the app, the login page, an API path (401 without a token),
#: a path that cannot exist (404), and tundra's TOTP step (a redirect without a pending login).
SAMPLE_PATHS = ("/", "/login", "/api/v1/servers", "/login/totp")


@dataclass(frozen=True)
class Sample:
    """The responses every header check judges, fetched once per run."""

    responses: tuple[HttpResponse, ...]
    errors: tuple[str, ...]
    exchanges: tuple[dict[str, Any], ...]

    def kinds(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for r in self.responses:
            out.setdefault(_kind(r.status), []).append(urlsplit(r.url).path)
        return out


def _kind(status: int) -> str:
    if status in (401, 404):
        return str(status)
    return {2: "2xx", 3: "redirect", 4: "4xx", 5: "5xx"}.get(status // 100, str(status))


def sample(ctx: RunContext) -> Sample:
    """GET the sample paths (and ``--page`` extras) once per run, without following redirects."""

    def fetch() -> Sample:
        client: HttpClient = ctx.http()
        missing = f"/tundra-acceptance-missing-{secrets.token_hex(4)}"
        paths = [*SAMPLE_PATHS, missing, *ctx.options.pages]
        responses: list[HttpResponse] = []
        errors: list[str] = []
        for path in dict.fromkeys(paths):
            try:
                responses.append(client.get(path))
            except ssl.SSLCertVerificationError as exc:
                errors.append(f"{path}: certificate verification failed ({exc.verify_message})")
            except (OSError, ssl.SSLError) as exc:
                errors.append(f"{path}: {type(exc).__name__}: {exc}")
        return Sample(tuple(responses), tuple(errors), tuple(client.evidence()))

    return ctx.memo("transport.http_sample", fetch)


def sample_or_error(ctx: RunContext) -> Sample | Outcome:
    result = sample(ctx)
    if result.errors and not result.responses:
        return errored(
            "no https response: " + "; ".join(result.errors[:3]),
            errors=list(result.errors),
            hint="give --ca-file when the panel uses its internal CA",
        )
    return result


_MAX_AGE = re.compile(r'max-age=(?:(\d+)|"(\d+)")', re.IGNORECASE)


def parse_hsts(value: str) -> tuple[int | None, bool, list[str]]:
    """(max-age, includeSubDomains, problems) of one HSTS value, parsed strictly.

    ``max-age`` must be ``max-age=`` followed directly by digits (RFC 6797 also allows them
    quoted); "max-age=31536000abc", "max-age = 1" or a repeated directive are problems, where
    lax parsers read a number anyway.
    """
    problems: list[str] = []
    seen: set[str] = set()
    max_age: int | None = None
    include = False
    for part in value.split(";"):
        directive = part.strip()
        if not directive:
            continue
        name = directive.split("=", 1)[0].strip().lower()
        if name in seen:
            problems.append(f"directive {name} repeated")
            continue
        seen.add(name)
        if name == "max-age":
            match = _MAX_AGE.fullmatch(directive)
            if match is None:
                problems.append(f"max-age is not max-age=<integer>: {directive!r}")
            else:
                max_age = int(match.group(1) or match.group(2))
        elif name == "includesubdomains":
            if directive.lower() != "includesubdomains":
                problems.append(f"includeSubDomains takes no value: {directive!r}")
            include = True
    if "max-age" not in seen:
        problems.append("no max-age")
    if max_age is not None and max_age < HSTS_MIN_AGE:
        problems.append(f"max-age {max_age} < {HSTS_MIN_AGE}")
    if not include:
        problems.append("no includeSubDomains")
    return max_age, include, problems


def judge_responses(
    responses: Sequence[HttpResponse], judge: Callable[[HttpResponse], list[str]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Apply ``judge`` to each response: per-response evidence and the flat problem list."""
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for response in responses:
        found = judge(response)
        path = urlsplit(response.url).path or "/"
        rows.append({"path": path, "status": response.status, "problems": found})
        problems.extend(f"{path} ({response.status}): {p}" for p in found)
    return rows, problems


@check(
    "TR-06",
    "HSTS of a year with includeSubDomains on every response",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def hsts_everywhere(ctx: RunContext) -> Outcome:
    result = sample_or_error(ctx)
    if isinstance(result, Outcome):
        return result

    def judge(response: HttpResponse) -> list[str]:
        values = response.header_values("strict-transport-security")
        if len(values) != 1:
            return [f"{len(values)} Strict-Transport-Security headers (need exactly one)"]
        return parse_hsts(values[0])[2]

    rows, problems = judge_responses(result.responses, judge)
    for row, response in zip(rows, result.responses, strict=True):
        row["hsts"] = response.header_values("strict-transport-security")
    kinds = result.kinds()
    missing = [k for k in ("2xx", "redirect", "401", "404") if k not in kinds]
    evidence = {
        "responses": rows,
        "kinds_sampled": kinds,
        "kinds_not_observed": missing,
        "errors": list(result.errors),
        "minimum_max_age": HSTS_MIN_AGE,
    }
    problems.extend(result.errors)
    if problems:
        return failed("; ".join(problems[:6]), **evidence)
    return passed(
        f"one valid HSTS header on all {len(rows)} sampled responses ({', '.join(sorted(kinds))})",
        **evidence,
    )
