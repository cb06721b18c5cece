"""Fixtures for the key tests: an initialised home (schema, master key, keyring) per database."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tundra.core.clock import now_iso
from tundra.core.crypto import rotation
from tundra.core.crypto.primitives import make_private_dir, new_id
from tundra.core.principal import SYSTEM
from tundra.core.services import Services, build_services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work


@pytest.fixture
def bare_services(settings: Settings) -> Iterator[Services]:
    """Services on a migrated database with no master key and no keyring yet."""
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    services = build_services(settings)
    services.db.migrate()
    yield services
    services.close()


@pytest.fixture
def key_services(bare_services: Services, monkeypatch: pytest.MonkeyPatch) -> Services:
    """Services with a master key and keyring (term 1). No rotation grace period in unit tests."""
    monkeypatch.setattr(rotation, "ROTATION_GRACE", 0.0)
    assert bare_services.keys.create_master_key_if_missing()
    assert bare_services.keys.initialize_keyring(SYSTEM)
    return bare_services


def _add_users(services: Services, secrets: dict[str, bytes] | int) -> dict[str, bytes]:
    """Insert users with encrypted TOTP secrets; returns {user id: plaintext secret}."""
    if isinstance(secrets, int):
        secrets = {new_id(): f"secret-{i}".encode() for i in range(secrets)}
    with unit_of_work(services.db, SYSTEM) as uow:
        for user_id, secret in secrets.items():
            uow.execute(
                "INSERT INTO users (id, name, password_hash, totp_secret, created_at, updated_at)"
                " VALUES (:id, :name, 'x', :secret, :t, :t)",
                {
                    "id": user_id,
                    "name": f"u-{user_id}",
                    "t": now_iso(),
                    "secret": services.keys.encrypt("users", "totp_secret", user_id, secret),
                },
            )
        uow.record("test:users:insert", "users", {"count": len(secrets)})
    return secrets


def _read_secrets(services: Services) -> dict[str, bytes]:
    """Every user's TOTP secret, decrypted through the key service."""
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT id, totp_secret FROM users WHERE totp_secret IS NOT NULL")
    return {
        r["id"]: services.keys.decrypt("users", "totp_secret", r["id"], r["totp_secret"])
        for r in rows
    }


def _fresh(services: Services) -> Services:
    """New services on the same home and database: a new process's view."""
    return build_services(services.settings)


AddUsers = Callable[[Services, "dict[str, bytes] | int"], dict[str, bytes]]
ReadSecrets = Callable[[Services], dict[str, bytes]]
Fresh = Callable[[Services], Services]


@pytest.fixture
def add_users() -> AddUsers:
    """Insert users with encrypted TOTP secrets: ``add_users(services, 3)`` or ``{id: secret}``."""
    return _add_users


@pytest.fixture
def read_secrets() -> ReadSecrets:
    """Every user's TOTP secret, decrypted through the key service."""
    return _read_secrets


@pytest.fixture
def fresh() -> Fresh:
    """``fresh(services)``: new services on the same home and database (the caller closes them)."""
    return _fresh
