"""Signed command envelopes: the format, its validation, building one and verifying one.

Pure functions over bytes: the control plane builds and signs (with
:class:`~tundra.core.agents.signing.CommandSigner`), the agent verifies, and neither needs a
database here. The envelope is canonical JSON so the bytes that were signed are the only encoding
of the command; the signature covers ``SIGNING_CONTEXT + envelope`` so a command signature can
never be mistaken for a signature over anything else the key might sign.

Verification runs in a fixed order and stops at the first failure with a stable reason word
(:class:`~tundra.core.errors.CommandRefused`): nothing is parsed before the signature is known to
be good, and any input at all, however malformed, gives a refusal and never another exception.
The nonce check (replay) is the caller's: it needs state that survives restarts (the agent's
:class:`~tundra.agent.guard.CommandGuard`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from tundra.core.clock import epoch
from tundra.core.errors import CommandRefused, InvalidInput

SIGNING_CONTEXT = b"tundra-command-v1\n"
ENVELOPE_VERSION = 1
#: The longest a command may stay valid (SECURITY-SPEC: expires-at at most 60 s after issued-at).
MAX_TTL_MS = 60_000
#: How far the agent's clock may be behind the control plane's, and how long past expiry a nonce
#: is remembered (so a clock stepped back by up to this much cannot revive a replay).
CLOCK_SKEW_MS = 30_000
#: An envelope is a few hundred bytes; anything far larger is refused before any work is done.
MAX_ENVELOPE_BYTES = 8192

COMMAND_TYPES: frozenset[str] = frozenset({"ping", "facts", "service.status"})

#: systemd unit name characters (systemd's own set, minus '\\' escapes) and known type suffixes.
UNIT_PATTERN = r"[A-Za-z0-9@._:-]{1,128}"
UNIT_SUFFIXES = (
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".device",
    ".slice",
    ".scope",
)

_FIELDS = frozenset(
    {"agent_id", "command_id", "expires_at_ms", "issued_at_ms", "nonce", "payload", "type", "v"}
)
_NONCE_PATTERN = r"[0-9a-f]{32}"
_ID_PATTERN = r"[0-9A-Za-z_-]{1,64}"
_SIGNATURE_BYTES = 64
_PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True)
class Command:
    """A command as the agent sees it after verification (or as the control plane built it)."""

    agent_id: str
    command_id: str
    nonce: str
    issued_at_ms: int
    expires_at_ms: int
    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ttl_ms(self) -> int:
        return self.expires_at_ms - self.issued_at_ms

    def envelope_object(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "command_id": self.command_id,
            "expires_at_ms": self.expires_at_ms,
            "issued_at_ms": self.issued_at_ms,
            "nonce": self.nonce,
            "payload": dict(self.payload),
            "type": self.type,
            "v": ENVELOPE_VERSION,
        }


def canonical_json(obj: Any) -> bytes:
    """The one encoding Tundra signs: sorted keys, no spaces, ASCII only."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def key_id_for(public_key_raw: bytes) -> str:
    """The key id agents use to pick a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key_raw).hexdigest()[:16]


def normalize_unit(unit: Any) -> str:
    """A checked systemd unit name; ``.service`` is appended when it names no unit type.

    The name goes to ``systemctl`` as one argv element after ``--``; the rules here (systemd's
    character set, no leading '-', no path separator, a bounded length) make it a unit name and
    nothing else even before that.
    """
    if not isinstance(unit, str) or not re.fullmatch(UNIT_PATTERN, unit):
        raise InvalidInput(
            f"invalid unit name {_show(unit)}",
            hint="a systemd unit name: letters, digits and @ . _ : -, at most 128 characters",
        )
    if unit.startswith("-"):
        raise InvalidInput(f"invalid unit name {unit!r}", hint="a unit name cannot start with '-'")
    suffix = next((s for s in UNIT_SUFFIXES if unit.endswith(s)), None)
    if suffix is None:
        return unit + ".service"
    if len(unit) == len(suffix):
        raise InvalidInput(f"invalid unit name {unit!r}", hint="the name before the type is empty")
    return unit


def validate_payload(type: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The payload of a ``type`` command, checked and normalised; InvalidInput otherwise."""
    if not isinstance(type, str) or type not in COMMAND_TYPES:
        raise InvalidInput(
            f"unknown command type {_show(type)}",
            hint="known types: " + ", ".join(sorted(COMMAND_TYPES)),
        )
    if not isinstance(payload, Mapping):
        raise InvalidInput(f"the payload of a {type} command must be an object")
    if type in ("ping", "facts"):
        if payload:
            raise InvalidInput(f"a {type} command takes no payload")
        return {}
    # service.status
    extra = sorted(str(k) for k in payload if k != "unit")
    if extra:
        raise InvalidInput(
            f"unexpected payload field(s) for {type}: {', '.join(extra)}", hint="only 'unit'"
        )
    if "unit" not in payload:
        raise InvalidInput(f"a {type} command needs a unit name", hint="e.g. nginx.service")
    return {"unit": normalize_unit(payload["unit"])}


