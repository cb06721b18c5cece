"""SQLite files Tundra creates are private from the first byte (the database, -wal and -shm)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tundra.core.errors import StorageUnavailable
from tundra.core.storage.kv import open_kv
from tundra.core.storage.sqlite import connect_sqlite


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_database_and_its_wal_files_are_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which would give 0644
    try:
        path = tmp_path / "new.db"
        conn = connect_sqlite(path)
        try:
            conn.execute("CREATE TABLE t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
            for name in ("new.db", "new.db-wal", "new.db-shm"):
                assert _mode(tmp_path / name) == 0o600, name
        finally:
            conn.close()
    finally:
        os.umask(old)


def test_the_embedded_kv_store_is_private_too(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        kv = open_kv("", sqlite_path=tmp_path / "kv.db")
        try:
            kv.set("k", b"v")
            assert _mode(tmp_path / "kv.db") == 0o600
        finally:
            kv.close()
    finally:
        os.umask(old)


def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o640)
    path.chmod(0o640)
    connect_sqlite(path).close()
    assert _mode(path) == 0o640  # the operator's choice is not silently changed


def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageUnavailable, match="cannot create the SQLite database"):
        connect_sqlite(tmp_path / "missing" / "x.db")
