"""Certificate building blocks (cryptography's x509): keys, the CA, server and agent certificates.

ECDSA P-256 everywhere: small, fast, and it leaves TLS 1.3 as the only version a client and the
gateway can agree on once TLS 1.2 suites are restricted to RSA (see PLATFORM-NOTES for grpcio).

Agent certificates carry only names the control plane chooses (CN = server name, one SAN URI
``spiffe://tundra/agent/<id>``, EKU clientAuth); the agent's CSR contributes its public key and
nothing else. A rotated CA keeps the same subject name as its predecessor so that the cross
certificate (new key, issued by the old CA) is *self-issued*: RFC 5280 does not count it against
the old root's ``pathLenConstraint`` of 0, and both OpenSSL and BoringSSL build
leaf -> cross -> old root for a client that trusts only the old root.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tundra.core.errors import AgentRefused, InvalidFile, InvalidInput

#: Issue certificates a little in the past so a host whose clock lags slightly accepts them.
BACKDATE = timedelta(minutes=5)
#: The subject of every internal CA, the first and each rotated one (see the module docstring).
CA_COMMON_NAME = "Tundra internal CA"
AGENT_URI_PREFIX = "spiffe://tundra/agent/"
#: Agent ids are ``new_id()`` values; anything else in a certificate is not one of ours.
_AGENT_ID_LENGTH = 32
_HEX = frozenset("0123456789abcdef")


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def key_from_pem(data: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidFile(f"not a PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise InvalidFile("expected an ECDSA private key")
    return key


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise InvalidFile(f"not a PEM certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint of the DER certificate, lowercase hex."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if not name or any(c.isspace() for c in name):
                raise InvalidInput(f"invalid host name {name!r} for a certificate") from None
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def generate_ca(
    common_name: str = CA_COMMON_NAME,
    *,
    days: int = 3650,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = new_key()
    now = datetime.now(UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tundra"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cross_cert(
    old_key: ec.EllipticCurvePrivateKey,
    old_cert: x509.Certificate,
    new_cert: x509.Certificate,
    *,
    not_after: datetime,
) -> x509.Certificate:
    """The new CA's name and key, certified by the old CA, valid until ``not_after``.

    Sent after a leaf issued by the new CA, it lets a peer that still trusts only the old root
    build leaf -> cross -> old root while the rotation overlaps.
    """
    if new_cert.subject != old_cert.subject:
        raise InvalidInput("a cross certificate joins two CAs of the same subject name")
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(new_cert.subject)
        .issuer_name(old_cert.subject)
        .public_key(new_cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(not_after, old_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(new_cert.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(old_key.public_key()),
            critical=False,
        )
        .sign(old_key, hashes.SHA256())
    )


def is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether ``issuer``'s key signed ``cert`` (names alone cannot tell rotated CAs apart)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: Sequence[str],
    *,
    days: int = 90,
) -> Issued:
    """A TLS server certificate for ``names`` (DNS names or IP addresses), EKU serverAuth."""
    if not names:
        raise InvalidInput("a server certificate needs at least one host name")
    key = new_key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Issued(key, cert)


def san_names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def certs_from_pem(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a chain file, the CA bundle)."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise InvalidFile(f"not a PEM certificate bundle: {exc}") from exc


def serial_hex(cert: x509.Certificate) -> str:
    """The serial number as stored in agents.cert_serial / agent_certificates.serial."""
    return format(cert.serial_number, "x")


# -- agent certificates ------------------------------------------------------------------------


def agent_uri(agent_id: str) -> str:
    return AGENT_URI_PREFIX + agent_id


def agent_id_from_cert(cert: x509.Certificate) -> str | None:
    """The agent id of a certificate whose only SAN is our SPIFFE URI; None for anything else."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
        return None
    uri = names[0].value
    if not uri.startswith(AGENT_URI_PREFIX):
        return None
    agent_id = uri[len(AGENT_URI_PREFIX) :]
    if len(agent_id) != _AGENT_ID_LENGTH or not set(agent_id) <= _HEX:
        return None
    return agent_id


def load_csr(pem: bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM PKCS#10 request; InvalidInput when it is not one."""
    if not isinstance(pem, bytes) or not pem.strip():
        raise InvalidInput("the certificate request is empty")
    try:
        return x509.load_pem_x509_csr(pem)
    except ValueError as exc:
        raise InvalidInput(f"not a PEM certificate request: {exc}") from exc


def check_agent_csr(
    csr: x509.CertificateSigningRequest, *, server_name: str
) -> ec.EllipticCurvePublicKey:
    """The CSR's public key, if the CSR is acceptable for an agent; else AgentRefused.

    Acceptable: a valid self-signature, an ECDSA P-256 key, no names (an empty subject, or CN
    equal to ``server_name`` and nothing else) and no extensions at all: the control plane chooses
    every name of the certificate, so a request that asks for any is refused, not trimmed.
    """
    try:
        key = csr.public_key()
        valid = csr.is_signature_valid
        attributes = list(csr.subject)
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise AgentRefused(
            f"the certificate request is malformed: {exc}", reason="csr-invalid"
        ) from exc
    if not valid:
        raise AgentRefused("the certificate request's signature is not valid", reason="csr-invalid")
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AgentRefused(
            "the certificate request must be for an ECDSA P-256 key", reason="csr-invalid"
        )
    names_ok = not attributes or (
        len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value == server_name
    )
    try:
        extensions = list(csr.extensions)
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise AgentRefused(
            f"the certificate request has unreadable extensions: {exc}", reason="csr-names"
        ) from exc
    if not names_ok or extensions:
        raise AgentRefused(
            "the certificate request asks for names or extensions; the control plane chooses "
            "an agent's names",
            reason="csr-names",
            hint="send a request with an empty subject and no extensions",
        )
    return key


def issue_agent_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    public_key: ec.EllipticCurvePublicKey,
    agent_id: str,
    server_name: str,
    hours: int,
) -> x509.Certificate:
    """A client certificate for one agent: CN = server name, SAN = its SPIFFE URI, clientAuth."""
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(hours=hours), ca_cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(agent_uri(agent_id))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=False,
                crl_sign=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
