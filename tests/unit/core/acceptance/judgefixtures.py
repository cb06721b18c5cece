"""Deployments for the ``--judge`` tests: a well-configured and a misconfigured local HTTPS site.

The sites are :func:`httpsfixtures.https_site` servers. Their certificates come from
:class:`StrictPki`, not :class:`httpsfixtures.Pki`: strict path validators (sslyze's, through
``cryptography``'s RFC 5280 verifier) refuse a leaf without an Authority Key Identifier, and
Mozilla's "modern" profile wants ECDSA certificates living at most 90 days. httpsfixtures' PKI
(an RSA CA, no key identifiers, 91-day leaves) fails both, which would make the good site bad
in sslyze's eyes; this PKI is complete: EC P-256, SKI/AKI, key usages, 60 days.

- ``good``: TLS 1.3 only, X25519, the panel's headers.
- ``bad``: TLS 1.0 to 1.3 (OpenSSL security level 0), every group, HSTS of six months without
  ``includeSubDomains``, no ``X-Content-Type-Options``, a versioned ``Server`` banner and
  ``X-Powered-By``, no Cache-Control on anonymous pages.
  Its certificate is as good as the good site's, so the HTTP scanners can still connect.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from httpsfixtures import HOSTS, Issued, SiteProfile, headers_with, https_site, tls_server_context

BAD_PROFILE = SiteProfile(
    headers=tuple(
        (name, value)
        for name, value in headers_with("Strict-Transport-Security", "max-age=15552000")
        if name != "X-Content-Type-Options"
    ),
    extra=(("Server", "nginx/1.2.3"), ("X-Powered-By", "PHP/8.2")),
    anonymous_cache=None,
)


def _usage(*, sign_certs: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not sign_certs,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=sign_certs,
        crl_sign=sign_certs,
        encipher_only=False,
        decipher_only=False,
    )


class StrictPki:
    """An EC P-256 CA and leaves with every extension strict validators require."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "judge test CA")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_usage(sign_certs=True), critical=True)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.crt"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, *, hosts: tuple[str, ...] = HOSTS, days: int = 60) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(sign_certs=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = self.directory / f"{name}.crt"
        key_file = self.directory / f"{name}.key"
        cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return Issued(cert_file, key_file, self.ca_file, leaf)


@dataclass(frozen=True)
class Deployment:
    kind: str
    url: str
    ca: Path


@contextlib.contextmanager
def deployment(kind: str, directory: Path) -> Iterator[Deployment]:
    """The ``good`` or ``bad`` site on 127.0.0.1 (a fresh port), trusting ``ca``."""
    pki = StrictPki(directory)
    issued = pki.issue(kind)
    if kind == "good":
        context = tls_server_context(issued)
        profile = SiteProfile()
    elif kind == "bad":
        context = tls_server_context(
            issued,
            minimum=ssl.TLSVersion.TLSv1,
            maximum=ssl.TLSVersion.TLSv1_3,
            group=None,
            seclevel0=True,
        )
        profile = BAD_PROFILE
    else:
        raise ValueError(kind)
    with https_site(context, profile) as site:
        yield Deployment(kind, site.url, pki.ca_file)
