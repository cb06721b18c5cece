"""The gateway's TLS layer over real sockets on loopback: mutual TLS 1.3 only.

A handshake without a client certificate, with one from a foreign CA, or with an expired one
fails; TLS 1.2 fails at the handshake (``openssl s_client -tls1_2`` and Python ``ssl`` capped at
TLS 1.2, both presenting a valid client certificate) while TLS 1.3 with ALPN h2 succeeds; a
reissued gateway certificate and a rotated CA apply to new handshakes without a restart.
Uses the embedded database and Debian's ``openssl`` command.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from gatewayhelpers import (
    AgentSession,
    EnrolledAgent,
    Services,
    agent_cert,
    channel,
    enroll_agent,
    expect_refused,
    make_services,
    running_gateway,
)

from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM
from tundra.gateway.server import Gateway

OPENSSL = shutil.which("openssl")


@pytest.fixture
def home_services(tmp_path: Path) -> Iterator[Services]:
    svc = make_services(tmp_path / "home")
    yield svc
    svc.close()


@pytest.fixture
def agent(home_services: Services) -> EnrolledAgent:
    return enroll_agent(home_services, "web-1")


def run(services: Services, scenario: object) -> None:
    async def main() -> None:
        async with running_gateway(services) as gateway:
            await scenario(gateway)  # type: ignore[operator]

    asyncio.run(main())


def tls_connect(
    port: int, agent: EnrolledAgent, tmp: Path, *, maximum: ssl.TLSVersion, client_cert: bool
) -> tuple[str | None, str | None, bytes]:
    """(TLS version, ALPN protocol, peer certificate DER) of a handshake with the gateway."""
    cert, key, ca = agent.write_files(tmp)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca))
    if client_cert:
        context.load_cert_chain(str(cert), str(key))
    context.maximum_version = maximum
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        peer = tls.getpeercert(binary_form=True)
        assert peer is not None
        return tls.version(), tls.selected_alpn_protocol(), peer


def test_no_client_certificate_is_refused(home_services: Services, agent: EnrolledAgent) -> None:
    async def scenario(gateway: Gateway) -> None:
        anonymous = grpc.ssl_channel_credentials(agent.ca_bundle_pem)
        async with channel(gateway, anonymous) as chan:
            refused = await expect_refused(AgentSession(chan).open(agent.agent_id))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        # The valid certificate on the same gateway works (the refusal above was the missing
        # certificate, not a broken server).
        async with channel(gateway, agent.credentials()) as chan:
            await AgentSession(chan).open(agent.agent_id)

    run(home_services, scenario)


def test_foreign_ca_certificate_is_refused(home_services: Services, agent: EnrolledAgent) -> None:
    foreign_key, foreign_ca = x.generate_ca("Someone else's CA")
    forged = agent_cert(
        foreign_key,
        foreign_ca,
        agent.key.public_key(),
        agent_id=agent.agent_id,
        serial=agent.serial,
    )

    async def scenario(gateway: Gateway) -> None:
        async with channel(gateway, agent.credentials(cert_pem=forged)) as chan:
            refused = await expect_refused(AgentSession(chan).open(agent.agent_id))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        assert gateway.connected_agents == set()

    run(home_services, scenario)


def test_expired_certificate_is_refused(home_services: Services, agent: EnrolledAgent) -> None:
    # Same CA, same key, same registered serial: only the validity differs.
    ca_key, ca_cert = home_services.pki._ca()
    now = datetime.now(UTC)
    expired = agent_cert(
        ca_key,
        ca_cert,
        agent.key.public_key(),
        agent_id=agent.agent_id,
        serial=agent.serial,
        not_before=now - timedelta(hours=3),
        not_after=now - timedelta(hours=1),
    )

    async def scenario(gateway: Gateway) -> None:
        async with channel(gateway, agent.credentials(cert_pem=expired)) as chan:
            refused = await expect_refused(AgentSession(chan).open(agent.agent_id))
            assert refused.code() == grpc.StatusCode.UNAVAILABLE
        async with channel(gateway, agent.credentials()) as chan:
            await AgentSession(chan).open(agent.agent_id)

    run(home_services, scenario)


def test_certificate_without_client_auth_is_refused(
    home_services: Services, agent: EnrolledAgent
) -> None:
    """A certificate from the right CA for the right agent, but EKU serverAuth only."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = home_services.pki._ca()
    now = datetime.now(UTC)
    server_only = x.cert_to_pem(
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca_cert.subject)
        .public_key(agent.key.public_key())
        .serial_number(agent.serial)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(x.agent_uri(agent.agent_id))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    async def scenario(gateway: Gateway) -> None:
        async with channel(gateway, agent.credentials(cert_pem=server_only)) as chan:
            refused = await expect_refused(AgentSession(chan).open(agent.agent_id))
            # BoringSSL refuses the purpose at the handshake; the policy would refuse it too.
            assert refused.code() in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.UNAUTHENTICATED,
            )
        assert gateway.connected_agents == set()

    run(home_services, scenario)


