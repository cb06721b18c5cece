"""PostgreSQL through psycopg 3: the production database, one connection per thread."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tundra.core.errors import NotInitialized, StorageUnavailable
from tundra.core.storage.connections import ThreadConnections
from tundra.core.storage.db import (
    AUDIT_LOCK_KEY,
    MIGRATION_LOCK_KEY,
    Database,
    Params,
    Row,
    Transaction,
    UniqueViolation,
    redact_url,
)

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """Rewrite ``:name`` parameters as psycopg's ``%(name)s`` (escaping literal ``%``)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class PostgresTransaction(Transaction):
    dialect = "postgresql"

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def _cursor(self, sql: str, params: Params | None) -> psycopg.Cursor[Any]:
        try:
            if params:
                return self._conn.execute(to_pyformat(sql), dict(params))
            # Without parameters psycopg sends the text as it is: no placeholder, no escaping.
            return self._conn.execute(sql)
        except psycopg.errors.UniqueViolation as exc:
            raise UniqueViolation(str(exc)) from exc
        except psycopg.errors.UndefinedTable as exc:
            raise NotInitialized(
                f"the database has no Tundra schema ({str(exc).strip()})", hint="run `tundra init`"
            ) from exc

    def execute(self, sql: str, params: Params | None = None) -> int:
        return self._cursor(sql, params).rowcount

    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        return list(self._cursor(sql, params).fetchall())

    def iterate(self, sql: str, params: Params | None = None, *, size: int = 500) -> Iterator[Row]:
        cursor = self._cursor(sql, params)
        while batch := cursor.fetchmany(size):
            yield from batch

    def lock_audit(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK_KEY,))

    def lock_migrations(self) -> None:
        self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.label = redact_url(url)
        self._connections: ThreadConnections[psycopg.Connection[Any]] = ThreadConnections(
            self._open
        )

    def _open(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self.url, autocommit=True, row_factory=dict_row, connect_timeout=10
            )
        except psycopg.Error as exc:
            raise StorageUnavailable(
                f"cannot connect to PostgreSQL at {self.label}: {str(exc).strip()}"
            ) from exc

    def _conn(self) -> psycopg.Connection[Any]:
        return self._connections.get(usable=lambda conn: not conn.closed)

    @contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Transaction]:
        conn = self._conn()
        try:
            with conn.transaction():
                yield PostgresTransaction(conn)
        except psycopg.OperationalError as exc:
            conn.close()
            raise StorageUnavailable(f"PostgreSQL at {self.label} failed: {exc}") from exc

    def close(self) -> None:
        self._connections.close_all()

    def close_thread(self) -> None:
        self._connections.close_thread()
