"""Acceptance checks of the agent section: AG-01 … AG-06 (../shared/design/ACCEPTANCE.md).

The gateway under test is ``--gateway HOST:PORT`` (default: the ``--url`` host on 7447). The
test agent identity is ``--agent-cert``/``--agent-key``: use an agent enrolled for the purpose
(AG-06 opens a Session as that agent, which replaces a live session of the same agent). The CA
that must sign the gateway's certificate is the local internal CA bundle when the runner is on
the panel host (``--local``), else ``--ca-file``.

What each check sends, and what it counts as a refusal:

- TLS-level probes use :func:`~tundra.core.acceptance.context.tls_probe`, offering ALPN ``h2``.
  After the handshake they send the HTTP/2 client preface and an empty SETTINGS frame, then read:
  a TLS 1.3 server reports a refused client certificate only then (alert 116, or a close). A
  handshake that completes and is followed by HTTP/2 frames (or by silence) is *not* a refusal.
- RPC-level probes open the ``Session`` method over gRPC as the agent would, sending a Hello.
  ``UNAUTHENTICATED``/``PERMISSION_DENIED`` is a refusal; a Welcome is an acceptance. The
  messages are encoded here with a minimal protobuf codec, because tundra.core may not import
  the generated stubs (tundra.agent.v1 is a front end's package; see :func:`hello_message`).
- AG-01 offers TLS 1.2 only, with the valid test identity: the handshake must fail. A TLS 1.3
  handshake with the same identity is the control; if the control fails the result is an error.
- AG-02 presents no certificate. Without a refusal on the first read the check fails; with the
  test identity a control handshake proves the server accepts *someone* (else: error).
- AG-03 tries a certificate from a foreign CA (made here), an expired one, one without the
  clientAuth EKU, and a revoked one. Only the real CA can sign the expired and non-clientAuth
  variants, and only the control plane can revoke: with ``--local`` (services) a throwaway agent
  is enrolled for a throwaway server at the runner's own address, the variants are signed
  in-process with the real CA key (same agent id, serial and key: one property differs), the
  valid certificate is the control, then the agent is revoked and tried again; the server is
  removed afterwards. Remotely only the foreign-CA variant is evaluated and the others are
  marked "not evaluated remotely". A foreign CA must be refused by TLS itself: the policy layer
  cannot tell a forged certificate from a real one.
- AG-04: the valid identity completes a TLS 1.3 handshake with ALPN h2, the gateway's
  certificate verifies against the CA (hostname included), and no alert follows.
- AG-05: the probe program (:data:`PROBE_SOURCE`, run by ``sys.executable``) connects from the
  vantage point: inside ``outside_probe`` (e.g. ``ip netns exec NS``) or from the runner. A port
  that is refused, filtered or unreachable passes; an open port passes only if the Session RPC
  is refused with PERMISSION_DENIED, and fails if it is answered. The identity: with
  ``--local`` a throwaway agent registered at a documentation address (so no vantage point is
  its server), else the test identity. From the runner itself the check runs only when it can
  tell that the runner's address is untrusted (``--local``); a vantage point that is trusted
  (``agent_trusted_cidrs``) is a skip with the reason.
- AG-06 (``--local`` and the test identity): a Session as the test agent; a ``ping`` is issued
  through core (as SYSTEM, audited); the SignedCommand that comes down the session is given to
  the agent's real command guard: fresh → accepted, again → refused, again after a guard
  restart (same state directory) → refused, and at its expiry instant (fresh guard) → refused.
  Then the gateway side: a result for the command is recorded, a replayed result (different
  content) must not change the record. The runner cannot sign commands, so without the local
  control plane nothing here can be tested honestly: the check is skipped.

The agent's :class:`~tundra.agent.guard.CommandGuard` lives in a front-end package that
tundra.core may not import (import-linter contract). The front end that runs acceptance installs
it with :func:`install_command_guard`; without it AG-06 reports an error naming what is missing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import queue
import secrets
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tundra import __version__
from tundra.core.acceptance.context import TlsProbeResult, tls_probe
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
    skipped,
)
from tundra.core.acceptance.registry import check
from tundra.core.crypto.primitives import write_secret_file
from tundra.core.errors import AgentRefused, CommandRefused, TundraError
from tundra.core.pki import x509 as x

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext
    from tundra.core.agents.models import Agent
    from tundra.core.services import Services

SESSION_METHOD: Final = "/tundra.agent.v1.AgentGateway/Session"
#: The HTTP/2 client connection preface and an empty SETTINGS frame: what a gRPC client sends
#: first. A server that accepted the client answers with its own SETTINGS.
H2_CLIENT_START: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
#: gRPC codes that mean "refused by the policy".
REFUSAL_CODES: Final = frozenset({"UNAUTHENTICATED", "PERMISSION_DENIED"})
#: A TEST-NET-3 address (RFC 5737): AG-05's throwaway agent "lives" there, so no real vantage
#: point is its server.
ELSEWHERE: Final = "203.0.113.77"
#: CommandResult.Status values (agent.proto).
RESULT_SUCCEEDED: Final = 1
RESULT_FAILED: Final = 2
AGENT_VERSION: Final = f"tundra-acceptance/{__version__}"


# --------------------------------------------------------------------------------------------
# A minimal protobuf codec for the few tundra.agent.v1 messages the probes exchange


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""  # proto3 omits zeros


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def decode_fields(data: bytes) -> dict[int, list[int | bytes]]:
    """The fields of one protobuf message: number → values in order (ValueError if broken)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated length-delimited field")
            value, pos = data[pos : pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if pos + size > len(data):
                raise ValueError("truncated fixed-width field")
            value, pos = int.from_bytes(data[pos : pos + size], "little"), pos + size
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if number == 0:
            raise ValueError("field number 0")
        fields.setdefault(number, []).append(value)
    return fields


def _first_bytes(fields: Mapping[int, list[int | bytes]], number: int) -> bytes:
    for value in fields.get(number, ()):
        if isinstance(value, bytes):
            return value
    return b""


def _first_int(fields: Mapping[int, list[int | bytes]], number: int) -> int:
    for value in fields.get(number, ()):
        if isinstance(value, int):
            return value
    return 0


def hello_message(agent_id: str, *, hostname: str = "tundra-acceptance") -> bytes:
    """``AgentMessage{hello: Hello{agent_id, agent_version, facts: Facts{hostname}}}``."""
    facts = _bytes_field(1, hostname.encode())
    hello = (
        _bytes_field(1, agent_id.encode())
        + _bytes_field(2, AGENT_VERSION.encode())
        + _bytes_field(3, facts)
    )
    return _bytes_field(1, hello)


def heartbeat_message(sequence: int, *, sent_at_ms: int = 0) -> bytes:
    """``AgentMessage{heartbeat: Heartbeat{sequence, sent_at_ms}}``."""
    return _bytes_field(2, _int_field(1, sequence) + _int_field(2, sent_at_ms))


def result_message(
    command_id: str, status: int, output: Mapping[str, Any] | None = None, error: str = ""
) -> bytes:
    """``AgentMessage{result: CommandResult{command_id, status, output_json, error}}``."""
    body = _bytes_field(1, command_id.encode()) + _int_field(2, status)
    if output is not None:
        body += _bytes_field(3, json.dumps(output).encode())
    if error:
        body += _bytes_field(4, error.encode())
    return _bytes_field(3, body)


@dataclass(frozen=True)
class SignedCommand:
    """The three fields of ``agent_pb2.SignedCommand`` (what the command guard reads)."""

    envelope: bytes
    signature: bytes
    key_id: str


@dataclass(frozen=True)
class ControlMessage:
    """A decoded ``ControlMessage``: which of its kinds it is and the parts the probes use."""

    kind: str  # "welcome" | "command" | "heartbeat_ack" | "empty"
    agent_id: str = ""
    command_keys: dict[str, bytes] = field(default_factory=dict)
    command: SignedCommand | None = None
    ack: int = 0


def parse_control(data: bytes) -> ControlMessage:
    """Decode a ControlMessage (ValueError if it is not one)."""
    fields = decode_fields(data)
    if 1 in fields:
        welcome = decode_fields(_first_bytes(fields, 1))
        keys: dict[str, bytes] = {}
        for raw in welcome.get(4, ()):
            if isinstance(raw, bytes):
                key = decode_fields(raw)
                keys[_first_bytes(key, 1).decode()] = _first_bytes(key, 2)
        return ControlMessage(
            "welcome", agent_id=_first_bytes(welcome, 1).decode(), command_keys=keys
        )
    if 2 in fields:
        signed = decode_fields(_first_bytes(fields, 2))
        command = SignedCommand(
            envelope=_first_bytes(signed, 1),
            signature=_first_bytes(signed, 2),
            key_id=_first_bytes(signed, 3).decode(),
        )
        return ControlMessage("command", command=command)
    if 3 in fields:
        return ControlMessage(
            "heartbeat_ack", ack=_first_int(decode_fields(_first_bytes(fields, 3)), 1)
        )
    return ControlMessage("empty")


# --------------------------------------------------------------------------------------------
# The agent's command guard (installed by the front end)


class CommandGuardLike(Protocol):
    """What AG-06 needs of :class:`tundra.agent.guard.CommandGuard`."""

    def check(self, signed: Any, *, now_ms: int | None = None) -> Any: ...

    def close(self) -> None: ...


#: ``factory(agent_id=..., state_dir=..., public_keys=...)`` → a guard.
GuardFactory = Callable[..., CommandGuardLike]

_guard_factory: GuardFactory | None = None
_guard_lock = threading.Lock()


def install_command_guard(factory: GuardFactory | None) -> GuardFactory | None:
    """Give AG-06 the agent's command guard class (or None to remove it); the previous one.

    tundra.core may not import tundra.agent, so the front end that runs acceptance calls
    ``install_command_guard(tundra.agent.guard.CommandGuard)`` before the run.
    """
    global _guard_factory
    with _guard_lock:
        previous, _guard_factory = _guard_factory, factory
    return previous


def installed_command_guard() -> GuardFactory | None:
    with _guard_lock:
        return _guard_factory


# --------------------------------------------------------------------------------------------
# Identities, certificates, the gateway endpoint


@dataclass(frozen=True)
class AgentIdentity:
    """A client identity the probes present: certificate and key (PEM), the agent it names."""

    agent_id: str
    serial: int
    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    origin: str

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ValueError("the agent certificate's key is not an elliptic-curve key")
        return key

    def evidence(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "serial": format(self.serial, "x"),
            "origin": self.origin,
        }


class IdentityProblem(Exception):
    """The test identity given cannot be used (the text says why)."""


def load_test_identity(ctx: RunContext) -> AgentIdentity | None:
    """The ``--agent-cert``/``--agent-key`` identity, None when not given."""
    cert_path, key_path = ctx.options.agent_cert, ctx.options.agent_key
    if cert_path is None or key_path is None:
        return None
    try:
        cert_pem, key_pem = Path(cert_path).read_bytes(), Path(key_path).read_bytes()
    except OSError as exc:
        raise IdentityProblem(f"cannot read the test agent identity: {exc}") from None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityProblem(
            f"the test agent identity is not PEM certificate + key: {exc}"
        ) from None
    agent_id = x.agent_id_from_cert(cert)
    if agent_id is None:
        raise IdentityProblem(
            f"{cert_path} names no agent (no single spiffe://tundra/agent/<id> URI)"
        )
    return AgentIdentity(agent_id, cert.serial_number, cert_pem, key_pem, "test identity")


def make_foreign_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A throwaway CA no deployment trusts (AG-03)."""
    return x.generate_ca("Foreign CA (tundra acceptance probe)", days=1)


def forge_agent_cert(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    agent_id: str,
    serial: int,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    client_auth: bool = True,
) -> bytes:
    """An agent-shaped certificate (SPIFFE URI, digitalSignature) with the chosen flaw."""
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client_auth else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acceptance-probe")]))
        .issuer_name(issuer_cert.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before or now - x.BACKDATE)
        .not_valid_after(not_after or now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(x.agent_uri(agent_id))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return x.cert_to_pem(cert)


@dataclass(frozen=True)
class Endpoint:
    """The gateway under test and the CA its certificate must chain to."""

    host: str
    port: int
    ca_pem: bytes | None = field(default=None, repr=False)
    ca_source: str = "none"

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def evidence(self) -> dict[str, Any]:
        return {"gateway": self.target, "ca": self.ca_source}


def gateway_endpoint(ctx: RunContext) -> Endpoint:
    host, port = ctx.options.gateway_address(ctx.target)
    services = ctx.options.services
    if services is not None:
        # The internal CA is authoritative for the gateway (--ca-file may name the panel's).
        return Endpoint(host, port, services.pki.ca_bundle_pem(), "local internal CA bundle")
    if ctx.options.ca_file is not None:
        try:
            pem = Path(ctx.options.ca_file).read_bytes()
        except OSError:
            return Endpoint(host, port, None, f"--ca-file {ctx.options.ca_file} (unreadable)")
        return Endpoint(host, port, pem, f"--ca-file {ctx.options.ca_file}")
    return Endpoint(host, port)


def source_address(endpoint: Endpoint, *, timeout: float) -> str:
    """This runner's address as the gateway sees it (OSError if the gateway is unreachable)."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as sock:
        return str(sock.getsockname()[0])


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


# --------------------------------------------------------------------------------------------
# Probes


def tls_attempt(
    endpoint: Endpoint,
    *,
    cert_pem: bytes | None,
    key_pem: bytes | None,
    label: str,
    timeout: float,
    min_version: ssl.TLSVersion | None = None,
    max_version: ssl.TLSVersion | None = None,
    verify: bool = False,
) -> TlsProbeResult:
    """One handshake offering ALPN h2, then the HTTP/2 preface + SETTINGS, then one read."""
    with tempfile.TemporaryDirectory(prefix="tundra-acceptance-") as tmp:
        cert = key = ca = None
        if cert_pem is not None and key_pem is not None:
            cert, key = Path(tmp) / "client.crt", Path(tmp) / "client.key"
            cert.write_bytes(cert_pem)
            write_secret_file(key, key_pem, mode=0o600)
        if verify and endpoint.ca_pem is not None:
            ca = Path(tmp) / "ca.pem"
            ca.write_bytes(endpoint.ca_pem)
        probe = tls_probe(
            endpoint.host,
            endpoint.port,
            min_version=min_version,
            max_version=max_version,
            cert=cert,
            key=key,
            alpn=["h2"],
            send=H2_CLIENT_START,
            read_timeout=min(2.0, timeout),
            timeout=timeout,
            verify=verify,
            ca_file=ca,
        )
    # The temporary path means nothing in a report; say what was presented instead.
    probe.offered["client_cert"] = label if cert is not None else None
    return probe


def tls_evidence(probe: TlsProbeResult) -> dict[str, Any]:
    evidence = probe.evidence()
    if probe.first_bytes:
        evidence["first_bytes"] = probe.first_bytes[:24].hex()
        evidence["http2_settings"] = looks_like_http2_settings(probe.first_bytes)
    return evidence


def looks_like_http2_settings(data: bytes) -> bool:
    """The bytes start with an HTTP/2 SETTINGS frame on stream 0."""
    return len(data) >= 9 and data[3] == 0x04 and data[5:9] == b"\x00\x00\x00\x00"


def refused_where(probe: TlsProbeResult) -> str:
    if not probe.handshake_ok:
        return f"at the handshake ({probe.error})"
    return f"on the first read after the handshake ({probe.after_read})"


def _grpc_error(exc: BaseException) -> dict[str, Any]:
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    return {
        "code": code().name if callable(code) and code() is not None else type(exc).__name__,
        "details": details() if callable(details) else str(exc),
    }


def session_attempt(
    endpoint: Endpoint, identity: AgentIdentity, *, timeout: float
) -> dict[str, Any]:
    """Open Session with a Hello as ``identity``; the outcome as evidence.

    ``state``: "accepted" (a Welcome came), "refused" (UNAUTHENTICATED/PERMISSION_DENIED),
    "inconclusive" (anything else, e.g. UNAVAILABLE when TLS failed or the CA is unknown).
    """
    import grpc

    credentials = grpc.ssl_channel_credentials(endpoint.ca_pem, identity.key_pem, identity.cert_pem)
    with grpc.secure_channel(endpoint.target, credentials) as channel:
        method: grpc.StreamStreamMultiCallable[bytes, bytes] = channel.stream_stream(SESSION_METHOD)
        call = method(iter([hello_message(identity.agent_id)]), timeout=timeout)
        try:
            first = next(call)
        except StopIteration:
            return {"state": "inconclusive", "ended": "the stream ended without a message"}
        except grpc.RpcError as exc:
            info = _grpc_error(exc)
            state = "refused" if info["code"] in REFUSAL_CODES else "inconclusive"
            return {"state": state, **info}
        finally:
            call.cancel()
    try:
        kind = parse_control(first).kind
    except ValueError:
        kind = "undecodable"
    return {"state": "accepted" if kind == "welcome" else "inconclusive", "first_message": kind}


class AgentStream:
    """A Session held open as the test agent, messages written and read one at a time."""

    def __init__(self, endpoint: Endpoint, identity: AgentIdentity, *, timeout: float) -> None:
        import grpc

        credentials = grpc.ssl_channel_credentials(
            endpoint.ca_pem, identity.key_pem, identity.cert_pem
        )
        self._channel = grpc.secure_channel(endpoint.target, credentials)
        self._outbox: queue.Queue[bytes | None] = queue.Queue()
        method: grpc.StreamStreamMultiCallable[bytes, bytes] = self._channel.stream_stream(
            SESSION_METHOD
        )
        self._call = method(iter(self._outbox.get, None), timeout=timeout)
        self.seen: list[str] = []

    def send(self, message: bytes) -> None:
        self._outbox.put(message)

    def read(self) -> ControlMessage:
        """The next message (grpc.RpcError when the gateway ends the stream)."""
        message = parse_control(next(self._call))
        self.seen.append(message.kind)
        return message

    def read_kind(self, kind: str) -> ControlMessage:
        while True:
            message = self.read()
            if message.kind == kind:
                return message

    def sync(self, sequence: int) -> None:
        """Return once the gateway has handled everything sent before (heartbeat round trip)."""
        self.send(heartbeat_message(sequence))
        while self.read_kind("heartbeat_ack").ack != sequence:
            pass

    def close(self) -> None:
        self._outbox.put(None)
        self._call.cancel()
        self._channel.close()

    def __enter__(self) -> AgentStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Throwaway:
    server_name: str
    identity: AgentIdentity
    cleanup_error: str | None = None


@contextlib.contextmanager
def throwaway_agent(services: Services, *, address: str) -> Iterator[Throwaway]:
    """A throwaway server at ``address`` with an enrolled agent; the server is removed after
    (which revokes the agent). All through core, as SYSTEM, audited."""
    from tundra.core.principal import SYSTEM

    name = f"acceptance-{secrets.token_hex(4)}"
    services.servers.add(SYSTEM, name=name, address=address)
    spare: Throwaway | None = None
    try:
        token = services.enrollment.create_join_token(SYSTEM, name)
        key = x.new_key()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
        )
        enrolled = services.enrollment.enroll(
            join_token=token.token,
            csr_pem=csr.public_bytes(serialization.Encoding.PEM),
            agent_version=AGENT_VERSION,
            hostname="tundra-acceptance",
            source_address=address,
        )
        cert = x509.load_pem_x509_certificate(enrolled.certificate_pem)
        identity = AgentIdentity(
            enrolled.agent_id,
            cert.serial_number,
            enrolled.certificate_pem,
            x.key_to_pem(key),
            f"throwaway agent of server {name}",
        )
        spare = Throwaway(name, identity)
        yield spare
    finally:
        try:
            services.servers.remove(SYSTEM, name)
        except TundraError as exc:
            if spare is not None:
                spare.cleanup_error = f"could not remove server {name}: {exc}"