def test_tls12_fails_at_the_handshake_and_tls13_with_h2_works(
    home_services: Services, agent: EnrolledAgent, tmp_path: Path
) -> None:
    async def scenario(gateway: Gateway) -> None:
        with pytest.raises(ssl.SSLError):
            await asyncio.to_thread(
                tls_connect,
                gateway.port,
                agent,
                tmp_path / "py12",
                maximum=ssl.TLSVersion.TLSv1_2,
                client_cert=True,
            )
        version, alpn, _ = await asyncio.to_thread(
            tls_connect,
            gateway.port,
            agent,
            tmp_path / "py13",
            maximum=ssl.TLSVersion.TLSv1_3,
            client_cert=True,
        )
        assert (version, alpn) == ("TLSv1.3", "h2")

    run(home_services, scenario)


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_openssl_s_client_tls12_is_refused(
    home_services: Services, agent: EnrolledAgent, tmp_path: Path
) -> None:
    cert, key, ca = agent.write_files(tmp_path / "files")

    def s_client(port: int, *flags: str) -> subprocess.CompletedProcess[str]:
        assert OPENSSL is not None
        return subprocess.run(
            [
                OPENSSL,
                "s_client",
                "-connect",
                f"127.0.0.1:{port}",
                "-cert",
                str(cert),
                "-key",
                str(key),
                "-CAfile",
                str(ca),
                "-verify_return_error",
                *flags,
            ],
            input="",
            capture_output=True,
            text=True,
            errors="replace",  # after the handshake the server's HTTP/2 frames arrive too
            timeout=30,
            check=False,
        )

    async def scenario(gateway: Gateway) -> None:
        old = await asyncio.to_thread(s_client, gateway.port, "-tls1_2", "-brief")
        assert old.returncode != 0, old.stdout + old.stderr
        # gRPC closes the connection without an alert; openssl reports an SSL routine error,
        # and not one byte of HTTP/2 came through.
        assert "SSL routines" in old.stderr, old.stderr
        assert "CONNECTION ESTABLISHED" not in old.stderr
        assert old.stdout == ""
        new = await asyncio.to_thread(s_client, gateway.port, "-tls1_3", "-alpn", "h2")
        output = new.stdout + new.stderr
        assert new.returncode == 0, output
        assert "New, TLSv1.3, Cipher is TLS_" in output
        assert "ALPN protocol: h2" in output
        assert "Verify return code: 0 (ok)" in output

    run(home_services, scenario)


def test_a_reissued_gateway_certificate_is_served_without_a_restart(
    home_services: Services, agent: EnrolledAgent, tmp_path: Path
) -> None:
    services = home_services

    async def scenario(gateway: Gateway) -> None:
        def served() -> bytes:
            return tls_connect(
                gateway.port,
                agent,
                tmp_path / "f",
                maximum=ssl.TLSVersion.TLSv1_3,
                client_cert=True,
            )[2]

        before = await asyncio.to_thread(served)
        assert await asyncio.to_thread(services.pki.ensure_gateway_cert, SYSTEM, force=True)
        new_leaf = x.certs_from_pem(services.pki.gateway_cert_path.read_bytes())[0]
        assert new_leaf.public_bytes(Encoding.DER) != before
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        after = before
        while after == before and loop.time() < deadline:
            await asyncio.sleep(0.2)
            after = await asyncio.to_thread(served)
        assert after == new_leaf.public_bytes(Encoding.DER)
        async with channel(gateway, agent.credentials()) as chan:
            await AgentSession(chan).open(agent.agent_id)

    run(services, scenario)


