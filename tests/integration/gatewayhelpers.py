"""Helpers for the gateway tests (imported as ``gatewayhelpers``): enrolled agents, a running
gateway on a loopback port, agent-side sessions over real gRPC, and certificates made by hand
(foreign CA, expired) for the refusals.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.home import initialize
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.gateway.server import Gateway

ADMIN_PASSWORD = "correct horse battery staple"
SERVICE = "/tundra.agent.v1.AgentGateway/"


def make_services(home: Path, **overrides: Any) -> Services:
    """An initialised home on the embedded SQLite database with ``overrides`` for settings."""
    settings = replace(Settings(home=home, database_url="", password_profile="test"), **overrides)
    svc = Services(settings)
    initialize(svc, admin_name="admin", admin_password=ADMIN_PASSWORD)
    return svc


def csr_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


@dataclass
class EnrolledAgent:
    agent_id: str
    server_name: str
    key: ec.EllipticCurvePrivateKey
    cert_pem: bytes
    ca_bundle_pem: bytes

    @property
    def key_pem(self) -> bytes:
        return x.key_to_pem(self.key)

    @property
    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_pem).serial_number

    def credentials(self, *, cert_pem: bytes | None = None) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            self.ca_bundle_pem, self.key_pem, cert_pem or self.cert_pem
        )

    def write_files(self, directory: Path) -> tuple[Path, Path, Path]:
        """(cert, key, CA bundle) files for openssl and Python ssl."""
        directory.mkdir(parents=True, exist_ok=True)
        cert, key, ca = directory / "agent.crt", directory / "agent.key", directory / "ca.pem"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        ca.write_bytes(self.ca_bundle_pem)
        return cert, key, ca


def enroll_agent(services: Services, name: str, *, address: str = "127.0.0.1") -> EnrolledAgent:
    """A server ``name`` at ``address`` and its agent, enrolled with a join token and a CSR."""
    services.servers.add(SYSTEM, name=name, address=address)
    token = services.enrollment.create_join_token(SYSTEM, name)
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = services.enrollment.enroll(
        join_token=token.token,
        csr_pem=csr_pem(key),
        agent_version="test-1",
        hostname=f"{name}.test",
        source_address=address,
    )
    return EnrolledAgent(
        enrolled.agent_id, name, key, enrolled.certificate_pem, enrolled.ca_bundle_pem
    )


def agent_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    public_key: ec.EllipticCurvePublicKey,
    *,
    agent_id: str,
    serial: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> bytes:
    """An agent-shaped client certificate (SPIFFE URI, EKU clientAuth) with chosen validity."""
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "forged")]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(x.agent_uri(agent_id))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return x.cert_to_pem(cert)


@asynccontextmanager
async def running_gateway(services: Services) -> AsyncIterator[Gateway]:
    gateway = Gateway(services, listen="127.0.0.1:0")
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop(1.0)


def channel(gateway: Gateway, credentials: grpc.ChannelCredentials) -> grpc.aio.Channel:
    return grpc.aio.secure_channel(f"127.0.0.1:{gateway.port}", credentials)


def hello(agent_id: str) -> agent_pb2.AgentMessage:
    facts = agent_pb2.Facts(hostname="host.test", os="Debian", cpu_count=2, load_average=[0.1])
    return agent_pb2.AgentMessage(
        hello=agent_pb2.Hello(agent_id=agent_id, agent_version="test-1", facts=facts)
    )


class AgentSession:
    """The agent's side of one Session stream."""

    def __init__(self, chan: grpc.aio.Channel) -> None:
        self.call = agent_pb2_grpc.AgentGatewayStub(chan).Session()

    async def open(self, agent_id: str) -> agent_pb2.Welcome:
        await self.call.write(hello(agent_id))
        message = await self.read()
        assert message.WhichOneof("kind") == "welcome", message
        return message.welcome

    async def read(self, timeout: float = 10.0) -> agent_pb2.ControlMessage:
        message = await asyncio.wait_for(self.call.read(), timeout)
        assert message is not grpc.aio.EOF, "the gateway ended the stream"
        assert isinstance(message, agent_pb2.ControlMessage)
        return message

    async def send(self, message: agent_pb2.AgentMessage) -> None:
        await self.call.write(message)

    async def answer(
        self, reply: Callable[[dict[str, Any]], tuple[int, dict[str, Any] | None, str]]
    ) -> None:
        """Answer every command until the stream ends: ``reply(envelope) -> (status, output,
        error)``."""
        while True:
            message = await self.call.read()
            if message is grpc.aio.EOF:
                return
            if message.WhichOneof("kind") != "command":
                continue
            envelope = json.loads(message.command.envelope)
            status, output, error = reply(envelope)
            await self.send(result(envelope["command_id"], status, output, error))

    async def ended(self, timeout: float = 10.0) -> grpc.StatusCode:
        """Wait for the gateway to end the stream; its status code."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(self.call.read(), deadline - time.monotonic())
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            if message is grpc.aio.EOF:
                break
        return await asyncio.wait_for(self.call.code(), max(deadline - time.monotonic(), 0.1))


def result(
    command_id: str, status: int, output: dict[str, Any] | None = None, error: str = ""
) -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(
        result=agent_pb2.CommandResult(
            command_id=command_id,
            status=status,  # type: ignore[arg-type]
            output_json=json.dumps(output).encode() if output is not None else b"",
            error=error,
        )
    )


async def renew_call(chan: grpc.aio.Channel, key: ec.EllipticCurvePrivateKey) -> Any:
    return await agent_pb2_grpc.AgentGatewayStub(chan).Renew(
        agent_pb2.RenewRequest(csr_pem=csr_pem(key)), timeout=10
    )


async def expect_refused(awaitable: Any) -> grpc.aio.AioRpcError:
    try:
        await awaitable
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call was not refused")


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def audit_rows(services: Services, action: str) -> list[dict[str, Any]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", {"a": action})
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows
