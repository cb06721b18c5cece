"""The certificate the panel presents: TR-04 (valid chain, host name, 14+ days left, strong key,
no SHA-1 anywhere in the presented chain).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from tundra.core import clock
from tundra.core.acceptance.checks.transport.handshakes import handshake
from tundra.core.acceptance.context import RunContext
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    errored,
    failed,
    passed,
)
from tundra.core.acceptance.registry import check

CERT_MIN_DAYS = 14
CERT_WARN_DAYS = 30


def describe_certificate(der: bytes, *, now: datetime) -> dict[str, Any]:
    """What TR-04 judges in one certificate, plus the verdicts on it."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    problems: list[str] = []
    if isinstance(key, rsa.RSAPublicKey):
        kind, bits = "RSA", key.key_size
        if bits < 2048:
            problems.append(f"RSA key of {bits} bits (< 2048)")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        kind, bits = f"EC {key.curve.name}", key.curve.key_size
        if bits < 256:
            problems.append(f"EC key of {bits} bits (< 256)")
    elif isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        kind, bits = type(key).__name__.removesuffix("PublicKey"), 256
    elif isinstance(key, dsa.DSAPublicKey):
        kind, bits = "DSA", key.key_size
        problems.append("DSA key")
    else:
        kind, bits = type(key).__name__, 0
        problems.append(f"unknown key type {kind}")
    try:
        algorithm = cert.signature_hash_algorithm
        hash_name = algorithm.name if algorithm is not None else "none (EdDSA)"
    except Exception:  # an algorithm cryptography does not know
        hash_name = cert.signature_algorithm_oid.dotted_string
    if hash_name in ("sha1", "md5", "md2", "md4"):
        problems.append(f"signed with {hash_name.upper()}")
    not_after = cert.not_valid_after_utc
    not_before = cert.not_valid_before_utc
    days_left = (not_after - now).total_seconds() / 86400
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [str(n.value) for n in names]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "self_signed": cert.subject == cert.issuer,
        "subject_alt_names": sans,
        "not_before": clock.to_iso(not_before),
        "not_after": clock.to_iso(not_after),
        "days_left": round(days_left, 2),
        "not_yet_valid": not_before > now,
        "key": kind,
        "key_bits": bits,
        "signature_hash": hash_name,
        "problems": problems,
    }


@check(
    "TR-04",
    "Certificate: valid chain, host name, 14+ days left, strong key, no SHA-1",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=20.0,
)
def certificate(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    ca_file = ctx.options.ca_file
    verified = handshake(host, port, verify=True, ca_file=ca_file, timeout=ctx.io_timeout())
    chain, source = verified.chain, "Certificate handshake message (full presented chain)"
    if not chain:
        inspect = handshake(host, port, timeout=ctx.io_timeout())
        chain = inspect.chain or ([inspect.leaf] if inspect.leaf else [])
        if not inspect.chain and inspect.leaf:
            source = "leaf only (getpeercert): no handshake hook in this Python"
    evidence: dict[str, Any] = {
        "trust": str(ca_file) if ca_file else "system store",
        "hostname": host,
        "verified": verified.ok,
        "verify_error": verified.verify_error or (None if verified.ok else verified.error),
        "chain_source": source,
        "limits": (
            "Python 3.11 has no get_verified_chain(): the chain judged is the one the server "
            "presented; the anchor from the trust store is not re-checked here (OpenSSL's "
            "verification at security level 2 refuses SHA-1 and RSA < 2048 below the anchor)."
        ),
    }
    if not chain:
        if verified.error and verified.error.startswith("connect:"):
            return errored(f"cannot reach {ctx.target.netloc}: {verified.error}", **evidence)
        return errored(f"no certificate observed: {verified.error}", **evidence)
    now = clock.now()
    described = [describe_certificate(der, now=now) for der in chain]
    evidence["chain"] = described
    leaf = described[0]
    problems: list[str] = []
    if not verified.ok:
        problems.append(f"does not verify: {evidence['verify_error']}")
    if leaf["not_yet_valid"]:
        problems.append("the leaf is not valid yet")
    if leaf["days_left"] < CERT_MIN_DAYS:
        problems.append(f"{leaf['days_left']:.1f} days left (< {CERT_MIN_DAYS})")
    for position, info in enumerate(described):
        role = "leaf" if position == 0 else f"chain[{position}]"
        problems.extend(f"{role}: {p}" for p in info["problems"])
        if position and info["days_left"] < CERT_MIN_DAYS:
            problems.append(f"{role}: {info['days_left']:.1f} days left (< {CERT_MIN_DAYS})")
    warning = None
    if CERT_MIN_DAYS <= leaf["days_left"] < CERT_WARN_DAYS:
        warning = f"the certificate expires in {leaf['days_left']:.1f} days (< {CERT_WARN_DAYS})"
    evidence["warning"] = warning
    if problems:
        return failed("; ".join(problems), **evidence)
    summary = (
        f"verifies for {host}, {leaf['days_left']:.0f} days left, {leaf['key']} "
        f"{leaf['key_bits']}, {leaf['signature_hash']}"
    )
    return passed(summary + (f"; WARNING: {warning}" if warning else ""), **evidence)
