"""TLS versions, suites, groups, 0-RTT and compression: TR-02, TR-03 and TR-05.

The version probes are memoised per run (TR-02 and TR-03 look at the same handshakes). 0-RTT:
Python cannot send early data. A TLS 1.3 client may send early data only on a ticket whose
``early_data`` extension allows it (RFC 8446 4.6.1), so the tickets decide TR-05.
"""

from __future__ import annotations

import ssl
from typing import Any

from tundra.core.acceptance.checks.transport.handshakes import (
    _server_answered,
    _unreachable,
    handshake,
)
from tundra.core.acceptance.checks.transport.hellos import _suite_name, client_hello, raw_hello
from tundra.core.acceptance.checks.transport.vocabulary import (
    ALLOWED_GROUPS,
    ALLOWED_SUITES,
    FORBIDDEN_GROUPS,
    GROUPS,
    LIMITS,
    OTHER_TLS13_SUITES,
    VERSION_CODES,
)
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


def _version_probe(ctx: RunContext, version: str) -> dict[str, Any]:
    """Is ``version`` accepted? Through ``ssl`` (SECLEVEL=0) and a hand-written ClientHello."""

    def probe() -> dict[str, Any]:
        host, port = ctx.target.host, ctx.target.port
        shake = handshake(host, port, version=version, timeout=ctx.io_timeout())
        could_offer: bool | None
        if shake.hooked:
            sent = shake.client_hello
            could_offer = sent is not None and (
                version == "TLSv1.3" or sent.get("legacy_version") == version
            )
        else:
            could_offer = None if not shake.local_error else False
        answer = raw_hello(
            host, port, client_hello(host, version=VERSION_CODES[version]), timeout=ctx.io_timeout()
        )
        raw_accepted = answer.hello is not None and answer.hello.version == VERSION_CODES[version]
        ssl_accepted = shake.ok and shake.version == version
        # A refusal counts only when seen: an alert or a close, not a timeout or reset.
        refusal_seen = answer.kind in ("alert", "closed") or (
            bool(could_offer) and _server_answered(shake)
        )
        if not could_offer and not shake.ok:
            note = (
                f"this OpenSSL ({ssl.OPENSSL_VERSION}) could not offer {version} even at "
                "security level 0: the ssl probe says nothing about the server; the "
                "hand-written ClientHello decides"
            )
        else:
            note = f"{version} offered through ssl at security level 0 and by hand"
        return {
            "version": version,
            "accepted": ssl_accepted or raw_accepted,
            "refusal_seen": refusal_seen,
            "ssl": shake.evidence() | {"client_could_offer": could_offer},
            "raw_client_hello": answer.evidence(),
            "note": note,
        }

    return ctx.memo(f"transport.version.{version}", probe)


