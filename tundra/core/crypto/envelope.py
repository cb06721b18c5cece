"""The envelope every encrypted column stores, the keyring's wrapped-key format, key derivation.

Envelope (AES-256-GCM under a column key)::

    b"tnd" | 0x01 | term u32be | nonce (12) | ciphertext | tag (16)

Associated data = the 8 header bytes + ``u32be(len) || utf-8`` of table, column and row id, so a
value copied to another row, column or table, or relabelled with another term, fails.

Wrapped data key (AES-256-GCM under the keyring wrapping key, 64 bytes)::

    b"tkw" | 0x01 | nonce (12) | ciphertext (32) | tag (16)

with associated data ``b"tkw\\x01" + b"tundra/v1/keyring" + u32be(term)``: an entry moved to
another term fails. The wrapping key is ``HKDF-SHA256(master key, info="tundra/v1/keyring-wrap")``
so the master key itself is only ever an HKDF input and the key-check HMAC key.

Column keys are ``HKDF-SHA256(data key, salt=None, info="tundra/v1/" + table + "." + column)``.
:class:`ColumnCipher` caches one AESGCM object and the constant part of the associated data per
(term, table, column): the hot path is one ``os.urandom``, two concatenations and one AESGCM call.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = b"tnd"
VERSION = 1
PREFIX = MAGIC + bytes([VERSION])
HEADER_LEN = 8
NONCE_LEN = 12
TAG_LEN = 16
MIN_LEN = HEADER_LEN + NONCE_LEN + TAG_LEN
MAX_TERM = 2**32 - 1

WRAP_PREFIX = b"tkw\x01"
WRAP_LEN = len(WRAP_PREFIX) + NONCE_LEN + 32 + TAG_LEN
DATA_KEY_BYTES = 32

_U32 = struct.Struct(">I")
_pack = _U32.pack
_urandom = os.urandom


AUTH_FAILED = (
    "authentication failed: the value was tampered with, belongs to another row, "
    "column or table, or was sealed under another key"
)


class EnvelopeError(ValueError):
    """Raised by this module; the key service turns it into DecryptionFailed with the context."""


def hkdf(key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)


def column_key(data_key: bytes, table: str, column: str) -> bytes:
    return hkdf(data_key, b"tundra/v1/" + f"{table}.{column}".encode())


def wrapping_key(master_key: bytes) -> bytes:
    return hkdf(master_key, b"tundra/v1/keyring-wrap")


def _lp(text: str) -> bytes:
    data = text.encode("utf-8")
    return _U32.pack(len(data)) + data


def header(term: int) -> bytes:
    if not 0 < term <= MAX_TERM:
        raise ValueError(f"term {term} out of range")
    return PREFIX + _U32.pack(term)


def associated_data(term: int, table: str, column: str, row_id: str) -> bytes:
    return header(term) + _lp(table) + _lp(column) + _lp(row_id)


def envelope_term(blob: bytes) -> int:
    """The term of an envelope, after the length, magic and version checks."""
    if len(blob) < MIN_LEN:
        raise EnvelopeError(f"the value is {len(blob)} bytes, shorter than any envelope")
    if blob[:3] != MAGIC:
        raise EnvelopeError("the value is not an envelope (bad magic)")
    if blob[3] != VERSION:
        raise EnvelopeError(f"unsupported envelope version {blob[3]}")
    term: int = _U32.unpack_from(blob, 4)[0]
    return term


class ColumnCipher:
    """Seal and open envelopes of one (term, table, column).

    The key service inlines :meth:`seal` and :meth:`open` in its hot path using the public
    attributes (bound AESGCM methods, the header and the constant AAD prefix); keep them in step.
    """

    __slots__ = ("aad_prefix", "aead_decrypt", "aead_encrypt", "header", "term")

    def __init__(self, data_key: bytes, term: int, table: str, column: str) -> None:
        self.term = term
        aead = AESGCM(column_key(data_key, table, column))
        self.aead_encrypt, self.aead_decrypt = aead.encrypt, aead.decrypt
        self.header = header(term)
        self.aad_prefix = self.header + _lp(table) + _lp(column)

    def seal(self, row_id: str, plaintext: bytes) -> bytes:
        nonce = _urandom(12)
        row = row_id.encode("utf-8")
        return (
            self.header
            + nonce
            + self.aead_encrypt(nonce, plaintext, self.aad_prefix + _pack(len(row)) + row)
        )

    def open(self, row_id: str, blob: bytes) -> bytes:
        """Plaintext of ``blob``, whose header must be this cipher's, or EnvelopeError."""
        if len(blob) < MIN_LEN:
            raise EnvelopeError(f"the value is {len(blob)} bytes, shorter than any envelope")
        row = row_id.encode("utf-8")
        try:
            return self.aead_decrypt(blob[8:20], blob[20:], self.aad_prefix + _pack(len(row)) + row)
        except InvalidTag:
            raise EnvelopeError(AUTH_FAILED) from None


def _wrap_aad(term: int) -> bytes:
    return WRAP_PREFIX + b"tundra/v1/keyring" + _U32.pack(term)


def wrap_data_key(wrap_key: bytes, term: int, data_key: bytes) -> bytes:
    if len(data_key) != DATA_KEY_BYTES:
        raise ValueError("a data key is 32 bytes")
    nonce = os.urandom(NONCE_LEN)
    return WRAP_PREFIX + nonce + AESGCM(wrap_key).encrypt(nonce, data_key, _wrap_aad(term))


def unwrap_data_key(wrap_key: bytes, term: int, wrapped: bytes) -> bytes:
    """The data key of ``term``, or EnvelopeError (wrong master key, corrupt or moved entry)."""
    if len(wrapped) != WRAP_LEN or wrapped[:4] != WRAP_PREFIX:
        raise EnvelopeError(f"keyring entry for term {term} is malformed")
    nonce = wrapped[4 : 4 + NONCE_LEN]
    try:
        return AESGCM(wrap_key).decrypt(nonce, wrapped[4 + NONCE_LEN :], _wrap_aad(term))
    except InvalidTag:
        raise EnvelopeError(
            f"keyring entry for term {term} does not unwrap under this master key"
        ) from None
