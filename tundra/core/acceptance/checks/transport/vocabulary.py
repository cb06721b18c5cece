"""The TLS vocabulary of the transport checks: tundra's suite and group profile, version and
alert codes, and what Python 3.11's ``ssl`` cannot do (:data:`LIMITS`).

Stricter than sslyze/testssl/Observatory where tundra's spec says so: only TLS 1.3, only the three
TLS 1.3 AEAD suites, groups within {X25519, P-256, P-384}.
"""

from __future__ import annotations

import ssl

#: The only suites tundra accepts (all TLS 1.3 AEAD).
ALLOWED_SUITES = {
    0x1301: "TLS_AES_128_GCM_SHA256",
    0x1302: "TLS_AES_256_GCM_SHA384",
    0x1303: "TLS_CHACHA20_POLY1305_SHA256",
}
#: TLS 1.3 suites that exist but are refused (AEAD too, yet outside tundra's profile).
OTHER_TLS13_SUITES = {0x1304: "TLS_AES_128_CCM_SHA256", 0x1305: "TLS_AES_128_CCM_8_SHA256"}
#: IANA group code -> (IANA name, OpenSSL name for ``set_ecdh_curve``).
GROUPS = {
    0x001D: ("x25519", "X25519"),
    0x0017: ("secp256r1", "prime256v1"),
    0x0018: ("secp384r1", "secp384r1"),
    0x0019: ("secp521r1", "secp521r1"),
    0x001E: ("x448", "X448"),
    0x0100: ("ffdhe2048", "ffdhe2048"),
    0x0101: ("ffdhe3072", "ffdhe3072"),
    0x0102: ("ffdhe4096", "ffdhe4096"),
    0x0103: ("ffdhe6144", "ffdhe6144"),
    0x0104: ("ffdhe8192", "ffdhe8192"),
}
ALLOWED_GROUPS = (0x001D, 0x0017, 0x0018)
FORBIDDEN_GROUPS = (0x0019, 0x001E, 0x0100, 0x0101, 0x0102, 0x0103, 0x0104)
VERSION_CODES = {"TLSv1": 0x0301, "TLSv1.1": 0x0302, "TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
_VERSION_NAMES = {v: k for k, v in VERSION_CODES.items()}
_TLS_VERSIONS = {
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
# ServerHello.random of a HelloRetryRequest (RFC 8446 4.1.3).
_HRR_RANDOM = bytes.fromhex("CF21AD74E59A6111BE1D8C021E65B891C2A211167ABB8C5E079E09E2C8A8339C")
_ALERTS = {
    0: "close_notify",
    10: "unexpected_message",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    109: "missing_extension",
    112: "unrecognized_name",
    120: "no_application_protocol",
}
LIMITS = (
    "Python 3.11's ssl cannot send 0-RTT early data, choose TLS 1.3 suites or offer "
    "compression; those are settled by hand-written ClientHellos (server's first answer only) "
    "and by the NewSessionTickets read through CPython's SSLContext._msg_callback."
)
