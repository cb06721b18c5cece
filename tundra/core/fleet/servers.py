"""The server inventory: add, list, show, update and remove managed servers.

A server starts ``pending``: it is known to the control plane but no agent has enrolled for it.
Agent enrollment (a later slice) moves it to ``enrolled`` and fills the agent columns; nothing
here needs to change for that beyond new states and fields.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import AlreadyExists, InvalidInput, NotFound
from tundra.core.principal import Principal
from tundra.core.storage.db import Row, UniqueViolation
from tundra.core.uow import unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

# Patterns as text: ``re`` compiles (and caches) them on first use, so listing servers never pays.
NAME_PATTERN = r"[a-z0-9](?:[a-z0-9.-]{0,61}[a-z0-9])?"
TAG_PATTERN = r"[a-z0-9][a-z0-9_.:=-]{0,63}"
HOSTNAME_PATTERN = (
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
)
STATUS_PENDING = "pending"


@dataclass(frozen=True)
class Server:
    id: str
    name: str
    address: str
    tags: tuple[str, ...]
    status: str
    created_at: str
    updated_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "address": self.address,
            "tags": list(self.tags),
            "status": self.status,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_row(cls, row: Row) -> Server:
        return cls(
            id=row["id"],
            name=row["name"],
            address=row["address"],
            tags=tuple(json.loads(row["tags"])),
            status=row["status"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
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

    def _require(
        self,
        principal: Principal,
        scope: str,
        name: str | None = None,
        *,
        request_id: str | None = None,
    ) -> None:
        from tundra.core.identity.scopes import require

        require(
            self._services,
            principal,
            scope,
            ("server", name) if name else None,
            request_id=request_id,
        )

    def _visible(self, principal: Principal, servers: list[Server]) -> list[Server]:
        allowed = principal.resources.get("server")
        if not allowed:
            return servers
        return [s for s in servers if s.name in allowed]

    def list(
        self, principal: Principal, *, tag: str | None = None, request_id: str | None = None
    ) -> list[Server]:
        self._require(principal, "servers:read", request_id=request_id)
        with self._services.db.read() as tx:
            rows = tx.fetchall("SELECT * FROM servers ORDER BY name")
        servers = [Server.from_row(r) for r in rows]
        if tag is not None:
            servers = [s for s in servers if tag in s.tags]
        return self._visible(principal, servers)

    def get(self, principal: Principal, name: str, *, request_id: str | None = None) -> Server:
        self._require(principal, "servers:read", name, request_id=request_id)
        with self._services.db.read() as tx:
            row = tx.fetchone("SELECT * FROM servers WHERE name = :name", {"name": name})
        if row is None:
            raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
        return Server.from_row(row)

    def add(
        self,
        principal: Principal,
        *,
        name: str,
        address: str,
        tags: Sequence[str] = (),
        request_id: str | None = None,
    ) -> Server:
        validate_name(name)
        self._require(principal, "servers:write", name, request_id=request_id)
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
        self._require(principal, "servers:write", name, request_id=request_id)
        changes: dict[str, Any] = {}
        if address is not None:
            changes["address"] = validate_address(address)
        if tags is not None:
            changes["tags"] = list(validate_tags(tags))
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            row = uow.fetchone("SELECT * FROM servers WHERE name = :name", {"name": name})
            if row is None:
                raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
            current = Server.from_row(row)
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
            row = uow.fetchone("SELECT * FROM servers WHERE id = :id", {"id": current.id})
        assert row is not None
        return Server.from_row(row)

    def remove(self, principal: Principal, name: str, *, request_id: str | None = None) -> Server:
        """Remove a server: a sensitive operation (fresh authentication; never a token)."""
        self._require(principal, "servers:write", name, request_id=request_id)
        self._services.reauth.require_fresh_auth(principal)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            row = uow.fetchone("SELECT * FROM servers WHERE name = :name", {"name": name})
            if row is None:
                raise NotFound(f"no server named {name!r}", hint="see `tundra server list`")
            server = Server.from_row(row)
            uow.execute("DELETE FROM servers WHERE id = :id", {"id": server.id})
            uow.record(
                Action.SERVER_DELETE, f"server:{name}", {"id": server.id, "address": server.address}
            )
        self._services.audit.checkpoint_after_sensitive()
        return server
