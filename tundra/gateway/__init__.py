"""The agent gateway: the control plane's side of :7447 (gRPC, mutual TLS 1.3 only).

grpcio has no minimum-TLS-version option. Its server's key is ECDSA (tundra/core/pki), and the
only TLS 1.2 suite it may offer is an RSA one, so no TLS 1.2 handshake can agree on a suite and
every one fails; TLS 1.3 suites are not affected by the variable. gRPC reads the variable once,
when it initialises, so it is set here, before any ``import grpc`` in this package, and the
gateway refuses to start in a process that imported grpc with another value (see
:func:`check_cipher_policy`). The policy interceptor also refuses any call not made over TLS 1.3.
"""

from __future__ import annotations

import os
import sys

#: An RSA-only TLS 1.2 suite: with an ECDSA server key nothing TLS 1.2 can be negotiated.
TLS12_BLOCKING_SUITES = "ECDHE-RSA-AES256-GCM-SHA384"
CIPHER_VARIABLE = "GRPC_SSL_CIPHER_SUITES"

if "grpc" not in sys.modules:
    os.environ[CIPHER_VARIABLE] = TLS12_BLOCKING_SUITES


def check_cipher_policy() -> None:
    """Refuse to run when gRPC was initialised without the TLS 1.2-blocking suite list."""
    from tundra.core.errors import ConfigError

    if os.environ.get(CIPHER_VARIABLE) != TLS12_BLOCKING_SUITES:
        raise ConfigError(
            f"{CIPHER_VARIABLE} is {os.environ.get(CIPHER_VARIABLE)!r}, not the TLS 1.2-blocking "
            "value: grpc was imported before tundra.gateway",
            hint="import tundra.gateway before grpc (and do not set GRPC_SSL_CIPHER_SUITES)",
        )
