"""Audit append throughput: rows/s through `unit_of_work` with 1 and 8 writer processes.

Each unit of work changes one row (an INSERT into `meta`) and records one audit event, so it
takes the audit lock, reads the head, hashes and inserts the audit row in the same transaction.
Baseline, measured in the same run with the same processes: the same two INSERTs per
transaction (the audit row into a plain table with the same columns) without lock, head read or
hash. Runs on a temporary SQLite home and on PostgreSQL when reachable (BENCH_PG_URL); prints
JSON with rows/s and the ratio chain/plain.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tundra.core.services import Services
from tundra.core.settings import Settings

PG_URL = os.environ.get("BENCH_PG_URL", os.environ.get("TUNDRA_TEST_DATABASE_URL",
                                                       "postgresql://postgres@127.0.0.1:5432/test"))
TOTAL = int(os.environ.get("BENCH_UNITS", "400"))

WORKER = r"""
import sys, time
from pathlib import Path
from tundra.core.crypto.primitives import new_id
from tundra.core.principal import cli_principal
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work
from tundra.core.clock import now_iso

home, url, mode, worker, units, barrier = sys.argv[1:7]
services = Services(Settings(home=Path(home), database_url=url))
services.db.schema_version()  # connect before the start line
principal = cli_principal()
Path(barrier, f"ready-{worker}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.001)
for i in range(int(units)):
    key = f"{Path(barrier).name}-{worker}-{i}"
    details = {"name": key, "address": "203.0.113.10", "tags": ["prod"]}
    if mode == "chain":
        with unit_of_work(services.db, principal) as uow:
            uow.execute("INSERT INTO meta (key, value) VALUES (:k, :v)", {"k": key, "v": "x"})
            uow.record("fleet:server:create", f"server:{key}", details)
    else:
        import json
        with services.db.transaction() as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES (:k, :v)", {"k": key, "v": "x"})
            tx.execute(
                "INSERT INTO bench_plain_audit (id, occurred_at, actor, action, resource,"
                " request_id, details, prev_hash, chain_hash) VALUES (:id, :t, :a, :ac, :r,"
                " :rid, :d, :p, :h)",
                {"id": new_id(), "t": now_iso(), "a": principal.actor,
                 "ac": "fleet:server:create", "r": f"server:{key}", "rid": new_id()[:24],
                 "d": json.dumps(details, sort_keys=True, separators=(",", ":")),
                 "p": "0" * 64, "h": "0" * 64})
services.close()
"""


def run_writers(settings: Settings, mode: str, writers: int, tmp: Path) -> float:
    """Rows/s of ``writers`` processes writing TOTAL units between them, timed from 'go'."""
    barrier = tmp / f"barrier-{mode}-{writers}-{time.monotonic_ns()}"
    barrier.mkdir()
    units = TOTAL // writers
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(settings.home),
                               settings.database_url, mode, str(n), str(units), str(barrier)])
             for n in range(writers)]
    while len(list(barrier.glob("ready-*"))) < writers:
        if any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit("a bench worker failed to start")
        time.sleep(0.005)
    start = time.perf_counter()
    (barrier / "go").touch()
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit("a bench worker failed")
    return units * writers / (time.perf_counter() - start)


def measure(settings: Settings, tmp: Path) -> dict[str, Any]:
    services = Services(settings)
    services.db.migrate()
    with services.db.transaction() as tx:
        tx.execute("CREATE TABLE bench_plain_audit (id TEXT PRIMARY KEY, occurred_at TEXT NOT NULL,"
                   " actor TEXT NOT NULL, action TEXT NOT NULL, resource TEXT NOT NULL,"
                   " request_id TEXT NOT NULL, details TEXT NOT NULL, prev_hash TEXT NOT NULL,"
                   " chain_hash TEXT NOT NULL)")
    figures: dict[str, Any] = {}
    for writers in (1, 8):
        plain = run_writers(settings, "plain", writers, tmp)
        chain = run_writers(settings, "chain", writers, tmp)
        figures[f"writers_{writers}"] = {
            "units": TOTAL // writers * writers,
            "baseline_plain_insert_rows_per_s": round(plain, 1),
            "chain_rows_per_s": round(chain, 1),
            "ratio": round(chain / plain, 3),
        }
    result = services.audit.verify()
    figures["chain_verified"] = result.ok
    figures["chain_rows"] = result.rows_checked
    services.close()
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
    home = tmp / "pg-home"
    home.mkdir(mode=0o700)
    try:
        return measure(Settings(home=home, database_url=f"{PG_URL}{sep}options=-csearch_path%3D"
                                                        f"{schema}"), tmp)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        home = tmp / "home"
        home.mkdir(mode=0o700)
        (home / "tundra.db").touch(mode=0o600)
        sqlite = measure(Settings(home=home), tmp)
        pg = postgres(tmp)
    print(json.dumps({"benchmark": "audit_append", "units_per_run": TOTAL, "sqlite": sqlite,
                      "postgresql": pg}, indent=2))


if __name__ == "__main__":
    main()
