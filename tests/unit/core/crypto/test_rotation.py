"""Master and data key rotation in one process (the crash tests are in tests/integration)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tundra.core.clock import now_iso
from tundra.core.crypto import keyring, masterkey, rotation
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import DecryptionFailed, KeyMaterialError, PermissionDenied, ReauthRequired
from tundra.core.principal import SYSTEM, Principal, PrincipalKind, cli_principal
from tundra.core.services import Services, build_services
from tundra.core.uow import unit_of_work


def _actions(services: Services) -> list[str]:
    with services.db.read() as tx:
        return [r["action"] for r in tx.fetchall("SELECT action FROM audit_log ORDER BY seq")]


def _meta(services: Services) -> dict[str, str]:
    with services.db.read() as tx:
        return {r["key"]: r["value"] for r in tx.fetchall("SELECT key, value FROM meta")}


def test_master_rotation_rewraps_the_keyring_and_keeps_every_secret(
    key_services: Services, add_users: Any, read_secrets: Any, fresh: Any
) -> None:
    secrets = add_users(key_services, 5)
    path = key_services.settings.master_key_path
    old_file, old_kcv = path.read_bytes(), _meta(key_services)["kcv"]
    with key_services.db.read() as tx:
        old_wrapped = bytes(tx.fetchval("SELECT wrapped FROM keyring WHERE term = 1"))

    result = key_services.keys.rotate_master(SYSTEM)

    assert result.terms_rewrapped == 1
    assert path.read_bytes() != old_file
    assert oct(path.stat().st_mode & 0o7777) == "0o400"
    assert _meta(key_services)["kcv"] != old_kcv
    assert masterkey.kcv_matches(path.read_bytes()[:32], _meta(key_services)["kcv"])
    with key_services.db.read() as tx:
        assert bytes(tx.fetchval("SELECT wrapped FROM keyring WHERE term = 1")) != old_wrapped
    assert key_services.keys.paths.leftovers() == []
    assert _actions(key_services)[-1] == "keys:master:rotate"
    assert read_secrets(key_services) == secrets
    other = fresh(key_services)
    try:
        assert read_secrets(other) == secrets
        assert other.keys.verify().ok
    finally:
        other.close()
    # The old key is now a stranger to this database.
    path.chmod(0o600)
    path.write_bytes(old_file)
    path.chmod(0o400)
    with pytest.raises(KeyMaterialError, match="mismatch"):
        key_services.keys.master_key(reload=True)


def test_a_process_with_the_old_master_key_picks_up_the_new_one(
    key_services: Services, add_users: Any, read_secrets: Any, fresh: Any
) -> None:
    secrets = add_users(key_services, 2)
    stale = fresh(key_services)
    try:
        stale.keys.master_key()
        key_services.keys.rotate_master(SYSTEM)
        key_services.keys.rotate_data(SYSTEM)  # a term wrapped under the new master key
        assert read_secrets(stale) == secrets
    finally:
        stale.close()


def test_data_rotation_moves_every_row_and_retires_the_old_term(
    key_services: Services, add_users: Any, read_secrets: Any
) -> None:
    services = build_services(dataclasses.replace(key_services.settings, rotation_batch_size=3))
    try:
        secrets = add_users(services, 10)
        with services.db.read() as tx:
            sample_id, old_blob = next(
                iter(
                    (r["id"], bytes(r["totp_secret"]))
                    for r in tx.fetchall("SELECT id, totp_secret FROM users")
                )
            )
        with unit_of_work(services.db, SYSTEM) as uow:  # a user without TOTP stays untouched
            uow.execute(
                "INSERT INTO users (id, name, password_hash, created_at, updated_at)"
                " VALUES (:i, 'no-totp', 'x', :t, :t)",
                {"i": new_id(), "t": now_iso()},
            )
            uow.record("test:users:insert", "users", {})
        seen: list[tuple[int, int]] = []

        result = services.keys.rotate_data(SYSTEM, progress=lambda d, t: seen.append((d, t)))

        assert (result.term, result.resumed, result.rows_total) == (2, False, 10)
        assert result.rows_rewrapped == 10
        assert seen[0] == (0, 10)
        assert seen[-1] == (10, 10)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        meta = _meta(services)
        assert (meta["active_term"], meta["min_decrypt_term"]) == ("2", "2")
        assert "data_rotation" not in meta
        status = services.keys.status()
        assert status.rows["users.totp_secret"] == {2: 10}
        assert [(t.term, t.state) for t in status.terms] == [(1, "retired"), (2, "active")]
        assert read_secrets(services) == secrets
        actions = _actions(services)
        assert actions.count("keys:data:rotate-start") == 1
        assert actions.count("keys:data:rewrap") == 4  # 3 + 3 + 3 + 1
        assert actions[-1] == "keys:data:rotate-finish"
        with pytest.raises(DecryptionFailed, match="term 1 is retired"):
            services.keys.decrypt("users", "totp_secret", sample_id, old_blob)
        new = services.keys.encrypt("users", "totp_secret", "x", b"y")
        assert new[4:8] == b"\x00\x00\x00\x02"
        assert services.keys.verify().ok
    finally:
        services.close()


def test_an_interrupted_data_rotation_resumes(
    key_services: Services, add_users: Any, read_secrets: Any
) -> None:
    secrets = add_users(key_services, 4)
    state, resumed = rotation._start(key_services.keys, SYSTEM, None)
    assert (state["target"], resumed) == (2, False)
    # A process that still caches term 1 writes during the rotation: the finish sweeps it up.
    late = new_id()
    with unit_of_work(key_services.db, SYSTEM) as uow:
        uow.execute(
            "INSERT INTO users (id, name, password_hash, totp_secret, created_at,"
            " updated_at) VALUES (:i, 'late', 'x', :s, :t, :t)",
            {
                "i": late,
                "t": now_iso(),
                "s": key_services.keys.cipher(1, "users", "totp_secret").seal(late, b"L"),
            },
        )
        uow.record("test:users:insert", "users", {})
    assert key_services.keys.status().rotation is not None

    result = key_services.keys.rotate_data(SYSTEM)

    assert result.resumed
    assert result.term == 2
    assert key_services.keys.status().rows["users.totp_secret"] == {2: 5}
    assert read_secrets(key_services) == {**secrets, late: b"L"}
    assert _meta(key_services)["min_decrypt_term"] == "2"


def test_two_data_rotations_in_a_row(
    key_services: Services, add_users: Any, read_secrets: Any
) -> None:
    secrets = add_users(key_services, 3)
    key_services.keys.rotate_data(SYSTEM)
    key_services.keys.rotate_master(SYSTEM)
    result = key_services.keys.rotate_data(SYSTEM)
    assert result.term == 3
    assert read_secrets(key_services) == secrets
    assert key_services.keys.verify().ok


def test_another_process_sees_the_new_active_term(
    key_services: Services, monkeypatch: pytest.MonkeyPatch, fresh: Any
) -> None:
    monkeypatch.setattr(keyring, "ACTIVE_TERM_TTL", 0.0)
    other = fresh(key_services)
    try:
        assert other.keys.encrypt("users", "totp_secret", "r", b"v")[4:8] == b"\x00\x00\x00\x01"
        key_services.keys.rotate_data(SYSTEM)
        blob = other.keys.encrypt("users", "totp_secret", "r", b"v")
        assert blob[4:8] == b"\x00\x00\x00\x02"
        assert key_services.keys.decrypt("users", "totp_secret", "r", blob) == b"v"
    finally:
        other.close()


@pytest.mark.parametrize(
    ("who", "refusal"),
    [
        (cli_principal(), ReauthRequired),
        # An admin token is still refused: a token can never perform a sensitive operation.
        (Principal(PrincipalKind.TOKEN, "tnd_live_abc", is_admin=True,
                   scopes=frozenset({"admin"})), ReauthRequired),
        # A token without the admin scope is refused before that, as not an administrator.
        (Principal(PrincipalKind.TOKEN, "tnd_live_abc"), PermissionDenied),
    ],
    ids=["cli", "admin-token", "plain-token"],
)
def test_rotations_need_an_admin_and_a_fresh_authentication(
    key_services: Services, who: Principal, refusal: type[Exception]
) -> None:
    before = (key_services.settings.master_key_path.read_bytes(), _meta(key_services))
    with pytest.raises(refusal):
        key_services.keys.rotate_master(who)
    with pytest.raises(refusal):
        key_services.keys.rotate_data(who)
    assert (key_services.settings.master_key_path.read_bytes(), _meta(key_services)) == before


def test_a_cli_operator_inside_the_window_may_rotate(key_services: Services) -> None:
    operator = cli_principal()
    key_services.reauth.stamp(operator)
    key_services.keys.rotate_master(operator)
    key_services.keys.rotate_data(operator)
    assert _meta(key_services)["active_term"] == "2"


def test_crashpoint_is_inert_unless_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(rotation.CRASHPOINT_ENV, "some:other:3")
    rotation.crashpoint("master:begin")  # a different name: nothing happens
    monkeypatch.delenv(rotation.CRASHPOINT_ENV)
    rotation.crashpoint("master:begin")