def test_ca_rotation_keeps_old_and_new_roots_working(
    home_services: Services, agent: EnrolledAgent
) -> None:
    """After `ca rotate`: an agent trusting only the old root, and one enrolled under the new
    CA trusting only the new root, both complete the handshake with the running gateway."""
    services = home_services
    old_root = agent.ca_bundle_pem

    async def scenario(gateway: Gateway) -> None:
        await asyncio.to_thread(services.pki.rotate_ca, SYSTEM)
        new_agent = await asyncio.to_thread(enroll_agent, services, "web-2")
        new_root = x.cert_to_pem(services.pki._ca()[1])
        assert new_root != old_root
        new_only = EnrolledAgent(
            new_agent.agent_id, "web-2", new_agent.key, new_agent.cert_pem, new_root
        )
        old_only = EnrolledAgent(agent.agent_id, "web-1", agent.key, agent.cert_pem, old_root)
        deadline = asyncio.get_running_loop().time() + 10
        for who in (old_only, new_only):
            while True:
                try:
                    async with channel(gateway, who.credentials()) as chan:
                        welcome = await AgentSession(chan).open(who.agent_id)
                    break
                except grpc.aio.AioRpcError:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.2)
            assert old_root in welcome.ca_bundle_pem
            assert new_root in welcome.ca_bundle_pem

    run(services, scenario)


def test_gateway_refuses_to_start_when_grpc_was_imported_first(tmp_path: Path) -> None:
    code = (
        "import grpc, os\n"
        "os.environ.pop('GRPC_SSL_CIPHER_SUITES', None)\n"
        "import tundra.gateway\n"
        "from tundra.core.errors import ConfigError\n"
        "try:\n"
        "    tundra.gateway.check_cipher_policy()\n"
        "except ConfigError as exc:\n"
        "    print('refused:', exc)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: GRPC_SSL_CIPHER_SUITES" in done.stdout


def test_agent_key_type_is_what_the_cipher_policy_relies_on(home_services: Services) -> None:
    # TLS 1.2 is blocked by offering only an RSA suite: the gateway key must stay ECDSA.
    home_services.pki.ensure_gateway_cert(SYSTEM)
    key = x.key_from_pem(home_services.pki.gateway_key_path.read_bytes())
    assert isinstance(key, ec.EllipticCurvePrivateKey)


# A gateway whose process imported grpc before tundra.gateway (so TLS 1.2 suites are on offer)
# with the start-up check bypassed: only the policy interceptor stands between a TLS 1.2 client
# and the methods. It must refuse every call that is not TLS 1.3.
SECOND_LAYER = """
import grpc  # first: gRPC initialises with its default cipher list
import asyncio, sys
from pathlib import Path
import tundra.gateway.server as server
from tundra.core.services import Services
from tundra.core.settings import Settings

server.check_cipher_policy = lambda: None

async def main():
    services = Services(Settings(home=Path(sys.argv[1]), database_url="", password_profile="test"))
    gateway = server.Gateway(services, listen="127.0.0.1:0")
    print(await gateway.start(), flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await gateway.stop(1)
    services.close()

asyncio.run(main())
"""


@pytest.mark.skipif(shutil.which("curl") is None, reason="the curl command is not installed")
def test_policy_refuses_calls_over_tls12_as_a_second_layer(
    home_services: Services, agent: EnrolledAgent, tmp_path: Path
) -> None:
    from tundra.agent.v1 import agent_pb2

    cert, key, ca = agent.write_files(tmp_path / "files")
    body = agent_pb2.RenewRequest(csr_pem=b"not a CSR").SerializeToString()
    frame = tmp_path / "frame"
    frame.write_bytes(b"\x00" + len(body).to_bytes(4, "big") + body)
    env = {k: v for k, v in os.environ.items() if k != "GRPC_SSL_CIPHER_SUITES"}
    with subprocess.Popen(
        [sys.executable, "-c", SECOND_LAYER, str(home_services.settings.home)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    ) as gateway:
        assert gateway.stdin is not None and gateway.stdout is not None
        port = int(gateway.stdout.readline())

        def call(*versions: str) -> str:
            return subprocess.run(
                [
                    "curl",
                    "--silent",
                    "--http2",
                    *versions,
                    "--cacert",
                    str(ca),
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                    "-H",
                    "content-type: application/grpc",
                    "-H",
                    "te: trailers",
                    "--data-binary",
                    f"@{frame}",
                    "--dump-header",
                    "-",
                    "--output",
                    "/dev/null",
                    f"https://127.0.0.1:{port}/tundra.agent.v1.AgentGateway/Renew",
                ],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout.lower()

        try:
            old = call("--tlsv1.2", "--tls-max", "1.2")
            new = call("--tlsv1.3")
        finally:
            gateway.stdin.close()
            gateway.wait(timeout=30)
    # The handshake itself succeeded over TLS 1.2 here (no cipher restriction); the call did not.
    assert "grpc-status: 7" in old, old
    assert "grpc-message: tls 1.3 is required" in old, old
    # Over TLS 1.3 the same call passes the policy and reaches Renew (which refuses the CSR).
    assert "tls 1.3 is required" not in new, new
    assert "not a pem certificate request" in new, new