def build_envelope(
    *,
    agent_id: str,
    type: str,
    payload: Mapping[str, Any],
    ttl_seconds: int,
    now_ms: int | None = None,
) -> tuple[Command, bytes]:
    """A new command for ``agent_id`` and its canonical envelope bytes (to be signed)."""
    from tundra.core.crypto.primitives import new_id, random_bytes

    if not isinstance(agent_id, str) or not re.fullmatch(_ID_PATTERN, agent_id):
        raise InvalidInput(f"invalid agent id {_show(agent_id)}")
    normalized = validate_payload(type, payload)
    if (
        isinstance(ttl_seconds, bool)
        or not isinstance(ttl_seconds, int)
        or not 1 <= ttl_seconds * 1000 <= MAX_TTL_MS
    ):
        raise InvalidInput(
            f"a command lifetime of {ttl_seconds!r} s is out of range",
            hint=f"command_ttl_seconds must be between 1 and {MAX_TTL_MS // 1000}",
        )
    issued = int(epoch() * 1000) if now_ms is None else int(now_ms)
    command = Command(
        agent_id=agent_id,
        command_id=new_id(),
        nonce=random_bytes(16).hex(),
        issued_at_ms=issued,
        expires_at_ms=issued + ttl_seconds * 1000,
        type=type,
        payload=normalized,
    )
    return command, canonical_json(command.envelope_object())


def verify_command(
    envelope: bytes,
    signature: bytes,
    key_id: str,
    *,
    public_keys: Mapping[str, bytes],
    agent_id: str,
    now_ms: int,
) -> Command:
    """Check a signed command for this agent; the Command, or CommandRefused(reason).

    Order: shape of the inputs → key id known → signature → JSON shape and version → type and
    payload → audience → freshness. The caller then checks the nonce.
    """
    if not isinstance(envelope, bytes | bytearray | memoryview) or not isinstance(
        signature, bytes | bytearray | memoryview
    ):
        _refuse("malformed", "the command envelope and signature must be bytes")
    envelope, signature = bytes(envelope), bytes(signature)
    if not envelope or len(envelope) > MAX_ENVELOPE_BYTES:
        _refuse("malformed", f"the command envelope is empty or larger than {MAX_ENVELOPE_BYTES}")

    raw_key = public_keys.get(key_id) if isinstance(key_id, str) else None
    if raw_key is None:
        _refuse("key", f"the command is signed by an unknown key {_show(key_id)}")
    public_key = _load_public_key(raw_key, key_id)

    if len(signature) != _SIGNATURE_BYTES:
        _refuse("signature", "the command signature has the wrong length")
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(signature, SIGNING_CONTEXT + envelope)
    except InvalidSignature:
        _refuse("signature", "the command signature does not verify")

    command = _parse(envelope)

    if command.type not in COMMAND_TYPES:
        _refuse("type", f"the command type {_show(command.type)} is not allowed")
    try:
        payload = validate_payload(command.type, command.payload)
    except InvalidInput as exc:
        _refuse("payload", f"the command payload is invalid: {exc}")

    if command.agent_id != agent_id:
        _refuse("audience", "the command is addressed to another agent")

    if now_ms < command.issued_at_ms - CLOCK_SKEW_MS:
        _refuse("not-yet-valid", "the command was issued in the future (check the clocks)")
    if now_ms >= command.expires_at_ms:
        _refuse("expired", "the command has expired")
    if not 0 < command.ttl_ms <= MAX_TTL_MS:
        _refuse("ttl", f"the command's lifetime is not within 0 and {MAX_TTL_MS} ms")

    return Command(
        agent_id=command.agent_id,
        command_id=command.command_id,
        nonce=command.nonce,
        issued_at_ms=command.issued_at_ms,
        expires_at_ms=command.expires_at_ms,
        type=command.type,
        payload=payload,
    )


def _parse(envelope: bytes) -> Command:
    """The signed envelope as a Command: exactly the known fields, right types, canonical."""
    try:
        obj = json.loads(envelope.decode("ascii"), parse_constant=_no_constants)
    except (ValueError, RecursionError):
        _refuse("malformed", "the command envelope is not canonical JSON")
    if not isinstance(obj, dict) or set(obj) != _FIELDS:
        _refuse("malformed", "the command envelope does not have the expected fields")
    if type(obj["v"]) is not int or obj["v"] != ENVELOPE_VERSION:
        _refuse("malformed", f"unsupported command envelope version {_show(obj['v'])}")
    ints_ok = all(type(obj[k]) is int for k in ("issued_at_ms", "expires_at_ms"))
    strs_ok = all(isinstance(obj[k], str) for k in ("agent_id", "command_id", "nonce", "type"))
    if not (ints_ok and strs_ok and isinstance(obj["payload"], dict)):
        _refuse("malformed", "a command envelope field has the wrong type")
    if not re.fullmatch(_NONCE_PATTERN, obj["nonce"]):
        _refuse("malformed", "the command nonce is not 32 lowercase hex digits")
    if not re.fullmatch(_ID_PATTERN, obj["command_id"]):
        _refuse("malformed", "the command id is malformed")
    try:
        canonical = canonical_json(obj)
    except (ValueError, RecursionError):
        canonical = b""
    if canonical != envelope:
        # Duplicate keys, spacing or escapes: one command must have exactly one encoding.
        _refuse("malformed", "the command envelope is not canonical JSON")
    return Command(
        agent_id=obj["agent_id"],
        command_id=obj["command_id"],
        nonce=obj["nonce"],
        issued_at_ms=obj["issued_at_ms"],
        expires_at_ms=obj["expires_at_ms"],
        type=obj["type"],
        payload=obj["payload"],
    )


def _load_public_key(raw: Any, key_id: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not isinstance(raw, bytes | bytearray) or len(raw) != _PUBLIC_KEY_BYTES:
        _refuse("key", f"the public key {key_id!r} is not a raw Ed25519 key")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError:
        _refuse("key", f"the public key {key_id!r} is not a raw Ed25519 key")


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _show(value: Any) -> str:
    """A bounded repr for messages: input can be anything, and messages end up in logs."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _refuse(reason: str, message: str) -> NoReturn:
    raise CommandRefused(message, reason=reason)
