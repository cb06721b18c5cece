"""Transport checks TR-01…TR-06: redirect to HTTPS, TLS versions, suites and groups, the
certificate, 0-RTT and compression, HSTS (../shared/design/ACCEPTANCE.md "transport").

Stricter than sslyze/testssl/Observatory where tundra's spec says so: only TLS 1.3, only the three
TLS 1.3 AEAD suites, groups within {X25519, P-256, P-384}, a 14-day certificate floor, no SHA-1
anywhere in the presented chain, HSTS of a year with includeSubDomains on *every* response.

Importing this package registers every check: the registry imports
``tundra.core.acceptance.checks.transport`` by name, and this module imports each submodule.
One module per concern:

- ``vocabulary``: suite, group, version and alert codes; what Python's ``ssl`` cannot do.
- ``handshakes``: ``ssl`` handshakes observed through ``SSLContext._msg_callback``.
- ``hellos``: hand-written ClientHellos and the server's first answer to them.
- ``redirect``: TR-01 (http redirects to https in one hop).
- ``tls``: TR-02 (only TLS 1.3), TR-03 (suites and groups), TR-05 (no 0-RTT, no compression).
- ``certificates``: TR-04 (the presented certificate chain).
- ``sampling``: the HTTPS responses TR-06 and the header checks share.
- ``hsts``: TR-06 (HSTS on every response).
"""

from __future__ import annotations

from tundra.core.acceptance.checks.transport import (
    certificates,
    handshakes,
    hellos,
    hsts,
    redirect,
    sampling,
    tls,
    vocabulary,
)
from tundra.core.acceptance.checks.transport.certificates import certificate, describe_certificate
from tundra.core.acceptance.checks.transport.handshakes import Handshake, handshake
from tundra.core.acceptance.checks.transport.hellos import RawAnswer, client_hello, raw_hello
from tundra.core.acceptance.checks.transport.hsts import hsts_everywhere, parse_hsts
from tundra.core.acceptance.checks.transport.redirect import http_redirects
from tundra.core.acceptance.checks.transport.sampling import (
    Sample,
    judge_responses,
    sample,
    sample_or_error,
)
from tundra.core.acceptance.checks.transport.tls import (
    no_early_data,
    suites_and_groups,
    tls_versions,
)
from tundra.core.acceptance.checks.transport.vocabulary import ALLOWED_SUITES

__all__ = [
    "ALLOWED_SUITES",
    "Handshake",
    "RawAnswer",
    "Sample",
    "certificate",
    "certificates",
    "client_hello",
    "describe_certificate",
    "handshake",
    "handshakes",
    "hellos",
    "hsts",
    "hsts_everywhere",
    "http_redirects",
    "judge_responses",
    "no_early_data",
    "parse_hsts",
    "raw_hello",
    "redirect",
    "sample",
    "sample_or_error",
    "sampling",
    "suites_and_groups",
    "tls",
    "tls_versions",
    "vocabulary",
]
