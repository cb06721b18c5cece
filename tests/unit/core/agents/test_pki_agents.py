"""PKI for agents: the x509 helpers, the CA bundle and fingerprint, and the gateway's server
certificate files (mode, key type, names, renewal at two thirds, reissue under a new CA)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from enrollhelpers import make_csr

from tundra.core.audit.actions import Action
from tundra.core.errors import AgentRefused, ConfigError, InvalidInput
from tundra.core.pki import x509 as x
from tundra.core.principal import SYSTEM
from tundra.core.services import Services

SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
AGENT_ID = "0123456789abcdef0123456789abcdef"


def _cert_with_san(names: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .public_key(key.public_key())
        .serial_number(12345)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


# -- pure helpers ----------------------------------------------------------------------------------


def test_agent_uri_round_trips_through_a_certificate() -> None:
    ca_key, ca_cert = x.generate_ca()
    key = ec.generate_private_key(ec.SECP256R1())
    cert = x.issue_agent_cert(
        ca_key,
        ca_cert,
        public_key=key.public_key(),
        agent_id=AGENT_ID,
        server_name="web-1",
        hours=24,
    )
    assert x.agent_uri(AGENT_ID) == f"spiffe://tundra/agent/{AGENT_ID}"
    assert x.agent_id_from_cert(cert) == AGENT_ID
    assert x.serial_hex(cert) == format(cert.serial_number, "x")
    assert x.is_issued_by(cert, ca_cert)
    assert not x.is_issued_by(cert, x.generate_ca()[1])  # same name, other key
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(eku.value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


@pytest.mark.parametrize(
    "names",
    [
        None,
        [],
        [
            x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{AGENT_ID}"),
            x509.UniformResourceIdentifier("spiffe://tundra/agent/" + "1" * 32),
        ],
        [
            x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{AGENT_ID}"),
            x509.DNSName("web-1"),
        ],
        [x509.DNSName("web-1")],
        [x509.UniformResourceIdentifier(f"spiffe://other/agent/{AGENT_ID}")],
        [x509.UniformResourceIdentifier("spiffe://tundra/agent/" + AGENT_ID.upper())],
        [x509.UniformResourceIdentifier("spiffe://tundra/agent/../" + AGENT_ID[3:])],
        [x509.UniformResourceIdentifier("spiffe://tundra/agent/" + AGENT_ID + "0")],
    ],
)
def test_agent_id_from_cert_accepts_only_our_single_uri(names) -> None:
    assert x.agent_id_from_cert(_cert_with_san(names)) is None


@pytest.mark.parametrize("pem", [b"", b"   ", b"not pem", b"-----BEGIN CERTIFICATE REQUEST-----\n"])
def test_load_csr_refuses_garbage(pem: bytes) -> None:
    with pytest.raises(InvalidInput):
        x.load_csr(pem)


def test_check_agent_csr_rules() -> None:
    key, pem = make_csr()
    assert x.check_agent_csr(x.load_csr(pem), server_name="web-1") == key.public_key()
    _, own_name = make_csr(common_name="web-1")
    x.check_agent_csr(x.load_csr(own_name), server_name="web-1")
    for asking in (make_csr(common_name="web-2")[1], make_csr(dns_names=("a",))[1]):
        with pytest.raises(AgentRefused) as caught:
            x.check_agent_csr(x.load_csr(asking), server_name="web-1")
        assert caught.value.reason == "csr-names"
    # Subject attributes besides the CN are names too.
    two = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, "web-1"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Evil"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(AgentRefused):
        x.check_agent_csr(two, server_name="web-1")


def test_cross_certificate_needs_the_same_subject() -> None:
    old_key, old_cert = x.generate_ca()
    _, other = x.generate_ca("Someone else")
    with pytest.raises(InvalidInput):
        x.issue_cross_cert(old_key, old_cert, other, not_after=datetime.now(UTC))


# -- CA bundle and fingerprint ---------------------------------------------------------------------


def test_bundle_and_fingerprint_of_a_fresh_home(services) -> None:
    pem = services.pki.ca_certificate_pem()
    assert services.pki.ca_bundle_pem() == pem
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    assert services.pki.ca_fingerprint() == hashlib.sha256(der).hexdigest()
    (info,) = services.pki.ca_status()
    assert (info.status, info.trusted, info.retired, info.retire_at) == (
        "active",
        True,
        False,
        None,
    )
    assert info.fingerprint == services.pki.ca_fingerprint()
    assert info.subject == "O=Tundra,CN=Tundra internal CA"
    assert services.pki.ca_cert_path.read_bytes() == pem


def test_signing_a_csr_uses_the_active_ca_and_settings(services) -> None:
    _, pem = make_csr()
    cert = services.pki.sign_agent_csr(x.load_csr(pem), agent_id=AGENT_ID, server_name="web-1")
    ca = x509.load_pem_x509_certificate(services.pki.ca_certificate_pem())
    assert x.is_issued_by(cert, ca)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(hours=24, minutes=5)
    with pytest.raises(AgentRefused):
        services.pki.sign_agent_csr(
            x.load_csr(make_csr(dns_names=("x",))[1]), agent_id=AGENT_ID, server_name="web-1"
        )


# -- the gateway's certificate -------------------------------------------------------------------


def _gateway_chain(services) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(services.pki.gateway_cert_path.read_bytes())


def test_gateway_certificate_files(services) -> None:
    pki = services.pki
    assert pki.ensure_gateway_cert(SYSTEM) is True
    assert pki.ensure_gateway_cert(SYSTEM) is False  # not due: nothing to do
    mode = stat.S_IMODE(os.stat(pki.gateway_key_path).st_mode)
    assert mode == 0o400
    assert stat.S_IMODE(os.stat(pki.tls_dir).st_mode) == 0o700
    key = x.key_from_pem(pki.gateway_key_path.read_bytes())
    assert isinstance(key.curve, ec.SECP256R1)
    (leaf,) = _gateway_chain(services)
    assert leaf.public_key() == key.public_key()
    assert sorted(x.san_names(leaf)) == sorted(["localhost", "127.0.0.1", "::1"])
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert x.is_issued_by(leaf, x509.load_pem_x509_certificate(pki.ca_certificate_pem()))
    chain, key_pem, bundle = pki.gateway_credentials()
    assert (chain, key_pem, bundle) == (
        pki.gateway_cert_path.read_bytes(),
        pki.gateway_key_path.read_bytes(),
        pki.ca_bundle_pem(),
    )
    (row,) = [r for r in _audit(services, Action.GATEWAY_CERT_ISSUE)]
    assert row["resource"] == "tls:gateway"


def _audit(services, action: str) -> list[dict]:
    with services.db.read() as tx:
        return tx.fetchall("SELECT * FROM audit_log WHERE action = :a", {"a": action})


@SQLITE_ONLY
def test_gateway_certificate_names_follow_the_settings(services) -> None:
    other = Services(
        replace(
            services.settings,
            panel_hostnames="panel.example, 192.0.2.10",
            gateway_address="gw.example:7447",
        )
    )
    try:
        assert other.pki.ensure_gateway_cert(SYSTEM)
        (leaf,) = _gateway_chain(other)
        assert sorted(x.san_names(leaf)) == ["192.0.2.10", "gw.example", "panel.example"]
        assert other.pki.gateway_address() == "gw.example:7447"
        # The names changed back: the next check reissues.
        assert services.pki.ensure_gateway_cert(SYSTEM)
        assert sorted(x.san_names(_gateway_chain(services)[0])) == ["127.0.0.1", "::1", "localhost"]
    finally:
        other.close()


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("hostnames", "listen", "address", "url"),
    [
        ("localhost,127.0.0.1", "0.0.0.0:7447", "localhost:7447", "https://localhost:8443"),
        ("::1", "[::]:9447", "[::1]:9447", "https://[::1]:8443"),
        ("panel.example", "", "panel.example:7447", "https://panel.example:8443"),
    ],
)
def test_advertised_addresses(services, hostnames, listen, address, url) -> None:
    other = Services(replace(services.settings, panel_hostnames=hostnames, gateway_listen=listen))
    assert other.pki.gateway_address() == address
    assert other.pki.panel_url() == url


@SQLITE_ONLY
def test_gateway_certificate_renews_at_two_thirds_of_its_life(services) -> None:
    pki = services.pki
    pki.ensure_gateway_cert(SYSTEM)
    ca_key, ca_cert = pki._ca()
    # A certificate a little past two thirds of its life (issued 61 days ago, 90-day life).
    now = datetime.now(UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(ca_cert.subject)
        .issuer_name(ca_cert.subject)
        .public_key(x.key_from_pem(pki.gateway_key_path.read_bytes()).public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(days=61))
        .not_valid_after(now + timedelta(days=29))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    os.chmod(pki.gateway_cert_path, 0o644)
    pki.gateway_cert_path.write_bytes(x.cert_to_pem(old))
    assert pki.ensure_gateway_cert(SYSTEM) is True
    assert _gateway_chain(services)[0].serial_number != 7


@SQLITE_ONLY
def test_gateway_certificate_from_another_ca_is_reissued(services) -> None:
    pki = services.pki
    pki.ensure_gateway_cert(SYSTEM)
    foreign_key, foreign_ca = x.generate_ca()  # same name, different key
    issued = x.issue_server_cert(foreign_key, foreign_ca, pki.hostnames())
    pki.gateway_cert_path.chmod(0o644)
    pki.gateway_cert_path.write_bytes(x.cert_to_pem(issued.cert))
    pki.gateway_key_path.chmod(0o600)
    pki.gateway_key_path.write_bytes(x.key_to_pem(issued.key))
    assert pki.ensure_gateway_cert(SYSTEM) is True
    ca = x509.load_pem_x509_certificate(pki.ca_certificate_pem())
    assert x.is_issued_by(_gateway_chain(services)[0], ca)


@SQLITE_ONLY
def test_gateway_credentials_refuse_a_mismatched_pair(services) -> None:
    pki = services.pki
    with pytest.raises(ConfigError, match="no gateway certificate"):
        pki.gateway_credentials()
    pki.ensure_gateway_cert(SYSTEM)
    pki.gateway_key_path.chmod(0o600)
    pki.gateway_key_path.write_bytes(x.key_to_pem(x.new_key()))
    with pytest.raises(ConfigError, match="does not match"):
        pki.gateway_credentials()
