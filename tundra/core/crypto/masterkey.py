"""The master key file: its format, its checks, and recovery from an interrupted rotation.

``$TUNDRA_HOME/master.key`` is 64 bytes: 32 random key bytes followed by BLAKE3-256 of those
bytes, so a truncated or bit-flipped file is told apart from a different key. The database keeps a
key-check value (``HMAC-SHA256(key, "tundra/kcv/v1")``) so that a valid-looking but different key
is refused before anything is written with it.

A master key rotation (``tundra.core.crypto.rotation``) leaves ``master.key.new`` and
``master.key.prev`` behind when it is killed. :func:`load_master_key` puts the files back into a
consistent state under the key-file lock, deterministically: whichever file matches the database's
key-check value is the live key; the others are stale and removed. See docs/keys.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import blake3

from tundra.core.crypto.primitives import (
    FileProblem,
    constant_time_equal,
    fsync_dir,
    inspect_secret_file,
    random_bytes,
    read_secret_file,
    write_secret_file,
)
from tundra.core.errors import KeyMaterialError

KEY_BYTES = 32
FILE_BYTES = 64
MODE = 0o400
KCV_LABEL = b"tundra/kcv/v1"

_RESTORE = "restore master.key from your backup of this installation"


def new_key() -> bytes:
    return random_bytes(KEY_BYTES)


def encode(key: bytes) -> bytes:
    """The 64 bytes of a master key file for ``key``."""
    if len(key) != KEY_BYTES:
        raise ValueError("a master key is 32 bytes")
    return key + blake3.blake3(key).digest(length=32)


def key_check_value(key: bytes) -> str:
    """What the database stores to recognise the right key (hex); reveals nothing about it."""
    return hmac.new(key, KCV_LABEL, hashlib.sha256).hexdigest()


def kcv_matches(key: bytes, kcv: str) -> bool:
    return constant_time_equal(key_check_value(key), kcv)


@dataclass(frozen=True)
class KeyPaths:
    """The files of the master key protocol, all in ``$TUNDRA_HOME``."""

    key: Path

    @property
    def new(self) -> Path:
        return self.key.with_name(self.key.name + ".new")

    @property
    def prev(self) -> Path:
        return self.key.with_name(self.key.name + ".prev")

    @property
    def lock(self) -> Path:
        return self.key.with_name(self.key.name + ".lock")

    def leftovers(self) -> list[Path]:
        """Files an interrupted rotation left behind (lstat: a dangling link counts too)."""
        return [p for p in (self.new, self.prev) if os.path.lexists(p)]


def decode(data: bytes, path: Path) -> bytes:
    """The key inside a master key file's bytes, or a KeyMaterialError naming problem and fix."""
    if len(data) != FILE_BYTES:
        raise KeyMaterialError(
            f"{path} is {len(data)} bytes, not {FILE_BYTES}: it is truncated or not a master key",
            hint=f"fix: {_RESTORE}",
        )
    key, trailer = data[:KEY_BYTES], data[KEY_BYTES:]
    if not constant_time_equal(blake3.blake3(key).digest(length=32), trailer):
        raise KeyMaterialError(
            f"{path} is corrupt: its BLAKE3 trailer does not match the key bytes",
            hint=f"fix: {_RESTORE}",
        )
    return key


def read_key_file(path: Path) -> bytes:
    """Read and check one key file: type, symlink, mode 0400, owner, size and trailer."""
    problems = inspect_secret_file(path, mode=MODE)
    if problems:
        raise _file_error(problems)
    try:
        data = read_secret_file(path, mode=MODE)
    except FileNotFoundError as exc:  # removed between the check and the read
        raise _file_error(inspect_secret_file(path, mode=MODE)) from exc
    except PermissionError as exc:
        raise KeyMaterialError(
            f"cannot read {path}: {exc}", hint=f"fix: check its mode and owner, or {_RESTORE}"
        ) from exc
    return decode(data, path)


def _file_error(problems: list[FileProblem]) -> KeyMaterialError:
    return KeyMaterialError(
        "; ".join(p.problem for p in problems), hint="fix: " + "; ".join(p.fix for p in problems)
    )


def file_problems(path: Path) -> list[FileProblem]:
    """Every problem with the key file itself (no database needed), as problem + fix pairs."""
    problems = inspect_secret_file(path, mode=MODE)
    if problems:
        return problems
    try:
        read_key_file(path)
    except KeyMaterialError as exc:
        return [FileProblem(exc.message, (exc.hint or "").removeprefix("fix: "))]
    return []