def _registered(services: Services, identity: AgentIdentity) -> Agent:
    return services.agents.identify(identity.agent_id, format(identity.serial, "x"))


# --------------------------------------------------------------------------------------------
# AG-01 … AG-04: TLS


def _identity_or_error(ctx: RunContext) -> tuple[AgentIdentity | None, Outcome | None]:
    try:
        return load_test_identity(ctx), None
    except IdentityProblem as exc:
        return None, errored(str(exc))


def _unreachable(probe: TlsProbeResult, endpoint: Endpoint, **evidence: Any) -> Outcome | None:
    if not probe.connected:
        return errored(
            f"the gateway {endpoint.target} is not reachable: {probe.error}",
            **{**endpoint.evidence(), **evidence},
        )
    if probe.local_error:
        return errored(f"this client could not make the offer: {probe.error}", **evidence)
    return None


@check(
    "AG-01",
    "TLS 1.2 refused, even with a valid client certificate",
    section=Section.AGENT,
    severity=Severity.HIGH,
    needs=("agent_identity",),
)
def tls12_refused(ctx: RunContext) -> Outcome:
    identity, problem = _identity_or_error(ctx)
    if problem is not None or identity is None:
        return problem or errored("no test agent identity")
    endpoint = gateway_endpoint(ctx)
    timeout = ctx.io_timeout()
    old = tls_attempt(
        endpoint,
        cert_pem=identity.cert_pem,
        key_pem=identity.key_pem,
        label="the test agent identity",
        timeout=timeout,
        min_version=ssl.TLSVersion.TLSv1_2,
        max_version=ssl.TLSVersion.TLSv1_2,
    )
    control = tls_attempt(
        endpoint,
        cert_pem=identity.cert_pem,
        key_pem=identity.key_pem,
        label="the test agent identity",
        timeout=timeout,
        min_version=ssl.TLSVersion.TLSv1_3,
    )
    evidence = {
        **endpoint.evidence(),
        "identity": identity.evidence(),
        "tls12": tls_evidence(old),
        "tls13_control": tls_evidence(control),
    }
    broken = _unreachable(old, endpoint, **evidence)
    if broken is not None:
        return broken
    if old.handshake_ok:
        after = f"; the server then answered {old.after_read}" if old.after_read else ""
        return failed(
            f"a TLS 1.2 handshake with a valid client certificate completed ({old.cipher}){after}",
            **evidence,
        )
    if not (control.handshake_ok and control.accepted):
        return errored(
            "inconclusive: the TLS 1.3 control with the same certificate failed too ("
            + (control.error or f"after the handshake: {control.after_read}")
            + "), so the TLS 1.2 failure proves nothing",
            **evidence,
        )
    return passed(
        f"TLS 1.2 refused at the handshake ({old.error}); TLS 1.3 with the same certificate works",
        **evidence,
    )


