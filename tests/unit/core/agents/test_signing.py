"""The command-signing key: made at init, sealed at rest, signs what agents verify, survives a
data-key rotation, and a process notices when the active key changes."""

from __future__ import annotations

from typing import Any

import pytest
from agenthelpers import audit_rows
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tundra.core.agents import signing
from tundra.core.agents.envelope import build_envelope, key_id_for, verify_command
from tundra.core.audit.actions import Action
from tundra.core.crypto import rotation
from tundra.core.errors import DecryptionFailed, NotInitialized
from tundra.core.principal import SYSTEM
from tundra.core.services import Services, build_services
from tundra.core.uow import unit_of_work

AGENT = "f" * 32


def _key_rows(services: Services) -> list[dict[str, Any]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM signing_keys ORDER BY created_at")
    return [
        {**r, "public_key": bytes(r["public_key"]), "private_key": bytes(r["private_key"])}
        for r in rows
    ]


def _signed(services: Services) -> tuple[bytes, bytes, str]:
    _, envelope = build_envelope(agent_id=AGENT, type="ping", payload={}, ttl_seconds=30)
    signature, key_id = services.command_signer.sign(envelope)
    return envelope, signature, key_id


def _verifies(services: Services, envelope: bytes, signature: bytes, key_id: str) -> bool:
    import time

    command = verify_command(
        envelope,
        signature,
        key_id,
        public_keys=dict(services.command_signer.public_keys()),
        agent_id=AGENT,
        now_ms=int(time.time() * 1000),
    )
    return command.type == "ping"


def test_init_creates_exactly_one_active_key_and_audits_it(services: Services) -> None:
    rows = _key_rows(services)
    assert len(rows) == 1
    row = rows[0]
    assert (row["purpose"], row["status"]) == ("command", "active")
    assert len(row["public_key"]) == 32
    assert row["key_id"] == key_id_for(row["public_key"])
    assert services.command_signer.public_keys() == [(row["key_id"], row["public_key"])]
    created = audit_rows(services, Action.COMMAND_KEY_CREATE)
    assert [r["resource"] for r in created] == [f"signing-key:{row['key_id']}"]
    # Idempotent: a second init changes nothing.
    assert services.command_signer.ensure_key(SYSTEM) is False
    assert len(_key_rows(services)) == 1
    assert len(audit_rows(services, Action.COMMAND_KEY_CREATE)) == 1


def test_the_private_key_is_sealed_at_rest(services: Services) -> None:
    row = _key_rows(services)[0]
    sealed = row["private_key"]
    assert sealed.startswith(b"tnd")  # the envelope format of every encrypted column
    raw = services.keys.decrypt("signing_keys", "private_key", row["id"], sealed)
    assert len(raw) == 32
    assert raw not in sealed
    private = Ed25519PrivateKey.from_private_bytes(raw)
    assert private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == row["public_key"]
    # Bound to its row and column: a copy elsewhere does not open.
    with pytest.raises(DecryptionFailed):
        services.keys.decrypt("signing_keys", "private_key", "another-row", sealed)
    with pytest.raises(DecryptionFailed):
        services.keys.decrypt("pki_keys", "private_key", row["id"], sealed)
    # Nothing in the whole database holds the raw key.
    with services.db.read() as tx:
        audit = tx.fetchall("SELECT details FROM audit_log")
    assert raw.hex() not in str(audit)


def test_sign_and_verify_round_trip(services: Services) -> None:
    envelope, signature, key_id = _signed(services)
    assert key_id == _key_rows(services)[0]["key_id"]
    assert _verifies(services, envelope, signature, key_id)
    # Another process (a fresh container on the same home) signs with the same key.
    other = build_services(services.settings)
    try:
        # Ed25519 is deterministic: the same signature means the same key.
        assert other.command_signer.sign(envelope) == (signature, key_id)
    finally:
        other.close()


def test_signing_survives_a_data_key_rotation(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rotation, "ROTATION_GRACE", 0.0)
    envelope, signature, key_id = _signed(services)
    before = _key_rows(services)[0]["private_key"]

    result = services.keys.rotate_data(SYSTEM)  # what `tundra key rotate --data` runs

    after = _key_rows(services)[0]["private_key"]
    assert after != before
    assert after[4:8] == result.term.to_bytes(4, "big")  # re-wrapped under the new term
    assert services.keys.status().rows["signing_keys.private_key"] == {result.term: 1}
    with pytest.raises(DecryptionFailed):  # the old term is retired
        services.keys.decrypt("signing_keys", "private_key", _key_rows(services)[0]["id"], before)
    # The cached key in this process and a fresh process after the rotation both sign the same.
    assert services.command_signer.sign(envelope) == (signature, key_id)
    other = build_services(services.settings)
    try:
        assert other.command_signer.sign(envelope) == (signature, key_id)
        assert _verifies(other, envelope, signature, key_id)
    finally:
        other.close()


def test_a_replaced_key_is_noticed(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signing, "KEY_CHECK_SECONDS", 0.0)
    envelope, _, old_id = _signed(services)
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute("UPDATE signing_keys SET status = 'retired'")
        uow.record("test:signing-key:retire", f"signing-key:{old_id}", {})
    other = build_services(services.settings)
    try:
        assert other.command_signer.ensure_key(SYSTEM) is True
    finally:
        other.close()
    signature, new_id = services.command_signer.sign(envelope)
    assert new_id != old_id
    assert [k for k, _ in services.command_signer.public_keys()] == [new_id]
    assert _verifies(services, envelope, signature, new_id)


def test_the_cache_spares_the_database_between_checks(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    services.command_signer.sign(b"{}")
    calls: list[str] = []
    original = services.keys.decrypt

    def counting(*args: object) -> bytes:
        calls.append("decrypt")
        return original(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(services.keys, "decrypt", counting)
    for _ in range(20):
        services.command_signer.sign(b"{}")
    monkeypatch.setattr(signing, "KEY_CHECK_SECONDS", 0.0)
    services.command_signer.sign(b"{}")  # checks the key id, still the same key: no decrypt
    assert calls == []


def test_signing_without_a_key_says_how_to_fix_it(services: Services) -> None:
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute("DELETE FROM signing_keys")
        uow.record("test:signing-key:delete", "signing-key:*", {})
    other = build_services(services.settings)
    try:
        with pytest.raises(NotInitialized, match="no command signing key") as caught:
            other.command_signer.sign(b"{}")
        assert caught.value.hint == "run `tundra init`"
        assert other.command_signer.public_keys() == []
        assert other.command_signer.ensure_key(SYSTEM) is True
        assert len(other.command_signer.public_keys()) == 1
    finally:
        other.close()
