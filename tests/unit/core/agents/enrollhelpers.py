"""Helpers for the enrollment, registry and PKI tests (imported as ``enrollhelpers``).

Everything goes through the real services: a join token from EnrollmentService, a CSR made the
way an agent makes one, an enrollment through EnrollmentService.enroll.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tundra.core.agents.enrollment import Enrollment
from tundra.core.principal import cli_principal
from tundra.core.services import Services

SOURCE = "198.51.100.7"


def make_csr(
    key: ec.EllipticCurvePrivateKey | None = None,
    *,
    common_name: str | None = None,
    dns_names: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
    extensions: tuple[x509.ExtensionType, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """(key, CSR PEM): by default exactly what an agent sends (empty subject, no extensions)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(subject))
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return key, csr.public_bytes(serialization.Encoding.PEM)


def add_server(services: Services, name: str = "web-1", *, address: str = "203.0.113.10") -> str:
    """Add a server through the inventory; returns its first join token."""
    server = services.servers.add(cli_principal(), name=name, address=address, join_token=True)
    assert server.join_token is not None
    return server.join_token.token


def enroll(
    services: Services,
    name: str = "web-1",
    *,
    token: str | None = None,
    csr_pem: bytes | None = None,
    source: str = SOURCE,
) -> Enrollment:
    """Enroll an agent for ``name`` (the server is added when it has no token given)."""
    if token is None:
        with services.db.read() as tx:
            exists = tx.fetchval("SELECT id FROM servers WHERE name = :n", {"n": name})
        token = (
            services.enrollment.create_join_token(cli_principal(), name).token
            if exists
            else add_server(services, name)
        )
    if csr_pem is None:
        csr_pem = make_csr()[1]
    return services.enrollment.enroll(
        join_token=token,
        csr_pem=csr_pem,
        agent_version="0.4.0",
        hostname=f"{name}.example",
        source_address=source,
    )


def audit_rows(services: Services, action: str) -> list[dict[str, Any]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", {"a": action})
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


def cert_of(enrollment: Enrollment) -> x509.Certificate:
    return x509.load_pem_x509_certificate(enrollment.certificate_pem)


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")