@check(
    "AG-02",
    "No client certificate: refused",
    section=Section.AGENT,
    severity=Severity.CRITICAL,
)
def no_certificate_refused(ctx: RunContext) -> Outcome:
    identity, problem = _identity_or_error(ctx)
    if problem is not None:
        return problem
    endpoint = gateway_endpoint(ctx)
    timeout = ctx.io_timeout()
    anonymous = tls_attempt(endpoint, cert_pem=None, key_pem=None, label="", timeout=timeout)
    evidence: dict[str, Any] = {
        **endpoint.evidence(),
        "without_certificate": tls_evidence(anonymous),
    }
    broken = _unreachable(anonymous, endpoint, **evidence)
    if broken is not None:
        return broken
    if anonymous.accepted:
        if anonymous.after_read == "data":
            frames = (
                " (HTTP/2 SETTINGS)" if looks_like_http2_settings(anonymous.first_bytes) else ""
            )
            return failed(
                f"a {anonymous.version} client without a certificate completed the handshake and "
                f"the server answered{frames}",
                **evidence,
            )
        return failed(
            f"a {anonymous.version} client without a certificate completed the handshake and the "
            "server kept the connection open without an alert",
            **evidence,
        )
    if identity is None:
        evidence["control"] = "not run: no test agent identity (--agent-cert/--agent-key)"
    else:
        control = tls_attempt(
            endpoint,
            cert_pem=identity.cert_pem,
            key_pem=identity.key_pem,
            label="the test agent identity",
            timeout=timeout,
        )
        evidence["control"] = tls_evidence(control)
        if not control.accepted:
            return errored(
                "inconclusive: the gateway refused the valid test identity as well, so the "
                "refusal without a certificate proves nothing",
                **evidence,
            )
    return passed(f"refused {refused_where(anonymous)}", **evidence)


