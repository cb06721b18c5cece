"""The key service: master key loading, the keyring of data keys, envelope encrypt/decrypt.

One :class:`KeyService` per :class:`~tundra.core.services.Services`. The master key is loaded
lazily, once per process, with every file and key-check test; data keys are unwrapped on first use
and column ciphers are cached, so ``encrypt``/``decrypt`` are in-memory work after warm-up.

Reads of the keyring go through a private database connection: ``encrypt`` and ``decrypt`` are
called inside other services' units of work, and SQLite refuses a nested transaction on the same
connection. Rotations (``rotation.py``) write through ``services.db`` in units of work.

Another process may rotate data keys while this one runs, so a process re-reads the active term at
most :data:`ACTIVE_TERM_TTL` seconds after it last did, and a data rotation waits
:data:`~tundra.core.crypto.rotation.ROTATION_GRACE` before it retires old terms (docs/keys.md).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag

from tundra.core.audit.actions import Action
from tundra.core.clock import now_iso
from tundra.core.crypto import envelope, masterkey
from tundra.core.crypto.envelope import ColumnCipher, EnvelopeError
from tundra.core.crypto.primitives import random_bytes
from tundra.core.errors import DecryptionFailed, KeyMaterialError, NotInitialized
from tundra.core.principal import Principal
from tundra.core.storage.db import Database, Transaction, open_database
from tundra.core.uow import UnitOfWork, unit_of_work

if TYPE_CHECKING:
    from tundra.core.crypto.report import KeyStatus, KeyVerifyReport
    from tundra.core.crypto.rotation import DataRotationResult, MasterRotationResult
    from tundra.core.services import Services

#: Every encrypted column: (table, column). The table has a text ``id`` primary key. Rotation,
#: status and verify walk this list, and ``encrypt`` refuses any column not in it (a column the
#: rotation does not know would become unreadable when its term is retired).
ENCRYPTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("users", "totp_secret"),
    ("pki_keys", "private_key"),
    ("signing_keys", "private_key"),
)

#: Seconds a process trusts its cached active term before it looks again.
ACTIVE_TERM_TTL = 1.0

_pack = struct.Struct(">I").pack
_urandom = os.urandom
_monotonic = time.monotonic

META_KCV = "kcv"
META_ACTIVE = "active_term"
META_MIN = "min_decrypt_term"
META_ROTATION = "data_rotation"


def set_meta(uow: UnitOfWork, key: str, value: str) -> None:
    uow.execute(
        "INSERT INTO meta (key, value) VALUES (:k, :v)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        {"k": key, "v": value},
    )


def get_meta(tx: Transaction | UnitOfWork, key: str) -> str | None:
    value = tx.fetchval("SELECT value FROM meta WHERE key = :k", {"k": key})
    return None if value is None else str(value)


class KeyService:
    """Master key, keyring and envelopes of one installation."""

    ENCRYPTED_COLUMNS = ENCRYPTED_COLUMNS

    def __init__(self, services: Services) -> None:
        self._services = services
        self.paths = masterkey.KeyPaths(services.settings.master_key_path)
        self._lock = threading.RLock()
        self._reader_db: Database | None = None
        self._master: bytes | None = None
        self._data_keys: dict[int, bytes] = {}
        self._ciphers: dict[tuple[int, str, str], ColumnCipher] = {}
        self._openers: dict[tuple[bytes, str, str], ColumnCipher] = {}
        self._active: dict[tuple[str, str], ColumnCipher] = {}
        self._active_term = 0
        self._min_term = 0
        self._checked_at = float("-inf")

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def services(self) -> Services:
        return self._services

    def close(self) -> None:
        if self._reader_db is not None:
            self._reader_db.close()
            self._reader_db = None

    @contextmanager
    def reading(self) -> Iterator[Transaction]:
        """A read transaction on the key service's own connection (safe inside a unit of work)."""
        if self._reader_db is None:
            settings = self._services.settings
            self._reader_db = open_database(
                settings.database_url, sqlite_path=str(settings.sqlite_path)
            )
        with self._reader_db.read() as tx:
            yield tx

    def fetch_kcv(self) -> str | None:
        with self.reading() as tx:
            return get_meta(tx, META_KCV)

    def forget(self) -> None:
        """Drop every cached key (after a rotation, or to force a fresh load)."""
        with self._lock:
            self._master = None
            self._data_keys.clear()
            self._ciphers.clear()
            self._openers.clear()
            self._active.clear()
            self._checked_at = float("-inf")

    # -- master key ---------------------------------------------------------------------------

    def master_key(self, *, reload: bool = False) -> bytes:
        """The master key matching the database, loaded once per process with every check."""
        with self._lock:
            if self._master is None or reload:
                self._master = masterkey.load_master_key(self.paths, self.fetch_kcv)
            return self._master

    def create_master_key_if_missing(self) -> bool:
        """Create master.key only when neither it nor a key-check value exists. Never overwrites."""
        with self._lock:
            kcv = self.fetch_kcv()
            if self.paths.key.exists() or self.paths.key.is_symlink():
                return False
            if kcv is not None:
                if self.paths.leftovers():
                    self.master_key(reload=True)  # an interrupted rotation: recover, never create
                    return False
                raise masterkey.lost_error(self.paths.key)
            masterkey.write_key_file(self.paths.key, masterkey.new_key())
            return True

    def initialize_keyring(self, principal: Principal) -> bool:
        """Store the key-check value and create term 1; False when already initialised."""
        with self._lock, unit_of_work(self._services.db, principal) as uow:
            if get_meta(uow, META_KCV) is not None:
                return False
            if not self.paths.key.exists():
                raise NotInitialized(
                    f"{self.paths.key} does not exist", hint="run `tundra init` to create it"
                )
            master = masterkey.read_key_file(self.paths.key)
            data_key = random_bytes(envelope.DATA_KEY_BYTES)
            wrapped = envelope.wrap_data_key(envelope.wrapping_key(master), 1, data_key)
            uow.execute(
                "INSERT INTO keyring (term, wrapped, created_at) VALUES (1, :w, :t)",
                {"w": wrapped, "t": now_iso()},
            )
            set_meta(uow, META_KCV, masterkey.key_check_value(master))
            set_meta(uow, META_ACTIVE, "1")
            set_meta(uow, META_MIN, "1")
            uow.record(Action.KEYS_KEYRING_INIT, "keyring:1", {"term": 1})
        self.forget()
        return True

    # -- data keys and ciphers --------------------------------------------------------------

    def data_key(self, term: int) -> bytes:
        """The unwrapped data key of ``term`` (any term still in the keyring)."""
        with self._lock:
            key = self._data_keys.get(term)
            if key is not None:
                return key
            with self.reading() as tx:
                wrapped = tx.fetchval("SELECT wrapped FROM keyring WHERE term = :t", {"t": term})
            if wrapped is None:
                raise KeyMaterialError(
                    f"the keyring has no term {term}", hint="fix: restore the database from backup"
                )
            try:
                key = envelope.unwrap_data_key(
                    envelope.wrapping_key(self.master_key()), term, bytes(wrapped)
                )
            except EnvelopeError:
                # Another process may have rotated the master key since we loaded ours.
                try:
                    key = envelope.unwrap_data_key(
                        envelope.wrapping_key(self.master_key(reload=True)), term, bytes(wrapped)
                    )
                except EnvelopeError as exc:
                    raise KeyMaterialError(
                        str(exc),
                        hint="fix: restore the database and master.key from the same backup",
                    ) from None
            self._data_keys[term] = key
            return key

    def cipher(self, term: int, table: str, column: str) -> ColumnCipher:
        found = self._ciphers.get((term, table, column))
        if found is None:
            with self._lock:
                found = ColumnCipher(self.data_key(term), term, table, column)
                self._ciphers[(term, table, column)] = found
        return found

    def refresh_terms(self) -> tuple[int, int]:
        """Re-read the active and minimum decryptable terms; returns (active, min)."""
        with self.reading() as tx:
            active, minimum = get_meta(tx, META_ACTIVE), get_meta(tx, META_MIN)
        if active is None:
            raise NotInitialized("the keyring is not initialised", hint="run `tundra init`")
        with self._lock:
            if int(active) != self._active_term:
                self._active.clear()
            self._active_term, self._min_term = int(active), int(minimum or 1)
            self._checked_at = time.monotonic()
        return self._active_term, self._min_term

    def _check_column(self, table: str, column: str) -> None:
        if (table, column) not in ENCRYPTED_COLUMNS:
            raise ValueError(
                f"{table}.{column} is not in ENCRYPTED_COLUMNS; register it so that "
                "key rotation covers it"
            )

    # -- the hot path -------------------------------------------------------------------------

    def encrypt(self, table: str, column: str, row_id: str, plaintext: bytes) -> bytes:
        """Seal ``plaintext`` for one cell under the active term."""
        if _monotonic() - self._checked_at > ACTIVE_TERM_TTL:
            self.refresh_terms()
        cipher = self._active.get((table, column))
        if cipher is None:
            self._check_column(table, column)
            cipher = self.cipher(self._active_term, table, column)
            self._active[(table, column)] = cipher
        # ColumnCipher.seal, inlined: this is the hot path (bench/envelope.py).
        nonce = _urandom(12)
        row = row_id.encode("utf-8")
        return (
            cipher.header
            + nonce
            + cipher.aead_encrypt(nonce, plaintext, cipher.aad_prefix + _pack(len(row)) + row)
        )

    def decrypt(self, table: str, column: str, row_id: str, blob: bytes) -> bytes:
        """Open one cell's envelope; any failure is DecryptionFailed, never an empty value."""
        if type(blob) is not bytes:
            blob = bytes(blob)
        # Keyed by the 8 header bytes: a hit means magic, version and term are known-good.
        cipher = self._openers.get((blob[:8], table, column))
        if cipher is None or len(blob) < 36:  # envelope.MIN_LEN
            cipher = self._cipher_to_open(blob, table, column, row_id)
        # ColumnCipher.open, inlined: this is the hot path (bench/envelope.py).
        row = row_id.encode("utf-8")
        # Large values: a memoryview slice instead of copying the ciphertext.
        body = blob[20:] if len(blob) < 1024 else memoryview(blob)[20:]
        try:
            return cipher.aead_decrypt(blob[8:20], body, cipher.aad_prefix + _pack(len(row)) + row)
        except InvalidTag:
            raise self._failed(table, column, row_id, envelope.AUTH_FAILED) from None

    def _cipher_to_open(self, blob: bytes, table: str, column: str, row_id: str) -> ColumnCipher:
        try:
            term = envelope.envelope_term(blob)
        except EnvelopeError as exc:
            raise self._failed(table, column, row_id, str(exc)) from None
        _, minimum = self.refresh_terms()
        if term < minimum:
            raise self._failed(
                table, column, row_id, f"its term {term} is retired (min_decrypt_term is {minimum})"
            )
        try:
            cipher = self.cipher(term, table, column)
        except DecryptionFailed as exc:
            raise self._failed(table, column, row_id, exc.message) from None
        except KeyMaterialError as exc:
            # The key itself is the problem (a wrong mode, a missing file): its own message and
            # fix, not "restore the row from a backup".
            raise DecryptionFailed(
                f"cannot decrypt {table}.{column} of row {row_id}: {exc.message}", hint=exc.hint
            ) from None
        with self._lock:
            self._openers[(cipher.header, table, column)] = cipher
        return cipher

    @staticmethod
    def _failed(table: str, column: str, row_id: str, reason: str) -> DecryptionFailed:
        return DecryptionFailed(
            f"cannot decrypt {table}.{column} of row {row_id}: {reason}",
            hint="fix: restore the row, or the database and master.key, from a consistent backup",
        )

    def retire_below(self, minimum: int) -> None:
        """Forget ciphers of terms below ``minimum`` after this process retired them."""
        with self._lock:
            self._min_term = minimum
            for cached in [k for k in self._ciphers if k[0] < minimum]:
                del self._ciphers[cached]
            self._openers = {k: c for k, c in self._openers.items() if c.term >= minimum}
            for term in [t for t in self._data_keys if t < minimum]:
                del self._data_keys[term]
            self._checked_at = float("-inf")

    # -- reports and rotations (in their own modules) -----------------------------------------

    def status(self) -> KeyStatus:
        from tundra.core.crypto.report import key_status

        return key_status(self)

    def verify(self) -> KeyVerifyReport:
        from tundra.core.crypto.report import verify_keys

        return verify_keys(self)

    def rotate_master(
        self, principal: Principal, *, request_id: str | None = None
    ) -> MasterRotationResult:
        """Re-wrap the keyring under a new master key (admins only; needs a fresh auth)."""
        from tundra.core.identity.users import require_admin

        require_admin(self._services, principal, request_id=request_id)
        self._services.reauth.require_fresh_auth(principal)
        from tundra.core.crypto.rotation import rotate_master

        return rotate_master(self, principal, request_id=request_id)

    def rotate_data(
        self,
        principal: Principal,
        *,
        progress: Callable[[int, int], None] | None = None,
        request_id: str | None = None,
    ) -> DataRotationResult:
        """Add a data key term and move every encrypted value to it; resumable (admins only;
        sensitive)."""
        from tundra.core.identity.users import require_admin

        require_admin(self._services, principal, request_id=request_id)
        self._services.reauth.require_fresh_auth(principal)
        from tundra.core.crypto.rotation import rotate_data

        return rotate_data(self, principal, progress=progress, request_id=request_id)


def rows_of(uow: UnitOfWork, table: str, column: str) -> list[dict[str, Any]]:
    """Every non-null value of an encrypted column, inside a unit of work."""
    return uow.fetchall(
        f"SELECT id, {column} AS value FROM {table}"  # noqa: S608 - registry names
        f" WHERE {column} IS NOT NULL ORDER BY id"
    )


def scan_column(
    keys: KeyService, table: str, column: str, *, page: int = 1000
) -> Iterator[dict[str, Any]]:
    """Every non-null value of an encrypted column, read in pages on the key service's own
    connection (no transaction is open while the caller handles a page)."""
    sql = (
        f"SELECT id, {column} AS value FROM {table}"  # noqa: S608 - registry names
        f" WHERE {column} IS NOT NULL AND id > :after ORDER BY id LIMIT :n"
    )
    after = ""
    while True:
        with keys.reading() as tx:
            rows = tx.fetchall(sql, {"after": after, "n": page})
        yield from rows
        if len(rows) < page:
            return
        after = str(rows[-1]["id"])
