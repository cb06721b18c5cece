"""Failed-login throttling, per account and per source address, in the KV store.

Each failure increments a counter per account and per source (``kv.incr``, living
``login_lock_seconds`` from the first failure). When a counter reaches ``login_max_failures`` a
lock key is set for ``login_lock_seconds``; while it exists every attempt is refused *before* the
password is looked at, so even the right password fails and guessing gains nothing. The lock is
a separate key (not a read of the counter) so the check is one TTL lookup per key on either KV.

Account names and sources are hashed into the keys: both are caller-controlled text.
"""

from __future__ import annotations

import hashlib
import math

from tundra.core.audit.actions import Action
from tundra.core.errors import Throttled
from tundra.core.principal import SYSTEM, Principal
from tundra.core.services import Services
from tundra.core.uow import record_only


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, services: Services) -> None:
        self._services = services

    def _counters(self, name: str, source: str | None) -> list[str]:
        keys = [f"login:fail:acct:{_digest(name)}"]
        if source:
            keys.append(f"login:fail:src:{_digest(source)}")
        return keys

    def check(
        self,
        name: str,
        source: str | None,
        *,
        resource: str,
        principal: Principal | None = None,
        request_id: str | None = None,
    ) -> None:
        """Raise Throttled while the account or the source is locked."""
        kv = self._services.kv
        for counter in self._counters(name, source):
            left = kv.ttl(f"{counter}:locked")
            if left is None:
                continue
            retry_after = (
                max(1, math.ceil(left))
                if math.isfinite(left)
                else self._services.settings.login_lock_seconds
            )
            # One audit row per lock, not per refused attempt: a flood of guesses against a
            # locked account must not be able to flood the audit log too.
            if kv.set_if_absent(f"{counter}:audited", b"1", ttl=retry_after):
                record_only(
                    self._services.db,
                    principal or SYSTEM,
                    Action.USER_LOGIN_FAILED,
                    resource,
                    {"reason": "throttled", "source": source, "locked_for": retry_after},
                    request_id=request_id,
                )
            raise Throttled(
                "too many failed attempts; try again later",
                retry_after=retry_after,
                hint=f"retry in {retry_after} s",
            )

    def failed(self, name: str, source: str | None) -> bool:
        """Count one failure; True when it locked the account or the source."""
        settings = self._services.settings
        kv = self._services.kv
        locked = False
        for counter in self._counters(name, source):
            if kv.incr(counter, ttl=settings.login_lock_seconds) >= settings.login_max_failures:
                kv.set(f"{counter}:locked", b"1", ttl=settings.login_lock_seconds)
                locked = True
        return locked

    def succeeded(self, name: str) -> None:
        """A successful login clears the account's counter (never a source's: spraying one
        password over many accounts from one address must still add up)."""
        self._services.kv.delete(f"login:fail:acct:{_digest(name)}")
