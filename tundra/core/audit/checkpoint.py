"""Signed checkpoints of the audit chain: the C2SP signed-note and tlog-checkpoint formats.

A checkpoint is the note body ``<origin>\\n<seq>\\n<base64 head hash>\\n``, a blank line and one
signature line ``— <key name> <base64(4-byte key id || Ed25519 signature)>\\n`` per signer. The
key id is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key), as C2SP
signed-note specifies for Ed25519. Keys use the Go ``golang.org/x/mod/sumdb/note`` encodings:

- signer key (secret, mode 0400): ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``
- verifier key (public, 0644):    ``<name>+<hex key id>+<base64(0x01 || public key)>``

The origin of a checkpoint is the key name, so a note names the log it speaks for. Parsing is
strict: anything but exactly this shape is :class:`~tundra.core.errors.InvalidFile`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import socket
from dataclasses import dataclass

from tundra.core.errors import InvalidFile

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "— "
#: Notes and keys larger than this are refused before parsing (a checkpoint is ~200 bytes).
MAX_NOTE_BYTES = 64 * 1024
MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+]+")
_HEX_ID = re.compile(r"[0-9a-f]{8}")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")


def key_id(name: str, public: bytes) -> bytes:
    """The C2SP signed-note key id of an Ed25519 key: SHA-256(name || \\n || 0x01 || key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise InvalidFile(f"{what} is not valid base64") from exc


def _check_name(name: str, what: str) -> None:
    if not _NAME.fullmatch(name):
        raise InvalidFile(f"{what}: a key name must be non-empty, without spaces or '+'")


@dataclass(frozen=True)
class VerifierKey:
    name: str
    public: bytes

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public)

    def encode(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        parts = text.strip().split("+", 2)  # base64 may itself contain '+'
        if len(parts) != 3:
            raise InvalidFile("a verifier key must read <name>+<hex key id>+<base64 key>")
        name, hex_id, blob = parts
        _check_name(name, "verifier key")
        if not _HEX_ID.fullmatch(hex_id):
            raise InvalidFile("verifier key: the key id must be 8 lowercase hex digits")
        raw = _b64decode(blob, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise InvalidFile("verifier key: not an Ed25519 key (0x01 followed by 32 bytes)")
        key = cls(name, raw[1:])
        if key.key_id.hex() != hex_id:
            raise InvalidFile("verifier key: the key id does not match the name and key")
        return key


@dataclass(frozen=True)
class SignerKey:
    name: str
    seed: bytes

    def public(self) -> VerifierKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        return VerifierKey(self.name, private.public_key().public_bytes_raw())

    def encode(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode("ascii")
        return f"PRIVATE+KEY+{self.name}+{self.public().key_id.hex()}+{blob}\n"

    @classmethod
    def parse(cls, text: str) -> SignerKey:
        parts = text.strip().split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise InvalidFile(
                "the checkpoint signing key must read PRIVATE+KEY+<name>+<hex key id>+<base64 key>"
            )
        name, hex_id, blob = parts[2:]
        _check_name(name, "signing key")
        raw = _b64decode(blob, "signing key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise InvalidFile("signing key: not an Ed25519 key (0x01 followed by a 32-byte seed)")
        key = cls(name, raw[1:])
        if key.public().key_id.hex() != hex_id:
            raise InvalidFile("signing key: the key id does not match the name and key")
        return key

    def sign(self, message: bytes) -> bytes:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey.from_private_bytes(self.seed).sign(message)


def default_key_name() -> str:
    """``<host>/tundra-audit/<8 hex>``: readable, and unique even for two homes on one host."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname()) or "localhost"
    return f"{host}/tundra-audit/{secrets.token_hex(4)}"


def generate_signer(name: str | None = None) -> SignerKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_name = name or default_key_name()
    _check_name(key_name, "signing key")
    return SignerKey(key_name, Ed25519PrivateKey.generate().private_bytes_raw())


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: the log ``origin`` had ``seq`` rows ending in ``head_hash`` (hex)."""

    origin: str
    seq: int
    head_hash: str

    def body(self) -> str:
        root = base64.b64encode(bytes.fromhex(self.head_hash)).decode("ascii")
        return f"{self.origin}\n{self.seq}\n{root}\n"


def sign_note(text: str, key: SignerKey) -> str:
    """A C2SP signed note: ``text`` (ending in a newline), a blank line, our signature line."""
    if not text.endswith("\n") or "\n\n" in text:
        raise ValueError("note text must end with a newline and have no blank line")
    signature = key.sign(text.encode("utf-8"))
    blob = base64.b64encode(key.public().key_id + signature).decode("ascii")
    return f"{text}\n{SIGNATURE_PREFIX}{key.name} {blob}\n"


def open_note(note: str, vkey: VerifierKey) -> str:
    """The text of a signed note whose signature by ``vkey`` verifies, or :class:`InvalidFile`.

    Signatures by other keys (witnesses, say) are allowed and ignored, as C2SP specifies; a
    signature that claims to be by ``vkey`` and does not verify rejects the note.
    """
    if len(note.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise InvalidFile("the note is too large to be a checkpoint")
    if not note.endswith("\n") or "\r" in note:
        raise InvalidFile("the note must end with a newline and use \\n line endings")
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise InvalidFile("the note contains control characters")
    split = note.rfind("\n\n")
    if split < 0:
        raise InvalidFile("the note has no blank line before its signatures")
    text, signatures = note[: split + 1], note[split + 2 :]
    sig_lines = signatures.split("\n")[:-1]
    if not sig_lines or len(sig_lines) > MAX_SIGNATURES:
        raise InvalidFile("the note has no signature lines (or too many)")
    verified = False
    for line in sig_lines:
        if not line.startswith(SIGNATURE_PREFIX):
            raise InvalidFile(f"malformed signature line {line!r}")
        name, _, blob = line[len(SIGNATURE_PREFIX) :].partition(" ")
        _check_name(name, "signature line")
        raw = _b64decode(blob, "a signature")
        if len(raw) < 5:
            raise InvalidFile("a signature is too short")
        if name != vkey.name or raw[:4] != vkey.key_id or verified:
            continue  # another signer: not ours to judge
        if not _ed25519_ok(vkey.public, raw[4:], text.encode("utf-8")):
            raise InvalidFile(
                f"the signature by {name} does not verify: the note was altered "
                "or not signed by this key"
            )
        verified = True
    if not verified:
        raise InvalidFile(f"the note is not signed by the key {vkey.name}")
    return text


def sign_checkpoint(checkpoint: Checkpoint, key: SignerKey) -> str:
    """The signed note text of ``checkpoint``."""
    if checkpoint.origin != key.name:
        raise ValueError("a checkpoint's origin is its signing key's name")
    return sign_note(checkpoint.body(), key)


def parse_checkpoint(note: str, vkey: VerifierKey) -> Checkpoint:
    """Verify a signed checkpoint and parse its body strictly (:class:`InvalidFile`)."""
    lines = open_note(note, vkey).split("\n")[:-1]
    if len(lines) < 3 or any(not line for line in lines):
        raise InvalidFile("the checkpoint body must be <origin>, <seq> and <base64 hash> lines")
    origin, size, root = lines[:3]
    if not _DECIMAL.fullmatch(size):
        raise InvalidFile(f"the checkpoint's size line {size!r} is not a decimal number")
    head = _b64decode(root, "the checkpoint's hash line")
    if len(head) != 32:
        raise InvalidFile("the checkpoint's hash is not 32 bytes")
    if origin != vkey.name:
        raise InvalidFile(f"the checkpoint is for log {origin!r}, not {vkey.name!r}")
    return Checkpoint(origin=origin, seq=int(size), head_hash=head.hex())


def _ed25519_ok(public: bytes, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
