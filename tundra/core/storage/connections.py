"""Per-thread connections that one call can still close all of at shutdown.

A ``sqlite3`` or psycopg connection must not be shared between threads mid-transaction, so each
thread gets its own. Web servers run blocking calls in worker threads that come and go: the
connection of a thread that has ended is closed at the next connect instead of leaking until
garbage collection, :meth:`ThreadConnections.close_all` closes every connection any thread opened
(at shutdown), and whatever is still open when the owner is collected is closed with it. A thread
that comes back after ``close_all`` simply opens a new connection (the generation tells it).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def _close(opened: list[tuple[threading.Thread, C]]) -> None:
    for _, conn in opened:
        conn.close()


class ThreadConnections(Generic[C]):
    def __init__(self, opener: Callable[[], C]) -> None:
        self._opener = opener
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: list[tuple[threading.Thread, C]] = []
        self._generation = 0
        weakref.finalize(self, _close, self._opened)

    def get(self, *, usable: Callable[[C], bool] = lambda _c: True) -> C:
        conn: C | None = getattr(self._local, "conn", None)
        if conn is not None and self._local.generation == self._generation and usable(conn):
            return conn
        conn = self._opener()
        with self._lock:
            dead = [pair for pair in self._opened if not pair[0].is_alive()]
            self._opened[:] = [p for p in self._opened if p[0].is_alive()]
            self._opened.append((threading.current_thread(), conn))
            self._local.generation = self._generation
        _close(dead)
        self._local.conn = conn
        return conn

    def close_thread(self) -> None:
        """Close the calling thread's connection only."""
        conn: C | None = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with self._lock:
                self._opened[:] = [p for p in self._opened if p[1] is not conn]
            conn.close()

    def close_all(self) -> None:
        """Close every connection opened by any thread (at shutdown, or in tests)."""
        with self._lock:
            opened = list(self._opened)
            self._opened.clear()
            self._generation += 1
        self._local.conn = None
        _close(opened)
