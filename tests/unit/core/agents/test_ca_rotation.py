"""CA rotation with overlap: sensitive and audited; old and new roots both trusted until
retire_at; the panel and gateway certificates reissued by the new CA with a cross certificate
that real gRPC (BoringSSL) and OpenSSL clients trusting only the old root accept; retirement."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent import futures
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from enrollhelpers import SOURCE, audit_rows, cert_of, enroll, make_csr, serial_of

from tundra.agent.v1 import agent_pb2, agent_pb2_grpc
from tundra.core.audit.actions import Action
from tundra.core.clock import from_iso, now, to_iso
from tundra.core.errors import ReauthRequired
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal

SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])


def login(services) -> None:
    services.reauth.cli_login(
        cli_principal(), username="admin", password="correct horse battery staple"
    )


def rotate(services):
    login(services)
    return services.pki.rotate_ca(cli_principal(), request_id="req-rotate")


def bundle_fingerprints(services) -> list[str]:
    return [x.fingerprint(c) for c in x509.load_pem_x509_certificates(services.pki.ca_bundle_pem())]


def retire_now(services) -> None:
    with services.db.transaction() as tx:
        tx.execute(
            "UPDATE pki_keys SET retire_at = :t WHERE status = 'previous'",
            {"t": to_iso(now() - timedelta(seconds=1))},
        )


# -- the rotation itself -------------------------------------------------------------------------


def test_rotation_is_sensitive(services) -> None:
    before = services.pki.ca_fingerprint()
    with pytest.raises(ReauthRequired):
        services.pki.rotate_ca(cli_principal())
    token = Principal(
        PrincipalKind.TOKEN, "tnd_live_x", scopes=frozenset({"admin"}), is_admin=True, token_id="t"
    )
    with pytest.raises(ReauthRequired):
        services.pki.rotate_ca(token)
    assert services.pki.ca_fingerprint() == before
    assert audit_rows(services, Action.PKI_CA_ROTATE) == []


def test_rotation_overlaps_and_reissues_the_server_certificates(services) -> None:
    old_fp = services.pki.ca_fingerprint()
    old_ca = x509.load_pem_x509_certificate(services.pki.ca_certificate_pem())
    services.pki.ensure_gateway_cert(SYSTEM)
    agent = enroll(services)
    info = rotate(services)

    new_fp = services.pki.ca_fingerprint()
    assert info.fingerprint == new_fp != old_fp and info.status == "active"
    new_ca = x509.load_pem_x509_certificate(services.pki.ca_certificate_pem())
    assert new_ca.subject == old_ca.subject  # same name: the cross certificate is self-issued
    statuses = [(i.fingerprint, i.status, i.trusted) for i in services.pki.ca_status()]
    assert statuses == [(new_fp, "active", True), (old_fp, "previous", True)]
    previous = services.pki.ca_status()[1]
    assert previous.name == f"tundra-ca-{old_fp[:16]}"
    overlap = timedelta(hours=services.settings.ca_overlap_hours)
    assert overlap - timedelta(minutes=1) < from_iso(previous.retire_at) - now() <= overlap
    assert bundle_fingerprints(services) == [new_fp, old_fp]
    assert services.pki.ca_cert_path.read_bytes() == services.pki.ca_bundle_pem()

    (row,) = audit_rows(services, Action.PKI_CA_ROTATE)
    assert (row["request_id"], row["actor"]) == ("req-rotate", cli_principal().actor)
    assert row["details"]["previous"] == old_fp and row["details"]["fingerprint"] == new_fp
    seq, _ = services.audit.head()
    assert (services.settings.checkpoints_dir / f"{seq}.note").exists()

    # Panel and gateway: a leaf from the new CA, then the cross certificate from the old one.
    for path in (services.pki.panel_cert_path, services.pki.gateway_cert_path):
        leaf, cross = x509.load_pem_x509_certificates(path.read_bytes())
        assert x.is_issued_by(leaf, new_ca), path
        assert x.is_issued_by(cross, old_ca) and cross.public_key() == new_ca.public_key()
        assert cross.not_valid_after_utc <= from_iso(previous.retire_at)
    assert services.pki.ensure_gateway_cert(SYSTEM) is False  # already right
    assert services.pki.ensure_panel_cert(SYSTEM) is False

    # Agents enrolled under the old CA keep working; new certificates come from the new one.
    old_serial = serial_of(cert_of(agent))
    assert services.agents.identify(agent.agent_id, old_serial).active
    renewed, bundle = services.agents.renew(
        agent.agent_id, old_serial, make_csr()[1], source_address=SOURCE
    )
    assert x.is_issued_by(x509.load_pem_x509_certificate(renewed), new_ca)
    assert bundle == services.pki.ca_bundle_pem()


def test_a_retired_ca_leaves_the_bundle_and_is_audited_once(services) -> None:
    old_fp = services.pki.ca_fingerprint()
    rotate(services)
    new_fp = services.pki.ca_fingerprint()
    retire_now(services)
    # Trust follows retire_at at once, before anyone flips the status.
    assert bundle_fingerprints(services) == [new_fp]
    chain, _, bundle = services.pki.gateway_credentials()
    assert len(x509.load_pem_x509_certificates(chain)) == 1  # the expired cross is left out
    assert bundle == services.pki.ca_bundle_pem()
    statuses = [(i.fingerprint, i.status, i.trusted) for i in services.pki.ca_status()]
    assert statuses == [(new_fp, "active", True), (old_fp, "retired", False)]
    services.pki.ca_status()
    services.pki.ensure_gateway_cert(SYSTEM)
    (row,) = audit_rows(services, Action.PKI_CA_RETIRE)
    assert row["details"]["fingerprint"] == old_fp and row["actor"] == "system"
    # The gateway's chain file is rewritten without the cross certificate.
    assert services.pki.ensure_gateway_cert(SYSTEM) is False
    assert len(x509.load_pem_x509_certificates(services.pki.gateway_cert_path.read_bytes())) == 1


def test_a_second_rotation_within_the_overlap_keeps_every_root_trusted(services) -> None:
    first = services.pki.ca_fingerprint()
    rotate(services)
    second = services.pki.ca_fingerprint()
    rotate(services)
    third = services.pki.ca_fingerprint()
    assert bundle_fingerprints(services) == [third, second, first]
    chain = x509.load_pem_x509_certificates(services.pki.gateway_cert_path.read_bytes())
    assert len(chain) == 3  # the leaf and one cross certificate per trusted previous CA


# -- real clients against the rotated chain ---------------------------------------------------


class _Echo(agent_pb2_grpc.AgentGatewayServicer):
    def Renew(self, request, context):  # the generated (gRPC) method name
        return agent_pb2.RenewResponse(certificate_pem=b"hello " + request.csr_pem)


def _client_pair(services) -> tuple[bytes, bytes]:
    """(key PEM, certificate PEM) of an agent enrolled now (under the active CA)."""
    key, csr = make_csr()
    done = enroll(services, f"agent-{len(services.agents.list(cli_principal()))}", csr_pem=csr)
    return x.key_to_pem(key), done.certificate_pem


@pytest.fixture
def grpc_server() -> Iterator:
    started: list[grpc.Server] = []

    def start(chain: bytes, key: bytes, client_cas: bytes) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        agent_pb2_grpc.add_AgentGatewayServicer_to_server(_Echo(), server)
        credentials = grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_cas, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        started.append(server)
        return port

    yield start
    for server in started:
        server.stop(None).wait()


def _call(port: int, roots: bytes, client: tuple[bytes, bytes]) -> str:
    """'ok' when a whole mTLS call succeeds, else the status code's name."""
    credentials = grpc.ssl_channel_credentials(roots, client[0], client[1])
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        stub = agent_pb2_grpc.AgentGatewayStub(channel)
        try:
            answer = stub.Renew(agent_pb2.RenewRequest(csr_pem=b"x"), timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    assert answer.certificate_pem == b"hello x"
    return "ok"


@SQLITE_ONLY
def test_grpc_clients_trusting_only_the_old_or_only_the_new_root_both_connect(
    services, grpc_server
) -> None:
    old_root = services.pki.ca_certificate_pem()
    old_agent = _client_pair(services)
    rotate(services)
    new_root = services.pki.ca_certificate_pem()
    new_agent = _client_pair(services)
    chain, key, bundle = services.pki.gateway_credentials()
    port = grpc_server(chain, key, bundle)

    assert _call(port, old_root, old_agent) == "ok"  # leaf -> cross -> old root
    assert _call(port, new_root, new_agent) == "ok"  # leaf -> new root
    assert _call(port, old_root, new_agent) == "ok"
    assert _call(port, bundle, old_agent) == "ok"

    # Without the cross certificate an old-root client could not connect: the test has teeth.
    leaf_only = x509.load_pem_x509_certificates(chain)[0]
    bare = grpc_server(x.cert_to_pem(leaf_only), key, bundle)
    assert _call(bare, old_root, old_agent) == "UNAVAILABLE"
    assert _call(bare, new_root, old_agent) == "ok"

    # After retirement the gateway no longer trusts client certificates of the old CA.
    retire_now(services)
    services.pki.ensure_gateway_cert(SYSTEM)
    chain, key, bundle = services.pki.gateway_credentials()
    port = grpc_server(chain, key, bundle)
    assert _call(port, new_root, new_agent) == "ok"
    assert _call(port, new_root, old_agent) == "UNAVAILABLE"


@SQLITE_ONLY
def test_openssl_clients_trusting_only_the_old_root_accept_the_panel_chain(
    services, tmp_path: Path
) -> None:
    old_root = services.pki.ca_certificate_pem()
    rotate(services)
    (tmp_path / "old.pem").write_bytes(old_root)
    (tmp_path / "new.pem").write_bytes(services.pki.ca_certificate_pem())
    leaf, cross = x509.load_pem_x509_certificates(services.pki.panel_cert_path.read_bytes())
    (tmp_path / "leaf.pem").write_bytes(x.cert_to_pem(leaf))
    (tmp_path / "cross.pem").write_bytes(x.cert_to_pem(cross))
    for root in ("old.pem", "new.pem"):
        result = subprocess.run(
            [
                "openssl",
                "verify",
                "-purpose",
                "sslserver",
                "-CAfile",
                tmp_path / root,
                "-untrusted",
                tmp_path / "cross.pem",
                tmp_path / "leaf.pem",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, (root, result.stderr)
    alone = subprocess.run(
        ["openssl", "verify", "-CAfile", tmp_path / "old.pem", tmp_path / "leaf.pem"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert alone.returncode != 0

    # And a real Python ssl (OpenSSL) handshake against the panel's chain file.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(services.pki.panel_cert_path, services.pki.panel_key_path)
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "old.pem"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hi")
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
            ):
                assert tls.recv(2) == b"hi"
        finally:
            thread.join(timeout=10)
