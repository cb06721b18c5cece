"""API and MCP tokens: issuing, listing, revoking, and verifying a bearer token.

Only SHA-256(token) is stored; the plaintext exists once, in the :class:`CreatedToken` returned
by :meth:`TokenService.create`. :meth:`TokenService.verify` checks the format, the checksum and
the env before any database access (see token_format), then looks the hash up; every refusal is
the same :class:`TokenInvalid` with a private reason. A token never carries more than its owner
may do, and one with the ``admin`` scope is issued only after a fresh authentication.

``last_used_at`` is written at most once per ``token_last_used_interval`` by one conditional
UPDATE outside a unit of work, so it is *not* audited: it is bookkeeping that follows from a
request, not a decision anyone made, and auditing it would append one chain row (under the audit
lock every writer shares) per API request.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from tundra.core.audit.actions import Action
from tundra.core.clock import epoch, now, now_iso, to_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TokenInvalid
from tundra.core.identity import scopes as scope_rules
from tundra.core.identity import token_format
from tundra.core.identity.users import User
from tundra.core.principal import Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.storage.db import Row
from tundra.core.uow import unit_of_work

KINDS = ("api", "mcp")
_NAME_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")
_SERVER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_SELECT = (
    "SELECT t.id, t.name, t.owner_id, u.name AS owner, t.display_prefix, t.kind,"
    " t.scopes, t.resources, t.created_at, t.expires_at, t.last_used_at, t.revoked_at"
    " FROM api_tokens t JOIN users u ON u.id = t.owner_id"
)


@dataclass(frozen=True)
class ApiToken:
    """A stored token, without anything that could be used as the token."""

    id: str
    name: str
    display_prefix: str
    owner_id: str
    owner: str
    kind: str
    scopes: tuple[str, ...]
    servers: tuple[str, ...]
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None

    @classmethod
    def from_row(cls, row: Row) -> ApiToken:
        resources = json.loads(row["resources"])
        return cls(
            id=row["id"],
            name=row["name"],
            display_prefix=row["display_prefix"],
            owner_id=row["owner_id"],
            owner=row["owner"],
            kind=row["kind"],
            scopes=tuple(json.loads(row["scopes"])),
            servers=tuple(resources.get("server", ())),
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            last_used_at=row["last_used_at"],
            revoked_at=row["revoked_at"],
        )

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now_iso():
            return "expired"
        return "active"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.display_prefix,
            "owner": self.owner,
            "kind": self.kind,
            "scopes": list(self.scopes),
            "servers": list(self.servers),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "last_used_at": self.last_used_at,
            "revoked_at": self.revoked_at,
            "status": self.status,
        }


@dataclass(frozen=True)
class CreatedToken:
    """The one moment the plaintext exists: show it, then drop it."""

    plaintext: str
    token: ApiToken

    def __repr__(self) -> str:
        return f"CreatedToken(plaintext=[redacted], token={self.token!r})"


# Stored scopes and resources repeat across tokens and requests: parse each text once.
@lru_cache(maxsize=1024)
def _parse_scopes(text: str) -> frozenset[str]:
    return frozenset(json.loads(text))


@lru_cache(maxsize=1024)
def _parse_resources(text: str) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({k: tuple(v) for k, v in json.loads(text).items()})


def token_hash(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode("ascii")).digest()


class TokenService:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._marks: tuple[tuple[int, int], str, str] | None = None

    # --- issuing -------------------------------------------------------------------------

    def create(
        self,
        principal: Principal,
        *,
        name: str,
        scopes: Iterable[str],
        servers: Iterable[str] = (),
        expires_in: timedelta | None = None,
        kind: str = "api",
        owner: str | None = None,
        request_id: str | None = None,
    ) -> CreatedToken:
        services = self._services
        if not _NAME_RE.fullmatch(name) or not name.strip():
            raise InvalidInput("a token name is 1 to 64 printable characters")
        chosen = scope_rules.validate_scopes(scopes)
        if scope_rules.ADMIN in chosen:
            # Issuing an admin token is sensitive: a token can never do it, a person only
            # right after proving who they are.
            services.reauth.require_fresh_auth(principal)
        if kind not in KINDS:
            raise InvalidInput(f"unknown token kind {kind!r}", hint="use api or mcp")
        restricted = tuple(sorted(set(servers)))
        for server in restricted:
            if not _SERVER_RE.fullmatch(server):
                raise InvalidInput(f"invalid server name {server[:80]!r}")
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidInput("a token's lifetime must be positive")

        owner_user = self._resolve_owner(
            principal, owner, chosen, restricted, request_id=request_id
        )
        if not owner_user.is_admin and not set(chosen) <= scope_rules.NON_ADMIN_SCOPES:
            raise PermissionDenied(
                f"{owner_user.name!r} is not an administrator; a token of theirs may carry only "
                + ", ".join(sorted(scope_rules.NON_ADMIN_SCOPES))
            )

        created = now()
        expires_at = None if expires_in is None else to_iso(created + expires_in)
        parent_id = None
        if principal.kind is PrincipalKind.TOKEN:
            # A token-minted token never outlives its parent: it expires no later than the
            # parent, and revoking the parent revokes it (``revoke`` follows parent_id).
            parent_id = principal.token_id
            parent_expires = self._expires_at(parent_id or "")
            if parent_expires is not None and (expires_at is None or expires_at > parent_expires):
                raise InvalidInput(
                    "a token can issue only tokens that expire no later than itself",
                    hint=f"ask for a lifetime ending before {parent_expires}",
                )

        plaintext = token_format.generate(services.settings.token_env)
        prefix = token_format.display_prefix(plaintext)
        token_id = new_id()
        resources = {"server": list(restricted)} if restricted else {}
        with unit_of_work(services.db, principal, request_id=request_id) as uow:
            uow.execute(
                "INSERT INTO api_tokens (id, name, owner_id, token_hash, display_prefix, kind,"
                " scopes, resources, created_at, expires_at, parent_id) VALUES (:id, :name,"
                " :owner, :hash, :prefix, :kind, :scopes, :resources, :created, :expires,"
                " :parent)",
                {
                    "id": token_id,
                    "name": name,
                    "owner": owner_user.id,
                    "hash": token_hash(plaintext),
                    "prefix": prefix,
                    "kind": kind,
                    "scopes": json.dumps(list(chosen)),
                    "resources": json.dumps(resources),
                    "created": to_iso(created),
                    "expires": expires_at,
                    "parent": parent_id,
                },
            )
            uow.record(
                Action.TOKEN_CREATE,
                f"token:{prefix}",
                {
                    "id": token_id,
                    "name": name,
                    "owner": owner_user.name,
                    "kind": kind,
                    "scopes": list(chosen),
                    "servers": list(restricted),
                    "expires_at": expires_at,
                    "parent": parent_id,
                },
            )
        return CreatedToken(plaintext=plaintext, token=self.get(token_id))

    def _expires_at(self, token_id: str) -> str | None:
        with self._services.db.read() as tx:
            value = tx.fetchval(
                "SELECT expires_at FROM api_tokens WHERE id = :id", {"id": token_id}
            )
        return None if value is None else str(value)

    def _resolve_owner(
        self,
        principal: Principal,
        owner: str | None,
        chosen: tuple[str, ...],
        restricted: tuple[str, ...],
        *,
        request_id: str | None,
    ) -> User:
        """The user the new token will belong to, after checking who may issue it."""
        users = self._services.users
        if principal.kind is PrincipalKind.TOKEN:
            scope_rules.require(self._services, principal, "tokens:write", request_id=request_id)
            # A token may mint only a narrower token for its own owner.
            if scope_rules.ADMIN not in principal.scopes and not set(chosen) <= set(
                principal.scopes
            ):
                raise PermissionDenied("a token cannot issue scopes it does not hold")
            allowed = principal.resources.get("server")
            if allowed is not None and (not restricted or not set(restricted) <= set(allowed)):
                raise PermissionDenied(
                    "a restricted token can issue only tokens restricted to its own servers"
                )
            user = users.get_by_id(principal.user_id or "")
            if owner is not None and owner != user.name:
                raise PermissionDenied("a token can issue tokens only for its own owner")
        elif principal.kind is PrincipalKind.USER and not principal.is_admin:
            user = users.get_by_id(principal.user_id or "")
            if owner is not None and owner != user.name:
                raise PermissionDenied("only an administrator can issue tokens for another user")
        elif principal.kind is PrincipalKind.CLI or principal.is_admin:
            if owner is not None:
                user = users.get(owner)
            elif principal.kind is PrincipalKind.CLI:
                # The user who opened the login window, else the CLI's default user.
                reauth = self._services.reauth
                user = users.get(reauth.stamped_user(principal) or reauth.default_cli_username())
            elif principal.user_id:
                user = users.get_by_id(principal.user_id)
            else:
                raise InvalidInput("the token needs an owner", hint="pass --owner USER")
        else:
            raise PermissionDenied(f"{principal.actor} cannot issue tokens")
        if user.disabled:
            raise Conflict(f"user {user.name!r} is disabled")
        return user

    # --- reading and revoking ------------------------------------------------------------

    def get(self, token_id: str) -> ApiToken:
        with self._services.db.read() as tx:
            row = tx.fetchone(_SELECT + " WHERE t.id = :id", {"id": token_id})
        if row is None:
            raise NotFound(f"no token with id {token_id[:40]!r}")
        return ApiToken.from_row(row)

    def list(
        self, principal: Principal, *, include_revoked: bool = False, request_id: str | None = None
    ) -> list[ApiToken]:
        """Every token (administrators) or the principal's own; revoked ones on request."""
        scope_rules.require(self._services, principal, "tokens:read", request_id=request_id)
        where, params = [], {}
        if not principal.is_admin:
            where.append("t.owner_id = :owner")
            params["owner"] = principal.user_id or ""
        if not include_revoked:
            where.append("t.revoked_at IS NULL")
        sql = _SELECT + (" WHERE " + " AND ".join(where) if where else "")
        with self._services.db.read() as tx:
            rows = tx.fetchall(sql + " ORDER BY t.created_at, t.id", params)
        return [ApiToken.from_row(r) for r in rows]

    def revoke(self, principal: Principal, ref: str, *, request_id: str | None = None) -> ApiToken:
        """Revoke the token whose id or display prefix is ``ref``."""
        scope_rules.require(self._services, principal, "tokens:write", request_id=request_id)
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                _SELECT + " WHERE t.id = :ref OR t.display_prefix = :ref", {"ref": ref}
            )
        if not principal.is_admin:
            # Someone else's token is "not found", not "forbidden": its existence is not theirs.
            rows = [r for r in rows if r["owner_id"] == principal.user_id]
        if not rows:
            raise NotFound(f"no token {ref[:60]!r}", hint="see `tundra token list --all`")
        if len(rows) > 1:
            raise Conflict(f"{ref!r} matches {len(rows)} tokens", hint="give the token id")
        token = ApiToken.from_row(rows[0])
        revoked_at = now_iso()
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            if not uow.execute(
                "UPDATE api_tokens SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
                {"now": revoked_at, "id": token.id},
            ):
                raise Conflict(f"token {token.display_prefix} is revoked already")
            uow.record(
                Action.TOKEN_REVOKE,
                f"token:{token.display_prefix}",
                {"id": token.id, "name": token.name, "owner": token.owner},
            )
            # Every token minted (directly or not) by this one dies with it, in this transaction.
            parents = [token.id]
            while parents:
                children = uow.fetchall(
                    "SELECT id, display_prefix FROM api_tokens"
                    " WHERE parent_id = :parent AND revoked_at IS NULL",
                    {"parent": parents.pop()},
                )
                for child in children:
                    uow.execute(
                        "UPDATE api_tokens SET revoked_at = :now WHERE id = :id",
                        {"now": revoked_at, "id": child["id"]},
                    )
                    uow.record(
                        Action.TOKEN_REVOKE,
                        f"token:{child['display_prefix']}",
                        {"id": child["id"], "revoked_with": token.id},
                    )
                    parents.append(child["id"])
        return self.get(token.id)

    # --- verifying -----------------------------------------------------------------------

    def verify(self, plaintext: str, *, kind: str = "api") -> Principal:
        """The principal a bearer token stands for, or TokenInvalid(reason).

        ``kind`` is the endpoint's: the API passes ``api``, the MCP endpoint ``mcp``; a token
        of the other kind is refused. Reasons: malformed, checksum, wrong_env (no database
        access for these three), unknown, revoked, expired, owner_disabled, wrong_kind.
        """
        settings = self._services.settings
        token_format.check(plaintext, settings.token_env)
        digest = token_hash(plaintext)
        with self._services.db.read() as tx:
            row = tx.fetchone(
                "SELECT t.id, t.owner_id, t.display_prefix, t.kind, t.scopes, t.resources,"
                " t.expires_at, t.last_used_at, t.revoked_at, u.is_admin, u.disabled"
                " FROM api_tokens t JOIN users u ON u.id = t.owner_id"
                " WHERE t.token_hash = :hash",
                {"hash": digest},
            )
        if row is None:
            raise TokenInvalid("unknown")
        if row["revoked_at"] is not None:
            raise TokenInvalid("revoked")
        if row["expires_at"] is not None and row["expires_at"] <= now_iso():
            raise TokenInvalid("expired")
        if row["disabled"]:
            raise TokenInvalid("owner_disabled")
        if row["kind"] != kind:
            raise TokenInvalid("wrong_kind")
        moment, cutoff = self._last_used_marks(settings.token_last_used_interval)
        if row["last_used_at"] is None or row["last_used_at"] < cutoff:
            self._touch(row["id"], moment, cutoff)
        token_scopes = _parse_scopes(row["scopes"])
        return Principal(
            PrincipalKind.TOKEN,
            row["display_prefix"],
            user_id=row["owner_id"],
            is_admin=scope_rules.ADMIN in token_scopes and bool(row["is_admin"]),
            scopes=token_scopes,
            resources=_parse_resources(row["resources"]),
            token_id=row["id"],
        )

    def _last_used_marks(self, interval: int) -> tuple[str, str]:
        """(now, now - interval) as text, to the second: computed once per second, not per
        request (last_used_at is bookkeeping; expiry above is checked to the microsecond)."""
        second = int(epoch())
        cached = self._marks
        if cached is None or cached[0] != (second, interval):
            moment = datetime.fromtimestamp(second, UTC)
            cached = (
                (second, interval),
                to_iso(moment),
                to_iso(moment - timedelta(seconds=interval)),
            )
            self._marks = cached
        return cached[1], cached[2]

    def _touch(self, token_id: str, moment: str, cutoff: str) -> None:
        # Conditional, so of several instances verifying the same token only one writes.
        with self._services.db.transaction() as tx:
            tx.execute(
                "UPDATE api_tokens SET last_used_at = :now WHERE id = :id"
                " AND (last_used_at IS NULL OR last_used_at < :cutoff)",
                {"now": moment, "id": token_id, "cutoff": cutoff},
            )
