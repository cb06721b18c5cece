"""The server inventory: add, list, show, update and remove managed servers.

A server starts ``pending``: it is known to the control plane but no agent has enrolled for it.
Enrollment (tundra.core.agents.enrollment) moves it to ``enrolled``; revoking its agent to
``revoked``. Each server is shown with its agent (the active one, else the newest): connection
state, last seen, agent version, certificate expiry and facts, read in the same single query as
the server rows (a correlated subquery per row picks the agent, over the agents_server index).
Removing a server revokes its agents' certificates in the same unit of work.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import AlreadyExists, InvalidInput, NotFound
from tundra.core.identity.scopes import require_server
from tundra.core.principal import Principal
from tundra.core.storage.db import Row, UniqueViolation
from tundra.core.uow import UnitOfWork, unit_of_work

if TYPE_CHECKING:
    from tundra.core.agents.enrollment import JoinToken
    from tundra.core.agents.models import Agent
    from tundra.core.services import Services

# Patterns as text: ``re`` compiles (and caches) them on first use, so listing servers never pays.
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?"
TAG_PATTERN = r"[a-z0-9][a-z0-9_.:=-]{0,63}"
HOSTNAME_PATTERN = (
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
STATUS_PENDING = "pending"
STATUS_ENROLLED = "enrolled"
STATUS_REVOKED = "revoked"

#: The agent shown with a server: its active agent, else its newest. Agent columns come back
#: prefixed ``agent_`` (see Agent.from_row).
_SERVER_SELECT = (
    "SELECT s.*, s.name AS server_name, s.address AS server_address,"
    " a.id AS agent_id, a.server_id AS agent_server_id, a.status AS agent_status,"
    " a.cert_serial AS agent_cert_serial, a.cert_fingerprint AS agent_cert_fingerprint,"
    " a.cert_not_after AS agent_cert_not_after, a.agent_version AS agent_agent_version,"
    " a.hostname AS agent_hostname, a.facts AS agent_facts,"
    " a.connected_at AS agent_connected_at, a.last_seen_at AS agent_last_seen_at,"
    " a.last_address AS agent_last_address, a.enrolled_at AS agent_enrolled_at,"
    " a.revoked_at AS agent_revoked_at"
    " FROM servers s LEFT JOIN agents a ON a.id = (SELECT a2.id FROM agents a2"
    " WHERE a2.server_id = s.id ORDER BY CASE WHEN a2.status = 'active' THEN 0 ELSE 1 END,"
    " a2.enrolled_at DESC LIMIT 1)"
)


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    address: str
    tags: tuple[str, ...]
    status: str
    created_at: str
    updated_at: str
    #: The server's agent (active, else newest); None before the first enrollment.
    agent: Agent | None = None
    #: The agent's connection state (see Agent.connection); None without an agent.
    connection: str | None = None
    #: Set only on the result of ``add(..., join_token=True)``: shown once, never stored.
    join_token: JoinToken | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "tags": list(self.tags),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "connection": self.connection,
            "agent": None if self.agent is None else self._agent_view(self.agent),
        }
        if self.join_token is not None:
            data["join_token"] = self.join_token.as_dict()
        return data

    def _agent_view(self, agent: Agent) -> dict[str, Any]:
        fields = agent.fields()
        for key in ("server_id", "server_name", "server_address"):
            del fields[key]
        return {**fields, "connection": self.connection}

    @classmethod
    def from_row(cls, row: Row, *, heartbeat_seconds: int | None = None) -> Server:
        """A server from a servers row; with the ``agent_``-prefixed columns of _SERVER_SELECT
        (and ``heartbeat_seconds``) its agent and connection state too."""
        agent = None
        connection = None
        if row.get("agent_id") is not None and heartbeat_seconds is not None:
            from tundra.core.agents.models import Agent

            agent = Agent.from_row(row, prefix="agent_")
            connection = agent.connection(heartbeat_seconds=heartbeat_seconds)
        return cls(
            id=row["id"],
            name=row["name"],
            address=row["address"],
            tags=tuple(json.loads(row["tags"])),
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            agent=agent,
            connection=connection,
        )


def validate_name(name: str) -> str:
    if not re.fullmatch(NAME_PATTERN, name):
        raise InvalidInput(
            f"invalid server name {name!r}",
            hint="use lowercase letters, digits, '.' and '-', at most 63 characters",
        )
    return name


def validate_address(address: str) -> str:
    try:
        import ipaddress

        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    if re.fullmatch(HOSTNAME_PATTERN, address) and not address.replace(".", "").isdigit():
        return address.lower()
    raise InvalidInput(
        f"invalid server address {address!r}", hint="give an IPv4/IPv6 address or a DNS host name"
    )


def validate_tags(tags: Iterable[str]) -> tuple[str, ...]:
    result = []
    for tag in tags:
        if not re.fullmatch(TAG_PATTERN, tag):
            raise InvalidInput(
                f"invalid tag {tag!r}",
                hint="tags are lowercase, start with a letter or digit, and may contain _ . : = -",
            )
        if tag not in result:
            result.append(tag)
    return tuple(sorted(result))


class ServerService:
    def __init__(self, services: Services) -> None:
        self._services = services

    def _heartbeat(self) -> int:
        return self._services.settings.agent_heartbeat_seconds

    def _visible(self, principal: Principal, servers: list[Server]) -> list[Server]:
        allowed = principal.resources.get("server")
        if not allowed:
            return servers
        return [s for s in servers if s.name in allowed]

    def list(
        self, principal: Principal, *, tag: str | None = None, request_id: str | None = None
    ) -> list[Server]:
        require_server(self._services, principal, "servers:read", request_id=request_id)
        with self._services.db.read() as tx:
            rows = tx.fetchall(_SERVER_SELECT + " ORDER BY s.name")
        heartbeat = self._heartbeat()
        servers = [Server.from_row(r, heartbeat_seconds=heartbeat) for r in rows]
        if tag is not None:
            servers = [s for s in servers if tag in s.tags]
        return self._visible(principal, servers)

    def get(self, principal: Principal, name: str, *, request_id: str | None = None) -> Server:
        require_server(self._services, principal, "servers:read", name, request_id=request_id)
        with self._services.db.read() as tx:
            row = tx.fetchone(_SERVER_SELECT + " WHERE s.name = :name", {"name": name})
        if row is None:
            raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
        return Server.from_row(row, heartbeat_seconds=self._heartbeat())

    def add(
        self,
        principal: Principal,
        *,
        name: str,
        address: str,
        tags: Sequence[str] = (),
        join_token: bool = False,
        request_id: str | None = None,
    ) -> Server:
        """Add a server; with ``join_token`` also its first join token, in the same unit of
        work (``Server.join_token``, shown once)."""
        validate_name(name)
        require_server(self._services, principal, "servers:write", name, request_id=request_id)
        now = now_iso()
        server = Server(
            id=new_id(),
            name=name,
            address=validate_address(address),
            tags=validate_tags(tags),
            status=STATUS_PENDING,
            created_at=now,
            updated_at=now,
        )
        try:
            with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
                uow.execute(
                    "INSERT INTO servers (id, name, address, tags, status, created_at, updated_at)"
                    " VALUES (:id, :name, :address, :tags, :status, :created_at, :updated_at)",
                    {**server.as_dict(), "tags": json.dumps(list(server.tags))},
                )
                uow.record(
                    Action.SERVER_CREATE,
                    f"server:{name}",
                    {"id": server.id, "address": server.address, "tags": list(server.tags)},
                )
                if join_token:
                    from tundra.core.agents.enrollment import insert_join_token

                    token = insert_join_token(
                        self._services,
                        uow,
                        server_id=server.id,
                        server_name=name,
                        created_by=principal.actor,
                    )
                    server = replace(server, join_token=token)
        except UniqueViolation as exc:
            raise AlreadyExists(f"a server named {name!r} exists already") from exc
        return server

    def update(
        self,
        principal: Principal,
        name: str,
        *,
        address: str | None = None,
        tags: Sequence[str] | None = None,
        request_id: str | None = None,
    ) -> Server:
        require_server(self._services, principal, "servers:write", name, request_id=request_id)
        changes: dict[str, Any] = {}
        if address is not None:
            changes["address"] = validate_address(address)
        if tags is not None:
            changes["tags"] = list(validate_tags(tags))
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            row = uow.fetchone(_SERVER_SELECT + " WHERE s.name = :name", {"name": name})
            if row is None:
                raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
            current = Server.from_row(row, heartbeat_seconds=self._heartbeat())
            before = {"address": current.address, "tags": list(current.tags)}
            changed = {k: v for k, v in changes.items() if before[k] != v}
            if not changed:
                return current
            uow.execute(
                "UPDATE servers SET address = :address, tags = :tags, updated_at = :now"
                " WHERE id = :id",
                {
                    "address": changed.get("address", current.address),
                    "tags": json.dumps(changed.get("tags", list(current.tags))),
                    "now": now_iso(),
                    "id": current.id,
                },
            )
            uow.record(
                Action.SERVER_UPDATE,
                f"server:{name}",
                {"before": {k: before[k] for k in changed}, "after": changed},
            )
            row = uow.fetchone(_SERVER_SELECT + " WHERE s.id = :id", {"id": current.id})
        assert row is not None
        return Server.from_row(row, heartbeat_seconds=self._heartbeat())

    def remove(self, principal: Principal, name: str, *, request_id: str | None = None) -> Server:
        """Remove a server: a sensitive operation (fresh authentication; never a token).

        Its agents are revoked with every certificate they hold in the same unit of work, so a
        connected agent is refused from its next call.
        """
        require_server(self._services, principal, "servers:write", name, request_id=request_id)
        self._services.reauth.require_fresh_auth(principal)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            row = uow.fetchone("SELECT * FROM servers WHERE name = :name", {"name": name})
            if row is None:
                raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
            server = Server.from_row(row)
            self._revoke_agents(uow, server, name)
            uow.execute("DELETE FROM servers WHERE id = :id", {"id": server.id})
            uow.record(
                Action.SERVER_DELETE, f"server:{name}", {"id": server.id, "address": server.address}
            )
        self._services.audit.checkpoint_after_sensitive()
        return server

    @staticmethod
    def _revoke_agents(uow: UnitOfWork, server: Server, name: str) -> None:
        rows = uow.fetchall(
            "SELECT id FROM agents WHERE server_id = :sid AND status = 'active'", {"sid": server.id}
        )
        if not rows:
            return
        from tundra.core.agents.registry import revoke_agent_rows

        moment = now_iso()
        for row in rows:
            serials = revoke_agent_rows(uow, row["id"], moment)
            uow.record(
                Action.AGENT_REVOKE,
                f"server:{name}",
                {"agent_id": row["id"], "serials": serials, "reason": "server-removed"},
            )
