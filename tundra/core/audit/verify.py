"""Walking the chain row by row, and saying exactly where and how it was damaged.

The walker takes rows in order (from the database or an export file) and checks three things
per row: its seq is the next one, its ``prev_hash`` is the previous row's ``chain_hash``, and its
``chain_hash`` is the hash of its content. At the first row that fails, it classifies the damage
(see :func:`ChainWalker._classify` and docs/audit.md):

- modified: the row matches its hash at no sequence number (its content was changed), or it is
  intact but its predecessor was altered and re-hashed;
- deleted: rows are missing here (a gap, or later rows renumbered down: the row matches its hash
  at a higher seq) and the missing rows appear nowhere else;
- reordered: the missing rows do appear elsewhere (rows swapped or moved);
- inserted: an extra row (a duplicate seq, a forged row, or rows renumbered up);
- truncated / rewritten: against a signed checkpoint, the log ends early, or the hash at the
  checkpoint's seq differs although the chain is internally consistent;
- malformed: an export line that cannot be read as a row.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tundra.core.audit.chain import GENESIS, canonical_json, hash_at
from tundra.core.errors import IntegrityError, InvalidFile, InvalidInput

#: How far a renumbered row's original seq is searched for (deletions/insertions in one place).
SHIFT_LIMIT = 1024


class Damage(StrEnum):
    MODIFIED = "modified"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    REWRITTEN = "rewritten"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    source: str
    rows_checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: Damage | None = None
    message: str = ""
    #: A filtered export starts mid-chain: the seq and prev_hash it was verified from.
    anchor_seq: int | None = None
    anchor_hash: str | None = None
    checkpoint_seq: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "source": self.source,
            "rows_checked": self.rows_checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "first_bad_seq": self.first_bad_seq,
            "reason": None if self.reason is None else str(self.reason),
            "message": self.message,
            "anchor_seq": self.anchor_seq,
            "anchor_hash": self.anchor_hash,
            "checkpoint_seq": self.checkpoint_seq,
        }

    def raise_for_damage(self) -> None:
        """Raise for a failed verification: IntegrityError, or InvalidFile for a malformed file."""
        if self.ok:
            return
        if self.reason is Damage.MALFORMED:
            raise InvalidFile(self.message)
        raise IntegrityError(self.message)


class MalformedRow(Exception):
    """Raised by a reader for a line or record it cannot read as a row."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Entry:
    """One row as read: the canonical body is ``head + details + tail + str(seq) + "}"``."""

    seq: int
    prev_hash: str
    chain_hash: str
    head: str
    details: str
    tail: str
    where: str = ""

    def body_without_seq(self, details: str | None = None) -> bytes:
        return (self.head + (self.details if details is None else details) + self.tail).encode()

    def variants(self) -> list[bytes]:
        """The body as stored and, if different, with its details re-encoded canonically."""
        bodies = [self.body_without_seq()]
        try:
            canonical = canonical_json(json.loads(self.details)).decode()
        except (ValueError, RecursionError):
            return bodies
        if canonical != self.details:
            bodies.append(self.body_without_seq(canonical))
        return bodies

    def matches_at(self, seq: int, bodies: list[bytes] | None = None) -> bool:
        """Whether the row's chain_hash is its content's hash at ``seq`` after its prev_hash."""
        if not 0 < seq < 2**64 or len(self.prev_hash) != 64:
            return False
        try:
            prev = bytes.fromhex(self.prev_hash)
        except ValueError:
            return False
        if bodies is None:
            if hash_at(seq, prev, self.body_without_seq()) == self.chain_hash:
                return True
            bodies = self.variants()[1:]  # only pay for JSON parsing when the bytes differ
        return any(hash_at(seq, prev, body) == self.chain_hash for body in bodies)


def true_seq(entry: Entry, hints: tuple[int | None, ...]) -> int | None:
    """The seq at which ``entry`` matches its own hash: its own, a hint, or one shifted nearby."""
    bodies = entry.variants()
    tried: set[int] = set()
    bases = [entry.seq, *(h for h in hints if h is not None)]
    for distance in range(SHIFT_LIMIT + 1):
        for base in bases:
            for candidate in (base - distance, base + distance):
                if candidate in tried:
                    continue
                tried.add(candidate)
                if entry.matches_at(candidate, bodies):
                    return candidate
    return None


