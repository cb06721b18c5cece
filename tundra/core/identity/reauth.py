"""Re-authentication: sensitive operations need an authentication within ``reauth_window``.

A fresh authentication is a stamp in the KV store with the window as its TTL: for the CLI the
key is bound to the Unix user (``reauth:cli:<unix user>``, written by ``tundra login``), for a
user principal without a session to the Tundra user id (``reauth:user:<id>``). A panel session
principal (``Principal.session`` set) is fresh by its session's ``authenticated_at``
(tundra.core.identity.sessions). Tokens never satisfy it: sensitive
operations are for a person who has just proved who they are, and a bearer token proves only
that someone holds a string.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.errors import InvalidInput, PermissionDenied, ReauthRequired
from tundra.core.principal import Principal, PrincipalKind, unix_user
from tundra.core.services import Services
from tundra.core.uow import unit_of_work

TOKEN_REFUSAL = "a token can never perform a sensitive operation"  # noqa: S105 - a message


@dataclass(frozen=True)
class ReauthGrant:
    """An opened window: who authenticated, and for how many seconds."""

    username: str
    seconds: int

    def as_dict(self) -> dict[str, object]:
        return {"user": self.username, "window_seconds": self.seconds}


class ReauthService:
    def __init__(self, services: Services) -> None:
        self._services = services

    @staticmethod
    def _key(principal: Principal) -> str | None:
        if principal.kind is PrincipalKind.CLI:
            return f"reauth:cli:{principal.name}"
        if principal.kind is PrincipalKind.USER and principal.user_id:
            return f"reauth:user:{principal.user_id}"
        return None

    def require_fresh_auth(self, principal: Principal) -> None:
        """Return when ``principal`` authenticated within the window; else ReauthRequired."""
        if principal.kind is PrincipalKind.SYSTEM:
            return  # Tundra itself (init, background jobs) acts on the operator's earlier word
        if principal.kind is PrincipalKind.TOKEN:
            raise ReauthRequired(TOKEN_REFUSAL, hint="use an interactive session or the CLI")
        if self.is_fresh(principal):
            return
        if principal.kind is PrincipalKind.CLI:
            raise ReauthRequired(
                "this operation needs a recent authentication", hint="run `tundra login` first"
            )
        if principal.kind is PrincipalKind.USER:
            raise ReauthRequired(
                "this operation needs a recent authentication", hint="enter your password again"
            )
        raise ReauthRequired(f"{principal.actor} cannot perform a sensitive operation")

    def is_fresh(self, principal: Principal) -> bool:
        if principal.kind is PrincipalKind.USER and principal.session is not None:
            # A panel session is fresh by its own authenticated_at: one session's password
            # prompt never makes another session of the same user fresh (docs/panel.md).
            return self._services.sessions.is_fresh(principal.session)
        key = self._key(principal)
        return key is not None and self._services.kv.ttl(key) is not None

    def window_remaining(self, principal: Principal) -> float | None:
        """Seconds left in ``principal``'s window, or None when there is none."""
        if principal.kind is PrincipalKind.USER and principal.session is not None:
            ago = self._services.sessions.authenticated_ago(principal.session)
            left = None if ago is None else self._services.settings.reauth_window - ago
            return left if left is not None and left > 0 else None
        key = self._key(principal)
        if key is None:
            return None
        left = self._services.kv.ttl(key)
        if left is None:
            return None
        return left if math.isfinite(left) else float(self._services.settings.reauth_window)

    def stamped_user(self, principal: Principal) -> str | None:
        """The Tundra user whose authentication opened ``principal``'s window, if one is open."""
        key = self._key(principal)
        raw = None if key is None else self._services.kv.get(key)
        if raw is None:
            return None
        value = json.loads(raw)
        return str(value["user"]) if isinstance(value, dict) and "user" in value else None

    def stamp(self, principal: Principal, *, username: str | None = None) -> int:
        """Open ``principal``'s window now (after the caller verified the password)."""
        if principal.kind is PrincipalKind.USER and principal.session is not None:
            if not self._services.sessions.mark_authenticated(principal.session):
                raise ReauthRequired("the session has ended; log in again")
            return self._services.settings.reauth_window
        key = self._key(principal)
        if key is None:
            raise ReauthRequired(f"{principal.actor} cannot open a re-authentication window")
        window = self._services.settings.reauth_window
        value = {"user": username or principal.name, "at": now_iso()}
        self._services.kv.set(key, json.dumps(value).encode(), ttl=window)
        return window

    def cli_login(
        self,
        principal: Principal,
        *,
        username: str,
        password: str,
        totp_code: str | None = None,
        request_id: str | None = None,
    ) -> ReauthGrant:
        """Authenticate ``username`` at the CLI and open the window for this Unix user.

        Only an administrator's credentials open it: the CLI principal acts as an
        administrator, so a lesser account must not unlock its sensitive operations.
        """
        if principal.kind is not PrincipalKind.CLI:
            raise PermissionDenied("`tundra login` is for the local command line")
        users = self._services.users
        user = users.authenticate(
            username,
            password,
            totp_code,
            source=principal.actor,
            principal=principal,
            request_id=request_id,
        )
        if not user.is_admin:
            raise PermissionDenied(
                f"user {username!r} is not an administrator", hint="log in as an administrator"
            )
        window = self.stamp(principal, username=user.name)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            uow.record(
                Action.REAUTH_GRANT, f"user:{user.name}", {"id": user.id, "window_seconds": window}
            )
        return ReauthGrant(username=user.name, seconds=window)

    def default_cli_username(self) -> str:
        """Who `tundra login` authenticates by default.

        ``cli_user`` when set, else the user named like the Unix user, else the only
        administrator; with several administrators and no match the caller must say.
        """
        configured = self._services.settings.cli_user
        if configured:
            return configured
        users = self._services.users.list()
        me = unix_user()
        if any(u.name == me for u in users):
            return me
        admins = [u.name for u in users if u.is_admin and not u.disabled]
        if len(admins) == 1:
            return admins[0]
        raise InvalidInput(
            "cannot tell which Tundra user you are",
            hint="pass --user NAME, or set cli_user in tundra.toml",
        )
