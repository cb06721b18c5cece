"""The embedded database: stdlib ``sqlite3`` in WAL mode, one connection per thread."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tundra.core.errors import IntegrityError, NotInitialized, StorageUnavailable
from tundra.core.storage.connections import ThreadConnections
from tundra.core.storage.db import Database, Params, Row, Transaction, UniqueViolation

BUSY_TIMEOUT_MS = 60_000


def connect_sqlite(path: str | Path) -> sqlite3.Connection:
    """A connection with Tundra's pragmas: WAL, full sync, foreign keys, a long busy timeout.

    A database file that does not exist yet is created private (0600) first: SQLite would create
    it with the umask's mode (0644 as a rule), and its -wal and -shm files copy that mode.
    """
    if str(path) != ":memory:" and not str(path).startswith("file:"):
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StorageUnavailable(f"cannot create the SQLite database {path}: {exc}") from exc
    try:
        conn = sqlite3.connect(
            str(path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _ensure_wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.Error as exc:
        raise StorageUnavailable(f"cannot open the SQLite database {path}: {exc}") from exc
    return conn


def _ensure_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL once. The switch needs a moment of exclusive access, and SQLite reports a
    concurrent first open as "database is locked" without waiting, so retry for a while."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _raise_if_undecodable(exc: sqlite3.OperationalError) -> None:
    """Text that is not UTF-8 can only come from tampering or corruption: say so, clearly."""
    if "Could not decode to UTF-8" in str(exc):
        raise IntegrityError(
            f"the database holds text that is not valid UTF-8, so it was "
            f"modified outside Tundra or is corrupt ({exc})"
        ) from exc


def _dict_rows(cursor: sqlite3.Cursor, rows: list[Any]) -> list[Row]:
    names = [d[0] for d in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in rows]


class SqliteTransaction(Transaction):
    dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run(self, sql: str, params: Params | None) -> sqlite3.Cursor:
        try:
            return self._conn.execute(sql, dict(params or {}))
        except sqlite3.OperationalError as exc:
            if str(exc).startswith("no such table"):
                raise NotInitialized(
                    f"the database has no Tundra schema ({exc})", hint="run `tundra init`"
                ) from exc
            _raise_if_undecodable(exc)
            raise
        except sqlite3.IntegrityError as exc:
            if "UNIQUE" in str(exc) or "PRIMARY KEY" in str(exc):
                raise UniqueViolation(str(exc)) from exc
            raise

    def execute(self, sql: str, params: Params | None = None) -> int:
        return self._run(sql, params).rowcount

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        cursor = self._run(sql, params)
        try:
            return _dict_rows(cursor, cursor.fetchall())
        except sqlite3.OperationalError as exc:
            _raise_if_undecodable(exc)
            raise

    def iterate(self, sql: str, params: Params | None = None, *, size: int = 500) -> Iterator[Row]:
        cursor = self._run(sql, params)
        while True:
            try:
                batch = cursor.fetchmany(size)
            except sqlite3.OperationalError as exc:
                _raise_if_undecodable(exc)
                raise
            if not batch:
                return
            yield from _dict_rows(cursor, batch)

    def lock_audit(self) -> None:
        # Write transactions already hold SQLite's single write lock (BEGIN IMMEDIATE).
        if not self._conn.in_transaction:
            raise RuntimeError("lock_audit outside a transaction")

    def lock_migrations(self) -> None:
        self.lock_audit()


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"sqlite:{self.path}"
        self._connections = ThreadConnections(self._open)

    def _open(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise NotInitialized(
                f"no Tundra database at {self.path}", hint="run `tundra init`, or set TUNDRA_HOME"
            )
        return connect_sqlite(self.path)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        conn = self._conn()
        if conn.in_transaction:
            raise RuntimeError("nested transactions are not supported")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(
                f"the SQLite database {self.path} is unavailable: {exc}"
            ) from exc
        try:
            yield SqliteTransaction(conn)
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def close(self) -> None:
        self._connections.close_all()

    def close_thread(self) -> None:
        self._connections.close_thread()
