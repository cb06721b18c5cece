"""Who is acting: the principal every core call receives and every audit row names."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class PrincipalKind(StrEnum):
    USER = "user"  # an interactive panel/TUI session
    TOKEN = "token"  # an API or MCP bearer token
    CLI = "cli"  # the local operator at the command line (has the master key)
    AGENT = "agent"  # a managed host's agent
    SYSTEM = "system"  # Tundra itself (init, background jobs)


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    name: str
    user_id: str | None = None
    is_admin: bool = False
    #: Scopes of a token principal; users and the CLI are not scope-limited.
    scopes: frozenset[str] = frozenset()
    #: Resource restrictions of a token: {"server": ("web-1",)}.
    resources: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    token_id: str | None = None
    #: The panel session a USER principal acts through (its handle, the SHA-256 of the session
    #: id, never the id): re-authentication freshness is then that session's own.
    session: str | None = None

    @property
    def actor(self) -> str:
        """The audit-log actor: ``user:NAME``, ``token:PREFIX``, ``cli:UNIX_USER``, …"""
        if self.kind is PrincipalKind.SYSTEM:
            return "system"
        return f"{self.kind.value}:{self.name}"


SYSTEM = Principal(PrincipalKind.SYSTEM, "system", is_admin=True)


def unix_user() -> str:
    """The name of the effective Unix user, from the password database.

    Not ``getpass.getuser()``: that trusts $LOGNAME/$USER, and the audit log must not name
    whoever an environment variable claims to be.
    """
    import pwd

    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def cli_principal(tundra_user_id: str | None = None) -> Principal:
    """The local operator. Has database and key access, so is an administrator."""
    return Principal(PrincipalKind.CLI, unix_user(), user_id=tundra_user_id, is_admin=True)