@check(
    "AG-04",
    "A valid agent certificate completes the handshake with ALPN h2",
    section=Section.AGENT,
    severity=Severity.HIGH,
    needs=("agent_identity",),
)
def valid_certificate_works(ctx: RunContext) -> Outcome:
    identity, problem = _identity_or_error(ctx)
    if problem is not None or identity is None:
        return problem or errored("no test agent identity")
    endpoint = gateway_endpoint(ctx)
    verify = endpoint.ca_pem is not None
    probe = tls_attempt(
        endpoint,
        cert_pem=identity.cert_pem,
        key_pem=identity.key_pem,
        label="the test agent identity",
        timeout=ctx.io_timeout(),
        min_version=ssl.TLSVersion.TLSv1_3,
        verify=verify,
    )
    evidence = {
        **endpoint.evidence(),
        "identity": identity.evidence(),
        "chain_verified": verify,
        "handshake": tls_evidence(probe),
    }
    broken = _unreachable(probe, endpoint, **evidence)
    if broken is not None:
        return broken
    if not probe.handshake_ok:
        if "CERTIFICATE_VERIFY_FAILED" in (probe.error or ""):
            return failed(
                f"the gateway's certificate does not verify against the {endpoint.ca_source} "
                f"for {endpoint.host}: {probe.error}",
                **evidence,
            )
        return failed(f"the TLS 1.3 handshake failed: {probe.error}", **evidence)
    if not probe.accepted:
        return failed(
            f"the gateway refused the valid agent certificate after the handshake "
            f"({probe.after_read})",
            **evidence,
        )
    if probe.alpn != "h2":
        return failed(f"ALPN: the gateway selected {probe.alpn!r}, not 'h2'", **evidence)
    if verify:
        return passed(
            f"TLS 1.3 with ALPN h2, the gateway's certificate verified against the "
            f"{endpoint.ca_source}",
            **evidence,
        )
    return passed(
        "TLS 1.3 with ALPN h2 (the gateway's certificate chain was not verified: give "
        "--ca-file with the internal CA bundle, or run with --local)",
        **evidence,
    )