@check(
    "TR-02",
    "Only TLS 1.3: TLS 1.0, 1.1 and 1.2 handshakes fail",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def tls_versions(ctx: RunContext) -> Outcome:
    modern = handshake(ctx.target.host, ctx.target.port, timeout=ctx.io_timeout())
    if _unreachable(modern):
        return errored(f"cannot reach {ctx.target.netloc}: {modern.error}", tls13=modern.evidence())
    probes = {v: _version_probe(ctx, v) for v in ("TLSv1", "TLSv1.1", "TLSv1.2")}
    evidence: dict[str, Any] = {
        "old_versions": probes,
        "tls13": modern.evidence(),
        "openssl": ssl.OPENSSL_VERSION,
        "limits": LIMITS,
    }
    accepted = [v for v, p in probes.items() if p["accepted"]]
    if accepted:
        return failed("accepted: " + ", ".join(accepted), **evidence)
    if not modern.ok or modern.version != "TLSv1.3":
        return failed(f"TLS 1.3 handshake failed: {modern.error or modern.version}", **evidence)
    unclear = [v for v, p in probes.items() if not p["refusal_seen"]]
    if unclear:
        return errored("no clear refusal (timeout or reset) for " + ", ".join(unclear), **evidence)
    return passed("TLS 1.0, 1.1 and 1.2 refused; TLS 1.3 accepted", **evidence)


@check(
    "TR-03",
    "Only TLS 1.3 AEAD suites; groups within X25519, P-256, P-384",
    section=Section.TRANSPORT,
    severity=Severity.HIGH,
    timeout=30.0,
)
def suites_and_groups(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    default = handshake(host, port, timeout=ctx.io_timeout())
    if _unreachable(default):
        return errored(f"cannot reach {ctx.target.netloc}: {default.error}")
    problems: list[str] = []
    unclear: list[str] = []
    suites: dict[str, Any] = {}
    for code in (*ALLOWED_SUITES, *OTHER_TLS13_SUITES):
        answer = raw_hello(
            host, port, client_hello(host, version=0x0304, suites=[code]), timeout=ctx.io_timeout()
        )
        accepted = answer.hello is not None and answer.hello.suite == code
        suites[_suite_name(code)] = {"accepted": accepted, **answer.evidence()}
        if accepted and code not in ALLOWED_SUITES:
            problems.append(f"{_suite_name(code)} accepted")
        elif code not in ALLOWED_SUITES and answer.kind not in ("alert", "closed"):
            unclear.append(_suite_name(code))
    if not any(suites[name]["accepted"] for name in ALLOWED_SUITES.values()):
        problems.append("no TLS 1.3 AEAD suite of the profile is accepted")
    tls12 = _version_probe(ctx, "TLSv1.2")
    if tls12["accepted"]:
        problems.append("TLS 1.2 suites are negotiable (see TR-02)")
    groups: dict[str, Any] = {}
    for code in (*ALLOWED_GROUPS, *FORBIDDEN_GROUPS):
        iana, openssl_name = GROUPS[code]
        shake = handshake(
            host, port, version="TLSv1.3", group=openssl_name, timeout=ctx.io_timeout()
        )
        groups[iana] = {
            "accepted": shake.ok,
            "negotiated": shake.group,
            "error": shake.error,
            "client_could_offer": not shake.local_error,
        }
        if shake.ok and code in FORBIDDEN_GROUPS:
            problems.append(f"group {iana} accepted")
        elif code in FORBIDDEN_GROUPS and not shake.local_error and not _server_answered(shake):
            unclear.append(iana)
    if not any(groups[GROUPS[c][0]]["accepted"] for c in ALLOWED_GROUPS):
        problems.append("none of X25519, P-256, P-384 is accepted")
    if default.ok and default.cipher not in ALLOWED_SUITES.values():
        problems.append(f"default handshake negotiated {default.cipher}")
    untested = [name for name, g in groups.items() if not g["client_could_offer"]]
    evidence = {
        "tls13_suites": suites,
        "tls12_accepted": tls12["accepted"],
        "groups": groups,
        "default_handshake": default.evidence(),
        "groups_this_client_cannot_offer": untested,
        "limits": LIMITS,
    }
    if not default.ok and not any(g["accepted"] for g in groups.values()):
        return errored(
            f"no TLS 1.3 handshake with {ctx.target.netloc}: {default.error}", **evidence
        )
    if problems:
        return failed("; ".join(problems), **evidence)
    if unclear:
        return errored("no clear refusal (timeout or reset) for " + ", ".join(unclear), **evidence)
    working = [name for name, g in groups.items() if g["accepted"]]
    return passed("TLS 1.3 AEAD suites only; groups accepted: " + ", ".join(working), **evidence)


@check(
    "TR-05",
    "No 0-RTT early data, no TLS compression",
    section=Section.TRANSPORT,
    severity=Severity.MEDIUM,
    timeout=20.0,
)
def no_early_data(ctx: RunContext) -> Outcome:
    host, port = ctx.target.host, ctx.target.port
    request = f"GET / HTTP/1.1\r\nHost: {ctx.target.netloc}\r\nConnection: close\r\n\r\n".encode()
    shake = handshake(host, port, request=request, timeout=ctx.io_timeout())
    deflate = raw_hello(
        host, port, client_hello(host, version=0x0303, compression=(1, 0)), timeout=ctx.io_timeout()
    )
    compressed_tls12 = deflate.hello is not None and deflate.hello.compression != 0
    evidence: dict[str, Any] = {
        "handshake": shake.evidence(),
        "session_tickets": shake.tickets,
        "tickets_observable": shake.hooked,
        "tls12_deflate_offer": deflate.evidence(),
        "limits": LIMITS
        + " 0-RTT is judged from the tickets: early data is only possible on a ticket whose "
        "early_data extension allows it (RFC 8446 4.6.1).",
    }
    if not shake.ok:
        return errored(f"no TLS handshake with {ctx.target.netloc}: {shake.error}", **evidence)
    problems = []
    if shake.compression is not None:
        problems.append(f"the connection is compressed ({shake.compression})")
    if compressed_tls12:
        problems.append("a TLS 1.2 ClientHello offering DEFLATE got it")
    early = [t for t in shake.tickets if t["max_early_data"] > 0]
    if early:
        sizes = sorted({t["max_early_data"] for t in early})
        problems.append(f"session tickets allow 0-RTT early data (max_early_data {sizes})")
    if problems:
        return failed("; ".join(problems), **evidence)
    if not shake.hooked:
        return errored(
            "this Python cannot observe session tickets (no SSLContext._msg_callback)", **evidence
        )
    return passed(
        f"no compression; {len(shake.tickets)} session ticket(s), none allows early data",
        **evidence,
    )
