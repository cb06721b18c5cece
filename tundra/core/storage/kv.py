"""The KV store: sessions, rate limits, nonces, re-auth stamps and locks.

Two implementations share :class:`KV`: :class:`ValkeyKV` (redis-py, ``TUNDRA_VALKEY_URL``) for
production and :class:`SqliteKV`, an embedded store in ``$TUNDRA_HOME/kv.db`` that several
processes can use at once. Every operation that must be atomic is atomic in both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockNotAcquired(Exception):
    """A KV lock is held by someone else."""


class KV(ABC):
    """Keys are text, values bytes; TTLs are seconds (fractions allowed)."""

    label: str

    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def set(self, key: str, value: bytes, *, ttl: float | None = None) -> None: ...

    @abstractmethod
    def set_if_absent(self, key: str, value: bytes, *, ttl: float | None = None) -> bool:
        """Store ``value`` only if ``key`` is absent or expired; True when it was stored."""

    @abstractmethod
    def incr(self, key: str, *, ttl: float) -> int:
        """Add one to a counter; a new (or expired) counter starts at 1 and lives ``ttl``."""

    @abstractmethod
    def delete(self, key: str) -> bool: ...

    @abstractmethod
    def delete_if_equals(self, key: str, value: bytes) -> bool:
        """Delete ``key`` only while it still holds ``value`` (lock release)."""

    @abstractmethod
    def ttl(self, key: str) -> float | None:
        """Seconds left, None for a missing key; ``float('inf')`` for a key without expiry."""

    @abstractmethod
    def close(self) -> None:
        """Release every connection (at shutdown)."""

    def close_thread(self) -> None:  # noqa: B027 - a no-op for stores without per-thread state
        """Release the calling thread's connection, where connections are per thread."""

    @contextmanager
    def lock(self, name: str, *, ttl: float = 30.0) -> Iterator[None]:
        """A mutual-exclusion lock across processes; expires after ``ttl`` if its holder dies."""
        import secrets

        token = secrets.token_bytes(16)
        if not self.set_if_absent(f"lock:{name}", token, ttl=ttl):
            raise LockNotAcquired(f"lock {name!r} is held by another process")
        try:
            yield
        finally:
            self.delete_if_equals(f"lock:{name}", token)


def open_kv(url: str, *, sqlite_path: str | Path) -> KV:
    """Valkey when ``url`` is set, else the embedded store at ``sqlite_path``."""
    if url:
        from tundra.core.storage.kv_valkey import ValkeyKV

        return ValkeyKV(url)
    from tundra.core.storage.kv_sqlite import SqliteKV

    return SqliteKV(sqlite_path)