# --------------------------------------------------------------------------------------------
# AG-03: foreign, expired, non-clientAuth and revoked certificates


def try_certificate(
    endpoint: Endpoint,
    identity: AgentIdentity,
    *,
    timeout: float,
    tls_must_refuse: bool = False,
) -> dict[str, Any]:
    """Present ``identity``; ``verdict`` is refused / accepted / inconclusive, with the why."""
    probe = tls_attempt(
        endpoint,
        cert_pem=identity.cert_pem,
        key_pem=identity.key_pem,
        label=identity.origin,
        timeout=timeout,
    )
    entry: dict[str, Any] = {"tls": tls_evidence(probe)}
    if not probe.connected or probe.local_error:
        return {**entry, "verdict": "inconclusive", "why": f"no handshake: {probe.error}"}
    if probe.refused:
        return {**entry, "verdict": "refused", "why": f"TLS refused it {refused_where(probe)}"}
    if tls_must_refuse:
        return {**entry, "verdict": "accepted", "why": "the TLS layer accepted it"}
    if endpoint.ca_pem is None:
        return {
            **entry,
            "verdict": "inconclusive",
            "why": "TLS accepted it; the RPC was not tried (give --ca-file to verify the gateway)",
        }
    rpc = session_attempt(endpoint, identity, timeout=timeout)
    entry["rpc"] = rpc
    if rpc["state"] == "accepted":
        return {**entry, "verdict": "accepted", "why": "TLS accepted it and Session answered"}
    if rpc["state"] == "refused":
        return {
            **entry,
            "verdict": "refused",
            "why": f"the Session RPC was refused: {rpc['code']} {rpc.get('details', '')}".strip(),
        }
    return {**entry, "verdict": "inconclusive", "why": f"the Session RPC: {rpc}"}


def _variant(cert_pem: bytes, base: AgentIdentity, origin: str) -> AgentIdentity:
    return AgentIdentity(base.agent_id, base.serial, cert_pem, base.key_pem, origin)