def mismatch_error(path: Path) -> KeyMaterialError:
    return KeyMaterialError(
        f"{path} is a valid key but not the key of this database (key-check value mismatch); "
        "refusing to use it",
        hint=f"fix: {_RESTORE}; never replace it with another key or create a new one",
    )


def lost_error(path: Path) -> KeyMaterialError:
    return KeyMaterialError(
        f"{path} is missing but the database expects a master key: the key was lost",
        hint=f"fix: {_RESTORE}; a new key cannot decrypt existing secrets, so none is created",
    )


def write_key_file(path: Path, key: bytes, *, replace: bool = False) -> None:
    """Write ``key`` as a 0400 master key file atomically (temp file, fsync, rename, fsync dir)."""
    write_secret_file(path, encode(key), mode=MODE, replace=replace)


@contextmanager
def key_lock(paths: KeyPaths, *, blocking: bool = True) -> Iterator[bool]:
    """Exclusive lock between rotations and repairs of this home (released if killed).

    Yields whether it is held: with ``blocking=False`` it gives up at once when another process
    has it.
    """
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the flock


def _unlink(path: Path) -> None:
    if os.path.lexists(path):
        path.unlink()
        fsync_dir(path.parent)


def _candidate(path: Path, kcv: str) -> bytes | None:
    try:
        key = read_key_file(path)
    except KeyMaterialError:
        return None
    return key if kcv_matches(key, kcv) else None


def recover(paths: KeyPaths, kcv: str) -> None:
    """Finish or roll back an interrupted master rotation. Call with :func:`key_lock` held.

    States (see docs/keys.md): master.key matches the database -> the rotation either never
    replaced the key or already committed, so ``.new`` and ``.prev`` are stale: removed.
    ``.prev`` matches -> the key was replaced but the database never committed: roll back by
    moving ``.prev`` over master.key. Anything else is left alone for the operator.
    """
    if _candidate(paths.key, kcv) is not None:
        _unlink(paths.new)
        _unlink(paths.prev)
        return
    if _candidate(paths.prev, kcv) is not None:
        os.replace(paths.prev, paths.key)
        fsync_dir(paths.key.parent)
        _unlink(paths.new)


def load_master_key(paths: KeyPaths, fetch_kcv: Callable[[], str | None]) -> bytes:
    """The master key that matches the database, after every file and key-check test.

    The key is whichever of master.key and master.key.prev matches the database's key-check
    value: during a rotation's window between replacing the file and committing, that is
    ``.prev``. Answering without the lock matters: the caller may hold a database write lock that
    the rotating process is waiting for. Leftover files are then tidied if the lock is free. Only
    when no file matches is the lock awaited, the key-check value read again and the state
    repaired; a key that still does not match is refused.
    """
    kcv = fetch_kcv()
    if kcv is None:
        raise KeyMaterialError(
            "the database has no key-check value: the keyring was never set up",
            hint="fix: run `tundra init`",
        )
    if not paths.leftovers():
        if not os.path.lexists(paths.key):
            raise lost_error(paths.key)
        key = read_key_file(paths.key)  # a bad file raises with its problem and fix
        if kcv_matches(key, kcv):
            return key
    else:
        for path in (paths.key, paths.prev):
            found = _candidate(path, kcv)
            if found is not None:
                # Tidy up if the lock is free (a rotation in progress holds it and is left
                # alone); a home we cannot write is tidied by the next process that can.
                with contextlib.suppress(OSError), key_lock(paths, blocking=False) as held:
                    if held:
                        recover(paths, fetch_kcv() or kcv)
                return found
    # No file matches: a rotation committed meanwhile, or the wrong key. Decide under the lock,
    # with a fresh look at the database.
    try:
        with key_lock(paths):
            kcv = fetch_kcv() or kcv
            recover(paths, kcv)
            if not os.path.lexists(paths.key):
                raise lost_error(paths.key)
            key = read_key_file(paths.key)
            if not kcv_matches(key, kcv):
                raise mismatch_error(paths.key)
            return key
    except OSError as exc:
        raise KeyMaterialError(
            f"cannot check or repair the master key files: {exc}",
            hint=f"fix: run the command as the service user that owns {paths.key.parent}",
        ) from exc
