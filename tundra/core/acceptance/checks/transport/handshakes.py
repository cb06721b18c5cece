"""Handshakes through ``ssl``, observed message by message, and the parsers they share.

CPython's (private, but present since 3.8) ``SSLContext._msg_callback`` hands over every
decrypted handshake message. From it come the ClientHello actually sent (did this OpenSSL even
offer TLS 1.0?), the group in the ServerHello, the full presented chain (the ``Certificate``
message; ``getpeercert`` gives only the leaf and ``get_verified_chain`` is 3.13) and the
NewSessionTickets with their ``max_early_data_size``. Without the hook the checks say what they
could not see.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any

from tundra.core.acceptance.checks.transport.vocabulary import (
    _HRR_RANDOM,
    _TLS_VERSIONS,
    _VERSION_NAMES,
    GROUPS,
)

# Setting TLS 1.0/1.1 on a context warns (DeprecationWarning): the filter change is global, so
# the probes that need it take turns.
_OLD_VERSION_LOCK = threading.Lock()


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
