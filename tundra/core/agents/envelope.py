"""Signed command envelopes (pure functions: the control plane signs, the agent verifies).

Placeholder constants for the command signer; the full module is being written (issue 4).
"""

from __future__ import annotations

import hashlib

SIGNING_CONTEXT = b"tundra-command-v1\n"


def key_id_for(public_key_raw: bytes) -> str:
    """The key id agents use to pick a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]
