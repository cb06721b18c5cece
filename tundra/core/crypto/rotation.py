"""Master key and data key rotation: crash-safe protocols, resumable rewrap, crash points.

Master key rotation (O(1) in data; the states a kill can leave are in docs/keys.md)::

    lock master.key.lock
    1. write master.key.new (0400, fsync, fsync dir)
    2. hard-link master.key -> master.key.prev (fsync dir)
    3. rename master.key.new -> master.key (fsync dir)
    4. one unit of work: re-wrap every keyring entry, store the new key-check value, audit row
    5. unlink master.key.prev (fsync dir)

Loading (``masterkey.load_master_key``) repairs any interrupted state: the file that matches the
database's key-check value wins and the others go.

Data key rotation: one unit of work adds term N and makes it active (audited); then batches of
``rotation_batch_size`` rows are re-encrypted, each batch with its progress cursor in ``meta``
and an audit row in one transaction; finally, after a grace period for processes still caching
the old active term, one unit of work sweeps for stragglers, sets ``min_decrypt_term = N`` and
records ``KEYS_DATA_ROTATE_FINISH``. Re-running while a rotation is recorded in ``meta`` resumes it.

``TUNDRA_CRASHPOINT=name:nth`` is a test-only fault-injection hook: the nth time the process
reaches crash point ``name`` it SIGKILLs itself. Unset (always, outside the crash tests), a crash
point is one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tundra.core.audit.actions import Action
from tundra.core.clock import epoch, now_iso
from tundra.core.crypto import envelope, masterkey
from tundra.core.crypto.keyring import (
    ENCRYPTED_COLUMNS,
    META_ACTIVE,
    META_KCV,
    META_MIN,
    META_ROTATION,
    get_meta,
    rows_of,
    set_meta,
)
from tundra.core.crypto.primitives import fsync_dir, install_file, random_bytes
from tundra.core.errors import Conflict, KeyMaterialError
from tundra.core.principal import Principal
from tundra.core.uow import UnitOfWork, unit_of_work

if TYPE_CHECKING:
    from tundra.core.crypto.keyring import KeyService

#: Seconds between activating a new term and retiring the old ones: longer than any process caches
#: the active term (keyring.ACTIVE_TERM_TTL), so late writes under the old term are swept up.
ROTATION_GRACE = 2.0

CRASHPOINT_ENV = "TUNDRA_CRASHPOINT"
_crash_hits: dict[str, int] = {}


def crashpoint(name: str) -> None:
    """Test-only fault injection: SIGKILL this process at the nth visit of ``name``."""
    spec = os.environ.get(CRASHPOINT_ENV)
    if not spec:
        return
    target, _, nth = spec.rpartition(":")
    if not nth.isdigit():  # "name" alone means its first visit
        target, nth = spec, "1"
    if target != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class MasterRotationResult:
    terms_rewrapped: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DataRotationResult:
    term: int
    resumed: bool
    rows_total: int
    rows_rewrapped: int
    retired_below: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _lock_kcv(uow: UnitOfWork) -> str | None:
    """Serialise keyring writers: a row lock on PostgreSQL (SQLite's write lock is global).

    Master rotation and term creation both take it first, so a new term is never wrapped under
    a master key that a concurrent rotation is replacing."""
    uow.execute("UPDATE meta SET value = value WHERE key = :k", {"k": META_KCV})
    return get_meta(uow, META_KCV)


def _lock_keyring(uow: UnitOfWork, keys: KeyService) -> bytes:
    """Take the keyring lock and return the master key matching the key-check value."""
    kcv = _lock_kcv(uow)
    if kcv is None:
        raise KeyMaterialError("the keyring is not initialised", hint="fix: run `tundra init`")
    master = keys.master_key()
    if not masterkey.kcv_matches(master, kcv):
        # Committed by another process since we loaded ours; the file must have changed too.
        master = keys.master_key(reload=True)
        if not masterkey.kcv_matches(master, kcv):
            raise masterkey.mismatch_error(keys.paths.key)
    return master


# -- master key ---------------------------------------------------------------------------------


def rotate_master(
    keys: KeyService, principal: Principal, *, request_id: str | None = None
) -> MasterRotationResult:
    paths = keys.paths
    with masterkey.key_lock(paths):
        kcv = keys.fetch_kcv()
        if kcv is None:
            raise KeyMaterialError("the keyring is not initialised", hint="fix: run `tundra init`")
        masterkey.recover(paths, kcv)  # finish or undo an earlier interrupted rotation first
        old = masterkey.read_key_file(paths.key)
        if not masterkey.kcv_matches(old, kcv):
            raise masterkey.mismatch_error(paths.key)
        new = masterkey.new_key()
        crashpoint("master:begin")
        masterkey.write_key_file(paths.new, new, replace=True)
        crashpoint("master:new-written")
        os.link(paths.key, paths.prev)
        fsync_dir(paths.key.parent)
        crashpoint("master:prev-linked")
        install_file(paths.new, paths.key)
        crashpoint("master:key-replaced")
        try:
            terms = _rewrap_keyring(keys, principal, old, new, request_id)
        except BaseException:
            # Decide from what the database really holds (a failed COMMIT may have landed).
            with contextlib.suppress(Exception):  # else the next load repairs it, locked
                masterkey.recover(paths, keys.fetch_kcv() or kcv)
            raise
        crashpoint("master:committed")
        paths.prev.unlink()
        fsync_dir(paths.key.parent)
        crashpoint("master:done")
    keys.forget()
    return MasterRotationResult(terms_rewrapped=terms)


def _rewrap_keyring(
    keys: KeyService, principal: Principal, old: bytes, new: bytes, request_id: str | None
) -> int:
    """Step 4: every keyring entry re-wrapped and the new key-check value, in one transaction."""
    with unit_of_work(keys.services.db, principal, request_id=request_id) as uow:
        kcv = _lock_kcv(uow)
        if kcv is None or not masterkey.kcv_matches(old, kcv):
            raise Conflict(
                "the master key changed during the rotation; nothing was changed",
                hint="run the rotation again",
            )
        old_wrap, new_wrap = envelope.wrapping_key(old), envelope.wrapping_key(new)
        rows = uow.fetchall("SELECT term, wrapped FROM keyring ORDER BY term")
        for row in rows:
            term = int(row["term"])
            try:
                data_key = envelope.unwrap_data_key(old_wrap, term, bytes(row["wrapped"]))
            except envelope.EnvelopeError as exc:
                raise KeyMaterialError(
                    str(exc),
                    hint="fix: run `tundra key verify` and restore the keyring from backup",
                ) from None
            uow.execute(
                "UPDATE keyring SET wrapped = :w WHERE term = :t",
                {"w": envelope.wrap_data_key(new_wrap, term, data_key), "t": term},
            )
        set_meta(uow, META_KCV, masterkey.key_check_value(new))
        uow.record(Action.KEYS_MASTER_ROTATE, "keyring:master", {"terms_rewrapped": len(rows)})
        crashpoint("master:before-commit")
    return len(rows)


# -- data keys ----------------------------------------------------------------------------------


def _rotation_state(tx: Any) -> dict[str, Any] | None:
    raw = get_meta(tx, META_ROTATION)
    return None if raw is None else dict(json.loads(raw))


def rotation_state(keys: KeyService) -> dict[str, Any] | None:
    """The data rotation in progress (target term, cursor, rows done/total), or None."""
    with keys.reading() as tx:
        return _rotation_state(tx)


def _column_sql(table: str, column: str) -> tuple[str, str]:
    # Table and column names come from ENCRYPTED_COLUMNS, never from input.
    batch = (
        f"SELECT id, {column} AS value FROM {table}"  # noqa: S608
        f" WHERE {column} IS NOT NULL AND id > :after ORDER BY id LIMIT :n"
    )
    update = (
        f"UPDATE {table} SET {column} = :new"  # noqa: S608
        f" WHERE id = :id AND {column} = :old"
    )
    return batch, update


def _rewrap_row(
    keys: KeyService, uow: UnitOfWork, table: str, column: str, row: dict[str, Any], target: int
) -> bool:
    """Re-encrypt one cell under ``target`` if it is older; True when it was rewritten."""
    blob = bytes(row["value"])
    try:
        term = envelope.envelope_term(blob)
    except envelope.EnvelopeError:
        term = -1  # decrypt() below raises DecryptionFailed with the row named
    if term >= target:
        return False
    row_id = str(row["id"])
    plaintext = keys.decrypt(table, column, row_id, blob)
    sealed = keys.cipher(target, table, column).seal(row_id, plaintext)
    # The guard on the old value keeps a concurrent update (PostgreSQL) from being overwritten.
    uow.execute(_column_sql(table, column)[1], {"new": sealed, "id": row_id, "old": blob})
    return True


def _start(
    keys: KeyService, principal: Principal, request_id: str | None
) -> tuple[dict[str, Any], bool]:
    """Add and activate a new term, or pick up the rotation already recorded in ``meta``."""
    keys.master_key()  # load (and repair) before taking any database lock
    with unit_of_work(keys.services.db, principal, request_id=request_id) as uow:
        master = _lock_keyring(uow, keys)
        state = _rotation_state(uow)
        if state is not None:
            uow.record(
                Action.KEYS_DATA_ROTATE_START,
                f"keyring:{state['target']}",
                {"term": state["target"], "resumed": True, "rows_done": state["done"]},
            )
            return state, True
        target = int(uow.fetchval("SELECT max(term) FROM keyring") or 0) + 1
        wrapped = envelope.wrap_data_key(
            envelope.wrapping_key(master), target, random_bytes(envelope.DATA_KEY_BYTES)
        )
        uow.execute(
            "INSERT INTO keyring (term, wrapped, created_at) VALUES (:t, :w, :c)",
            {"t": target, "w": wrapped, "c": now_iso()},
        )
        set_meta(uow, META_ACTIVE, str(target))
        total = 0
        for table, column in ENCRYPTED_COLUMNS:
            total += int(
                uow.fetchval(
                    f"SELECT count(*) FROM {table}"  # noqa: S608
                    f" WHERE {column} IS NOT NULL"
                )
                or 0
            )
        state = {
            "target": target,
            "column": 0,
            "after": "",
            "done": 0,
            "total": total,
            "activated_at": epoch(),
        }
        set_meta(uow, META_ROTATION, json.dumps(state, sort_keys=True))
        uow.record(
            Action.KEYS_DATA_ROTATE_START,
            f"keyring:{target}",
            {"term": target, "resumed": False, "rows_total": total},
        )
        crashpoint("data:before-start-commit")
    return state, False


def rotate_data(
    keys: KeyService,
    principal: Principal,
    *,
    progress: Callable[[int, int], None] | None = None,
    request_id: str | None = None,
) -> DataRotationResult:
    crashpoint("data:begin")
    state, resumed = _start(keys, principal, request_id)
    _, minimum = keys.refresh_terms()
    # Unwrap every live data key now, outside any transaction: nothing below loads a key while
    # holding a database write lock.
    with keys.reading() as tx:
        live = [
            int(r["term"])
            for r in tx.fetchall(
                "SELECT term FROM keyring WHERE term >= :m ORDER BY term", {"m": minimum}
            )
        ]
    for term in live:
        keys.data_key(term)
    crashpoint("data:started")
    target, batch_size = int(state["target"]), keys.services.settings.rotation_batch_size
    index, after, done = int(state["column"]), str(state["after"]), int(state["done"])
    total, rewrapped = int(state["total"]), 0
    if progress:
        progress(min(done, total), total)
    while index < len(ENCRYPTED_COLUMNS):
        table, column = ENCRYPTED_COLUMNS[index]
        with unit_of_work(keys.services.db, principal, request_id=request_id) as uow:
            rows = uow.fetchall(_column_sql(table, column)[0], {"after": after, "n": batch_size})
            if rows:
                moved = sum(_rewrap_row(keys, uow, table, column, row, target) for row in rows)
                rewrapped += moved
                done += len(rows)
                after = str(rows[-1]["id"])
                if len(rows) < batch_size:
                    index, after = index + 1, ""
                set_meta(
                    uow,
                    META_ROTATION,
                    json.dumps(
                        {**state, "column": index, "after": after, "done": done}, sort_keys=True
                    ),
                )
                uow.record(
                    Action.KEYS_DATA_REWRAP,
                    f"column:{table}.{column}",
                    {"term": target, "rows": len(rows), "rewrapped": moved},
                )
                crashpoint("data:in-batch")
        if not rows:
            index, after = index + 1, ""  # nothing written: an interrupted re-run rechecks it
            continue
        crashpoint("data:batch-committed")
        if progress:
            total = max(total, done)
            progress(done, total)
    swept = _finish(keys, principal, state, request_id)
    return DataRotationResult(
        term=target,
        resumed=resumed,
        rows_total=max(total, done),
        rows_rewrapped=rewrapped + swept,
        retired_below=target,
    )


def _finish(
    keys: KeyService, principal: Principal, state: dict[str, Any], request_id: str | None
) -> int:
    """Retire every term below the target once nothing uses them (after the grace period)."""
    target = int(state["target"])
    wait = float(state["activated_at"]) + ROTATION_GRACE - epoch()
    if wait > 0:
        time.sleep(min(wait, ROTATION_GRACE))
    crashpoint("data:before-finish")
    swept = 0
    with unit_of_work(keys.services.db, principal, request_id=request_id) as uow:
        current = _rotation_state(uow)
        if current is None or int(current["target"]) != target:
            return 0  # another run finished it
        # Late writes by processes that still cached the old active term.
        for table, column in ENCRYPTED_COLUMNS:
            for row in rows_of(uow, table, column):
                swept += _rewrap_row(keys, uow, table, column, row, target)
        set_meta(uow, META_MIN, str(target))
        uow.execute("DELETE FROM meta WHERE key = :k", {"k": META_ROTATION})
        uow.record(
            Action.KEYS_DATA_ROTATE_FINISH,
            f"keyring:{target}",
            {"term": target, "min_decrypt_term": target, "swept": swept},
        )
        crashpoint("data:in-finish")
    keys.retire_below(target)
    crashpoint("data:finished")
    return swept
