"""The chain: canonical row encoding, the chain hash, redaction and the append under a lock.

``chain_hash = SHA3-256(b"tundra-audit-v1" || u64be(seq) || prev_hash || canonical_json(row))``
where ``prev_hash`` is the previous row's 32-byte hash (32 zero bytes before the first row) and
the canonical JSON holds the row's fields (seq, occurred_at, actor, action, resource, request_id,
details) with sorted keys, no spaces, UTF-8. See docs/audit.md.

:func:`chain_hash` is the reference definition. Verification builds the same bytes faster with
:func:`body_head` / :func:`body_tail` (the canonical body cut around ``details`` and ``seq``); a
test keeps the two byte-identical.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from tundra.core.clock import now_iso
from tundra.core.storage.db import Transaction

DOMAIN = b"tundra-audit-v1"
GENESIS = "00" * 32
FIELDS = ("seq", "occurred_at", "actor", "action", "resource", "request_id", "details")
#: Every column of an audit row, in the order exports and people read them.
ROW_COLUMNS = (*FIELDS, "prev_hash", "chain_hash")
#: Every field of an exported row, in canonical (sorted) order.
EXPORT_FIELDS = tuple(sorted(ROW_COLUMNS))

#: SHA3-256 already fed the domain separator; ``.copy()`` it instead of starting over per row.
PREFIXED_SHA3 = hashlib.sha3_256(DOMAIN)

REDACTED = "[redacted]"


@functools.cache
def _patterns() -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """The redaction patterns, compiled on first use: read-only commands never pay for them."""
    secret_key = re.compile(
        r"(^|_)(password|passwd|passphrase|secret|plaintext|private_key|secret_key|api_key|otp"
        r"|totp_code|code|credential|authorization|cookie)s?($|_)",
        re.IGNORECASE,
    )
    token_like = re.compile(r"tnd_[a-z0-9]{1,16}_[A-Za-z0-9_-]{43}")
    pem_private = re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)", re.DOTALL
    )
    # scheme://user:password@host: keep the user and host, drop the password.
    url_password = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*):[^/\s@]*@")
    return secret_key, token_like, pem_private, url_password


def canonical_json(value: Any) -> bytes:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def redact(details: Any) -> Any:
    """Replace anything secret-looking in ``details``.

    By key name (password, secret, token codes, …), any string that looks like an API token, a
    PEM private key or a URL password, and any ``bytes`` value (key material is bytes; nothing an
    operator needs to read is).
    """
    secret_key, token_like, pem_private, url_password = _patterns()
    if isinstance(details, Mapping):
        return {
            str(k): (REDACTED if secret_key.search(str(k)) else redact(v))
            for k, v in details.items()
        }
    if isinstance(details, list | tuple | set | frozenset):
        return [redact(v) for v in details]
    if isinstance(details, str):
        text = token_like.sub(REDACTED, details)
        text = pem_private.sub(REDACTED, text)
        return url_password.sub(rf"\1:{REDACTED}@", text)
    if isinstance(details, bytes | bytearray | memoryview):
        return REDACTED
    return details


def chain_hash(row: Mapping[str, Any], prev_hash: str) -> str:
    """The chain hash of ``row`` (with ``details`` as a mapping) after ``prev_hash`` (hex)."""
    body = {name: row[name] for name in FIELDS}
    digest = hashlib.sha3_256()
    digest.update(DOMAIN)
    digest.update(int(row["seq"]).to_bytes(8, "big"))
    digest.update(bytes.fromhex(prev_hash))
    digest.update(canonical_json(body))
    return digest.hexdigest()


def body_head(*, action: str, actor: str) -> str:
    """The canonical body up to the details value: ``{"action":…,"actor":…,"details":``."""
    return f'{{"action":{encode_basestring(action)},"actor":{encode_basestring(actor)},"details":'


def body_tail(*, occurred_at: str, request_id: str, resource: str) -> str:
    """The canonical body after the details value, up to the seq value: ``,…,"seq":``."""
    return (
        f',"occurred_at":{encode_basestring(occurred_at)},"request_id":'
        f'{encode_basestring(request_id)},"resource":{encode_basestring(resource)},"seq":'
    )


def canonical_body(
    seq: int,
    occurred_at: str,
    actor: str,
    action: str,
    resource: str,
    request_id: str,
    details_json: str,
) -> bytes:
    """The canonical body of a row whose details are already canonical JSON text (positional
    and in one f-string because the database verifier calls it once per row)."""
    enc = encode_basestring
    return (
        f'{{"action":{enc(action)},"actor":{enc(actor)},"details":{details_json},'
        f'"occurred_at":{enc(occurred_at)},"request_id":{enc(request_id)},'
        f'"resource":{enc(resource)},"seq":{seq}}}'
    ).encode()


def hash_at(seq: int, prev_raw: bytes, body_without_seq: bytes) -> str:
    """The chain hash of a body cut before its seq value, placed at ``seq`` after ``prev_raw``."""
    digest = PREFIXED_SHA3.copy()
    digest.update(b"%b%b%b%d}" % (seq.to_bytes(8, "big"), prev_raw, body_without_seq, seq))
    return digest.hexdigest()


@dataclass(frozen=True)
class AuditEvent:
    """What a unit of work records; seq and hashes are assigned at append."""

    action: str
    resource: str
    details: Mapping[str, Any]


@dataclass(frozen=True)
class AuditRow:
    seq: int
    occurred_at: str
    actor: str
    action: str
    resource: str
    request_id: str
    details: Mapping[str, Any]
    prev_hash: str
    chain_hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "occurred_at": self.occurred_at,
            "actor": self.actor,
            "action": self.action,
            "resource": self.resource,
            "request_id": self.request_id,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "chain_hash": self.chain_hash,
        }

    @classmethod
    def from_db(cls, row: Mapping[str, Any]) -> AuditRow:
        details = row["details"]
        if isinstance(details, str):
            try:
                details = json.loads(details)
            except ValueError:
                # Only a tampered row holds non-JSON details; show it rather than fail to list.
                details = {"unparseable": details}
        if not isinstance(details, Mapping):
            details = {"value": details}
        return cls(
            seq=int(row["seq"]),
            occurred_at=row["occurred_at"],
            actor=row["actor"],
            action=row["action"],
            resource=row["resource"],
            request_id=row["request_id"],
            details=details,
            prev_hash=row["prev_hash"],
            chain_hash=row["chain_hash"],
        )


def append(
    tx: Transaction, *, actor: str, request_id: str, events: Sequence[AuditEvent]
) -> list[AuditRow]:
    """Append ``events`` to the chain inside ``tx``, holding the audit lock until commit."""
    tx.lock_audit()
    head = tx.fetchone("SELECT seq, chain_hash FROM audit_log ORDER BY seq DESC LIMIT 1")
    seq, prev = (int(head["seq"]), head["chain_hash"]) if head else (0, GENESIS)
    written = []
    for event in events:
        seq += 1
        details = redact(dict(event.details))
        fields = {
            "seq": seq,
            "occurred_at": now_iso(),
            "actor": actor,
            "action": str(event.action),
            "resource": event.resource,
            "request_id": request_id,
            "details": details,
        }
        digest = chain_hash(fields, prev)
        tx.execute(
            "INSERT INTO audit_log (seq, occurred_at, actor, action, resource, request_id,"
            " details, prev_hash, chain_hash) VALUES (:seq, :occurred_at, :actor, :action,"
            " :resource, :request_id, :details, :prev_hash, :chain_hash)",
            {
                **fields,
                "details": canonical_json(details).decode("utf-8"),
                "prev_hash": prev,
                "chain_hash": digest,
            },
        )
        written.append(AuditRow(**fields, prev_hash=prev, chain_hash=digest))
        prev = digest
    return written
