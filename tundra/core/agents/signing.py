"""The control plane's Ed25519 command-signing key: created once, sealed at rest, used to sign.

The private key lives only in ``signing_keys.private_key`` as an envelope bound to that column and
its row id (an encrypted column, re-wrapped by `tundra key rotate --data`). Agents receive the
public half at enrollment and in every Welcome, over channels authenticated by the internal CA.
"""

from __future__ import annotations

import threading
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


class CommandSigner:
    def __init__(self, services: Services) -> None:
        self._services = services
        self._lock = threading.Lock()
        self._key: tuple[str, Ed25519PrivateKey] | None = None

    def ensure_key(self, principal: Principal) -> bool:
        """Create the command key unless an active one exists. True when it was created."""
        with self._services.db.read() as tx:
            if tx.fetchone(
                "SELECT id FROM signing_keys WHERE purpose = :p AND status = 'active'",
                {"p": PURPOSE},
            ):
                return False
        private = Ed25519PrivateKey.generate()
        raw_private = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        raw_public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        row_id = new_id()
        sealed = self._services.keys.encrypt("signing_keys", "private_key", row_id, raw_private)
        key_id = key_id_for(raw_public)
        with unit_of_work(self._services.db, principal) as uow:
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

    def _signing_key(self) -> tuple[str, Ed25519PrivateKey]:
        # Decrypting the key costs a keyring lookup and an AES-GCM open; do it once per process.
        with self._lock:
            if self._key is None:
                with self._services.db.read() as tx:
                    row = tx.fetchone(
                        "SELECT id, key_id, private_key FROM signing_keys WHERE purpose = :p AND"
                        " status = 'active' ORDER BY created_at DESC LIMIT 1",
                        {"p": PURPOSE},
                    )
                if row is None:
                    raise NotInitialized(
                        "there is no command signing key", hint="run `tundra init`"
                    )
                raw = self._services.keys.decrypt(
                    "signing_keys", "private_key", row["id"], bytes(row["private_key"])
                )
                self._key = (row["key_id"], Ed25519PrivateKey.from_private_bytes(raw))
            return self._key
