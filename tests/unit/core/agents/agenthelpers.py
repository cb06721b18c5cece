"""Helpers for the command tests (imported as ``agenthelpers``): server and agent rows by SQL.

Agent rows are inserted directly (schema of migration 0004) so these tests do not depend on the
enrollment code; an agent here is exactly what enrollment leaves behind in the tables.
"""

from __future__ import annotations

import json
from typing import Any

from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.principal import SYSTEM, Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.uow import unit_of_work


def add_server(services: Services, name: str, *, address: str = "203.0.113.10") -> str:
    """A server row (status 'enrolled'); returns its id."""
    server_id = new_id()
    now = now_iso()
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "INSERT INTO servers (id, name, address, tags, status, created_at, updated_at)"
            " VALUES (:id, :name, :address, '[]', 'enrolled', :now, :now)",
            {"id": server_id, "name": name, "address": address, "now": now},
        )
        uow.record("test:server:insert", f"server:{name}", {})
    return server_id


def add_agent(services: Services, server_name: str, *, status: str = "active") -> str:
    """An agent row for ``server_name`` (the server is created when missing); returns its id."""
    with services.db.read() as tx:
        server_id = tx.fetchval("SELECT id FROM servers WHERE name = :n", {"n": server_name})
    if server_id is None:
        server_id = add_server(services, server_name)
    agent_id = new_id()
    now = now_iso()
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "INSERT INTO agents (id, server_id, status, cert_serial, cert_fingerprint,"
            " cert_not_after, enrolled_at, revoked_at) VALUES (:id, :server, :status, :serial,"
            " :fp, :after, :now, :revoked)",
            {
                "id": agent_id,
                "server": server_id,
                "status": status,
                "serial": new_id(),
                "fp": "00" * 32,
                "after": "2999-01-01T00:00:00.000000Z",
                "now": now,
                "revoked": now if status == "revoked" else None,
            },
        )
        uow.record("test:agent:insert", f"server:{server_name}", {"agent_id": agent_id})
    return agent_id


def revoke_agent(services: Services, agent_id: str) -> None:
    with unit_of_work(services.db, SYSTEM) as uow:
        uow.execute(
            "UPDATE agents SET status = 'revoked', revoked_at = :now WHERE id = :id",
            {"id": agent_id, "now": now_iso()},
        )
        uow.record("test:agent:revoke", f"agent:{agent_id}", {})


def audit_rows(services: Services, action: str) -> list[dict[str, Any]]:
    with services.db.read() as tx:
        rows = tx.fetchall("SELECT * FROM audit_log WHERE action = :a ORDER BY seq", {"a": action})
    for row in rows:
        row["details"] = json.loads(row["details"])
    return rows


def token(*scopes: str, servers: tuple[str, ...] | None = None) -> Principal:
    """A token principal as the token service builds one after verifying a bearer token."""
    return Principal(
        PrincipalKind.TOKEN,
        "tnd_live_AAAAAAAA",
        user_id="u1",
        is_admin="admin" in scopes,
        scopes=frozenset(scopes),
        resources={"server": servers} if servers is not None else {},
        token_id="tok-1",
    )
