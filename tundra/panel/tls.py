"""The panel's TLS context: TLS 1.3 only, one strong key-exchange group, no 0-RTT.

Python 3.11's ``ssl`` can set exactly one key-exchange group (``set_ecdh_curve``). Tundra uses
X25519, which every current browser and TLS library offers; without it OpenSSL 3 would also offer
X448 and P-521, which strict TLS profiles reject. The set is therefore {X25519} ⊆ {X25519, P-256,
P-384} (docs/panel.md).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tundra.core.errors import ConfigError

GROUP = "X25519"


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    # No compression; no session tickets, hence no resumption and no 0-RTT early data (Python's
    # ssl never enables early data either).
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the panel certificate {cert_file} / key {key_file}: {exc}",
            hint="run `tundra tls status`",
        ) from exc
    context.set_ecdh_curve(GROUP)
    context.set_alpn_protocols(["http/1.1"])
    return context
