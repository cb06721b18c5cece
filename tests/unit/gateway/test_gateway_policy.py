"""The gateway policy's pure parts: peer addresses, peer certificates, status codes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tundra.agent.v1 import agent_pb2
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import (
    AgentRefused,
    Conflict,
    InvalidInput,
    NotFound,
    StorageUnavailable,
    Throttled,
    TundraError,
)
from tundra.core.pki import x509 as x
from tundra.gateway.policy import PeerCache, parse_peer_certificate, peer_ip, refusal
from tundra.gateway.server import facts_dict
from tundra.gateway.status import status_for

A1 = new_id()
B2 = new_id()


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        ("ipv4:127.0.0.1:36556", "127.0.0.1"),
        ("ipv4:198.51.100.7:1", "198.51.100.7"),
        ("ipv6:[::1]:443", "::1"),
        ("ipv6:%5B2001:db8::5%5D:7447", "2001:db8::5"),
        ("ipv6:[::ffff:198.51.100.7]:7447", "198.51.100.7"),
        ("unix:/run/tundra.sock", None),
        ("ipv4:not-an-address:1", None),
        ("", None),
    ],
)
def test_peer_ip(peer: str, expected: str | None) -> None:
    assert peer_ip(peer) == expected


def make_cert(*, uris: list[str], eku: list[x509.ObjectIdentifier] | None) -> bytes:
    ca_key, ca_cert = x.generate_ca("test")
    key = x.new_key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(0xABC123)
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return x.cert_to_pem(builder.sign(ca_key, hashes.SHA256()))


def test_peer_certificate_names_the_agent_and_its_serial() -> None:
    pem = make_cert(uris=[f"spiffe://tundra/agent/{A1}"], eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    peer = parse_peer_certificate(pem)
    assert peer.agent_id == A1
    assert peer.serial == "abc123"
    assert peer.client_auth is True


@pytest.mark.parametrize(
    ("uris", "eku", "agent_id", "client_auth"),
    [
        ([f"spiffe://tundra/agent/{A1}"], [ExtendedKeyUsageOID.SERVER_AUTH], A1, False),
        ([f"spiffe://tundra/agent/{A1}"], None, A1, False),
        ([f"spiffe://elsewhere/agent/{A1}"], [ExtendedKeyUsageOID.CLIENT_AUTH], None, True),
        (["spiffe://tundra/agent/not-an-id"], [ExtendedKeyUsageOID.CLIENT_AUTH], None, True),
        (
            [f"spiffe://tundra/agent/{A1}", f"spiffe://tundra/agent/{B2}"],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            None,
            True,
        ),
        ([], [ExtendedKeyUsageOID.CLIENT_AUTH], None, True),
    ],
)
def test_peer_certificates_that_do_not_name_one_agent_or_lack_client_auth(
    uris: list[str],
    eku: list[x509.ObjectIdentifier] | None,
    agent_id: str | None,
    client_auth: bool,
) -> None:
    peer = parse_peer_certificate(make_cert(uris=uris, eku=eku))
    assert (peer.agent_id, peer.client_auth) == (agent_id, client_auth)


def test_peer_cache_parses_once_and_remembers_garbage() -> None:
    cache = PeerCache(size=2)
    pem = make_cert(uris=["spiffe://tundra/agent/abc"], eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    first = cache.get(pem)
    assert first is not None
    assert cache.get(pem) is first
    assert cache.get(b"-----BEGIN CERTIFICATE-----\ngarbage\n") is None
    other = make_cert(uris=["spiffe://tundra/agent/def"], eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    assert cache.get(other) is not None
    # The oldest entry was evicted: a new parse gives an equal, not the same, object.
    again = cache.get(pem)
    assert again == first
    assert again is not first


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        ("no-certificate", grpc.StatusCode.UNAUTHENTICATED),
        ("no-identity", grpc.StatusCode.UNAUTHENTICATED),
        ("unknown", grpc.StatusCode.UNAUTHENTICATED),
        ("revoked", grpc.StatusCode.PERMISSION_DENIED),
        ("serial-revoked", grpc.StatusCode.PERMISSION_DENIED),
        ("tls-version", grpc.StatusCode.PERMISSION_DENIED),
        ("source", grpc.StatusCode.PERMISSION_DENIED),
        ("method", grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_refusal_codes(reason: str, code: grpc.StatusCode) -> None:
    assert refusal(reason, "x").code == code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (AgentRefused("x", reason="cross-agent"), grpc.StatusCode.PERMISSION_DENIED),
        (AgentRefused("x", reason="unknown"), grpc.StatusCode.UNAUTHENTICATED),
        (InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (NotFound("x"), grpc.StatusCode.NOT_FOUND),
        (Conflict("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (Throttled("x", retry_after=1), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (StorageUnavailable("x"), grpc.StatusCode.UNAVAILABLE),
        (TundraError("x"), grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_status_for(error: TundraError, code: grpc.StatusCode) -> None:
    assert status_for(error) == code


def test_facts_are_clipped_and_complete() -> None:
    facts = agent_pb2.Facts(
        hostname="h" * 1000, cpu_count=4, memory_total_bytes=2**40, load_average=[1, 2, 3, 4]
    )
    out = facts_dict(facts)
    assert set(out) == {f.name for f in agent_pb2.Facts.DESCRIPTOR.fields}
    assert len(out["hostname"]) == 256
    assert out["memory_total_bytes"] == 2**40
    assert out["load_average"] == [1.0, 2.0, 3.0]
    assert out["os"] == ""
