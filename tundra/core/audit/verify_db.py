"""Verifying the chain in the database: a fast batch path, and the exact walk when it balks.

The fast path asks the database for a batch of rows already laid out as the bytes to hash: per
batch, one string of canonical bodies (SQLite builds them, its ``json_object`` encoding the text
fields, the stored details text in between; PostgreSQL returns the plain columns, each joined,
and Python builds them with the canonical encoder), one of the prev hashes and one of the chain
hashes, each joined by a separator. Python hashes each body and compares all the hashes of the
batch in two comparisons: no row objects, no JSON parsing. A worker thread fetches the next
batch while this one is hashed (both drivers release the GIL while the database works), so the
two overlap.

Why a matching body proves the stored row: every text field is a correctly escaped JSON
string, and a JSON string's extent is fixed by its content (it ends at the first unescaped
quote). Reading the body forwards from ``{"action":`` and backwards from ``,"seq":N}``, each
field must then be exactly the canonical one, which leaves the details text in between equal to
the canonical details. So a body whose hash matches is byte-for-byte the canonical row (its seq
included: the hash is taken at the expected seq), and its stored hashes are checked besides.
Anything odd in a batch (a mismatch, a gap, a separator inside the data) sends that batch to
the exact walker, which builds the canonical encoding itself and classifies any damage.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from binascii import hexlify
from collections.abc import Iterator
from dataclasses import dataclass

from tundra.core.audit.chain import (
    PREFIXED_SHA3,
    ROW_COLUMNS,
    body_head,
    body_tail,
    canonical_body,
)
from tundra.core.audit.verify import ChainWalker, Entry, VerifyResult
from tundra.core.storage.db import Database, Transaction

BATCH = 4000
SLOW_PAGE = 500
_SEP = "\x1e"  # record separator; a row containing it just takes the exact path
_EXACT_FROM_HERE = -1  # a batch count meaning: the fast query failed, walk the rest exactly

# SQLite builds each row's canonical body itself: json_object encodes the text fields, the
# stored details text goes in between. PostgreSQL evaluates such per-row expressions slowly
# (to_json costs more than the hashing), so there the plain columns are aggregated and Python
# builds the bodies with the same encoder as the exact path.
_SQLITE_BODY = (
    "rtrim(json_object('action', action, 'actor', actor), '}') || ',\"details\":' || details"
    " || ',' || ltrim(json_object('occurred_at', occurred_at, 'request_id', request_id,"
    " 'resource', resource, 'seq', seq), '{')"
)
_FIELDS = ("occurred_at", "actor", "action", "resource", "request_id", "details")
# Aggregates over the same ordered rows, each joined by the separator. SQLite hands them over
# as bytes (CAST AS BLOB: no decoding to str and encoding back). Both databases aggregate the
# ordered subquery in its order (an ORDER BY inside string_agg would sort every batch again);
# were the order ever different, the hash checks would fail and the batch be walked exactly.
_AGGREGATED = {
    "sqlite": (
        "CAST(group_concat({}, :sep) AS BLOB)",
        {"prevs": "prev_hash", "chains": "chain_hash", "bodies": _SQLITE_BODY},
    ),
    "postgresql": (
        "string_agg({}, :sep)",
        {"prevs": "prev_hash", "chains": "chain_hash", **{f: f for f in _FIELDS}},
    ),
}
_ROWS = (
    "SELECT seq, occurred_at, actor, action, resource, request_id, details, prev_hash,"
    " chain_hash FROM audit_log WHERE seq > :after ORDER BY seq LIMIT :n"
)


def _fast_sql(dialect: str) -> str:
    aggregate, columns = _AGGREGATED[dialect]
    selected = ", ".join(f"{aggregate.format(expr)} AS {name}" for name, expr in columns.items())
    # Built from the constants above only (no input reaches the SQL text).
    return (
        f"SELECT count(*) AS n, max(seq) AS last, {selected} FROM (SELECT seq, prev_hash,"  # noqa: S608
        f" chain_hash, {', '.join(_FIELDS)} FROM audit_log WHERE seq > :after ORDER BY seq"
        " LIMIT :n) AS batch"
    )


@dataclass(frozen=True)
class _Batch:
    after: int
    count: int
    last: int
    prevs: bytes | str | None = None
    chains: bytes | str | None = None
    bodies: bytes | str | None = None  # SQLite: the bodies; PostgreSQL: the columns in fields
    fields: tuple[str | None, ...] = ()


class _Prefetcher:
    """Runs the batch query one batch ahead in a worker thread with its own connection."""

    def __init__(self, db: Database, *, depth: int = 2) -> None:
        self._db = db
        self._queue: queue.Queue[_Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-verify-fetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with self._db.read() as tx:
                sql = _fast_sql(tx.dialect)
                after = 0
                while not self._stop.is_set():
                    try:
                        row = tx.fetchone(sql, {"after": after, "n": BATCH, "sep": _SEP})
                    except Exception:  # e.g. a tampered non-text value: walk the rest exactly
                        self._put(_Batch(after, _EXACT_FROM_HERE, after))
                        return
                    count = int(row["n"]) if row else 0
                    if row is None or count == 0:
                        self._put(_Batch(after, 0, after))
                        return
                    fields = () if "bodies" in row else tuple(row[f] for f in _FIELDS)
                    last = int(row["last"])
                    self._put(
                        _Batch(
                            after,
                            count,
                            last,
                            row["prevs"],
                            row["chains"],
                            row.get("bodies"),
                            fields,
                        )
                    )
                    after = int(row["last"])
        except BaseException as exc:  # handed to the verifying thread, which raises it
            self._put(exc)
        finally:
            self._db.close_thread()  # this worker thread's connection only

    def _put(self, item: _Batch | BaseException) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[_Batch]:
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.count <= 0:
                return

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()


def _bytes(value: bytes | str | None) -> bytes:
    return value if isinstance(value, bytes) else (value or "").encode()


def _bodies(batch: _Batch) -> list[bytes]:
    """Canonical bodies from the aggregated columns (empty if a separator hides in the data)."""
    columns = [(value or "").split(_SEP) for value in batch.fields]
    if len(columns) != len(_FIELDS) or any(len(c) != batch.count for c in columns):
        return []
    return [
        canonical_body(seq, *row)
        for seq, row in enumerate(zip(*columns, strict=True), start=batch.after + 1)
    ]


def _check_batch(batch: _Batch, walker: ChainWalker) -> bool:
    """Verify a whole batch; advance the walker only if every row checks out.

    Per row only the hash is computed. The stored hashes are compared for the whole batch at
    once: the chain hashes against all computed digests (hex, joined like the aggregate, which
    also proves each one is exactly 64 characters), the prev hashes against the chain hashes
    shifted by one row.
    """
    count = batch.count
    if walker.expected != batch.after + 1 or batch.last != batch.after + count or count < 1:
        return False
    sep = _SEP.encode()
    chains = _bytes(batch.chains)
    bodies = _bytes(batch.bodies).split(sep) if batch.bodies is not None else _bodies(batch)
    last_hex = walker.last_hash.encode()
    expected_prevs = last_hex + sep + chains[:-65] if count > 1 else last_hex
    if len(bodies) != count or _bytes(batch.prevs) != expected_prevs:
        return False
    seq = batch.after + 1
    last_raw = bytes.fromhex(walker.last_hash)
    base = PREFIXED_SHA3
    digests: list[bytes] = []
    keep = digests.append
    for body in bodies:
        digest = base.copy()
        digest.update(seq.to_bytes(8, "big") + last_raw + body)
        last_raw = digest.digest()
        keep(last_raw)
        seq += 1
    if hexlify(b"".join(digests), sep, 32) != chains:
        return False
    # Hand the verified rows to the walker, stopping at the checkpoint's seq to compare it.
    checkpoint = walker.checkpoint_seq
    if checkpoint is not None and batch.after < checkpoint <= batch.last:
        at_checkpoint = digests[checkpoint - batch.after - 1].hex()
        walker.accept(checkpoint, at_checkpoint, count=checkpoint - batch.after)
        if walker.finding is None and checkpoint < batch.last:
            walker.accept(batch.last, last_raw.hex(), count=batch.last - checkpoint)
    else:
        walker.accept(batch.last, last_raw.hex(), count=count)
    return True


_TEXT_COLUMNS = ROW_COLUMNS[1:]  # every column but seq


def _text(value: object) -> str:
    # SQLite lets a tampered row hold a number or blob in a text column; its repr can never
    # hash to the stored chain hash, so the row is reported as modified instead of crashing.
    return value if isinstance(value, str) else repr(value)


def entries_from(tx: Transaction, after: int) -> Iterator[Entry]:
    """Every row after seq ``after`` as exact entries, page by page (keyset pagination)."""
    while True:
        page = tx.fetchall(_ROWS, {"after": after, "n": SLOW_PAGE})
        if not page:
            return
        for row in page:
            text = {name: _text(row[name]) for name in _TEXT_COLUMNS}
            yield Entry(
                seq=int(row["seq"]),
                prev_hash=text["prev_hash"],
                chain_hash=text["chain_hash"],
                head=body_head(action=text["action"], actor=text["actor"]),
                details=text["details"],
                tail=body_tail(
                    occurred_at=text["occurred_at"],
                    request_id=text["request_id"],
                    resource=text["resource"],
                ),
                where=f"seq {row['seq']}",
            )
        after = int(page[-1]["seq"])


def verify_database(db: Database, *, checkpoint: tuple[int, str] | None = None) -> VerifyResult:
    """Verify the whole chain in seq order, optionally against a checkpoint (seq, hex hash)."""
    with db.read() as tx:

        def locate(chain_hash: str) -> str | None:
            found = tx.fetchval(
                "SELECT seq FROM audit_log WHERE chain_hash = :h LIMIT 1", {"h": chain_hash}
            )
            return None if found is None else f"stored at seq {found}"

        walker = ChainWalker(
            source="database",
            genesis=True,
            locate=locate,
            checkpoint_seq=None if checkpoint is None else checkpoint[0],
            checkpoint_hash=None if checkpoint is None else checkpoint[1],
        )
        batches = _Prefetcher(db)
        try:
            for batch in batches:
                if batch.count == 0 or walker.finding is not None:
                    break
                if batch.count == _EXACT_FROM_HERE:
                    walker.walk(entries_from(tx, batch.after))
                    break
                if _check_batch(batch, walker):
                    continue
                # An odd batch is walked exactly; the walker may read past it to classify damage.
                if not walker.walk(entries_from(tx, batch.after), limit=batch.count):
                    break
                if walker.expected != batch.last + 1:
                    # The two connections saw different rows (a change while verifying): finish
                    # the exact way rather than mix their views.
                    walker.walk(entries_from(tx, (walker.expected or 1) - 1))
                    break
        finally:
            batches.close()
        return walker.result()
