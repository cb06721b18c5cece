"""Audit verification throughput: `AuditService.verify()` rows/s against raw SHA3-256.

The chain (50,000 rows by default, BENCH_ROWS) is written through units of work on a temporary
SQLite home (and on PostgreSQL when reachable, BENCH_PG_URL). Baseline, measured in the same
run: `hashlib.sha3_256(m).digest()` over exactly the bytes each row's chain hash covers (same
per-row message sizes), in a plain Python loop. Verification of the three export formats is
measured too. Each figure is the best of BENCH_REPEAT runs (one run for CSV and JSON files).
The aim is a ratio of at least 0.5 for the database.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tundra.core.audit.chain import DOMAIN, FIELDS, canonical_json
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work

ROWS = int(os.environ.get("BENCH_ROWS", "50000"))
PG_ROWS = int(os.environ.get("BENCH_PG_ROWS", "20000"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))
PG_URL = os.environ.get("BENCH_PG_URL", os.environ.get("TUNDRA_TEST_DATABASE_URL",
                                                       "postgresql://postgres@127.0.0.1:5432/test"))
PER_UOW = 1000


def best(fn: Callable[[], Any], repeat: int = REPEAT) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def fill(services: Services, rows: int) -> None:
    services.db.migrate()
    for start in range(0, rows, PER_UOW):
        with unit_of_work(services.db, SYSTEM) as uow:
            for i in range(start, min(rows, start + PER_UOW)):
                uow.record("fleet:server:create", f"server:web-{i}",
                           {"name": f"web-{i}", "address": f"203.0.113.{i % 250 + 1}",
                            "tags": ["prod", "eu-west"], "status": "pending"})


def hash_inputs(services: Services) -> list[bytes]:
    """The exact bytes each row's chain hash covers."""
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log ORDER BY seq")
    out = []
    for row in rows:
        body = {name: row[name] for name in FIELDS}
        body["details"] = json.loads(row["details"])
        out.append(DOMAIN + int(row["seq"]).to_bytes(8, "big") + bytes.fromhex(row["prev_hash"])
                   + canonical_json(body))
    return out


def raw_sha3(messages: list[bytes]) -> None:
    for message in messages:
        hashlib.sha3_256(message).digest()


def measure(services: Services, rows: int, tmp: Path, *, files: bool) -> dict[str, Any]:
    messages = hash_inputs(services)
    assert len(messages) == rows
    baseline = best(lambda: raw_sha3(messages))
    result = services.audit.verify()
    assert result.ok, result
    assert result.rows_checked == rows, result
    verify = best(services.audit.verify)
    figures: dict[str, Any] = {
        "rows": rows,
        "mean_hashed_bytes_per_row": round(sum(map(len, messages)) / rows, 1),
        "baseline_raw_sha3_rows_per_s": round(rows / baseline),
        "verify_database_rows_per_s": round(rows / verify),
        "ratio_database": round(baseline / verify, 3),
    }
    if files:
        for fmt in ("jsonl", "csv", "json"):
            path = tmp / f"export.{fmt}"
            with path.open("wb") as handle:
                services.audit.export(handle, format=fmt)
            assert services.audit.verify(file=path).ok
            # CSV and JSON take the exact (slow) path: one timed run keeps the bench short.
            seconds = best(lambda p=path: services.audit.verify(file=p),
                           REPEAT if fmt == "jsonl" else 1)
            figures[f"verify_{fmt}_file_rows_per_s"] = round(rows / seconds)
            figures[f"ratio_{fmt}_file"] = round(baseline / seconds, 3)
    return figures


def postgres(tmp: Path) -> dict[str, Any]:
    try:
        import psycopg

        schema = "bench_" + os.urandom(4).hex()
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        return {"skipped": f"PostgreSQL not reachable at {PG_URL}: {str(exc).strip()[:200]}"}
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    services = Services(Settings(home=tmp / "pg-home", database_url=url))
    try:
        fill(services, PG_ROWS)
        return measure(services, PG_ROWS, tmp, files=False)
    finally:
        services.close()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir(mode=0o700)
        (home / "tundra.db").touch(mode=0o600)
        services = Services(Settings(home=home))
        fill(services, ROWS)
        sqlite = measure(services, ROWS, tmp, files=True)
        services.close()
        pg = postgres(tmp)
    print(json.dumps({"benchmark": "audit_verify", "repeat": REPEAT, "sqlite": sqlite,
                      "postgresql": pg, "aim_ratio_database_at_least": 0.5}, indent=2))


if __name__ == "__main__":
    main()
