"""API token verification throughput: `TokenService.verify()` ops/s against a lookup baseline.

A temporary home gets BENCH_TOKENS tokens (SQLite, and PostgreSQL when reachable: BENCH_PG_URL,
on a fresh schema dropped afterwards). Every token is verified once before timing, so the timed
loop is the steady state of a warm database: `last_used_at` was just written and the interval
(60 s) keeps the loop read-only, as it is for a busy client.

Baseline, measured in the same run on the same table with the same driver and the same
transaction wrapper: `hashlib.sha256(token)` plus a primary-key `SELECT * FROM api_tokens WHERE
id = :id`. The ratio (verify / baseline) shows what the verification path costs on top of a bare
hash-and-fetch: format, checksum and env checks, the join with the owner, expiry and revocation,
and building the principal. Each figure is the median of BENCH_REPEAT alternating rounds of
BENCH_SECONDS each.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tundra.core.crypto.primitives import make_private_dir
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import Settings

TOKENS = int(os.environ.get("BENCH_TOKENS", "200"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "1.5"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
PG_URL = os.environ.get("BENCH_PG_URL", os.environ.get("TUNDRA_TEST_DATABASE_URL",
                                                       "postgresql://postgres@127.0.0.1:5432/test"))


def ops_per_second(fn: Callable[[int], Any]) -> float:
    done = 0
    deadline = time.perf_counter() + SECONDS
    start = time.perf_counter()
    while time.perf_counter() < deadline:
        for _ in range(50):
            fn(done)
            done += 1
    return done / (time.perf_counter() - start)


def measure(services: Services, label: str) -> dict[str, Any]:
    if services.settings.database_url == "":
        services.settings.sqlite_path.touch(mode=0o600)
    services.db.migrate()
    password = "bench password 1234"
    services.users.add(SYSTEM, name="bench", password=password, is_admin=True)
    created = [services.tokens.create(SYSTEM, name=f"t{i}", scopes=["servers:read"],
                                      owner="bench") for i in range(TOKENS)]
    plaintexts = [c.plaintext for c in created]
    ids = [c.token.id for c in created]
    for plaintext in plaintexts:  # warm: caches, and last_used_at written once
        services.tokens.verify(plaintext)
    db = services.db

    def verify(i: int) -> None:
        services.tokens.verify(plaintexts[i % TOKENS])

    def baseline(i: int) -> None:
        hashlib.sha256(plaintexts[i % TOKENS].encode()).digest()
        with db.read() as tx:
            row = tx.fetchone("SELECT * FROM api_tokens WHERE id = :id", {"id": ids[i % TOKENS]})
        assert row is not None

    verify_runs, baseline_runs = [], []
    for _ in range(REPEAT):
        verify_runs.append(ops_per_second(verify))
        baseline_runs.append(ops_per_second(baseline))
    v, b = statistics.median(verify_runs), statistics.median(baseline_runs)
    return {"database": label, "tokens": TOKENS, "verify_ops_per_s": round(v, 1),
            "baseline_ops_per_s": round(b, 1), "ratio": round(v / b, 3),
            "verify_us_per_op": round(1e6 / v, 1), "baseline_us_per_op": round(1e6 / b, 1)}


@contextmanager
def pg_schema() -> Iterator[str | None]:
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3, autocommit=True) as conn:
            schema = "bench_" + secrets.token_hex(6)
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception:  # not reachable: measure SQLite only
        yield None
        return
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        make_private_dir(home)
        services = Services(Settings(home=home, password_profile="test"))
        try:
            results.append(measure(services, "sqlite"))
        finally:
            services.close()
        with pg_schema() as url:
            if url is not None:
                pg_home = Path(tmp) / "pg-home"
                make_private_dir(pg_home)
                settings = Settings(home=pg_home, database_url=url,
                                    password_profile="test")
                services = Services(settings)
                try:
                    results.append(measure(services, "postgresql"))
                finally:
                    services.close()
    print(json.dumps({
        "benchmark": "token_verify",
        "measured": "TokenService.verify() per second, warm database, steady state",
        "baseline": "hashlib.sha256(token) + primary-key SELECT on api_tokens, same driver",
        "ratio": "verify_ops_per_s / baseline_ops_per_s",
        "seconds_per_round": SECONDS, "rounds": REPEAT,
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