@dataclass
class Finding:
    seq: int | None
    reason: Damage
    message: str


@dataclass
class ChainWalker:
    """Checks rows in order; stops at the first damage and keeps the classification.

    ``genesis``: the chain must start at seq 1 after 32 zero bytes (the database). Otherwise the
    first row's seq and prev_hash are the anchor (an export, possibly filtered).
    ``locate(hash)`` says where a row with that chain_hash sits in the whole source, if anywhere.
    """

    source: str
    genesis: bool
    locate: Callable[[str], str | None]
    checkpoint_seq: int | None = None
    checkpoint_hash: str | None = None
    expected: int | None = None
    last_hash: str = GENESIS
    rows: int = 0
    anchor: tuple[int, str] | None = None
    finding: Finding | None = None
    _cp_seen: bool = field(default=False)

    def __post_init__(self) -> None:
        if self.genesis:
            self.expected = 1
            self.anchor = (1, GENESIS)
            if self.checkpoint_seq == 0:
                self._at_checkpoint(0, GENESIS)

    # -- the slow, exact walk -------------------------------------------------------------

    def walk(self, entries: Iterator[Entry], *, limit: int | None = None) -> bool:
        """Check up to ``limit`` rows of ``entries``; False once damage is found."""
        taken = 0
        while limit is None or taken < limit:
            try:
                entry = next(entries)
            except StopIteration:
                return True
            except MalformedRow as bad:
                return self._fail(self.expected, Damage.MALFORMED, f"{bad.where}: {bad.problem}")
            taken += 1
            if self.expected is None:  # the first row of an export is the anchor
                self.expected, self.last_hash = entry.seq, entry.prev_hash
                self.anchor = (entry.seq, entry.prev_hash)
                if not entry.matches_at(entry.seq):
                    return self._first_row_damage(entry)
                if self.checkpoint_seq == entry.seq - 1:
                    self._at_checkpoint(entry.seq - 1, entry.prev_hash)
            if (
                entry.seq != self.expected
                or entry.prev_hash != self.last_hash
                or not entry.matches_at(entry.seq)
            ):
                return self._classify(entry, entries)
            self.accept(entry.seq, entry.chain_hash)
            if self.finding:
                return False
        return True

    def accept(self, seq: int, chain_hash: str, *, count: int = 1) -> None:
        """Record verified rows ending at ``seq`` (the fast path reports whole batches)."""
        self.rows += count
        self.expected, self.last_hash = seq + 1, chain_hash
        if self.checkpoint_seq == seq:
            self._at_checkpoint(seq, chain_hash)

    def _at_checkpoint(self, seq: int, chain_hash: str) -> None:
        self._cp_seen = True
        if chain_hash != self.checkpoint_hash:
            self._fail(
                seq,
                Damage.REWRITTEN,
                f"the chain is consistent but the hash at seq {seq} differs from the "
                f"signed checkpoint: rows at or before {seq} were changed and the "
                "chain recomputed",
            )

    def result(self) -> VerifyResult:
        if self.finding is None and self.checkpoint_seq is not None and not self._cp_seen:
            head = (self.expected or 1) - 1
            if self.anchor is not None and self.checkpoint_seq < self.anchor[0] - 1:
                raise InvalidInput(
                    f"the export starts at seq {self.anchor[0]}, after the "
                    f"checkpoint's seq {self.checkpoint_seq}: check it against a "
                    "later checkpoint or an unfiltered export"
                )
            if head < self.checkpoint_seq:
                self._fail(
                    head + 1,
                    Damage.TRUNCATED,
                    f"the log ends at seq {head} but the signed checkpoint covers seq "
                    f"{self.checkpoint_seq}: rows {head + 1}..{self.checkpoint_seq} "
                    "were removed",
                )
        head_seq = (self.expected or 1) - 1
        anchor_seq, anchor_hash = self.anchor if self.anchor else (None, None)
        if self.finding is not None:
            return VerifyResult(
                ok=False,
                source=self.source,
                rows_checked=self.rows,
                head_seq=head_seq,
                head_hash=self.last_hash,
                first_bad_seq=self.finding.seq,
                reason=self.finding.reason,
                message=self.finding.message,
                anchor_seq=anchor_seq,
                anchor_hash=anchor_hash,
                checkpoint_seq=self.checkpoint_seq,
            )
        if self.rows == 0:
            message = f"{self.source}: no rows"
        else:
            message = f"{self.source}: {self.rows} rows verified, head seq {head_seq}"
            if (anchor_seq, anchor_hash) == (1, GENESIS):
                message += ", from the start of the chain"
            elif anchor_seq is not None:
                message += f", from anchor seq {anchor_seq} (prev_hash {anchor_hash})"
        if self.checkpoint_seq is not None:
            message += f"; matches the signed checkpoint at seq {self.checkpoint_seq}"
        return VerifyResult(
            ok=True,
            source=self.source,
            rows_checked=self.rows,
            head_seq=head_seq,
            head_hash=self.last_hash,
            message=message,
            anchor_seq=anchor_seq,
            anchor_hash=anchor_hash,
            checkpoint_seq=self.checkpoint_seq,
        )

    # -- classification -------------------------------------------------------------------

    def _fail(self, seq: int | None, reason: Damage, message: str) -> bool:
        if self.finding is None:
            where = "" if seq is None else f"seq {seq} "
            self.finding = Finding(
                seq, reason, f"audit chain broken at {where}({reason}): {message}"
            )
        return False

    def _first_row_damage(self, entry: Entry) -> bool:
        found = true_seq(entry, ())
        if found is None:
            return self._fail(
                entry.seq,
                Damage.MODIFIED,
                f"{_at(entry)}its content no longer matches its chain hash",
            )
        return self._fail(
            found, Damage.MODIFIED, f"{_at(entry)}the row of seq {found} now claims seq {entry.seq}"
        )

    def _classify(self, row: Entry, rest: Iterator[Entry]) -> bool:
        e = self.expected
        assert e is not None
        t = true_seq(row, (e,))
        if t is None:
            following = _peek(rest)
            if following is not None and true_seq(following, (e,)) == e:
                return self._fail(
                    e,
                    Damage.INSERTED,
                    f"{_at(row)}a row that is not part of the chain sits before the real row {e}",
                )
            return self._fail(
                e,
                Damage.MODIFIED,
                f"{_at(row)}row {e} no longer matches its chain hash: its content was changed",
            )
        if t == e:
            if row.prev_hash != self.last_hash and e == 1:
                return self._fail(
                    1, Damage.MODIFIED, f"{_at(row)}row 1 does not start from the genesis hash"
                )
            if row.prev_hash != self.last_hash:
                return self._fail(
                    e - 1,
                    Damage.MODIFIED,
                    f"{_at(row)}row {e} is intact but no longer links to row "
                    f"{e - 1}: row {e - 1} was changed and its hash recomputed",
                )
            return self._fail(
                e, Damage.MODIFIED, f"{_at(row)}the row of seq {e} now claims seq {row.seq}"
            )
        if t > e:
            elsewhere = self.locate(row.prev_hash)
            missing = f"{e}" if t == e + 1 else f"{e}..{t - 1}"
            if elsewhere is not None:
                return self._fail(
                    e,
                    Damage.REORDERED,
                    f"{_at(row)}expected row {e} but found row {t}; its "
                    f"predecessor is elsewhere ({elsewhere}): rows are out of order",
                )
            renumbered = "" if row.seq == t else f" (renumbered from {t} to {row.seq})"
            return self._fail(
                e,
                Damage.DELETED,
                f"{_at(row)}row(s) {missing} are missing: the next row present is {t}{renumbered}",
            )
        duplicate = " (a duplicate)" if row.seq == t else f" renumbered to {row.seq}"
        return self._fail(
            t,
            Damage.INSERTED,
            f"{_at(row)}row {t} appears again{duplicate} after row {e - 1}: "
            f"an extra row was inserted at seq {t}",
        )


def _at(entry: Entry) -> str:
    return f"{entry.where}: " if entry.where else ""


def _peek(rest: Iterator[Entry]) -> Entry | None:
    """The row after the bad one, if it can be read (a malformed one tells nothing)."""
    try:
        return next(rest)
    except (StopIteration, MalformedRow):
        return None
