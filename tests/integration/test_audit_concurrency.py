"""Eight real processes append at once: the chain stays linear and gap-free on both databases.

Appends are serialised by a database lock (PostgreSQL advisory lock, SQLite BEGIN IMMEDIATE),
not a process lock, so this is what several `tundra serve` instances or CLI runs do together.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tundra.core.crypto.primitives import make_private_dir
from tundra.core.services import Services
from tundra.core.settings import Settings

WORKERS = 8
UNITS = 50

WORKER = r"""
import sys, time
from pathlib import Path
from tundra.core.principal import cli_principal
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.core.uow import unit_of_work

home, url, worker, units, barrier = sys.argv[1:6]
services = Services(Settings(home=Path(home), database_url=url))
services.db.schema_version()  # connect before the start line
Path(barrier, f"ready-{worker}").touch()
while not Path(barrier, "go").exists():
    time.sleep(0.002)
for i in range(int(units)):
    with unit_of_work(services.db, cli_principal()) as uow:
        uow.execute("INSERT INTO meta (key, value) VALUES (:k, :v)",
                    {"k": f"worker-{worker}-{i}", "v": str(i)})
        uow.record("fleet:server:create", f"server:w{worker}-{i}", {"worker": int(worker), "i": i})
services.close()
"""


@pytest.mark.slow
def test_concurrent_appenders_keep_one_linear_chain(settings: Settings, tmp_path: Path) -> None:
    make_private_dir(settings.home)
    if not settings.database_url:
        settings.sqlite_path.touch(mode=0o600)
    services = Services(settings)
    services.db.migrate()
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(settings.home),
                               settings.database_url, str(n), str(UNITS), str(barrier)],
                              stderr=subprocess.PIPE, text=True)
             for n in range(WORKERS)]
    deadline = time.monotonic() + 120
    while len(list(barrier.glob("ready-*"))) < WORKERS:
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.stderr.read() for p in procs if p.stderr]
        time.sleep(0.01)
    (barrier / "go").touch()
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err

    total = WORKERS * UNITS
    with services.db.read() as tx:
        seqs = [r["seq"] for r in tx.fetchall("SELECT seq FROM audit_log ORDER BY seq")]
        workers = [r["actor"] for r in tx.fetchall("SELECT actor FROM audit_log")]
        changes = tx.fetchval("SELECT count(*) FROM meta WHERE key LIKE 'worker-%'")
    assert seqs == list(range(1, total + 1))  # contiguous: no gap, no duplicate, no fork
    assert len(workers) == changes == total
    result = services.audit.verify()
    assert result.ok, result
    assert result.rows_checked == result.head_seq == total, result
    per_worker = {n: len(services.audit.list(resource=f"server:w{n}-*", limit=1000))
                  for n in range(WORKERS)}
    assert per_worker == dict.fromkeys(range(WORKERS), UNITS)
    services.close()
