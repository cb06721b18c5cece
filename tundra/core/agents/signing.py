"""The control plane's Ed25519 command-signing key: created once, sealed at rest, used to sign.

The private key lives only in ``signing_keys.private_key`` as an envelope bound to that column and
its row id (an encrypted column, re-wrapped by `tundra key rotate --data`). Agents receive the
public half at enrollment and in every Welcome, over channels authenticated by the internal CA.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from tundra.core.agents.envelope import SIGNING_CONTEXT, key_id_for
from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto.primitives import new_id
from tundra.core.errors import NotInitialized
from tundra.core.principal import Principal
from tundra.core.uow import unit_of_work

if TYPE_CHECKING:
    from tundra.core.services import Services

PURPOSE = "command"
#: How long a process signs with its cached key before checking it is still the active one.
KEY_CHECK_SECONDS = 30.0

_ACTIVE_SQL = (
    "SELECT key_id FROM signing_keys WHERE purpose = :p AND status = 'active'"
    " ORDER BY created_at DESC, id DESC LIMIT 1"
)


class CommandSigner:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._key: tuple[str, Ed25519PrivateKey] | None = None
        self._checked_at = float("-inf")

    def ensure_key(self, principal: Principal) -> bool:
        """Create the command key unless an active one exists. True when it was created."""
        if self._active_key_id() is not None:
            return False
        private = Ed25519PrivateKey.generate()
        raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        row_id = new_id()
        sealed = self._services.keys.encrypt("signing_keys", "private_key", row_id, raw_private)
        key_id = key_id_for(raw_public)
        with unit_of_work(self._services.db, principal) as uow:
            # Checked again inside the write transaction: two `tundra init` runs racing on SQLite
            # (BEGIN IMMEDIATE serialises them) must not both add a key.
            if uow.fetchone(_ACTIVE_SQL, {"p": PURPOSE}):
                return False
            uow.execute(
                "INSERT INTO signing_keys (id, purpose, key_id, public_key, private_key, status,"
                " created_at) VALUES (:id, :purpose, :key_id, :public, :private, 'active', :now)",
                {
                    "id": row_id,
                    "purpose": PURPOSE,
                    "key_id": key_id,
                    "public": raw_public,
                    "private": sealed,
                    "now": now_iso(),
                },
            )
            uow.record(Action.COMMAND_KEY_CREATE, f"signing-key:{key_id}", {"purpose": PURPOSE})
        return True

    def public_keys(self) -> list[tuple[str, bytes]]:
        """The active command keys as (key id, raw 32-byte public key)."""
        with self._services.db.read() as tx:
            rows = tx.fetchall(
                "SELECT key_id, public_key FROM signing_keys WHERE purpose = :p AND status ="
                " 'active' ORDER BY created_at",
                {"p": PURPOSE},
            )
        return [(row["key_id"], bytes(row["public_key"])) for row in rows]

    def sign(self, envelope: bytes) -> tuple[bytes, str]:
        """Sign a command envelope: (signature, key id)."""
        key_id, private = self._signing_key()
        return private.sign(SIGNING_CONTEXT + envelope), key_id

    def _active_key_id(self) -> str | None:
        with self._services.db.read() as tx:
            value = tx.fetchval(_ACTIVE_SQL, {"p": PURPOSE})
        return None if value is None else str(value)

    def _signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        # Decrypting the key costs a keyring lookup and an AES-GCM open, so the key is cached;
        # every KEY_CHECK_SECONDS one small query confirms it is still the active one (a key
        # replaced by another process must not go on signing). A data-key rotation re-wraps the
        # same key, so the cache stays right across `tundra key rotate --data`.
        with self._lock:
            now = time.monotonic()
            if self._key is not None and now - self._checked_at < KEY_CHECK_SECONDS:
                return self._key
            active = self._active_key_id()
            if active is None:
                raise NotInitialized("there is no command signing key", hint="run `tundra init`")
            if self._key is None or self._key[0] != active:
                with self._services.db.read() as tx:
                    row = tx.fetchone(
                        "SELECT id, key_id, private_key FROM signing_keys WHERE key_id = :k",
                        {"k": active},
                    )
                if row is None:  # replaced between the two queries: the next call reloads
                    raise NotInitialized("the command signing key changed; try again")
                raw = self._services.keys.decrypt(
                    "signing_keys", "private_key", row["id"], bytes(row["private_key"])
                )
                self._key = (row["key_id"], Ed25519PrivateKey.from_private_bytes(raw))
            self._checked_at = now
            return self._key
