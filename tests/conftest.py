"""Shared fixtures: every storage test runs on SQLite and the real PostgreSQL, every KV test on
the embedded store and the real Valkey/Redis.

Service URLs come from ``TUNDRA_TEST_DATABASE_URL`` and ``TUNDRA_TEST_VALKEY_URL`` (defaulting to
the local services). An unreachable service skips its tests with the reason, unless
``TUNDRA_REQUIRE_SERVICES=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

# Before anything imports grpc: the gateway's TLS 1.2-blocking cipher list (see tundra/gateway).
import tundra.gateway  # noqa: F401  # isort: skip
from tundra.core.settings import Settings

PG_URL = os.environ.get("TUNDRA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
VALKEY_URL = os.environ.get("TUNDRA_TEST_VALKEY_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("TUNDRA_REQUIRE_SERVICES") == "1"

# Tests never pay for production Argon2 parameters unless they assert on them.
os.environ.setdefault("TUNDRA_PASSWORD_PROFILE", "test")


def service_missing(what: str, reason: str) -> None:
    message = f"{what} is not reachable ({reason})"
    if REQUIRE:
        pytest.fail(f"{message}; TUNDRA_REQUIRE_SERVICES=1 makes this a failure", pytrace=False)
    pytest.skip(message)


_pg_checked: str | None = None


def _check_pg() -> str | None:
    global _pg_checked
    if _pg_checked is None:
        try:
            import psycopg

            with psycopg.connect(PG_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _pg_checked = ""
        except Exception as exc:
            _pg_checked = f"{PG_URL}: {str(exc).strip().splitlines()[0]}"
    return _pg_checked or None


@pytest.fixture
def pg_schema_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    problem = _check_pg()
    if problem:
        service_missing("PostgreSQL", problem)
    import psycopg

    schema = "t_" + secrets.token_hex(6)
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """'' for the embedded SQLite database, or a PostgreSQL URL on a fresh schema."""
    if request.param == "sqlite":
        return ""
    return str(request.getfixturevalue("pg_schema_url"))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    return path


@pytest.fixture
def settings(home: Path, database_url: str) -> Settings:
    return Settings(home=home, database_url=database_url, password_profile="test")


@pytest.fixture
def valkey_url() -> str:
    try:
        import redis

        client = redis.Redis.from_url(VALKEY_URL, socket_connect_timeout=3)
        client.ping()
        client.close()
    except Exception as exc:
        service_missing("Valkey/Redis", f"{VALKEY_URL}: {exc}")
    return VALKEY_URL


@pytest.fixture(params=["embedded", "valkey"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    """A KV store of each kind; the Valkey one lives under a unique key prefix."""
    if request.param == "embedded":
        from tundra.core.storage.kv_sqlite import SqliteKV

        store: object = SqliteKV(tmp_path / "kv.db")
        yield store
        store.close()  # type: ignore[attr-defined]
        return
    url = request.getfixturevalue("valkey_url")
    from tundra.core.storage.kv_valkey import ValkeyKV

    prefix = f"tundra-test:{secrets.token_hex(6)}:"
    store = ValkeyKV(url, prefix=prefix)
    yield store
    client = store._client  # type: ignore[attr-defined]
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    store.close()  # type: ignore[attr-defined]


ADMIN_NAME = "admin"
ADMIN_PASSWORD = "correct horse battery staple"


@pytest.fixture
def services(settings: Settings) -> Iterator[object]:
    """Services on an initialised home (master key, keyring, first admin) for each database."""
    from tundra.core.home import initialize
    from tundra.core.services import Services

    svc = Services(settings)
    initialize(svc, admin_name=ADMIN_NAME, admin_password=ADMIN_PASSWORD)
    yield svc
    svc.close()
