"""TOTP (RFC 6238, pyotp): enrolment confirmed by a first code, verification, removal.

The secret (20 random bytes) is stored encrypted with the keyring envelope, bound to
``users.totp_secret`` of that user's row. A code is accepted for the current 30-second step or
one step either side (clock drift). The step of the last accepted code is stored in
``users.totp_last_step``, and the update that stores it is conditional
(``... WHERE totp_last_step IS NULL OR totp_last_step < :step``): of two concurrent uses of one
code exactly one changes the row, the other is refused as a replay.

Enrolment is two calls, so a secret takes effect only once the user proved their authenticator
holds it: :meth:`TotpService.begin_enrollment` makes a secret and its otpauth URI and stores
nothing; the front end keeps the secret (the panel seals it in the pending login) and passes it
back to :meth:`TotpService.complete_enrollment` with a code, which stores it and marks that
code's step as used. An abandoned enrolment leaves nothing behind. :meth:`TotpService.enroll`
activates at once without a code, for scripted provisioning only. See docs/identity.md.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from dataclasses import dataclass

import pyotp

from tundra.core.audit.actions import Action
from tundra.core.clock import epoch, now_iso
from tundra.core.crypto.primitives import constant_time_equal, random_bytes
from tundra.core.errors import AuthenticationFailed, Conflict, InvalidInput
from tundra.core.identity.throttle import LoginThrottle
from tundra.core.identity.users import (
    TOTP_FAILED_MESSAGE,
    User,
    audit_resource,
    require_admin,
)
from tundra.core.principal import SYSTEM, Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.uow import UnitOfWork, record_only, unit_of_work

INTERVAL = 30
DIGITS = 6
SECRET_BYTES = 20  # 160 bits, the HMAC-SHA1 block-friendly size RFC 4226 recommends
DRIFT_STEPS = 1
_CODE_RE = re.compile(r"[0-9]{6}")
#: A wrong first code: it says that nothing changed, so the user knows to simply try again.
ENROLL_CODE_MESSAGE = (
    "the code does not match the new authenticator key; TOTP was not turned on."
    " Enter the code the app shows now (and check the device's clock)"
)


@dataclass(frozen=True)
class Enrollment:
    """Shown once to the user, to load into an authenticator app. Holds the secret."""

    secret_b32: str
    otpauth_uri: str

    def __repr__(self) -> str:  # never print the secret by accident
        return "Enrollment(secret_b32=[redacted], otpauth_uri=[redacted])"


def consume_step(uow: UnitOfWork, user_id: str, step: int) -> bool:
    """Store ``step`` as the last accepted one, only if it is newer; False means a replay."""
    return (
        uow.execute(
            "UPDATE users SET totp_last_step = :step WHERE id = :id AND totp_secret IS NOT NULL"
            " AND (totp_last_step IS NULL OR totp_last_step < :step)",
            {"step": step, "id": user_id},
        )
        == 1
    )


class TotpService:
    def __init__(self, services: Services, *, clock: Callable[[], float] = epoch) -> None:
        self._services = services
        #: Seconds since the epoch; tests move it to exercise the step window.
        self.clock = clock

    def _secret(self, user_id: str, blob: bytes) -> str:
        raw = self._services.keys.decrypt("users", "totp_secret", user_id, bytes(blob))
        return base64.b32encode(raw).decode("ascii")

    def matching_step(self, user_id: str, blob: bytes, code: str) -> int | None:
        """The time step ``code`` is valid for (now, or one step either side), else None."""
        return self._step_for(lambda: self._secret(user_id, blob), code)

    def _step_for(self, secret: Callable[[], str], code: str) -> int | None:
        code = code.replace(" ", "")
        if not _CODE_RE.fullmatch(code):
            return None  # before the secret is decrypted: a malformed code costs nothing
        totp = pyotp.TOTP(secret(), digits=DIGITS, interval=INTERVAL)
        now_step = int(self.clock() // INTERVAL)
        found = None
        for step in range(now_step - DRIFT_STEPS, now_step + DRIFT_STEPS + 1):
            if constant_time_equal(totp.generate_otp(step), code):
                found = step
        return found

    def _enrollable(self, principal: Principal, name: str, request_id: str | None) -> User:
        user = self._services.users.get(name)
        _require_admin_or_self(self._services, principal, user.id, request_id=request_id)
        if user.totp_enrolled:
            raise Conflict(
                f"user {name!r} has TOTP enrolled already",
                hint=f"run `tundra user totp disable {name}` first",
            )
        return user

    def begin_enrollment(
        self, principal: Principal, name: str, *, request_id: str | None = None
    ) -> Enrollment:
        """A new secret and its otpauth URI for ``name``, to show to the user. Stores nothing.

        An administrator, or the user for themselves. The caller keeps the secret until the
        user confirms it with :meth:`complete_enrollment`; dropping it abandons the enrolment.
        """
        self._enrollable(principal, name, request_id)
        return self._new_secret(name)

    def _new_secret(self, name: str) -> Enrollment:
        secret = base64.b32encode(random_bytes(SECRET_BYTES)).decode("ascii")
        uri = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
            name=name, issuer_name=self._services.settings.totp_issuer
        )
        return Enrollment(secret_b32=secret, otpauth_uri=uri)

    def complete_enrollment(
        self,
        principal: Principal,
        name: str,
        secret_b32: str,
        code: str,
        *,
        request_id: str | None = None,
    ) -> None:
        """Turn on the secret from :meth:`begin_enrollment` once ``code`` proves the app has it.

        The code is checked against ``secret_b32`` with the usual +-1 step window; a wrong one
        raises AuthenticationFailed and stores nothing. The accepted step is stored as the last
        used one, so the confirming code cannot log in afterwards. Conflict when ``name`` has
        TOTP already (checked again inside the write, against a concurrent enrolment).
        """
        user = self._enrollable(principal, name, request_id)
        raw = _secret_bytes(secret_b32)
        canonical = base64.b32encode(raw).decode("ascii")
        step = self._step_for(lambda: canonical, code)
        if step is None:
            raise AuthenticationFailed(ENROLL_CODE_MESSAGE)
        self._activate(principal, user, raw, step=step, request_id=request_id)

    def enroll(
        self, principal: Principal, name: str, *, request_id: str | None = None
    ) -> Enrollment:
        """Give ``name`` a new TOTP secret, active at once, with no confirming code.

        For scripted provisioning only (``tundra user totp enroll --activate-now``): nobody has
        shown that an authenticator holds the secret. People enrol with :meth:`begin_enrollment`
        and :meth:`complete_enrollment`.
        """
        user = self._enrollable(principal, name, request_id)
        enrollment = self._new_secret(name)
        raw = _secret_bytes(enrollment.secret_b32)
        self._activate(principal, user, raw, step=None, request_id=request_id)
        return enrollment

    def _activate(
        self,
        principal: Principal,
        user: User,
        raw: bytes,
        *,
        step: int | None,
        request_id: str | None,
    ) -> None:
        blob = self._services.keys.encrypt("users", "totp_secret", user.id, raw)
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            changed = uow.execute(
                "UPDATE users SET totp_secret = :blob, totp_last_step = :step, updated_at = :now"
                " WHERE id = :id AND totp_secret IS NULL",
                {"blob": blob, "step": step, "now": now_iso(), "id": user.id},
            )
            if not changed:
                raise Conflict(f"user {user.name!r} has TOTP enrolled already")
            uow.record(
                Action.TOTP_ENROLL,
                f"user:{user.name}",
                {"id": user.id, "confirmed": step is not None},
            )

    def verify(
        self,
        name: str,
        code: str,
        *,
        principal: Principal | None = None,
        source: str | None = None,
        request_id: str | None = None,
    ) -> None:
        """Accept ``code`` for ``name`` once, or raise AuthenticationFailed.

        Throttled like a password (a 6-digit code is guessable without it); a replayed code is
        refused and audited (TOTP_REPLAY_REFUSED).
        """
        services = self._services
        actor = principal or SYSTEM
        resource = audit_resource(name)
        throttle = LoginThrottle(services)
        throttle.check(name, source, resource=resource, principal=principal, request_id=request_id)

        def fail(reason: str, action: Action) -> AuthenticationFailed:
            locked = throttle.failed(name, source)
            record_only(
                services.db,
                actor,
                action,
                resource,
                {"reason": reason, "source": source, "locked": locked},
                request_id=request_id,
            )
            return AuthenticationFailed(TOTP_FAILED_MESSAGE)

        row = services.users.auth_row(name)
        if row is None or row["totp_secret"] is None or row["disabled"]:
            raise fail("no TOTP for this user", Action.USER_LOGIN_FAILED)
        step = self.matching_step(row["id"], row["totp_secret"], code)
        if step is None:
            raise fail("wrong TOTP code", Action.USER_LOGIN_FAILED)
        try:
            with unit_of_work(services.db, actor, request_id=request_id) as uow:
                if not consume_step(uow, row["id"], step):
                    raise _Replayed
                uow.record(Action.TOTP_VERIFY, resource, {"id": row["id"], "source": source})
        except _Replayed:
            raise fail("TOTP code replayed", Action.TOTP_REPLAY_REFUSED) from None
        throttle.succeeded(name)

    def confirm(
        self, principal: Principal, name: str, code: str, *, request_id: str | None = None
    ) -> None:
        """Check that the authenticator loaded at enrolment produces valid codes."""
        user = self._services.users.get(name)
        _require_admin_or_self(self._services, principal, user.id, request_id=request_id)
        self.verify(name, code, principal=principal, request_id=request_id)

    def disable(self, principal: Principal, name: str, *, request_id: str | None = None) -> None:
        """Remove ``name``'s TOTP secret. An administrator only."""
        require_admin(self._services, principal, request_id=request_id)
        user = self._services.users.get(name)
        if not user.totp_enrolled:
            raise Conflict(f"user {name!r} has no TOTP enrolled")
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            uow.execute(
                "UPDATE users SET totp_secret = NULL, totp_last_step = NULL,"
                " updated_at = :now WHERE id = :id",
                {"now": now_iso(), "id": user.id},
            )
            uow.record(Action.TOTP_DISABLE, f"user:{name}", {"id": user.id})


def _secret_bytes(secret_b32: str) -> bytes:
    """The raw secret; InvalidInput unless it is the size :meth:`begin_enrollment` makes."""
    try:
        raw = base64.b32decode(secret_b32, casefold=True)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != SECRET_BYTES:
        raise InvalidInput("not a TOTP key made by Tundra; start the enrolment again")
    return raw


class _Replayed(Exception):
    """Internal: the conditional step update found the step already used."""


def _require_admin_or_self(
    services: Services, principal: Principal, user_id: str, *, request_id: str | None
) -> None:
    if principal.kind is PrincipalKind.USER and principal.user_id == user_id:
        return
    require_admin(services, principal, request_id=request_id)
