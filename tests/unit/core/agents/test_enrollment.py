"""Join tokens and enrollment: format, one-time use, expiry, CA pinning, CSR rules, re-enrollment,
throttling, and an audit row for every refusal (rate-limited where no server is named)."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store
from enrollhelpers import SOURCE, add_server, audit_rows, cert_of, enroll, make_csr, serial_of

from tundra.core.agents.enrollment import (
    JOIN_TOKEN_MINUTES,
    MAX_FAILURES_PER_MINUTE,
    parse_join_token,
)
from tundra.core.audit.actions import Action
from tundra.core.clock import from_iso, now, to_iso
from tundra.core.errors import AgentRefused, InvalidInput, NotFound, PermissionDenied, Throttled
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal

SQLITE_ONLY = pytest.mark.parametrize("database_url", [""], ids=["sqlite"])
TOKEN_SHAPE = re.compile(r"tjn1\.[a-z2-7]{52}\.[0-9a-f]{64}")


def refused(services, reason: str) -> list[dict]:
    return [
        r
        for r in audit_rows(services, Action.AGENT_ENROLL_REFUSED)
        if r["details"]["reason"] == reason
    ]


def enroll_refused(services, reason: str, **kwargs) -> AgentRefused:
    with pytest.raises(AgentRefused) as caught:
        enroll(services, **kwargs)
    assert caught.value.reason == reason, caught.value
    return caught.value


# -- join tokens --------------------------------------------------------------------------------


def test_join_token_format_storage_and_audit(services) -> None:
    before = now()
    joined = services.servers.add(
        cli_principal(),
        name="web-1",
        address="203.0.113.10",
        join_token=True,
        request_id="req-add-web-1",
    )
    token = joined.join_token
    assert token is not None and TOKEN_SHAPE.fullmatch(token.token)
    secret, fingerprint = parse_join_token(token.token)
    assert len(secret) == 32
    assert fingerprint == token.ca_fingerprint == services.pki.ca_fingerprint()
    ca = x509.load_pem_x509_certificate(services.pki.ca_certificate_pem())
    assert fingerprint == hashlib.sha256(ca.public_bytes(serialization.Encoding.DER)).hexdigest()
    expires = from_iso(token.expires_at)
    assert timedelta(minutes=JOIN_TOKEN_MINUTES) <= expires - before
    assert expires - before < timedelta(minutes=JOIN_TOKEN_MINUTES, seconds=30)
    assert token.enroll_command() == (
        "tundra agent enroll --url https://localhost:8443 --token-env TUNDRA_JOIN_TOKEN"
    )
    with services.db.read() as tx:
        (row,) = tx.fetchall("SELECT * FROM join_tokens")
    assert bytes(row["token_hash"]) == hashlib.sha256(secret).digest()
    assert row["used_at"] is None and row["created_by"] == cli_principal().actor
    # The server and its token were written by one unit of work; the secret is in no audit row.
    (created,) = audit_rows(services, Action.SERVER_CREATE)
    (issued,) = audit_rows(services, Action.JOIN_TOKEN_CREATE)
    assert created["request_id"] == issued["request_id"] == "req-add-web-1"
    assert issued["resource"] == "server:web-1"
    with services.db.read() as tx:
        everything = json.dumps(tx.fetchall("SELECT * FROM audit_log"))
    assert token.token.split(".")[1] not in everything
    assert joined.as_dict()["join_token"]["token"] == token.token


def test_a_new_token_replaces_the_unused_one(services) -> None:
    first = add_server(services)
    second = services.enrollment.create_join_token(cli_principal(), "web-1").token
    assert first != second
    enroll_refused(services, "token-unknown", token=first)
    assert enroll(services, token=second).server_name == "web-1"


def test_creating_a_token_needs_write_on_that_server(services) -> None:
    add_server(services)
    reader = Principal(
        PrincipalKind.TOKEN, "tnd_live_x", scopes=frozenset({"servers:read"}), token_id="t1"
    )
    with pytest.raises(PermissionDenied):
        services.enrollment.create_join_token(reader, "web-1")
    other = Principal(
        PrincipalKind.TOKEN,
        "tnd_live_y",
        scopes=frozenset({"servers:write"}),
        resources={"server": ("web-2",)},
        token_id="t2",
    )
    with pytest.raises(PermissionDenied):
        services.enrollment.create_join_token(other, "web-1")
    with pytest.raises(NotFound):
        services.enrollment.create_join_token(cli_principal(), "web-9")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tjn1",
        "tjn1..",
        "tjn2." + "a" * 52 + "." + "0" * 64,
        "tjn1." + "a" * 51 + "." + "0" * 64,
        "tjn1." + "A" * 52 + "." + "0" * 64,
        "tjn1." + "a" * 52 + "." + "0" * 63,
        "tjn1." + "a" * 52 + "." + "G" * 64,
        "tjn1." + "1" * 52 + "." + "0" * 64,
        "tnd_live_abc",
        "tjn1." + "a" * 52 + "." + "0" * 64 + ".x",
    ],
)
def test_malformed_tokens_are_refused(text: str) -> None:
    with pytest.raises(AgentRefused) as caught:
        parse_join_token(text)
    assert caught.value.reason == "token-malformed"


# -- a successful enrollment -----------------------------------------------------------------------


def test_enrollment_issues_exactly_the_names_the_control_plane_chooses(services) -> None:
    token = add_server(services)
    key, csr_pem = make_csr()
    done = enroll(services, token=token, csr_pem=csr_pem)
    cert = cert_of(done)
    ca = x509.load_pem_x509_certificate(services.pki.ca_certificate_pem())

    # It chains to the CA as a client certificate (cryptography's verifier, then OpenSSL's).
    verified = PolicyBuilder().store(Store([ca])).build_client_verifier().verify(cert, [])
    assert verified.subjects == [
        x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{done.agent_id}")
    ]
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier(f"spiffe://tundra/agent/{done.agent_id}")]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign
    assert cert.public_key() == key.public_key()
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life == timedelta(hours=services.settings.agent_cert_hours, minutes=5)

    # What the agent receives besides its certificate.
    assert done.server_name == "web-1" and re.fullmatch(r"[0-9a-f]{32}", done.agent_id)
    assert done.ca_bundle_pem == services.pki.ca_bundle_pem()
    assert done.gateway_address == "localhost:7447"
    assert done.command_keys == services.command_signer.public_keys() != []

    # And what the control plane remembers.
    with services.db.read() as tx:
        agent = tx.fetchone("SELECT * FROM agents WHERE id = :id", {"id": done.agent_id})
        issued = tx.fetchall("SELECT * FROM agent_certificates")
        used = tx.fetchval("SELECT used_at FROM join_tokens")
    assert agent["status"] == "active" and agent["cert_serial"] == serial_of(cert)
    assert agent["agent_version"] == "0.4.0" and agent["hostname"] == "web-1.example"
    assert [r["serial"] for r in issued] == [serial_of(cert)]
    assert used is not None
    server = services.servers.get(cli_principal(), "web-1")
    assert server.status == "enrolled"
    assert server.agent is not None and server.agent.id == done.agent_id
    assert server.connection == "never"
    (row,) = audit_rows(services, Action.AGENT_ENROLL)
    assert row["resource"] == "server:web-1" and row["actor"] == f"agent:{done.agent_id}"
    assert row["details"]["serial"] == serial_of(cert)
    assert row["details"]["source"] == SOURCE
    assert (
        row["details"]["fingerprint"]
        == hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


@SQLITE_ONLY
def test_openssl_verifies_the_agent_certificate_for_client_use(services, tmp_path) -> None:
    done = enroll(services)
    (tmp_path / "ca.pem").write_bytes(done.ca_bundle_pem)
    (tmp_path / "agent.pem").write_bytes(done.certificate_pem)
    ok = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslclient",
            "-CAfile",
            tmp_path / "ca.pem",
            tmp_path / "agent.pem",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stderr
    as_server = subprocess.run(
        [
            "openssl",
            "verify",
            "-purpose",
            "sslserver",
            "-CAfile",
            tmp_path / "ca.pem",
            tmp_path / "agent.pem",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert as_server.returncode != 0  # clientAuth only: never usable as a server certificate


def test_re_enrollment_revokes_the_previous_agent(services) -> None:
    first = enroll(services)
    second = enroll(services)
    assert first.agent_id != second.agent_id
    with pytest.raises(AgentRefused) as caught:
        services.agents.identify(first.agent_id, serial_of(cert_of(first)))
    assert caught.value.reason == "revoked"
    assert services.agents.identify(second.agent_id, serial_of(cert_of(second))).active
    with services.db.read() as tx:
        statuses = {r["id"]: r["status"] for r in tx.fetchall("SELECT id, status FROM agents")}
        revoked_serials = tx.fetchall(
            "SELECT serial FROM agent_certificates WHERE revoked_at IS NOT NULL"
        )
    assert statuses == {first.agent_id: "revoked", second.agent_id: "active"}
    assert [r["serial"] for r in revoked_serials] == [serial_of(cert_of(first))]
    (revoke,) = audit_rows(services, Action.AGENT_REVOKE)
    assert revoke["details"]["agent_id"] == first.agent_id
    assert revoke["details"]["reason"] == "re-enrolled"
    assert audit_rows(services, Action.AGENT_ENROLL)[1]["details"]["replaced"] == [first.agent_id]


# -- refusals, each audited ---------------------------------------------------------------------


def test_a_used_token_is_refused_and_audited(services) -> None:
    token = add_server(services)
    enroll(services, token=token)
    enroll_refused(services, "token-used", token=token)
    (row,) = refused(services, "token-used")
    assert row["resource"] == "server:web-1" and row["details"]["source"] == SOURCE
    assert row["actor"] == "agent:unidentified"
    with services.db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM agents") == 1


def test_an_expired_token_is_refused_and_audited(services) -> None:
    token = add_server(services)
    with services.db.transaction() as tx:
        tx.execute(
            "UPDATE join_tokens SET expires_at = :t", {"t": to_iso(now() - timedelta(seconds=1))}
        )
    error = enroll_refused(services, "token-expired", token=token)
    assert "server token" in str(error)
    assert [r["resource"] for r in refused(services, "token-expired")] == ["server:web-1"]


def test_unknown_tokens_are_audited_at_most_once_a_minute_per_source(services) -> None:
    add_server(services)
    fingerprint = services.pki.ca_fingerprint()
    stranger = "tjn1." + "a" * 52 + "." + fingerprint
    for _ in range(3):
        enroll_refused(services, "token-unknown", token=stranger)
    enroll_refused(services, "token-unknown", token=stranger, source="198.51.100.8")
    enroll_refused(services, "token-malformed", token="garbage")
    rows = refused(services, "token-unknown")
    assert [(r["resource"], r["details"]["source"]) for r in rows] == [
        ("join-token", SOURCE),
        ("join-token", "198.51.100.8"),
    ]
    assert len(refused(services, "token-malformed")) == 1


def test_a_token_pinning_another_ca_is_refused(services) -> None:
    token = add_server(services)
    forged = token[:-64] + "0" * 64
    enroll_refused(services, "ca-mismatch", token=forged)
    assert [r["resource"] for r in refused(services, "ca-mismatch")] == ["server:web-1"]
    assert enroll(services, token=token).server_name == "web-1"  # the real one still works


def test_a_token_made_before_a_ca_rotation_is_refused(services) -> None:
    token = add_server(services)
    services.pki.rotate_ca(SYSTEM)
    error = enroll_refused(services, "ca-mismatch", token=token)
    assert "rotated" in str(error)
    fresh = services.enrollment.create_join_token(cli_principal(), "web-1")
    assert fresh.ca_fingerprint == services.pki.ca_fingerprint()
    assert enroll(services, token=fresh.token).server_name == "web-1"


def _csr_with_extension(extension: x509.ExtensionType) -> bytes:
    return make_csr(extensions=(extension,))[1]


CSR_ASKING_FOR_NAMES = {
    "another common name": lambda: make_csr(common_name="db-1")[1],
    "a dns name": lambda: make_csr(dns_names=("web-1",))[1],
    "an agent uri": lambda: make_csr(uris=("spiffe://tundra/agent/" + "0" * 32,))[1],
    "ca basic constraints": lambda: _csr_with_extension(
        x509.BasicConstraints(ca=True, path_length=None)
    ),
    "server auth": lambda: _csr_with_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    ),
}


@pytest.mark.parametrize("case", sorted(CSR_ASKING_FOR_NAMES))
def test_a_csr_asking_for_names_is_refused_and_audited(services, case: str) -> None:
    token = add_server(services)
    enroll_refused(services, "csr-names", token=token, csr_pem=CSR_ASKING_FOR_NAMES[case]())
    (row,) = refused(services, "csr-names")
    assert row["resource"] == "server:web-1"
    # The token is not spent by a refused request: the agent can retry with a proper CSR.
    assert enroll(services, token=token).server_name == "web-1"


def test_a_csr_naming_its_own_server_is_accepted(services) -> None:
    assert enroll(services, csr_pem=make_csr(common_name="web-1")[1]).server_name == "web-1"


def _tampered_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # inside the signature
    return x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)


def _csr_for(key) -> bytes:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


INVALID_CSRS = {
    "garbage": lambda: (
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    ),
    "empty": lambda: b"",
    "a certificate": lambda: b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "rsa key": lambda: _csr_for(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    "p-384 key": lambda: _csr_for(ec.generate_private_key(ec.SECP384R1())),
    "bad signature": _tampered_csr,
}


@pytest.mark.parametrize("case", sorted(INVALID_CSRS))
def test_an_invalid_csr_is_refused_and_audited(services, case: str) -> None:
    token = add_server(services)
    enroll_refused(services, "csr-invalid", token=token, csr_pem=INVALID_CSRS[case]())
    assert [r["resource"] for r in refused(services, "csr-invalid")] == ["server:web-1"]
    with services.db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM agents") == 0


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("agent_version", "x" * 65),
        ("agent_version", "1.0\n"),
        ("hostname", "a b"),
        ("hostname", "h" * 254),
    ],
)
def test_unusable_version_or_host_name_is_invalid_input(services, field: str, value: str) -> None:
    token = add_server(services)
    arguments = {
        "join_token": token,
        "csr_pem": make_csr()[1],
        "agent_version": "1",
        "hostname": "h",
        "source_address": SOURCE,
        field: value,
    }
    with pytest.raises(InvalidInput):
        services.enrollment.enroll(**arguments)


def test_a_source_with_too_many_failures_is_throttled(services) -> None:
    token = add_server(services)
    bad = "tjn1." + "b" * 52 + "." + services.pki.ca_fingerprint()
    for _ in range(MAX_FAILURES_PER_MINUTE):
        enroll_refused(services, "token-unknown", token=bad)
    with pytest.raises(Throttled) as caught:
        enroll(services, token=token)  # even the right token, from this source, for now
    assert 1 <= caught.value.retry_after <= 61
    assert len(refused(services, "throttled")) == 1
    # Another source is not affected, and the token was not spent by the throttled attempt.
    assert enroll(services, token=token, source="198.51.100.99").server_name == "web-1"


def test_the_throttle_window_ends(services) -> None:
    token = add_server(services)
    for _ in range(MAX_FAILURES_PER_MINUTE):
        enroll_refused(services, "token-malformed", token="nope")
    services.kv.delete(f"enroll:failures:{SOURCE}")  # what the minute's expiry does
    assert enroll(services, token=token).server_name == "web-1"


def test_tokens_of_removed_servers_are_gone(services) -> None:
    token = add_server(services)
    services.reauth.cli_login(
        cli_principal(), username="admin", password="correct horse battery staple"
    )
    services.servers.remove(cli_principal(), "web-1")
    enroll_refused(services, "token-unknown", token=token)
