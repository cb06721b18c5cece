"""Users: accounts, the password policy, and authentication with throttling and TOTP.

Authentication is written so that it tells an attacker nothing: an unknown name costs the same
Argon2 verification as a known one (a dummy hash) and gets the same message as a wrong password;
a locked account or source is refused before the password is looked at; a disabled account is
refused only after the password verified, with the same message. Every outcome is audited, the
password never.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import (
    AlreadyExists,
    AuthenticationFailed,
    Conflict,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TotpRequired,
)
from tundra.core.identity.throttle import LoginThrottle
from tundra.core.principal import SYSTEM, Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.storage.db import Row, UniqueViolation
from tundra.core.uow import record_only, unit_of_work

NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
MIN_PASSWORD_LENGTH = 12
# Argon2 takes any length, but a megabyte "password" is a cheap way to burn CPU: cap it.
MAX_PASSWORD_LENGTH = 1024
LOGIN_FAILED_MESSAGE = "wrong user name or password"
TOTP_FAILED_MESSAGE = "the TOTP code is not valid"

_COLUMNS = (
    "id, name, password_hash, is_admin, is_acceptance, disabled, totp_secret,"
    " totp_last_step, created_at, updated_at"
)


@dataclass(frozen=True)
class User:
    """A user as the rest of Tundra sees it: no password hash, no TOTP secret."""

    id: str
    name: str
    is_admin: bool
    is_acceptance: bool
    disabled: bool
    totp_enrolled: bool
    created_at: str
    updated_at: str

    @classmethod
    def from_row(cls, row: Row) -> User:
        return cls(
            id=row["id"],
            name=row["name"],
            is_admin=bool(row["is_admin"]),
            is_acceptance=bool(row["is_acceptance"]),
            disabled=bool(row["disabled"]),
            totp_enrolled=row["totp_secret"] is not None,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "is_admin": self.is_admin,
            "is_acceptance": self.is_acceptance,
            "disabled": self.disabled,
            "totp_enrolled": self.totp_enrolled,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def as_principal(self) -> Principal:
        """The principal of an interactive session of this user."""
        return Principal(PrincipalKind.USER, self.name, user_id=self.id, is_admin=self.is_admin)


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid user name {name[:80]!r}",
            hint="use 1 to 64 of a-z 0-9 _ . -, starting with a letter",
        )
    return name


def check_password_policy(name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInput(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    if password.strip().lower() == name.lower():
        raise InvalidInput("the password must not be the user name")


def require_admin(
    services: Services, principal: Principal, *, request_id: str | None = None
) -> None:
    """PermissionDenied unless ``principal`` is an administrator.

    A token is checked through the scope rules, so its refusal is audited like any other
    out-of-scope request; call this before opening the unit of work.
    """
    if principal.kind is PrincipalKind.TOKEN:
        from tundra.core.identity.scopes import ADMIN, require

        require(services, principal, ADMIN, request_id=request_id)
    if not principal.is_admin:
        raise PermissionDenied(f"{principal.actor} is not an administrator")


def audit_resource(name: str) -> str:
    """``user:NAME``; a name that cannot exist is not copied into the audit log verbatim."""
    return f"user:{name}" if NAME_RE.fullmatch(name) else "user:(invalid name)"


class _Replayed(Exception):
    """Internal: the conditional TOTP step update found the step already used."""


class UserService:
    def __init__(self, services: Services) -> None:
        self._services = services

    # --- reading -------------------------------------------------------------------------

    def count(self) -> int:
        with self._services.db.read() as tx:
            return int(tx.fetchval("SELECT count(*) FROM users"))

    def list(self) -> list[User]:
        with self._services.db.read() as tx:
            rows = tx.fetchall(f"SELECT {_COLUMNS} FROM users ORDER BY name")  # noqa: S608
        return [User.from_row(r) for r in rows]

    def get(self, name: str) -> User:
        row = self.auth_row(name)
        if row is None:
            raise NotFound(f"no user named {name[:80]!r}", hint="see `tundra user list`")
        return User.from_row(row)

    def get_by_id(self, user_id: str) -> User:
        with self._services.db.read() as tx:
            row = tx.fetchone(
                f"SELECT {_COLUMNS} FROM users WHERE id = :id",  # noqa: S608
                {"id": user_id},
            )
        if row is None:
            raise NotFound(f"no user with id {user_id[:40]!r}")
        return User.from_row(row)

    def auth_row(self, name: str) -> Row | None:
        """The stored row with the credential columns, for the identity package only."""
        if not NAME_RE.fullmatch(name):
            return None
        with self._services.db.read() as tx:
            return tx.fetchone(
                f"SELECT {_COLUMNS} FROM users WHERE name = :name",  # noqa: S608
                {"name": name},
            )

    # --- changing ------------------------------------------------------------------------

    def add(
        self,
        principal: Principal,
        *,
        name: str,
        password: str,
        is_admin: bool = False,
        is_acceptance: bool = False,
        request_id: str | None = None,
    ) -> User:
        require_admin(self._services, principal, request_id=request_id)
        validate_name(name)
        if is_acceptance and is_admin:
            # The acceptance run proves what an ordinary account can and cannot do, and its
            # password sits in a CI secret: it must never be able to administer anything.
            raise InvalidInput(
                "an acceptance account cannot be an administrator",
                hint="create it without --admin",
            )
        check_password_policy(name, password)
        # Hash before the transaction: a write lock must not be held for an Argon2 run.
        password_hash = self._services.passwords.hash(password)
        now = now_iso()
        user_id = new_id()
        try:
            with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
                uow.execute(
                    "INSERT INTO users (id, name, password_hash, is_admin, is_acceptance,"
                    " disabled, created_at, updated_at) VALUES (:id, :name, :hash, :admin,"
                    " :acceptance, 0, :now, :now)",
                    {
                        "id": user_id,
                        "name": name,
                        "hash": password_hash,
                        "admin": int(is_admin),
                        "acceptance": int(is_acceptance),
                        "now": now,
                    },
                )
                uow.record(
                    Action.USER_CREATE,
                    f"user:{name}",
                    {"id": user_id, "is_admin": is_admin, "is_acceptance": is_acceptance},
                )
        except UniqueViolation:
            raise AlreadyExists(f"a user named {name!r} exists already") from None
        return self.get(name)

    def set_password(
        self, principal: Principal, name: str, password: str, *, request_id: str | None = None
    ) -> None:
        require_admin(self._services, principal, request_id=request_id)
        user = self.get(name)
        check_password_policy(name, password)
        password_hash = self._services.passwords.hash(password)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            uow.execute(
                "UPDATE users SET password_hash = :hash, updated_at = :now WHERE id = :id",
                {"hash": password_hash, "now": now_iso(), "id": user.id},
            )
            uow.record(Action.USER_PASSWORD_CHANGE, f"user:{name}", {"id": user.id})

    def disable(self, principal: Principal, name: str, *, request_id: str | None = None) -> User:
        require_admin(self._services, principal, request_id=request_id)
        user = self.get(name)
        if user.disabled:
            raise Conflict(f"user {name!r} is disabled already")
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            if user.is_admin:
                # Checked inside the write transaction so two concurrent disables cannot leave
                # the installation without any enabled administrator.
                others = uow.fetchval(
                    "SELECT count(*) FROM users WHERE is_admin = 1 AND disabled = 0 AND id <> :id",
                    {"id": user.id},
                )
                if not others:
                    raise Conflict(
                        f"{name!r} is the last enabled administrator",
                        hint="make another administrator first",
                    )
            uow.execute(
                "UPDATE users SET disabled = 1, updated_at = :now WHERE id = :id",
                {"now": now_iso(), "id": user.id},
            )
            uow.record(Action.USER_DISABLE, f"user:{name}", {"id": user.id})
        return self.get(name)

    def enable(self, principal: Principal, name: str, *, request_id: str | None = None) -> User:
        require_admin(self._services, principal, request_id=request_id)
        user = self.get(name)
        if not user.disabled:
            raise Conflict(f"user {name!r} is enabled already")
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            uow.execute(
                "UPDATE users SET disabled = 0, updated_at = :now WHERE id = :id",
                {"now": now_iso(), "id": user.id},
            )
            uow.record(Action.USER_ENABLE, f"user:{name}", {"id": user.id})
        return self.get(name)

    # --- authentication ------------------------------------------------------------------

    def authenticate(
        self,
        name: str,
        password: str,
        totp_code: str | None = None,
        *,
        source: str | None = None,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> User:
        """The user, when ``password`` (and the TOTP code, once enrolled) are right.

        Raises Throttled while the account or ``source`` is locked (even for the right
        password), AuthenticationFailed with one message for an unknown name, a wrong password
        or a disabled account, TotpRequired when the password was right and a code is needed.
        ``principal`` names who asks in the audit log (the CLI operator); default: system.
        """
        services = self._services
        resource = audit_resource(name)
        throttle = LoginThrottle(services)
        throttle.check(name, source, resource=resource, principal=principal, request_id=request_id)

        def fail(
            reason: str,
            message: str = LOGIN_FAILED_MESSAGE,
            action: Action = Action.USER_LOGIN_FAILED,
        ) -> AuthenticationFailed:
            locked = throttle.failed(name, source)
            record_only(
                services.db,
                principal or SYSTEM,
                action,
                resource,
                {"reason": reason, "source": source, "locked": locked},
                request_id=request_id,
            )
            return AuthenticationFailed(message)

        row = self.auth_row(name)
        if row is None:
            services.passwords.verify_dummy(password)
            raise fail("unknown user")
        if not services.passwords.verify(row["password_hash"], password):
            raise fail("wrong password")
        if row["disabled"]:
            raise fail("disabled")
        user = User.from_row(row)

        step: int | None = None
        if row["totp_secret"] is not None:
            if totp_code is None:
                raise TotpRequired(
                    "a TOTP code is required for this user",
                    hint="give the code from the authenticator app",
                )
            from tundra.core.identity.totp import consume_step

            step = services.totp.matching_step(user.id, row["totp_secret"], totp_code)
            if step is None:
                raise fail("wrong TOTP code", TOTP_FAILED_MESSAGE)
            last = row["totp_last_step"]
            if last is not None and step <= int(last):
                raise fail("TOTP code replayed", TOTP_FAILED_MESSAGE, Action.TOTP_REPLAY_REFUSED)

        new_hash = None
        if services.passwords.needs_rehash(row["password_hash"]):
            new_hash = services.passwords.hash(password)
        try:
            with unit_of_work(
                services.db, principal or user.as_principal(), request_id=request_id
            ) as uow:
                if step is not None and not consume_step(uow, user.id, step):
                    raise _Replayed  # rolls the unit back: nothing of this login is kept
                if new_hash is not None and uow.execute(
                    # Conditional: a password changed meanwhile is not overwritten.
                    "UPDATE users SET password_hash = :new WHERE id = :id AND password_hash = :old",
                    {"new": new_hash, "id": user.id, "old": row["password_hash"]},
                ):
                    uow.record(
                        Action.USER_PASSWORD_REHASH,
                        resource,
                        {"id": user.id, "reason": "parameters changed"},
                    )
                uow.record(
                    Action.USER_LOGIN,
                    resource,
                    {"id": user.id, "source": source, "totp": step is not None},
                )
        except _Replayed:
            # Another login consumed this time step between our read and our update.
            raise fail(
                "TOTP code replayed", TOTP_FAILED_MESSAGE, Action.TOTP_REPLAY_REFUSED
            ) from None
        throttle.succeeded(name)
        return user
