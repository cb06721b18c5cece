"""Helpers shared by the audit tests: write rows the way core does, and tamper like an attacker."""

from __future__ import annotations

from typing import Any

from tundra.core.audit.chain import GENESIS, chain_hash
from tundra.core.principal import cli_principal
from tundra.core.services import Services
from tundra.core.uow import unit_of_work


def write_rows(services: Services, count: int, *, start: int = 0) -> None:
    """``count`` units of work, each changing state and recording one event."""
    for i in range(start, start + count):
        with unit_of_work(services.db, cli_principal()) as uow:
            uow.execute("INSERT INTO meta (key, value) VALUES (:k, :v)",
                        {"k": f"test-{i}", "v": str(i)})
            uow.record("fleet:server:create", f"server:web-{i}",
                       {"name": f"web-{i}", "address": f"203.0.113.{i % 250 + 1}",
                        "tags": ["prod"]})


def row(services: Services, seq: int) -> dict[str, Any]:
    with services.db.read() as tx:
        found = tx.fetchone("SELECT * FROM audit_log WHERE seq = :s", {"s": seq})
    assert found is not None
    return found


def recompute_from(services: Services, seq: int) -> None:
    """Re-hash every row from ``seq`` on, as an attacker who knows the algorithm would."""
    import json

    with services.db.transaction() as tx:
        prev_row = tx.fetchone("SELECT chain_hash FROM audit_log WHERE seq = :s", {"s": seq - 1})
        prev = prev_row["chain_hash"] if prev_row else GENESIS
        rows = tx.fetchall("SELECT * FROM audit_log WHERE seq >= :s ORDER BY seq", {"s": seq})
        for item in rows:
            fields = {**item, "details": json.loads(item["details"])}
            digest = chain_hash(fields, prev)
            tx.execute("UPDATE audit_log SET prev_hash = :p, chain_hash = :h WHERE seq = :s",
                       {"p": prev, "h": digest, "s": item["seq"]})
            prev = digest
