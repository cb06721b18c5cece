"""Kill rotations at every step, in a real subprocess, and prove no secret is ever lost.

Each rotation runs in ``python -c`` on the same home and database; ``TUNDRA_CRASHPOINT=name:nth``
makes it SIGKILL itself at a named step (a test-only hook in tundra/core/crypto/rotation.py), and a
few runs are killed from outside after a random delay in the middle of a data rewrap. After every
kill a fresh set of services (a new process's view) must decrypt every secret, re-running the
rotation must complete, and ``verify()`` must be ok. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tundra.core.clock import now_iso
from tundra.core.crypto import masterkey, rotation
from tundra.core.crypto.primitives import make_private_dir, new_id
from tundra.core.principal import SYSTEM
from tundra.core.services import Services, build_services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work

SCRIPT = """
import sys
from tundra.core.crypto import rotation
from tundra.core.principal import SYSTEM
from tundra.core.services import build_services
rotation.ROTATION_GRACE = 0.0
services = build_services()
try:
    if sys.argv[1] == "master":
        services.keys.rotate_master(SYSTEM)
    else:
        services.keys.rotate_data(SYSTEM)
finally:
    services.close()
"""

MASTER_POINTS = [
    "master:begin",
    "master:new-written",
    "master:prev-linked",
    "master:key-replaced",
    "master:before-commit",
    "master:committed",
    "master:done",
]
#: Points where the database has not committed the new key-check value yet: rolled back.
MASTER_ROLLED_BACK = {
    "master:begin",
    "master:new-written",
    "master:prev-linked",
    "master:key-replaced",
    "master:before-commit",
}
DATA_POINTS = [
    "data:begin",
    "data:before-start-commit",
    "data:started",
    "data:in-batch:1",
    "data:batch-committed:1",
    "data:in-batch:3",
    "data:batch-committed:3",
    "data:before-finish",
    "data:in-finish",
    "data:finished",
]


def _env(settings: Settings, crashpoint: str | None, batch: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    env.update(
        TUNDRA_HOME=str(settings.home),
        TUNDRA_DATABASE_URL=settings.database_url,
        TUNDRA_PASSWORD_PROFILE="test",
        TUNDRA_ROTATION_BATCH_SIZE=str(batch),
    )
    if crashpoint:
        env[rotation.CRASHPOINT_ENV] = crashpoint
    return env


def _run(settings: Settings, kind: str, *, crashpoint: str | None = None, batch: int = 4) -> int:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, kind],
        capture_output=True,
        text=True,
        env=_env(settings, crashpoint, batch),
        timeout=120,
        check=False,
    )
    if done.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"rotation failed ({done.returncode}): {done.stderr}")
    return done.returncode


@pytest.fixture
def home_with_secrets(settings: Settings) -> tuple[Settings, dict[str, bytes]]:
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    services = build_services(settings)
    try:
        services.db.migrate()
        services.keys.create_master_key_if_missing()
        services.keys.initialize_keyring(SYSTEM)
        secrets = _add_users(services, 13)
    finally:
        services.close()
    return settings, secrets


def _add_users(services: Services, count: int) -> dict[str, bytes]:
    secrets = {new_id(): os.urandom(20) for _ in range(count)}
    with unit_of_work(services.db, SYSTEM) as uow:
        for user_id, secret in secrets.items():
            uow.execute(
                "INSERT INTO users (id, name, password_hash, totp_secret, created_at, updated_at)"
                " VALUES (:id, :id, 'x', :s, :t, :t)",
                {
                    "id": user_id,
                    "t": now_iso(),
                    "s": services.keys.encrypt("users", "totp_secret", user_id, secret),
                },
            )
        uow.record("test:users:insert", "users", {"count": count})
    return secrets


def _check(settings: Settings, secrets: dict[str, bytes]) -> dict[str, str]:
    """A new process's view: every secret decrypts, no leftovers after loading, verify is ok."""
    services = build_services(settings)
    try:
        with services.db.read() as tx:
            rows = tx.fetchall("SELECT id, totp_secret FROM users")
            meta = {r["key"]: r["value"] for r in tx.fetchall("SELECT key, value FROM meta")}
        got = {
            r["id"]: services.keys.decrypt("users", "totp_secret", r["id"], r["totp_secret"])
            for r in rows
        }
        assert got == secrets
        assert services.keys.paths.leftovers() == []
        report = services.keys.verify()
        assert report.ok, report.problems
        return meta
    finally:
        services.close()


