"""The chain format cannot drift: golden hashes, the fast encoding, redaction, the unit of work."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from audithelpers import row, write_rows
from hypothesis import given
from hypothesis import strategies as st

from tundra.core.audit.chain import (
    DOMAIN,
    FIELDS,
    GENESIS,
    REDACTED,
    body_head,
    body_tail,
    canonical_body,
    canonical_json,
    chain_hash,
    hash_at,
    redact,
)
from tundra.core.errors import AuditMissing
from tundra.core.identity.token_format import generate
from tundra.core.principal import cli_principal
from tundra.core.uow import unit_of_work

# Three rows with fixed times; their hashes are hard-coded so the format can never change
# silently. If this test fails, the audit format changed: every existing chain would break.
GOLDEN: list[dict[str, Any]] = [
    {"seq": 1, "occurred_at": "2024-05-01T12:00:00.000000Z", "actor": "system",
     "action": "system:home:init", "resource": "home:/var/lib/tundra",
     "request_id": "000000000000000000000001",
     "details": {"created": ["database schema", "master key"]}},
    {"seq": 2, "occurred_at": "2024-05-01T12:00:01.250000Z", "actor": "cli:alice",
     "action": "fleet:server:create", "resource": "server:web-1",
     "request_id": "000000000000000000000002",
     "details": {"name": "web-1", "address": "203.0.113.10", "tags": ["prod"]}},
    {"seq": 3, "occurred_at": "2024-05-01T12:00:02.999999Z", "actor": "user:bob",
     "action": "identity:user:login", "resource": "user:bob",
     "request_id": "000000000000000000000003",
     "details": {"note": 'é ünïcode "quoted" \\ back\nslash\t\x01', "n": 1.5, "ok": True,
                 "none": None, "z": {"b": 2, "a": [1, "x"]}}},
]
GOLDEN_HASHES = [
    "20a1bc74a42286da1018ef256db3386ee4385867292f8a22f10f084ee6720aa2",
    "98eb8c6d58027655e49ea6eb59f01f87b2d11d667386618091d2ed1929bc9a5d",
    "a9a63469f78a4186240cf78d3d4e5cf5eff281e92ecc24032a8c2e457c0dbac8",
]
GOLDEN_BODY_3 = (
    b'{"action":"identity:user:login","actor":"user:bob","details":{"n":1.5,"none":null,'
    b'"note":"\xc3\xa9 \xc3\xbcn\xc3\xafcode \\"quoted\\" \\\\ back\\nslash\\t\\u0001","ok":true,'
    b'"z":{"a":[1,"x"],"b":2}},"occurred_at":"2024-05-01T12:00:02.999999Z",'
    b'"request_id":"000000000000000000000003","resource":"user:bob","seq":3}'
)


def test_golden_chain_hashes_never_change() -> None:
    prev = GENESIS
    for fields, expected in zip(GOLDEN, GOLDEN_HASHES, strict=True):
        assert chain_hash(fields, prev) == expected
        prev = expected


def test_golden_canonical_body_bytes() -> None:
    assert canonical_json({k: GOLDEN[2][k] for k in FIELDS}) == GOLDEN_BODY_3


def test_the_hash_is_the_documented_formula() -> None:
    """SHA3-256(b"tundra-audit-v1" || u64be(seq) || prev 32 raw bytes || canonical JSON)."""
    message = DOMAIN + (3).to_bytes(8, "big") + bytes.fromhex(GOLDEN_HASHES[1]) + GOLDEN_BODY_3
    assert hashlib.sha3_256(message).hexdigest() == GOLDEN_HASHES[2]


def test_the_chain_covers_content_seq_and_predecessor() -> None:
    base = chain_hash(GOLDEN[1], GOLDEN_HASHES[0])
    assert chain_hash({**GOLDEN[1], "resource": "server:web-2"}, GOLDEN_HASHES[0]) != base
    assert chain_hash({**GOLDEN[1], "seq": 3}, GOLDEN_HASHES[0]) != base
    assert chain_hash(GOLDEN[1], GENESIS) != base


_TEXT = st.text(st.characters(codec="utf-8"), max_size=30)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=12,
)


@given(action=_TEXT, actor=_TEXT, resource=_TEXT, request_id=_TEXT, occurred_at=_TEXT,
       details=st.dictionaries(_TEXT, _JSON, max_size=5), seq=st.integers(1, 2**63))
def test_fast_encoding_is_byte_identical_to_canonical_json(
        action: str, actor: str, resource: str, request_id: str, occurred_at: str,
        details: dict[str, Any], seq: int) -> None:
    fields = {"seq": seq, "occurred_at": occurred_at, "actor": actor, "action": action,
              "resource": resource, "request_id": request_id, "details": details}
    fast = (body_head(action=action, actor=actor) + canonical_json(details).decode()
            + body_tail(occurred_at=occurred_at, request_id=request_id, resource=resource)
            + f"{seq}}}").encode()
    assert fast == canonical_json(fields)
    assert fast == canonical_body(seq, occurred_at, actor, action, resource, request_id,
                                  canonical_json(details).decode())
    without_seq = fast[: -len(f"{seq}}}")]
    assert hash_at(seq, bytes(32), without_seq) == chain_hash(fields, GENESIS)


def _token() -> str:
    return generate("live")


SECRET_FIELDS = ["password", "new_password", "client_secret", "SECRET", "totp_code", "code",
                 "private_key", "api_key", "passphrase", "credentials", "authorization",
                 "session_cookie"]


@pytest.mark.parametrize("key", SECRET_FIELDS)
def test_secret_fields_are_redacted_by_name(key: str) -> None:
    redacted = redact({key: "hunter2-value", "nested": [{key: {"deep": "hunter2-value"}}]})
    assert "hunter2-value" not in canonical_json(redacted).decode()
    assert redacted[key] == REDACTED


def test_secret_looking_values_are_redacted_anywhere() -> None:
    token = _token()
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
    details = {
        "note": f"created {token} for ci",
        "list": [token, {"inner": token}],
        "key_pem": pem,
        "dsn": "postgresql://tundra:s3cr3t-pw@db.example:5432/tundra",
        "material": b"\x00raw key bytes",
        "name": "web-1",
    }
    out = canonical_json(redact(details)).decode()
    for secret in (token, "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC", "s3cr3t-pw", "raw key bytes"):
        assert secret not in out
    assert "web-1" in out
    assert "postgresql://tundra:[redacted]@db.example:5432/tundra" in out


def test_harmless_fields_survive_redaction() -> None:
    details = {"name": "web-1", "token_prefix": "tnd_live_abc", "scopes": ["servers:read"],
               "count": 3, "address": "203.0.113.10"}
    assert redact(details) == details


def test_stored_rows_hold_no_secret(audit_services) -> None:
    token = _token()
    with unit_of_work(audit_services.db, cli_principal()) as uow:
        uow.record("identity:token:create", "token:ci", {"token": token, "password": "pw-123456",
                                                         "name": "ci"})
    with audit_services.db.read() as tx:
        stored = tx.fetchall("SELECT * FROM audit_log")
    dump = json.dumps(stored)
    assert token not in dump
    assert "pw-123456" not in dump
    assert json.loads(stored[0]["details"])["name"] == "ci"


def test_append_stores_canonical_details_and_the_formula_hash(audit_services) -> None:
    write_rows(audit_services, 3)
    prev = GENESIS
    for seq in (1, 2, 3):
        stored = row(audit_services, seq)
        details = json.loads(stored["details"])
        assert stored["details"] == canonical_json(details).decode()
        assert stored["prev_hash"] == prev
        assert stored["chain_hash"] == chain_hash({**stored, "details": details}, prev)
        prev = stored["chain_hash"]


def test_unit_of_work_refuses_a_state_change_without_an_audit_event(audit_services) -> None:
    db = audit_services.db
    with pytest.raises(AuditMissing), unit_of_work(db, cli_principal()) as uow:
        uow.execute("INSERT INTO meta (key, value) VALUES ('sneaky', 'change')")
    with db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM meta WHERE key = 'sneaky'") == 0
        assert tx.fetchval("SELECT count(*) FROM audit_log") == 0


def test_a_failing_audit_append_rolls_the_change_back(audit_services) -> None:
    db = audit_services.db

    def change_with_unencodable_event() -> None:
        with unit_of_work(db, cli_principal()) as uow:
            uow.execute("INSERT INTO meta (key, value) VALUES ('k', 'v')")
            uow.record("fleet:server:create", "server:x", {"when": object()})

    with pytest.raises(TypeError):  # raised by the audit append, inside the transaction
        change_with_unencodable_event()
    with db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM meta WHERE key = 'k'") == 0
        assert tx.fetchval("SELECT count(*) FROM audit_log") == 0
