"""Interactive sessions in the KV store, the pending-login state, and session re-authentication.

A session id is 32 random bytes (43 characters of base64url in the cookie). Only its SHA-256,
the *handle*, is stored (``session:<handle>``), so a copy of the KV store holds nothing that
opens a session. The record keeps ``created_at`` (absolute timeout), ``last_seen`` (idle
timeout; also the KV TTL, so an idle session disappears by itself) and ``authenticated_at``
(re-authentication freshness: a panel principal is fresh for ``reauth_window`` seconds after it).

Writes to a record (touch, re-authentication, logout) are serialised by a KV lock on the
session and re-read the record under it, so a request that read the session just before a
logout can never write it back to life. Reads take no lock.

A login that has passed the password but still owes a TOTP code, or an administrator who must
enrol TOTP first, is a *pending login*, keyed by the hash of the browser's pre-session cookie
and living :data:`PENDING_TTL` seconds. A pending enrolment's otpauth URI is sealed with a key
derived from the keyring, never stored in clear. See docs/panel.md.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

from tundra.core.audit.actions import Action
from tundra.core.clock import epoch
from tundra.core.crypto.envelope import ColumnCipher, EnvelopeError, envelope_term
from tundra.core.crypto.primitives import random_bytes
from tundra.core.errors import AuthenticationFailed, PermissionDenied
from tundra.core.identity.users import User
from tundra.core.principal import Principal, PrincipalKind
from tundra.core.services import Services
from tundra.core.storage.kv import LockNotAcquired
from tundra.core.uow import unit_of_work

ID_BYTES = 32
_ID_RE = re.compile(r"[A-Za-z0-9_-]{43}")
#: Seconds a pending login (TOTP step or enrolment) waits for the browser.
PENDING_TTL = 300
#: A session is rewritten (its idle TTL pushed back) at most this often.
MAX_TOUCH_INTERVAL = 60.0
_LOCK_TTL = 5.0
_LOCK_TRIES = 50


def new_id() -> str:
    """A fresh session (or pre-session) id: 32 random bytes, base64url without padding."""
    return base64.urlsafe_b64encode(random_bytes(ID_BYTES)).rstrip(b"=").decode("ascii")


def handle_of(session_id: str) -> str | None:
    """SHA-256 (hex) of a well-formed id; None for anything else, before any lookup."""
    if not _ID_RE.fullmatch(session_id):
        return None
    try:
        raw = base64.urlsafe_b64decode(session_id + "=")
    except (binascii.Error, ValueError):
        return None
    if len(raw) != ID_BYTES:
        return None
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Session:
    handle: str
    user_id: str
    user_name: str
    created_at: float
    last_seen: float
    authenticated_at: float
    source: str | None = None

    def principal(self, user: User) -> Principal:
        """The principal of a request in this session (``user`` read fresh from storage)."""
        return Principal(
            PrincipalKind.USER,
            user.name,
            user_id=user.id,
            is_admin=user.is_admin,
            session=self.handle,
        )


@dataclass(frozen=True)
class PendingLogin:
    """A login between the password and the session: ``stage`` is ``totp`` or ``enroll``."""

    user_id: str
    user_name: str
    stage: str
    created_at: float
    source: str | None = None
    #: For ``enroll`` once the secret exists: the otpauth URI sealed under the keyring.
    sealed_uri: str | None = None


class SessionService:
    def __init__(self, services: Services, *, clock: Callable[[], float] = epoch) -> None:
        self._services = services
        #: Seconds since the epoch; tests move it to exercise the timeouts.
        self.clock = clock

    # --- the session record ----------------------------------------------------------------

    @staticmethod
    def _key(handle: str) -> str:
        return f"session:{handle}"

    def _ttl(self, record: Session, now: float) -> float:
        settings = self._services.settings
        absolute_left = settings.session_absolute_timeout - (now - record.created_at)
        return min(float(settings.session_idle_timeout), absolute_left)

    def _expired(self, record: Session, now: float) -> bool:
        settings = self._services.settings
        return (
            now - record.created_at >= settings.session_absolute_timeout
            or now - record.last_seen >= settings.session_idle_timeout
        )

    def _read(self, handle: str) -> Session | None:
        raw = self._services.kv.get(self._key(handle))
        if raw is None:
            return None
        try:
            return Session(handle=handle, **json.loads(raw))
        except (ValueError, TypeError):
            return None  # unreadable: treated as no session

    def _write(self, record: Session, now: float) -> bool:
        ttl = self._ttl(record, now)
        if ttl <= 0:
            self._services.kv.delete(self._key(record.handle))
            return False
        body = {k: v for k, v in asdict(record).items() if k != "handle"}
        self._services.kv.set(self._key(record.handle), json.dumps(body).encode(), ttl=ttl)
        return True

    @contextmanager
    def _locked(self, handle: str, *, wait: bool) -> Iterator[bool]:
        """Hold the session's write lock; yields False when ``wait`` is off and it is busy."""
        kv = self._services.kv
        for _ in range(_LOCK_TRIES if wait else 1):
            try:
                with kv.lock(f"session:{handle}", ttl=_LOCK_TTL):
                    yield True
                    return
            except LockNotAcquired:
                if wait:
                    time.sleep(0.02)
        if wait:
            # The holder is stuck; its lock expires after _LOCK_TTL. Act anyway: the callers
            # that wait (logout, re-authentication) must not silently do nothing.
            yield True
            return
        yield False

    # --- lifecycle ---------------------------------------------------------------------------

    def create(
        self,
        user: User,
        *,
        source: str | None = None,
        replaces: str | None = None,
        totp: bool = False,
        request_id: str | None = None,
    ) -> tuple[str, Session]:
        """Start a session for ``user`` (just authenticated): a new id, never a reused one.

        ``replaces`` is any session id the browser still presented; it is revoked so that an
        id planted before the login (fixation) or left from an earlier one stops working.
        """
        if replaces:
            self.revoke(replaces)
        now = self.clock()
        session_id = new_id()
        handle = handle_of(session_id)
        assert handle is not None
        record = Session(
            handle=handle,
            user_id=user.id,
            user_name=user.name,
            created_at=now,
            last_seen=now,
            authenticated_at=now,
            source=source,
        )
        self._write(record, now)
        with unit_of_work(self._services.db, record.principal(user), request_id=request_id) as uow:
            if totp:
                # The TOTP step finished this login (users.authenticate stopped at TotpRequired
                # and wrote nothing): this is the login's success row.
                uow.record(
                    Action.USER_LOGIN,
                    f"user:{user.name}",
                    {"id": user.id, "source": source, "totp": True},
                )
            uow.record(
                Action.SESSION_CREATE,
                f"user:{user.name}",
                {"id": user.id, "session": handle[:16], "source": source},
            )
        return session_id, record

    def get(self, session_id: str) -> Session | None:
        """The live session for ``session_id``; None when unknown, malformed or timed out."""
        handle = handle_of(session_id)
        if handle is None:
            return None
        record = self._read(handle)
        if record is None:
            return None
        now = self.clock()
        if self._expired(record, now):
            self._services.kv.delete(self._key(handle))
            return None
        interval = min(MAX_TOUCH_INTERVAL, self._services.settings.session_idle_timeout / 10)
        if now - record.last_seen >= interval:
            with self._locked(handle, wait=False) as held:
                current = self._read(handle) if held else None
                if current is not None and not self._expired(current, now):
                    record = replace(current, last_seen=now)
                    self._write(record, now)
        return record

    def revoke(self, session_id: str) -> bool:
        """Delete the session server-side (logout); True when there was one."""
        handle = handle_of(session_id)
        if handle is None:
            return False
        with self._locked(handle, wait=True):
            return self._services.kv.delete(self._key(handle))

    def logout(
        self, session_id: str, principal: Principal, *, request_id: str | None = None
    ) -> bool:
        """Revoke the session and audit it."""
        existed = self.revoke(session_id)
        if existed:
            with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
                uow.record(
                    Action.SESSION_LOGOUT,
                    f"user:{principal.name}",
                    {"id": principal.user_id, "session": (principal.session or "")[:16]},
                )
        return existed

    # --- re-authentication -------------------------------------------------------------------

    def authenticated_ago(self, handle: str) -> float | None:
        """Seconds since the session last authenticated; None for no live session."""
        record = self._read(handle)
        if record is None:
            return None
        now = self.clock()
        if self._expired(record, now):
            return None
        return max(0.0, now - record.authenticated_at)

    def is_fresh(self, handle: str) -> bool:
        ago = self.authenticated_ago(handle)
        return ago is not None and ago < self._services.settings.reauth_window

    def mark_authenticated(self, handle: str) -> bool:
        """Set ``authenticated_at`` to now (after the caller verified the credentials)."""
        with self._locked(handle, wait=True):
            record = self._read(handle)
            now = self.clock()
            if record is None or self._expired(record, now):
                return False
            return self._write(replace(record, authenticated_at=now, last_seen=now), now)

    def reauthenticate(
        self,
        principal: Principal,
        *,
        password: str,
        totp_code: str | None = None,
        source: str | None = None,
        request_id: str | None = None,
    ) -> int:
        """Check the session user's password (+TOTP) again and make the session fresh.

        Throttled and audited like a login (users.authenticate). Returns the window in seconds.
        """
        handle = principal.session
        if principal.kind is not PrincipalKind.USER or handle is None:
            raise PermissionDenied(f"{principal.actor} has no session to re-authenticate")
        user = self._services.users.authenticate(
            principal.name,
            password,
            totp_code or None,
            source=source,
            principal=principal,
            request_id=request_id,
        )
        if user.id != principal.user_id or not self.mark_authenticated(handle):
            raise AuthenticationFailed("the session has ended; log in again")
        window = self._services.settings.reauth_window
        with unit_of_work(self._services.db, principal, request_id=request_id) as uow:
            uow.record(
                Action.REAUTH_GRANT,
                f"user:{user.name}",
                {"id": user.id, "session": handle[:16], "window_seconds": window},
            )
        return window

    # --- pending logins ----------------------------------------------------------------------

    @staticmethod
    def _pending_key(pre_session_id: str) -> str | None:
        handle = handle_of(pre_session_id)
        return None if handle is None else f"login:pending:{handle}"

    def start_pending(
        self, pre_session_id: str, user: User, *, stage: str, source: str | None = None
    ) -> PendingLogin:
        """Remember that this browser passed the password and still owes ``stage``."""
        pending = PendingLogin(
            user_id=user.id,
            user_name=user.name,
            stage=stage,
            created_at=self.clock(),
            source=source,
        )
        self.set_pending(pre_session_id, pending)
        return pending

    def set_pending(self, pre_session_id: str, pending: PendingLogin) -> None:
        key = self._pending_key(pre_session_id)
        if key is None:
            raise ValueError("malformed pre-session id")  # the panel makes these itself
        left = PENDING_TTL - (self.clock() - pending.created_at)
        self._services.kv.set(key, json.dumps(asdict(pending)).encode(), ttl=max(1.0, left))

    def pending(self, pre_session_id: str) -> PendingLogin | None:
        key = self._pending_key(pre_session_id)
        raw = None if key is None else self._services.kv.get(key)
        if raw is None:
            return None
        try:
            found = PendingLogin(**json.loads(raw))
        except (ValueError, TypeError):
            return None
        if self.clock() - found.created_at >= PENDING_TTL:
            return None
        return found

    def clear_pending(self, pre_session_id: str) -> None:
        key = self._pending_key(pre_session_id)
        if key is not None:
            self._services.kv.delete(key)

    def _cipher(self, term: int) -> ColumnCipher:
        keys = self._services.keys
        return ColumnCipher(keys.data_key(term), term, "kv", "login_pending")

    def seal_uri(self, pre_session_id: str, uri: str) -> str:
        """The otpauth URI sealed (AES-256-GCM, keyring-derived key) to this pre-session."""
        active, _ = self._services.keys.refresh_terms()
        blob = self._cipher(active).seal(pre_session_id, uri.encode())
        return base64.b64encode(blob).decode("ascii")

    def open_uri(self, pre_session_id: str, sealed: str) -> str | None:
        try:
            blob = base64.b64decode(sealed)
            return self._cipher(envelope_term(blob)).open(pre_session_id, blob).decode()
        except (EnvelopeError, ValueError, binascii.Error, UnicodeDecodeError):
            return None