@check(
    "AG-03",
    "Foreign-CA, expired, non-clientAuth and revoked certificates: refused",
    section=Section.AGENT,
    severity=Severity.CRITICAL,
    timeout=30.0,
)
def bad_certificates_refused(ctx: RunContext) -> Outcome:
    endpoint = gateway_endpoint(ctx)
    timeout = ctx.io_timeout()
    services = ctx.options.services
    if services is None:
        return _bad_certificates_remote(ctx, endpoint, timeout)
    try:
        address = source_address(endpoint, timeout=timeout)
    except OSError as exc:
        return errored(
            f"the gateway {endpoint.target} is not reachable: {exc}", **endpoint.evidence()
        )
    variants: dict[str, dict[str, Any]] = {}
    evidence: dict[str, Any] = {**endpoint.evidence(), "runner_address": address}
    with throwaway_agent(services, address=address) as spare:
        base = spare.identity
        evidence["identity"] = base.evidence()
        control = try_certificate(endpoint, base, timeout=timeout)
        evidence["control"] = control
        if control["verdict"] != "accepted":
            outcome = errored(
                "inconclusive: the valid certificate of a freshly enrolled agent at this runner's "
                f"address was not accepted ({control['why']})",
                **evidence,
            )
        else:
            ca_key, ca_cert = services.pki._ca()
            foreign_key, foreign_cert = make_foreign_ca()
            now = datetime.now(UTC)
            forged = {
                "foreign_ca": forge_agent_cert(
                    foreign_key,
                    foreign_cert,
                    base.public_key,
                    agent_id=base.agent_id,
                    serial=base.serial,
                ),
                "expired": forge_agent_cert(
                    ca_key,
                    ca_cert,
                    base.public_key,
                    agent_id=base.agent_id,
                    serial=base.serial,
                    not_before=now - timedelta(hours=3),
                    not_after=now - timedelta(hours=1),
                ),
                "no_client_auth": forge_agent_cert(
                    ca_key,
                    ca_cert,
                    base.public_key,
                    agent_id=base.agent_id,
                    serial=base.serial,
                    client_auth=False,
                ),
            }
            for name, pem in forged.items():
                variants[name] = try_certificate(
                    endpoint,
                    _variant(pem, base, name.replace("_", " ")),
                    timeout=timeout,
                    tls_must_refuse=name == "foreign_ca",
                )
            from tundra.core.principal import SYSTEM

            services.agents.revoke(SYSTEM, spare.server_name)
            variants["revoked"] = try_certificate(
                endpoint, _variant(base.cert_pem, base, "revoked"), timeout=timeout
            )
            outcome = _judge_variants(variants, evidence)
    if spare.cleanup_error:
        outcome.evidence["cleanup_error"] = spare.cleanup_error
    return outcome


def _bad_certificates_remote(ctx: RunContext, endpoint: Endpoint, timeout: float) -> Outcome:
    identity, problem = _identity_or_error(ctx)
    if problem is not None:
        return problem
    if identity is not None:
        agent_id, serial, public_key, key_pem = (
            identity.agent_id,
            identity.serial,
            identity.public_key,
            identity.key_pem,
        )
    else:
        key = x.new_key()
        agent_id, serial = secrets.token_hex(8), x509.random_serial_number()
        public_key, key_pem = key.public_key(), x.key_to_pem(key)
    foreign_key, foreign_cert = make_foreign_ca()
    pem = forge_agent_cert(foreign_key, foreign_cert, public_key, agent_id=agent_id, serial=serial)
    probe = AgentIdentity(agent_id, serial, pem, key_pem, "foreign CA")
    not_remote = "not evaluated remotely: only the real CA can sign it (run with --local)"
    variants: dict[str, dict[str, Any]] = {
        "foreign_ca": try_certificate(endpoint, probe, timeout=timeout, tls_must_refuse=True),
        "expired": {"verdict": "not evaluated", "why": not_remote},
        "no_client_auth": {"verdict": "not evaluated", "why": not_remote},
        "revoked": {
            "verdict": "not evaluated",
            "why": "not evaluated remotely: needs the control plane to enroll and revoke a "
            "throwaway agent (run with --local)",
        },
    }
    evidence = {
        **endpoint.evidence(),
        "identity": {"agent_id": agent_id, "origin": identity.origin if identity else "random"},
    }
    return _judge_variants(variants, evidence)


def _judge_variants(variants: dict[str, dict[str, Any]], evidence: dict[str, Any]) -> Outcome:
    evidence = {**evidence, "variants": variants}
    accepted = [name for name, v in variants.items() if v["verdict"] == "accepted"]
    unsure = [name for name, v in variants.items() if v["verdict"] == "inconclusive"]
    skipped_ = [name for name, v in variants.items() if v["verdict"] == "not evaluated"]
    refused = [name for name, v in variants.items() if v["verdict"] == "refused"]
    if accepted:
        return failed(
            "accepted: " + "; ".join(f"{name} ({variants[name]['why']})" for name in accepted),
            **evidence,
        )
    if unsure:
        return errored(
            "inconclusive: " + "; ".join(f"{name} ({variants[name]['why']})" for name in unsure),
            **evidence,
        )
    summary = "refused: " + ", ".join(refused)
    if skipped_:
        summary += "; not evaluated remotely: " + ", ".join(skipped_) + " (run with --local)"
    return passed(summary, **evidence)


# --------------------------------------------------------------------------------------------
# AG-05: the source allowlist, from an untrusted vantage point

#: The probe, run by ``sys.executable`` (wherever ``outside_probe`` puts it). It reads one JSON
#: object on stdin (the key never appears in argv) and prints one JSON object: the TCP state,
#: its own source address, and, when given an identity, the Session RPC's first answer.
PROBE_SOURCE: Final = r"""
import json, socket, sys
spec = json.loads(sys.stdin.read())
host, port, timeout = spec["host"], spec["port"], spec["timeout"]
out = {"host": host, "port": port}
try:
    conn = socket.create_connection((host, port), timeout=timeout)
except ConnectionRefusedError:
    out["tcp"] = "refused"
except TimeoutError:
    out["tcp"] = "filtered"
except OSError as exc:
    out["tcp"] = "unreachable"
    out["error"] = str(exc)
else:
    out["tcp"] = "open"
    out["source"] = conn.getsockname()[0]
    conn.close()
    if spec.get("cert_pem"):
        import grpc
        root = spec["ca_pem"].encode() if spec.get("ca_pem") else None
        creds = grpc.ssl_channel_credentials(
            root, spec["key_pem"].encode(), spec["cert_pem"].encode()
        )
        target = "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)
        with grpc.secure_channel(target, creds) as channel:
            call = channel.stream_stream(spec["method"])(
                iter([bytes.fromhex(spec["hello"])]), timeout=timeout
            )
            try:
                out["rpc"] = {"answer": next(call).hex()}
            except StopIteration:
                out["rpc"] = {"ended": True}
            except grpc.RpcError as exc:
                out["rpc"] = {"code": exc.code().name, "details": exc.details()}
            finally:
                call.cancel()
print(json.dumps(out))
"""


