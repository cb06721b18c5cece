"""What ``tundra key status`` and ``tundra key verify`` report: read-only looks at the keys.

Status reads the key file only to check it (nothing is cached or unwrapped) and counts values per
term from the envelope headers. Verify loads the master key the normal way (which repairs an
interrupted master rotation), unwraps every keyring entry and decrypts every encrypted value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tundra.core.crypto import envelope, masterkey
from tundra.core.crypto.keyring import (
    ENCRYPTED_COLUMNS,
    META_ACTIVE,
    META_KCV,
    META_MIN,
    get_meta,
    scan_column,
)
from tundra.core.crypto.primitives import inspect_secret_file
from tundra.core.crypto.rotation import rotation_state
from tundra.core.errors import TundraError

if TYPE_CHECKING:
    from tundra.core.crypto.keyring import KeyService

#: Verify lists at most this many bad values one by one (the count is always complete).
MAX_LISTED = 50


@dataclass(frozen=True)
class FileCheck:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class TermInfo:
    term: int
    created_at: str
    #: "active", "decrypt-only" (older, not yet retired) or "retired" (below min_decrypt_term).
    state: str


@dataclass
class KeyStatus:
    master_key_path: str
    initialized: bool
    file_checks: list[FileCheck]
    active_term: int | None
    min_decrypt_term: int | None
    terms: list[TermInfo]
    #: "table.column" -> {term: number of values}; term 0 counts values with no valid header.
    rows: dict[str, dict[int, int]]
    rotation: dict[str, Any] | None

    @property
    def files_ok(self) -> bool:
        return all(check.ok for check in self.file_checks)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows"] = {
            col: {str(t): n for t, n in sorted(per.items())} for col, per in self.rows.items()
        }
        data["files_ok"] = self.files_ok
        data["rotation_in_progress"] = self.rotation is not None
        return data


@dataclass
class KeyVerifyReport:
    problems: list[str] = field(default_factory=list)
    terms_checked: int = 0
    values_checked: int = 0
    values_failed: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": list(self.problems),
            "terms_checked": self.terms_checked,
            "values_checked": self.values_checked,
            "values_failed": self.values_failed,
        }


def file_checks(keys: KeyService, kcv: str | None) -> list[FileCheck]:
    path = keys.paths.key
    checks = []
    problems = inspect_secret_file(path, mode=masterkey.MODE)
    checks.append(
        FileCheck(
            "file",
            not problems,
            "; ".join(map(str, problems)) or "regular file, mode 0400, owned by the service user",
        )
    )
    key: bytes | None = None
    if not problems:
        try:
            key = masterkey.read_key_file(path)
            checks.append(FileCheck("format", True, "64 bytes, BLAKE3 trailer matches"))
        except TundraError as exc:
            checks.append(FileCheck("format", False, str(exc)))
    if kcv is None:
        checks.append(
            FileCheck(
                "key-check value",
                False,
                "the database has no key-check value (fix: run `tundra init`)",
            )
        )
    elif key is not None:
        match = masterkey.kcv_matches(key, kcv)
        checks.append(
            FileCheck(
                "key-check value",
                match,
                "matches the database" if match else str(masterkey.mismatch_error(path)),
            )
        )
    leftovers = ", ".join(p.name for p in keys.paths.leftovers())
    detail = (
        f"{leftovers} left by an interrupted master key rotation (fix: `tundra key verify` or "
        "any command that loads the key repairs it)"
    )
    checks.append(FileCheck("rotation leftovers", not leftovers, detail if leftovers else "none"))
    return checks


def key_status(keys: KeyService) -> KeyStatus:
    with keys.reading() as tx:
        kcv = get_meta(tx, META_KCV)
        active, minimum = get_meta(tx, META_ACTIVE), get_meta(tx, META_MIN)
        keyring = tx.fetchall("SELECT term, created_at FROM keyring ORDER BY term")
    rows: dict[str, dict[int, int]] = {}
    for table, column in ENCRYPTED_COLUMNS:
        counts: Counter[int] = Counter()
        for row in scan_column(keys, table, column):
            try:
                counts[envelope.envelope_term(bytes(row["value"]))] += 1
            except envelope.EnvelopeError:
                counts[0] += 1
        rows[f"{table}.{column}"] = dict(counts)
    active_term = int(active) if active else None
    min_term = int(minimum) if minimum else None
    terms = []
    for entry in keyring:
        term = int(entry["term"])
        state = (
            "active"
            if term == active_term
            else "retired"
            if min_term is not None and term < min_term
            else "decrypt-only"
        )
        terms.append(TermInfo(term, str(entry["created_at"]), state))
    return KeyStatus(
        master_key_path=str(keys.paths.key),
        initialized=kcv is not None,
        file_checks=file_checks(keys, kcv),
        active_term=active_term,
        min_decrypt_term=min_term,
        terms=terms,
        rows=rows,
        rotation=rotation_state(keys),
    )


def verify_keys(keys: KeyService) -> KeyVerifyReport:
    report = KeyVerifyReport()
    kcv = keys.fetch_kcv()
    try:
        keys.master_key(reload=True)  # repairs an interrupted rotation, checks the kcv
    except TundraError as exc:
        report.problems.append(f"master key: {exc}")
    for check in file_checks(keys, kcv):
        if not check.ok:
            report.problems.append(f"master key {check.name}: {check.detail}")
    if report.problems:
        return report  # nothing below can be checked without the right key
    with keys.reading() as tx:
        active, minimum = get_meta(tx, META_ACTIVE), get_meta(tx, META_MIN)
        terms = [int(r["term"]) for r in tx.fetchall("SELECT term FROM keyring ORDER BY term")]
    if active is None or int(active) not in terms:
        report.problems.append(f"keyring: the active term {active} is not in the keyring")
    if minimum is not None and active is not None and int(minimum) > int(active):
        report.problems.append(f"keyring: min_decrypt_term {minimum} is above the active term")
    keys.forget()
    for term in terms:
        report.terms_checked += 1
        try:
            keys.data_key(term)
        except TundraError as exc:
            report.problems.append(f"keyring term {term}: {exc.message}")
    for table, column in ENCRYPTED_COLUMNS:
        for row in scan_column(keys, table, column):
            report.values_checked += 1
            try:
                keys.decrypt(table, column, str(row["id"]), bytes(row["value"]))
            except TundraError as exc:
                report.values_failed += 1
                if report.values_failed <= MAX_LISTED:
                    report.problems.append(exc.message)
    if report.values_failed > MAX_LISTED:
        report.problems.append(
            f"... and {report.values_failed - MAX_LISTED} more values that do not decrypt"
        )
    return report
