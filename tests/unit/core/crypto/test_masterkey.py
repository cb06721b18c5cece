"""The master key file: format, every refusal (with problem and fix), creation, recovery."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from tundra.core.crypto import masterkey
from tundra.core.crypto.masterkey import KeyPaths
from tundra.core.errors import KeyMaterialError
from tundra.core.principal import SYSTEM
from tundra.core.services import Services


def _write(path: Path, data: bytes, mode: int = 0o400) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, mode)


def test_format_is_key_plus_blake3_trailer(tmp_path: Path) -> None:
    key = masterkey.new_key()
    path = tmp_path / "master.key"
    masterkey.write_key_file(path, key)
    data = path.read_bytes()
    assert len(data) == 64
    assert data[:32] == key
    assert data[32:] == blake3.blake3(key).digest()
    assert os.stat(path).st_mode & 0o7777 == 0o400
    assert masterkey.read_key_file(path) == key


def test_key_check_value_is_hmac_sha256_of_label() -> None:
    import hashlib
    import hmac

    key = bytes(range(32))
    assert (
        masterkey.key_check_value(key)
        == hmac.new(key, b"tundra/kcv/v1", hashlib.sha256).hexdigest()
    )
    assert masterkey.kcv_matches(key, masterkey.key_check_value(key))
    assert not masterkey.kcv_matches(bytes(32), masterkey.key_check_value(key))


def test_write_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    masterkey.write_key_file(path, masterkey.new_key())
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        masterkey.write_key_file(path, masterkey.new_key())
    assert path.read_bytes() == before


def _good(path: Path) -> None:
    _write(path, masterkey.encode(masterkey.new_key()))


def _missing(path: Path) -> None:
    path.unlink(missing_ok=True)


def _short(path: Path) -> None:
    _write(path, masterkey.encode(masterkey.new_key())[:63])


def _long(path: Path) -> None:
    _write(path, masterkey.encode(masterkey.new_key()) + b"\n")


def _flipped_key_bit(path: Path) -> None:
    data = bytearray(masterkey.encode(masterkey.new_key()))
    data[5] ^= 0x10
    _write(path, bytes(data))


def _flipped_trailer_bit(path: Path) -> None:
    data = bytearray(masterkey.encode(masterkey.new_key()))
    data[60] ^= 0x01
    _write(path, bytes(data))


def _mode_0600(path: Path) -> None:
    _write(path, masterkey.encode(masterkey.new_key()), mode=0o600)


def _mode_0440(path: Path) -> None:
    _write(path, masterkey.encode(masterkey.new_key()), mode=0o440)


def _symlink(path: Path) -> None:
    target = path.with_name("elsewhere.key")
    _write(target, masterkey.encode(masterkey.new_key()))
    path.unlink(missing_ok=True)
    path.symlink_to(target)


def _directory(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.mkdir()


def _wrong_owner(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    _write(path, masterkey.encode(masterkey.new_key()))
    os.chown(path, 65534, 65534)


@pytest.mark.parametrize(
    ("damage", "problem", "fix"),
    [
        (_missing, "does not exist", "restore"),
        (_short, "63 bytes, not 64", "restore master.key"),
        (_long, "65 bytes, not 64", "restore master.key"),
        (_flipped_key_bit, "corrupt: its BLAKE3 trailer", "restore master.key"),
        (_flipped_trailer_bit, "corrupt: its BLAKE3 trailer", "restore master.key"),
        (_mode_0600, "mode 0600, not 0400", "chmod 0400"),
        (_mode_0440, "mode 0440, not 0400", "chmod 0400"),
        (_symlink, "symbolic link", "replace the link"),
        (_directory, "not a regular file", "restore"),
        (_wrong_owner, "owned by uid 65534", "chown"),
    ],
)
def test_every_bad_key_file_is_refused_with_problem_and_fix(
    tmp_path: Path, damage: Callable[[Path], None], problem: str, fix: str
) -> None:
    path = tmp_path / "master.key"
    damage(path)
    with pytest.raises(KeyMaterialError) as caught:
        masterkey.read_key_file(path)
    assert problem in caught.value.message
    assert caught.value.hint is not None
    assert fix in caught.value.hint
    assert [p.problem for p in masterkey.file_problems(path)]


def test_a_good_file_has_no_problems(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    _good(path)
    assert masterkey.file_problems(path) == []


# -- through the key service, on each database ------------------------------------------------


def test_every_bad_key_file_stops_the_key_service(key_services: Services) -> None:
    path = key_services.settings.master_key_path
    original = path.read_bytes()
    for damage in (_short, _flipped_key_bit, _mode_0600, _symlink, _missing):
        damage(path)
        with pytest.raises(KeyMaterialError):
            key_services.keys.master_key(reload=True)
        with pytest.raises(KeyMaterialError):
            fresh_encrypt(key_services)
        if path.is_symlink():
            path.unlink()
        _write(path, original)
    assert key_services.keys.master_key(reload=True) == original[:32]


def fresh_encrypt(services: Services) -> bytes:
    services.keys.forget()
    return services.keys.encrypt("users", "totp_secret", "row", b"x")


def test_a_valid_but_different_key_is_never_used(key_services: Services) -> None:
    path = key_services.settings.master_key_path
    original = path.read_bytes()
    _write(path, masterkey.encode(masterkey.new_key()))  # a perfectly formed stranger
    key_services.keys.forget()
    with pytest.raises(KeyMaterialError) as caught:
        key_services.keys.encrypt("users", "totp_secret", "row", b"x")
    assert "key-check value mismatch" in caught.value.message
    assert "restore master.key" in (caught.value.hint or "")
    _write(path, original)
    assert key_services.keys.encrypt("users", "totp_secret", "row", b"x")


def test_create_master_key_only_when_nothing_exists(bare_services: Services) -> None:
    keys = bare_services.keys
    path = bare_services.settings.master_key_path
    assert keys.create_master_key_if_missing() is True
    first = path.read_bytes()
    assert os.stat(path).st_mode & 0o7777 == 0o400
    assert keys.create_master_key_if_missing() is False
    assert path.read_bytes() == first
    assert keys.initialize_keyring(SYSTEM) is True
    assert keys.initialize_keyring(SYSTEM) is False
    assert keys.create_master_key_if_missing() is False
    assert path.read_bytes() == first


def test_a_lost_key_is_refused_never_recreated(key_services: Services) -> None:
    path = key_services.settings.master_key_path
    path.unlink()
    with pytest.raises(KeyMaterialError) as caught:
        key_services.keys.create_master_key_if_missing()
    assert "the key was lost" in caught.value.message
    assert "restore master.key" in (caught.value.hint or "")
    assert not path.exists()


def test_keyring_init_refuses_a_corrupt_key(bare_services: Services) -> None:
    _flipped_key_bit(bare_services.settings.master_key_path)
    with pytest.raises(KeyMaterialError):
        bare_services.keys.initialize_keyring(SYSTEM)
    assert bare_services.keys.fetch_kcv() is None


# -- recovery of an interrupted master rotation -------------------------------------------------


def _state(tmp_path: Path) -> tuple[KeyPaths, bytes, bytes]:
    paths = KeyPaths(tmp_path / "master.key")
    old, new = masterkey.new_key(), masterkey.new_key()
    return paths, old, new


@pytest.mark.parametrize("committed", [False, True])
def test_recovery_after_the_key_was_replaced(tmp_path: Path, committed: bool) -> None:
    paths, old, new = _state(tmp_path)
    masterkey.write_key_file(paths.key, new)  # step 3 done: master.key is the new key
    masterkey.write_key_file(paths.prev, old)
    kcv = masterkey.key_check_value(new if committed else old)
    key = masterkey.load_master_key(paths, lambda: kcv)
    assert key == (new if committed else old)  # finished, or rolled back
    assert paths.leftovers() == []
    assert masterkey.read_key_file(paths.key) == key


def test_recovery_before_the_key_was_replaced(tmp_path: Path) -> None:
    paths, old, new = _state(tmp_path)
    masterkey.write_key_file(paths.key, old)
    masterkey.write_key_file(paths.new, new)
    os.link(paths.key, paths.prev)
    key = masterkey.load_master_key(paths, lambda: masterkey.key_check_value(old))
    assert key == old
    assert paths.leftovers() == []


def test_recovery_never_picks_a_key_the_database_does_not_know(tmp_path: Path) -> None:
    paths, old, new = _state(tmp_path)
    masterkey.write_key_file(paths.key, new)
    masterkey.write_key_file(paths.prev, old)
    stranger = masterkey.key_check_value(masterkey.new_key())
    with pytest.raises(KeyMaterialError, match="key-check value mismatch"):
        masterkey.load_master_key(paths, lambda: stranger)
    assert sorted(p.name for p in paths.leftovers()) == ["master.key.prev"]


def test_no_kcv_means_not_initialised(tmp_path: Path) -> None:
    paths, old, _ = _state(tmp_path)
    masterkey.write_key_file(paths.key, old)
    with pytest.raises(KeyMaterialError, match="never set up"):
        masterkey.load_master_key(paths, lambda: None)


def test_loading_during_a_rotation_never_waits_for_its_lock(tmp_path: Path) -> None:
    """Mid-rotation (key replaced, not committed) a reader gets the committed key at once: it
    may hold a database lock the rotation is waiting for, so it must not wait for the rotation."""
    paths, old, new = _state(tmp_path)
    masterkey.write_key_file(paths.key, new)
    masterkey.write_key_file(paths.prev, old)
    with masterkey.key_lock(paths):  # the rotating process
        key = masterkey.load_master_key(paths, lambda: masterkey.key_check_value(old))
        assert key == old
        assert sorted(p.name for p in paths.leftovers()) == ["master.key.prev"]  # left alone
    masterkey.load_master_key(paths, lambda: masterkey.key_check_value(new))  # now it commits
    assert paths.leftovers() == []
