"""The API token format: ``tnd_{env}_{secret}``, with a checksum that needs no database.

``secret`` is the unpadded base64url encoding (43 characters) of 32 bytes: 28 random bytes
followed by the CRC32 (big-endian) of the ASCII prefix ``tnd_{env}_`` and those 28 bytes. The
checksum is not a security control (anyone can compute a CRC); it lets a mistyped or made-up
token be refused without touching the database and lets secret scanners match with few false
positives. 43 base64 characters carry 258 bits for 256, so the last character has 2 unused bits
that must be zero: only 16 characters (``AEIMQUYcgkosw048``) can end a token. The regular
expression enforces that, so a token that passes it is the one canonical encoding of its bytes.
"""

from __future__ import annotations

import base64
import re
import zlib

from tundra.core.crypto.primitives import random_bytes
from tundra.core.errors import TokenInvalid

RANDOM_BYTES = 28
#: The regular expression published in docs/tokens.md for secret scanners.
TOKEN_PATTERN = r"tnd_[a-z0-9]{1,16}_[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]"  # noqa: S105
TOKEN_RE = re.compile(r"tnd_([a-z0-9]{1,16})_([A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])")
ENV_RE = re.compile(r"[a-z0-9]{1,16}")
MAX_LENGTH = len("tnd_") + 16 + 1 + 43
#: Characters of the secret shown in listings (48 bits: enough to tell tokens apart).
DISPLAY_SECRET_CHARS = 8


def _checksum(env: str, body: bytes) -> bytes:
    return (zlib.crc32(f"tnd_{env}_".encode("ascii") + body) & 0xFFFFFFFF).to_bytes(4, "big")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate(env: str) -> str:
    """A new token for ``env`` (plaintext: shown once, never stored)."""
    if not ENV_RE.fullmatch(env):
        raise ValueError(f"invalid token env {env!r}")
    body = random_bytes(RANDOM_BYTES)
    return f"tnd_{env}_{_b64(body + _checksum(env, body))}"


def check(token: str, expected_env: str) -> None:
    """Raise TokenInvalid unless ``token`` is well formed, checksummed and for ``expected_env``.

    Pure computation: no database, no KV. Reasons: ``malformed``, ``checksum``, ``wrong_env``.
    """
    if not isinstance(token, str) or len(token) > MAX_LENGTH:
        raise TokenInvalid("malformed")
    match = TOKEN_RE.fullmatch(token)
    if match is None:
        raise TokenInvalid("malformed")
    env, secret = match.groups()
    # The pattern allows only the alphabet and a last character with zero unused bits, so the
    # decoding cannot fail and is canonical: no second string decodes to the same bytes.
    raw = base64.urlsafe_b64decode(secret + "=")
    if raw[RANDOM_BYTES:] != _checksum(env, raw[:RANDOM_BYTES]):
        raise TokenInvalid("checksum")
    if env != expected_env:
        raise TokenInvalid("wrong_env")


def display_prefix(token: str) -> str:
    """``tnd_{env}_`` and the first secret characters: what listings and the audit log show."""
    env_end = token.index("_", 4) + 1
    return token[: env_end + DISPLAY_SECRET_CHARS]