@pytest.mark.parametrize("point", MASTER_POINTS)
def test_master_rotation_killed_at_every_step(
    home_with_secrets: tuple[Settings, dict[str, bytes]], point: str
) -> None:
    settings, secrets = home_with_secrets
    kcv_before = _check(settings, secrets)["kcv"]
    assert _run(settings, "master", crashpoint=point) == -signal.SIGKILL
    kcv_after = _check(settings, secrets)["kcv"]
    if point in MASTER_ROLLED_BACK:
        assert kcv_after == kcv_before  # rolled back: the old key is still the key
    else:
        assert kcv_after != kcv_before  # committed: loading finished the rotation
    key = masterkey.read_key_file(settings.master_key_path)
    assert masterkey.kcv_matches(key, kcv_after)
    assert _run(settings, "master") == 0
    assert _check(settings, secrets)["kcv"] not in (kcv_before, kcv_after)


@pytest.mark.parametrize("point", DATA_POINTS)
def test_data_rotation_killed_at_every_step(
    home_with_secrets: tuple[Settings, dict[str, bytes]], point: str
) -> None:
    settings, secrets = home_with_secrets
    assert _run(settings, "data", crashpoint=point) == -signal.SIGKILL
    meta = _check(settings, secrets)
    if point in {"data:begin", "data:before-start-commit"}:
        assert meta["active_term"] == "1"
        assert "data_rotation" not in meta
    elif point == "data:finished":
        assert meta["min_decrypt_term"] == "2"
    else:
        assert meta["active_term"] == "2"
    assert _run(settings, "data") == 0
    meta = _check(settings, secrets)
    # A rotation killed after it finished is complete; the re-run is then a second rotation.
    expected = "3" if point == "data:finished" else "2"
    assert (meta["active_term"], meta["min_decrypt_term"]) == (expected, expected)
    assert "data_rotation" not in meta


def _rotation_meta(watcher: Services) -> str | None:
    with watcher.db.read() as tx:
        value = tx.fetchval("SELECT value FROM meta WHERE key = 'data_rotation'")
    return None if value is None else str(value)


def _wait_for_rewrap(watcher: Services, proc: subprocess.Popen[bytes], before: str | None) -> None:
    """Until the subprocess has committed a rewrap batch, so the kill lands mid-rewrap."""
    deadline = time.monotonic() + 30
    while proc.poll() is None and time.monotonic() < deadline:
        now = _rotation_meta(watcher)
        if now is not None and now != before and '"done": 0,' not in now:
            return
        time.sleep(0.005)


def _terms_in_use(settings: Settings) -> set[int]:
    services = build_services(settings)
    try:
        return set(services.keys.status().rows["users.totp_secret"])
    finally:
        services.close()


@pytest.mark.slow
def test_data_rewrap_killed_at_random_instants(settings: Settings) -> None:
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    services = build_services(settings)
    try:
        services.db.migrate()
        services.keys.create_master_key_if_missing()
        services.keys.initialize_keyring(SYSTEM)
        secrets = _add_users(services, 3000)
    finally:
        services.close()
    rng = random.Random(20260101)
    kills = mixed = 0
    watcher = build_services(settings)
    try:
        for _ in range(4):
            proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPT, "data"],
                env=_env(settings, None, 10),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            _wait_for_rewrap(watcher, proc, _rotation_meta(watcher))
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere in the middle of the batches
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=60)
            _check(settings, secrets)
            mixed += len(_terms_in_use(settings)) > 1  # killed with rows on two terms
    finally:
        watcher.close()
    assert kills >= 2, "the rewrap finished before it could be killed: use more rows"
    assert mixed >= 1, "no kill landed in the middle of a rewrap"
    assert _run(settings, "data", batch=500) == 0  # resumes and finishes what is in progress
    meta = _check(settings, secrets)
    assert "data_rotation" not in meta
    assert meta["active_term"] == meta["min_decrypt_term"]
