"""Hand-written ClientHellos and the server's first answer to them.

Offers OpenSSL will not make from Python: ``ssl`` cannot choose TLS 1.3 suites, offer
compression, or offer a version this OpenSSL build lacks. :func:`raw_hello` writes a ClientHello
by hand and reads only the server's first answer (ServerHello, HelloRetryRequest or alert): that
settles what the server *accepts* without completing a handshake, like sslyze does.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tundra.core.acceptance.checks.transport.handshakes import ServerHello, parse_server_hello
from tundra.core.acceptance.checks.transport.vocabulary import (
    _ALERTS,
    _VERSION_NAMES,
    ALLOWED_SUITES,
    GROUPS,
    OTHER_TLS13_SUITES,
)

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
