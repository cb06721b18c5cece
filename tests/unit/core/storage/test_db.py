"""The storage layer behaves the same on SQLite and the real PostgreSQL."""

from __future__ import annotations

import threading

import pytest

from tundra.core.settings import Settings
from tundra.core.storage.db import (
    UniqueViolation,
    load_migrations,
    open_database,
    redact_url,
    split_sql,
)


@pytest.fixture
def db(settings: Settings):
    settings.home.mkdir(parents=True)
    settings.sqlite_path.touch()
    database = open_database(settings.database_url, sqlite_path=str(settings.sqlite_path))
    database.migrate()
    yield database
    database.close()


def test_migrations_apply_once_and_record_versions(db) -> None:
    assert db.schema_version() == max(v for v, _, _ in load_migrations(db.dialect))
    assert db.migrate() == []
    with db.read() as tx:
        names = [r["name"] for r in tx.fetchall("SELECT name FROM schema_migrations")]
    assert names == [name for _, name, _ in load_migrations(db.dialect)]


def test_both_dialects_have_the_same_migration_versions() -> None:
    sqlite = [(v, n) for v, n, _ in load_migrations("sqlite")]
    postgres = [(v, n) for v, n, _ in load_migrations("postgresql")]
    assert sqlite == postgres


def test_named_parameters_round_trip_text_bytes_and_integers(db) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES (:k, :v)", {"k": "a:b", "v": "50% off"})
        tx.execute(
            "INSERT INTO keyring (term, wrapped, created_at) VALUES (:t, :w, :c)",
            {"t": 2**31 + 5, "w": b"\x00\xffbytes", "c": "2026-01-01T00:00:00.000000Z"},
        )
    with db.read() as tx:
        assert tx.fetchval("SELECT value FROM meta WHERE key = :k", {"k": "a:b"}) == "50% off"
        row = tx.fetchone("SELECT * FROM keyring WHERE term = :t", {"t": 2**31 + 5})
    assert row is not None
    assert bytes(row["wrapped"]) == b"\x00\xffbytes"


def test_percent_signs_survive_with_and_without_parameters(db) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('pct', '100%')")
    with db.read() as tx:
        assert tx.fetchval("SELECT value FROM meta WHERE key = 'pct'") == "100%"
        assert tx.fetchval("SELECT value FROM meta WHERE value LIKE '100%'") == "100%"
        assert tx.fetchval("SELECT value FROM meta WHERE value LIKE :p", {"p": "100%"}) == "100%"


def test_exception_rolls_back_the_whole_transaction(db) -> None:
    def fail_after_a_write() -> None:
        with db.transaction() as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES ('x', '1')")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        fail_after_a_write()
    with db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM meta WHERE key = 'x'") == 0


def test_unique_violation_is_one_exception_on_both_drivers(db) -> None:
    with db.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('dup', '1')")
    with pytest.raises(UniqueViolation), db.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('dup', '2')")


def test_iterate_streams_every_row_in_batches(db) -> None:
    with db.transaction() as tx:
        for i in range(1234):
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (:k, :v)", {"k": f"k{i:05}", "v": str(i)}
            )
    with db.read() as tx:
        keys = [r["key"] for r in tx.iterate("SELECT key FROM meta ORDER BY key", size=100)]
    assert len(keys) == 1234 and keys[0] == "k00000" and keys[-1] == "k01233"


def test_connections_are_per_thread(db) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                with db.transaction() as tx:
                    tx.execute("INSERT INTO meta (key, value) VALUES (:k, 'v')", {"k": f"t{n}-{i}"})
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.close_thread()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.read() as tx:
        assert tx.fetchval("SELECT count(*) FROM meta WHERE key LIKE 't%'") == 80


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    (tmp_path / "x.db").touch()
    database = open_database("", sqlite_path=str(tmp_path / "x.db"))
    with database.read() as tx:
        assert tx.fetchval("PRAGMA journal_mode") == "wal"
    database.close()


def test_unreachable_postgres_is_a_clear_error_without_the_password() -> None:
    from tundra.core.errors import StorageUnavailable

    database = open_database("postgresql://tundra:s3cret-pw@127.0.0.1:1/none")
    with pytest.raises(StorageUnavailable) as info, database.read():
        pass
    assert "s3cret-pw" not in str(info.value)
    assert "127.0.0.1:1" in str(info.value)


def test_unsupported_scheme_is_a_config_error() -> None:
    from tundra.core.errors import ConfigError

    with pytest.raises(ConfigError, match="mysql"):
        open_database("mysql://x/y")


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_split_sql_keeps_statements_whole() -> None:
    script = "-- comment\nCREATE TABLE a (x INTEGER);\n\nCREATE INDEX i ON a(x);\n"
    assert split_sql(script) == ["CREATE TABLE a (x INTEGER)", "CREATE INDEX i ON a(x)"]


def test_missing_sqlite_file_says_to_run_init(tmp_path) -> None:
    from tundra.core.errors import NotInitialized

    database = open_database("", sqlite_path=str(tmp_path / "absent.db"))
    with pytest.raises(NotInitialized, match="tundra init"), database.read():
        pass
    assert database.schema_version() == 0
    assert not (tmp_path / "absent.db").exists()


def test_schema_version_of_an_empty_database_is_zero(database_url, tmp_path) -> None:
    (tmp_path / "e.db").touch()
    database = open_database(database_url, sqlite_path=str(tmp_path / "e.db"))
    assert database.schema_version() == 0
    with database.read() as tx:  # the connection is still usable afterwards
        assert tx.fetchval("SELECT 1") == 1
    database.close()


def test_close_reaches_connections_opened_by_other_threads(db) -> None:
    seen = []

    def work() -> None:
        with db.read() as tx:
            seen.append(tx.fetchval("SELECT 1"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    db.close()  # would leave the worker's connection open (a ResourceWarning) otherwise
    with db.read() as tx:  # and the database is still usable afterwards
        assert tx.fetchval("SELECT 1") == 1
    assert seen == [1]


def test_invalid_utf8_in_a_text_column_is_an_integrity_error(tmp_path) -> None:
    from tundra.core.errors import IntegrityError

    (tmp_path / "u.db").touch()
    database = open_database("", sqlite_path=str(tmp_path / "u.db"))
    database.migrate()
    with database.transaction() as tx:
        tx.execute("INSERT INTO meta (key, value) VALUES ('k', CAST(X'C328' AS TEXT))")
    with pytest.raises(IntegrityError, match="not valid UTF-8"), database.read() as tx:
        tx.fetchall("SELECT value FROM meta")
    database.close()
