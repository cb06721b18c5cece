"""The embedded KV store: a SQLite file in WAL mode shared safely by several processes.

Each operation is one short ``BEGIN IMMEDIATE`` transaction, so set-if-absent and counters are
atomic across processes. Expired keys are invisible at once and swept opportunistically.
"""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tundra.core.storage.connections import ThreadConnections
from tundra.core.storage.kv import KV
from tundra.core.storage.sqlite import connect_sqlite

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv ( key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL)"
)
_SWEEP_EVERY = 500


class SqliteKV(KV):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"sqlite:{self.path}"
        self._connections = ThreadConnections(self._open)
        self._ops = 0

    def _open(self) -> sqlite3.Connection:
        conn = connect_sqlite(self.path)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(_SCHEMA)
        return conn

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        self._ops += 1
        if self._ops % _SWEEP_EVERY == 0:
            self.sweep()

    def sweep(self) -> int:
        """Delete expired keys; returns how many."""
        conn = self._conn()
        cur = conn.execute(
            "DELETE FROM kv WHERE expires_at IS NOT NULL AND expires_at <= ?", (time.time(),)
        )
        return cur.rowcount

    @staticmethod
    def _expiry(ttl: float | None) -> float | None:
        if ttl is None:
            return None
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        return time.time() + ttl

    def get(self, key: str) -> bytes | None:
        row = (
            self._conn()
            .execute(
                "SELECT value FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            )
            .fetchone()
        )
        if row is None:
            return None
        # Counters are stored as text (so SQL can add to them); Valkey returns them as bytes too.
        value = row[0]
        return value.encode() if isinstance(value, str) else bytes(value)

    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None:
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " expires_at = excluded.expires_at",
                (key, value, self._expiry(ttl)),
            )

    def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        now = time.time()
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " expires_at = excluded.expires_at"
                " WHERE kv.expires_at IS NOT NULL AND kv.expires_at <= ?",
                (key, value, self._expiry(ttl), now),
            )
            return bool(cur.rowcount)

    def incr(self, key: str, *, ttl: float) -> int:
        now = time.time()
        with self._tx() as conn:
            row = conn.execute(
                "INSERT INTO kv (key, value, expires_at) VALUES (?, CAST(1 AS TEXT), ?)"
                " ON CONFLICT(key) DO UPDATE SET"
                "  value = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?"
                "   THEN CAST(1 AS TEXT) ELSE CAST(CAST(kv.value AS INTEGER) + 1 AS TEXT) END,"
                "  expires_at = CASE WHEN kv.expires_at IS NOT NULL AND kv.expires_at <= ?"
                "   THEN excluded.expires_at ELSE kv.expires_at END"
                " RETURNING value",
                (key, self._expiry(ttl), now, now),
            ).fetchone()
            return int(row[0])

    def delete(self, key: str) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                "DELETE FROM kv WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, time.time()),
            )
            return bool(cur.rowcount)

    def delete_if_equals(self, key: str, value: bytes) -> bool:
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM kv WHERE key = ? AND value = ?", (key, value))
            return bool(cur.rowcount)

    def ttl(self, key: str) -> float | None:
        now = time.time()
        row = (
            self._conn()
            .execute(
                "SELECT expires_at FROM kv"
                " WHERE key = ? AND (expires_at IS NULL OR expires_at > ?)",
                (key, now),
            )
            .fetchone()
        )
        if row is None:
            return None
        return math.inf if row[0] is None else row[0] - now

    def close(self) -> None:
        """Close every connection this store opened, in any thread."""
        self._connections.close_all()

    def close_thread(self) -> None:
        self._connections.close_thread()
