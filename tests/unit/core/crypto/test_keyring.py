"""The key service: lazy loading, use inside units of work, status and verify."""

from __future__ import annotations

from typing import Any

import pytest

from tundra.core.crypto import keyring
from tundra.core.errors import KeyMaterialError, NotInitialized
from tundra.core.principal import SYSTEM
from tundra.core.services import Services, build_services
from tundra.core.uow import unit_of_work


def test_initialise_writes_kcv_term_one_and_an_audit_row(key_services: Services) -> None:
    with key_services.db.read() as tx:
        meta = {r["key"]: r["value"] for r in tx.fetchall("SELECT key, value FROM meta")}
        terms = tx.fetchall("SELECT term, wrapped FROM keyring")
        actions = [r["action"] for r in tx.fetchall("SELECT action FROM audit_log")]
    assert meta["active_term"] == "1"
    assert meta["min_decrypt_term"] == "1"
    assert len(meta["kcv"]) == 64
    assert [r["term"] for r in terms] == [1]
    assert len(bytes(terms[0]["wrapped"])) == 64
    assert "keys:keyring:init" in actions


def test_encrypt_inside_a_unit_of_work_on_a_cold_process(
    key_services: Services, add_users: Any, fresh: Any
) -> None:
    """Other services call encrypt inside their transaction: the first call loads the keys."""
    other = fresh(key_services)
    try:
        secrets = add_users(other, 3)
    finally:
        other.close()
    reader = fresh(key_services)
    try:
        with unit_of_work(reader.db, SYSTEM) as uow:
            rows = uow.fetchall("SELECT id, totp_secret FROM users")
            got = {
                r["id"]: reader.keys.decrypt("users", "totp_secret", r["id"], r["totp_secret"])
                for r in rows
            }
        assert got == secrets
    finally:
        reader.close()


def test_master_key_is_loaded_only_when_needed(key_services: Services, fresh: Any) -> None:
    services = fresh(key_services)
    try:
        services.keys.status()
        assert services.keys._master is None
        services.keys.encrypt("users", "totp_secret", "r", b"x")
        assert services.keys._master is not None
    finally:
        services.close()


def test_unregistered_columns_are_refused(key_services: Services) -> None:
    with pytest.raises(ValueError, match="ENCRYPTED_COLUMNS"):
        key_services.keys.encrypt("servers", "address", "r", b"x")
    assert ("users", "totp_secret") in keyring.ENCRYPTED_COLUMNS


def test_encrypt_before_init_says_so(bare_services: Services) -> None:
    with pytest.raises(NotInitialized):
        bare_services.keys.encrypt("users", "totp_secret", "r", b"x")


def test_status_reports_files_terms_and_rows(key_services: Services, add_users: Any) -> None:
    add_users(key_services, 4)
    status = key_services.keys.status()
    assert status.initialized
    assert status.files_ok, status.file_checks
    assert status.active_term == 1
    assert status.min_decrypt_term == 1
    assert [(t.term, t.state) for t in status.terms] == [(1, "active")]
    assert status.rows["users.totp_secret"] == {1: 4}
    assert status.rotation is None
    data = status.as_dict()
    assert data["rows"]["users.totp_secret"] == {"1": 4}
    assert data["rotation_in_progress"] is False


def test_status_shows_a_bad_file_without_raising(key_services: Services) -> None:
    key_services.settings.master_key_path.chmod(0o644)
    status = key_services.keys.status()
    assert not status.files_ok
    assert any("0644" in c.detail for c in status.file_checks)


def test_verify_is_ok_then_finds_a_bad_value(key_services: Services, add_users: Any) -> None:
    secrets = add_users(key_services, 3)
    report = key_services.keys.verify()
    assert report.ok, report.problems
    assert report.values_checked == 3
    assert report.terms_checked == 1
    victim = sorted(secrets)[0]
    with unit_of_work(key_services.db, SYSTEM) as uow:
        uow.execute(
            "UPDATE users SET totp_secret = (SELECT totp_secret FROM users WHERE id = :o)"
            " WHERE id = :v",
            {"o": sorted(secrets)[1], "v": victim},
        )
        uow.record("test:users:swap", "users", {})
    report = key_services.keys.verify()
    assert not report.ok
    assert report.values_failed == 1
    assert any(victim in p for p in report.problems)
    assert report.as_dict()["ok"] is False


def test_verify_reports_a_wrong_key(key_services: Services) -> None:
    from tundra.core.crypto import masterkey

    path = key_services.settings.master_key_path
    path.unlink()
    masterkey.write_key_file(path, masterkey.new_key())
    report = key_services.keys.verify()
    assert not report.ok
    assert any("key-check value mismatch" in p for p in report.problems)


def test_verify_reports_a_corrupt_keyring_entry(key_services: Services) -> None:
    with unit_of_work(key_services.db, SYSTEM) as uow:
        wrapped = bytearray(uow.fetchval("SELECT wrapped FROM keyring WHERE term = 1"))
        wrapped[30] ^= 1
        uow.execute("UPDATE keyring SET wrapped = :w WHERE term = 1", {"w": bytes(wrapped)})
        uow.record("test:keyring:damage", "keyring", {})
    report = key_services.keys.verify()
    assert any("term 1" in p for p in report.problems)
    with pytest.raises(KeyMaterialError):
        fresh_services_decrypt(key_services)


def fresh_services_decrypt(services: Services) -> None:
    other = build_services(services.settings)
    try:
        other.keys.encrypt("users", "totp_secret", "r", b"x")
    finally:
        other.close()


def test_secrets_survive_a_new_process(
    key_services: Services, add_users: Any, read_secrets: Any, fresh: Any
) -> None:
    secrets = add_users(key_services, 5)
    other = fresh(key_services)
    try:
        assert read_secrets(other) == secrets
    finally:
        other.close()
