"""`tundra key …` through the CLI boundary, asserting on core state."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from tundra.cli.app import cli
from tundra.cli.exit import ExitStatus
from tundra.core.crypto import rotation
from tundra.core.crypto.primitives import make_private_dir
from tundra.core.principal import SYSTEM, cli_principal
from tundra.core.services import Services, build_services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work


@pytest.fixture
def services(settings: Settings) -> Iterator[Services]:
    """A home with a master key and keyring (no admin needed for key commands)."""
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    svc = build_services(settings)
    svc.db.migrate()
    svc.keys.create_master_key_if_missing()
    svc.keys.initialize_keyring(SYSTEM)
    yield svc
    svc.close()


@pytest.fixture
def env(services: Services, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(rotation, "ROTATION_GRACE", 0.0)
    s = services.settings
    return {
        "TUNDRA_HOME": str(s.home),
        "TUNDRA_DATABASE_URL": s.database_url,
        "TUNDRA_PASSWORD_PROFILE": "test",
    }


def run(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=env)


def _add_secret(services: Services, user_id: str = "u-1") -> None:
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "INSERT INTO users (id, name, password_hash, totp_secret, created_at,"
            " updated_at) VALUES (:i, :i, 'x', :s, 't', 't')",
            {"i": user_id, "s": services.keys.encrypt("users", "totp_secret", user_id, b"s")},
        )
        uow.record("test:users:insert", "users", {})


def test_status_json_and_tables(services: Services, env: dict[str, str]) -> None:
    _add_secret(services)
    result = run(env, "key", "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["active_term"] == 1
    assert data["files_ok"] is True
    assert data["rows"]["users.totp_secret"] == {"1": 1}
    shown = run(env, "key", "status")
    assert shown.exit_code == 0
    for text in ("Master key file", "Terms", "users.totp_secret", "active"):
        assert text in shown.stdout


def test_verify_exit_codes(services: Services, env: dict[str, str]) -> None:
    _add_secret(services)
    ok = run(env, "key", "verify", "--json")
    assert ok.exit_code == 0
    assert json.loads(ok.stdout)["ok"] is True
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute("UPDATE users SET id = 'u-2' WHERE id = 'u-1'")  # the AAD no longer matches
        uow.record("test:users:move", "users", {})
    bad = run(env, "key", "verify")
    assert bad.exit_code == ExitStatus.FAILURE, bad.stderr
    assert "users.totp_secret of row u-2" in bad.stderr


def test_a_bad_key_file_is_a_key_error(services: Services, env: dict[str, str]) -> None:
    services.settings.master_key_path.chmod(0o644)
    result = run(env, "key", "verify")
    assert result.exit_code == ExitStatus.FAILURE
    assert "chmod 0400" in result.stderr


def test_rotation_without_login_is_refused(services: Services, env: dict[str, str]) -> None:
    before = services.settings.master_key_path.read_bytes()
    result = run(env, "key", "rotate")
    assert result.exit_code == ExitStatus.PERMISSION_DENIED
    assert "tundra login" in result.stderr
    assert services.settings.master_key_path.read_bytes() == before


def test_rotations_after_login(services: Services, env: dict[str, str]) -> None:
    _add_secret(services)
    services.reauth.stamp(cli_principal())
    before = services.settings.master_key_path.read_bytes()
    master = run(env, "key", "rotate", "--json")
    assert master.exit_code == 0, master.output
    assert json.loads(master.stdout) == {"terms_rewrapped": 1}
    assert services.settings.master_key_path.read_bytes() != before
    data = run(env, "key", "rotate", "--data")
    assert data.exit_code == 0, data.output
    assert "term 2 is active" in data.stderr
    status = services.keys.status()
    assert (status.active_term, status.min_decrypt_term) == (2, 2)
    assert status.rows["users.totp_secret"] == {2: 1}
