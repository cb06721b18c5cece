"""Tundra's small storage layer: one interface over stdlib ``sqlite3`` and psycopg 3.

SQL is written once, portable, with ``:name`` parameters. A :class:`Database` hands out
:class:`Transaction` objects through a context manager; a write transaction on SQLite starts with
``BEGIN IMMEDIATE`` (so writers queue instead of failing half-way), on PostgreSQL it is a normal
transaction and :meth:`Transaction.lock_audit` takes the advisory lock that serialises audit
appends. Drivers are imported only when a database of that kind is opened, so the embedded default
never pays for psycopg at start-up.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

Row = dict[str, Any]
Params = Mapping[str, Any]

#: Key of the PostgreSQL advisory transaction lock that serialises audit appends.
AUDIT_LOCK_KEY = 0x74756E647261  # "tundra"
#: Key of the lock held while migrations run.
MIGRATION_LOCK_KEY = 0x74756E647262


class UniqueViolation(Exception):
    """A UNIQUE or PRIMARY KEY constraint refused a row. Services turn it into AlreadyExists."""


class Transaction(ABC):
    """One open transaction. Use only inside the ``with`` block that produced it."""

    dialect: str

    @abstractmethod
    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run a statement and return the number of rows it changed."""

    @abstractmethod
    def fetchall(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run a query and return every row as a dict."""

    @abstractmethod
    def iterate(self, sql: str, params: Params | None = None, *, size: int = 500) -> Iterator[Row]:
        """Run a query and yield rows without holding them all in memory."""

    @abstractmethod
    def lock_audit(self) -> None:
        """Serialise with every other audit appender, in this and other processes."""

    @abstractmethod
    def lock_migrations(self) -> None:
        """Serialise with every other process applying migrations."""

    def fetchone(self, sql: str, params: Params | None = None) -> Row | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def fetchval(self, sql: str, params: Params | None = None) -> Any:
        row = self.fetchone(sql, params)
        return None if row is None else next(iter(row.values()))


class Database(ABC):
    """A connection factory for one database. Thread-safe; connections are per thread."""

    dialect: str
    label: str

    @abstractmethod
    def transaction(self, *, write: bool = True) -> AbstractContextManager[Transaction]:
        """Open a transaction; commit on a clean exit, roll back on an exception."""

    @abstractmethod
    def close(self) -> None:
        """Close every connection this database opened, in any thread (at shutdown)."""

    @abstractmethod
    def close_thread(self) -> None:
        """Close the calling thread's connection only (a worker thread that is finishing)."""

    def read(self) -> AbstractContextManager[Transaction]:
        return self.transaction(write=False)

    def migrate(self) -> list[int]:
        """Apply every migration not yet applied, each in its own transaction."""
        applied: list[int] = []
        for version, name, statements in load_migrations(self.dialect):
            with self.transaction() as tx:
                tx.lock_migrations()
                tx.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
                )
                done = tx.fetchval(
                    "SELECT count(*) FROM schema_migrations WHERE version = :v", {"v": version}
                )
                if done:
                    continue
                for statement in statements:
                    tx.execute(statement)
                from tundra.core.clock import now_iso

                tx.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (:v, :n, :t)",
                    {"v": version, "n": name, "t": now_iso()},
                )
                applied.append(version)
        return applied

    def schema_version(self) -> int:
        """The newest applied migration; 0 for a database Tundra has not set up."""
        from tundra.core.errors import NotInitialized

        try:
            with self.read() as tx:
                return int(tx.fetchval("SELECT max(version) FROM schema_migrations") or 0)
        except NotInitialized:
            return 0


def load_migrations(dialect: str) -> list[tuple[int, str, list[str]]]:
    """The ordered migrations of ``dialect``: (version, name, statements)."""
    from importlib import resources

    folder = resources.files("tundra.core.storage") / "migrations" / dialect
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match[1]), match[2], split_sql(entry.read_text("utf-8"))))
    return sorted(found)


def split_sql(script: str) -> list[str]:
    """Split a migration into statements: each ends with ``;`` at the end of a line."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            statement = "\n".join(current).strip().rstrip(";").strip()
            if statement:
                statements.append(statement)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        statements.append(tail)
    return statements


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and status output)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


def open_database(url: str, *, sqlite_path: str | None = None) -> Database:
    """Open the database named by ``url``, or the embedded SQLite file when ``url`` is empty."""
    if not url:
        if sqlite_path is None:
            raise ValueError("the embedded database needs a path")
        from tundra.core.storage.sqlite import SqliteDatabase

        return SqliteDatabase(sqlite_path)
    scheme = urlsplit(url).scheme
    if scheme in {"postgresql", "postgres"}:
        from tundra.core.storage.postgres import PostgresDatabase

        return PostgresDatabase(url)
    if scheme == "sqlite":
        from tundra.core.storage.sqlite import SqliteDatabase

        return SqliteDatabase(urlsplit(url).path)
    from tundra.core.errors import ConfigError

    raise ConfigError(
        f"unsupported database URL scheme {scheme!r}",
        hint="use postgresql://… or leave database_url empty for SQLite",
    )
