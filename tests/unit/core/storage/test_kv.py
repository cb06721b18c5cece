"""Both KV stores (embedded SQLite and real Valkey/Redis) honour one contract."""

from __future__ import annotations

import math
import multiprocessing
import time
from pathlib import Path

import pytest

from tundra.core.storage.kv import LockNotAcquired


def test_get_set_delete(kv) -> None:
    assert kv.get("a") is None
    kv.set("a", b"1")
    assert kv.get("a") == b"1"
    kv.set("a", b"2")
    assert kv.get("a") == b"2"
    assert kv.delete("a") is True
    assert kv.delete("a") is False
    assert kv.get("a") is None


def test_values_are_binary_safe(kv) -> None:
    kv.set("bin", bytes(range(256)))
    assert kv.get("bin") == bytes(range(256))


def test_ttl_expires_keys(kv) -> None:
    kv.set("short", b"x", ttl=0.2)
    assert kv.get("short") == b"x"
    remaining = kv.ttl("short")
    assert remaining is not None and 0 < remaining <= 0.2
    time.sleep(0.3)
    assert kv.get("short") is None
    assert kv.ttl("short") is None


def test_ttl_without_expiry_is_infinite(kv) -> None:
    kv.set("forever", b"x")
    assert kv.ttl("forever") == math.inf


def test_set_if_absent_is_atomic_and_respects_expiry(kv) -> None:
    assert kv.set_if_absent("nonce", b"first", ttl=0.3) is True
    assert kv.set_if_absent("nonce", b"second", ttl=0.3) is False
    assert kv.get("nonce") == b"first"
    time.sleep(0.4)
    assert kv.set_if_absent("nonce", b"third", ttl=5) is True
    assert kv.get("nonce") == b"third"


def test_counter_starts_at_one_and_keeps_its_first_ttl(kv) -> None:
    assert kv.incr("fails", ttl=0.5) == 1
    assert kv.incr("fails", ttl=0.5) == 2
    first_ttl = kv.ttl("fails")
    time.sleep(0.1)
    assert kv.incr("fails", ttl=0.5) == 3
    later_ttl = kv.ttl("fails")
    assert later_ttl is not None and first_ttl is not None and later_ttl < first_ttl
    time.sleep(0.6)
    assert kv.incr("fails", ttl=0.5) == 1


def test_a_counter_reads_back_as_bytes(kv) -> None:
    kv.incr("c", ttl=5)
    kv.incr("c", ttl=5)
    assert kv.get("c") == b"2"


def test_many_threads_opening_a_new_embedded_store_at_once(tmp_path: Path) -> None:
    import threading

    from tundra.core.storage.kv_sqlite import SqliteKV

    def touch(store: SqliteKV, n: int, failures: list[BaseException]) -> None:
        try:
            store.set_if_absent(f"k{n}", b"v", ttl=5)
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)
        finally:
            store.close_thread()

    for attempt in range(10):
        store = SqliteKV(tmp_path / f"fresh-{attempt}.db")
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=touch, args=(store, n, failures)) for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []


def test_delete_if_equals_only_deletes_the_expected_value(kv) -> None:
    kv.set("lock", b"mine")
    assert kv.delete_if_equals("lock", b"theirs") is False
    assert kv.get("lock") == b"mine"
    assert kv.delete_if_equals("lock", b"mine") is True
    assert kv.get("lock") is None


def test_lock_excludes_a_second_holder_and_is_released(kv) -> None:
    with kv.lock("rotation", ttl=5), pytest.raises(LockNotAcquired), kv.lock("rotation", ttl=5):
        pass
    with kv.lock("rotation", ttl=5):
        pass


def test_non_positive_ttl_is_refused(kv) -> None:
    with pytest.raises(ValueError, match="ttl"):
        kv.set("x", b"1", ttl=0)


def _count_winners(path: str, key: str, queue: multiprocessing.Queue) -> None:
    from tundra.core.storage.kv_sqlite import SqliteKV

    store = SqliteKV(path)
    won = sum(store.set_if_absent(f"{key}:{i}", b"x", ttl=30) for i in range(200))
    for _ in range(100):
        store.incr("shared-counter", ttl=30)
    queue.put(won)


def test_embedded_store_is_atomic_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    path = str(tmp_path / "kv.db")
    procs = [ctx.Process(target=_count_winners, args=(path, "n", queue)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert sum(queue.get(timeout=5) for _ in procs) == 200
    from tundra.core.storage.kv_sqlite import SqliteKV

    assert SqliteKV(path).incr("shared-counter", ttl=30) == 401