def run_allowlist_probe(
    endpoint: Endpoint,
    identity: AgentIdentity | None,
    *,
    prefix: tuple[str, ...],
    timeout: float,
) -> dict[str, Any]:
    """Run :data:`PROBE_SOURCE` from the vantage point; its JSON answer."""
    spec: dict[str, Any] = {"host": endpoint.host, "port": endpoint.port, "timeout": timeout}
    if identity is not None:
        spec.update(
            cert_pem=identity.cert_pem.decode(),
            key_pem=identity.key_pem.decode(),
            ca_pem=endpoint.ca_pem.decode() if endpoint.ca_pem else None,
            method=SESSION_METHOD,
            hello=hello_message(identity.agent_id).hex(),
        )
    done = subprocess.run(
        [*prefix, sys.executable, "-I", "-c", PROBE_SOURCE],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=3 * timeout + 20,
        check=False,
        env={**os.environ, "GRPC_VERBOSITY": "NONE"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"the probe failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def judge_allowlist(
    result: Mapping[str, Any],
    *,
    identity: AgentIdentity | None,
    vantage: str,
    trusted: Callable[[str], bool] | None,
) -> Outcome:
    """AG-05's rule over one probe answer."""
    evidence: dict[str, Any] = {"vantage": vantage, "probe": dict(result)}
    if identity is not None:
        evidence["identity"] = identity.evidence()
    tcp = result.get("tcp")
    if tcp in ("refused", "filtered", "unreachable"):
        return passed(f"the gateway port is {tcp} from {vantage}", **evidence)
    if tcp != "open":
        return errored(f"the probe said nothing usable: {result}", **evidence)
    source = str(result.get("source", ""))
    if trusted is not None and source and trusted(source):
        return skipped(
            f"the vantage point's address {source} is trusted for the agent (its server address "
            "or agent_trusted_cidrs), so the allowlist cannot be tested from there",
            **evidence,
        )
    if identity is None:
        return skipped(
            f"the gateway port is open from {vantage}; the per-agent source allowlist is "
            "enforced per RPC, which needs --agent-cert/--agent-key or --local",
            **evidence,
        )
    rpc = result.get("rpc") or {}
    if "answer" in rpc:
        try:
            kind = parse_control(bytes.fromhex(str(rpc["answer"]))).kind
        except ValueError:
            kind = "undecodable"
        evidence["probe"]["rpc"] = {"first_message": kind}
        if kind == "welcome":
            return failed(
                f"a Session from {source or vantage}, an untrusted address, was accepted "
                "(the gateway sent Welcome)",
                **evidence,
            )
        return errored(f"the Session RPC answered with a {kind} message", **evidence)
    if rpc.get("code") == "PERMISSION_DENIED":
        return passed(
            f"the port is open from {vantage}, and the Session RPC from {source or 'there'} "
            f"is refused: PERMISSION_DENIED {rpc.get('details', '')}".rstrip(),
            **evidence,
        )
    return errored(
        f"inconclusive: the Session RPC from {vantage} ended with {rpc.get('code') or rpc}",
        **evidence,
    )


@check(
    "AG-05",
    "Source allowlist: from an untrusted address the gateway refuses",
    section=Section.AGENT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def source_allowlist(ctx: RunContext) -> Outcome:
    endpoint = gateway_endpoint(ctx)
    prefix = tuple(ctx.options.outside_probe)
    timeout = min(3.0, ctx.io_timeout())
    if prefix and is_loopback(endpoint.host):
        return errored(
            f"the gateway {endpoint.target} is loopback, which an outside probe cannot reach",
            hint="give --gateway with the address agents use",
        )
    vantage = "outside probe: " + " ".join(prefix) if prefix else "the runner"
    services = ctx.options.services
    if services is not None:
        with throwaway_agent(services, address=ELSEWHERE) as spare:
            agent = _registered(services, spare.identity)
            networks = services.agents.trusted_networks(agent)

            def trusted(address: str) -> bool:
                try:
                    ip = ipaddress.ip_address(address)
                except ValueError:
                    return False
                return any(ip in network for network in networks)

            try:
                result = run_allowlist_probe(
                    endpoint, spare.identity, prefix=prefix, timeout=timeout
                )
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
                return errored(f"the probe could not run: {exc}", vantage=vantage)
            outcome = judge_allowlist(
                result, identity=spare.identity, vantage=vantage, trusted=trusted
            )
            outcome.evidence["trusted_networks"] = [str(n) for n in networks]
        if spare.cleanup_error:
            outcome.evidence["cleanup_error"] = spare.cleanup_error
        return outcome
    identity, problem = _identity_or_error(ctx)
    if problem is not None:
        return problem
    if not prefix:
        return skipped(
            "without --local the runner cannot tell whether its own address is trusted for the "
            "test agent; give an outside probe, or run on the panel host with --local",
            **endpoint.evidence(),
        )
    try:
        result = run_allowlist_probe(endpoint, identity, prefix=prefix, timeout=timeout)
    except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as exc:
        return errored(f"the probe could not run: {exc}", vantage=vantage)
    return judge_allowlist(result, identity=identity, vantage=vantage, trusted=None)


# --------------------------------------------------------------------------------------------
# AG-06: replayed and expired commands


def _guard_verdict(guard: CommandGuardLike, signed: SignedCommand, now_ms: int | None) -> str:
    try:
        guard.check(signed, now_ms=now_ms)
    except CommandRefused as exc:
        return f"refused ({exc.reason}): {exc.message}"
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    return "accepted"


def guard_probes(
    factory: GuardFactory, signed: SignedCommand, *, agent_id: str, keys: Mapping[str, bytes]
) -> dict[str, str]:
    """The agent side: the real guard, on a private state directory, given ``signed``."""
    envelope = json.loads(signed.envelope)
    expires_at_ms = int(envelope["expires_at_ms"])
    with tempfile.TemporaryDirectory(prefix="tundra-acceptance-guard-") as tmp:
        state, fresh_state = Path(tmp) / "state", Path(tmp) / "fresh"
        verdicts: dict[str, str] = {}
        guard = factory(agent_id=agent_id, state_dir=state, public_keys=keys)
        try:
            verdicts["first_delivery"] = _guard_verdict(guard, signed, None)
            verdicts["replay"] = _guard_verdict(guard, signed, None)
        finally:
            guard.close()
        guard = factory(agent_id=agent_id, state_dir=state, public_keys=keys)
        try:
            verdicts["replay_after_restart"] = _guard_verdict(guard, signed, None)
        finally:
            guard.close()
        guard = factory(agent_id=agent_id, state_dir=fresh_state, public_keys=keys)
        try:
            # The first instant at which the command is expired, on a guard that never saw it.
            verdicts["at_expiry"] = _guard_verdict(guard, signed, expires_at_ms)
        finally:
            guard.close()
    return verdicts


@check(
    "AG-06",
    "Replay: a replayed or expired signed command is refused",
    section=Section.AGENT,
    severity=Severity.CRITICAL,
    timeout=30.0,
    needs=("agent_identity", "services"),
)
def replay_refused(ctx: RunContext) -> Outcome:
    from tundra.core.principal import SYSTEM

    identity, problem = _identity_or_error(ctx)
    if problem is not None or identity is None:
        return problem or errored("no test agent identity")
    services = ctx.services
    endpoint = gateway_endpoint(ctx)
    evidence: dict[str, Any] = {**endpoint.evidence(), "identity": identity.evidence()}
    try:
        agent = _registered(services, identity)
    except AgentRefused as exc:
        return errored(
            f"the test identity is not an active agent ({exc.reason}): {exc.message}", **evidence
        )
    import grpc

    factory = installed_command_guard()
    stream_timeout = max(1.0, (ctx.remaining() or 30.0) - 1.0)
    try:
        with AgentStream(endpoint, identity, timeout=stream_timeout) as stream:
            stream.send(hello_message(identity.agent_id))
            welcome = stream.read()
            if welcome.kind != "welcome":
                return errored(f"the gateway answered Hello with {welcome.kind}", **evidence)
            record = services.commands.issue(SYSTEM, agent.server_name, "ping")
            evidence["command"] = {"id": record.id, "type": "ping", "server": agent.server_name}
            if record.agent_id != identity.agent_id:
                return errored(
                    f"server {agent.server_name} has another active agent ({record.agent_id})",
                    **evidence,
                )
            message = stream.read_kind("command")
            assert message.command is not None
            signed = message.command
            envelope = json.loads(signed.envelope)
            evidence["command"].update(
                key_id=signed.key_id,
                nonce=envelope.get("nonce"),
                issued_at_ms=envelope.get("issued_at_ms"),
                expires_at_ms=envelope.get("expires_at_ms"),
            )
            if envelope.get("command_id") != record.id:
                return errored("the session delivered another command first", **evidence)
            if factory is not None:
                evidence["agent_guard"] = guard_probes(
                    factory, signed, agent_id=identity.agent_id, keys=welcome.command_keys
                )
            stream.send(result_message(record.id, RESULT_SUCCEEDED, {"probe": "AG-06"}))
            stream.sync(1)
            first = services.commands.get(SYSTEM, record.id)
            stream.send(result_message(record.id, RESULT_FAILED, None, "AG-06 replayed result"))
            stream.sync(2)
            after = services.commands.get(SYSTEM, record.id)
    except grpc.RpcError as exc:
        return errored(f"the session as the test agent ended: {_grpc_error(exc)}", **evidence)
    evidence["gateway"] = {
        "first_result": {"status": first.status, "output": first.output},
        "replayed_result": {"sent": "failed, 'AG-06 replayed result'"},
        "record_after_replay": {
            "status": after.status,
            "output": after.output,
            "error": after.error,
        },
    }
    return _judge_replay(evidence, first.status, after, guard_installed=factory is not None)


def _judge_replay(
    evidence: dict[str, Any], first_status: str, after: Any, *, guard_installed: bool
) -> Outcome:
    problems: list[str] = []
    unsure: list[str] = []
    verdicts: Mapping[str, str] = evidence.get("agent_guard", {})
    if guard_installed:
        if verdicts["first_delivery"] != "accepted":
            unsure.append(f"the guard refused the fresh command: {verdicts['first_delivery']}")
        labels = {
            "replay": "a replayed command",
            "replay_after_restart": "a command replayed after a guard restart",
            "at_expiry": "an expired command",
        }
        for key, what in labels.items():
            verdict = verdicts[key]
            if verdict == "accepted":
                problems.append(f"the agent's guard accepted {what}")
            elif not verdict.startswith("refused"):
                unsure.append(f"{what}: {verdict}")
    if first_status != "succeeded":
        unsure.append(f"the gateway did not record the first result (status {first_status})")
    elif after.status != "succeeded" or after.error == "AG-06 replayed result":
        problems.append(
            f"the gateway recorded a replayed result (status now {after.status}, "
            f"error {after.error!r})"
        )
    if problems:
        return failed("; ".join(problems), **evidence)
    if unsure:
        return errored("inconclusive: " + "; ".join(unsure), **evidence)
    if not guard_installed:
        return errored(
            "the gateway refuses a replayed result, but the agent side was not evaluated: no "
            "command guard is installed in this runner (install_command_guard)",
            **evidence,
        )
    return passed(
        "the agent's guard refused the replay, the replay after a restart and the expired "
        "command; the gateway kept the first result when it was replayed",
        **evidence,
    )
