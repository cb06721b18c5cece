"""Waivers: an accepted failure of one check, with a justification and an expiry date.

The file is TOML (``tomllib`` is in the standard library)::

    [[waiver]]
    check = "HD-03"
    justification = "the reverse proxy sets Referrer-Policy; fix tracked in OPS-142"
    expires = 2026-09-30        # a TOML date; the waiver covers the check up to that day
    owner = "ops@example.com"   # optional

A waiver turns a *failure* of its check into ``waived`` (which counts as a pass). It never
touches an error (a check that could not decide is not a known, accepted risk). A malformed
file or entry is :class:`~tundra.core.errors.InvalidFile` naming the entry and its line. An
expired waiver is loaded but does not apply: the check fails again and the report says which
waiver expired when.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from tundra.core.acceptance.model import CATALOGUE, Result, Status
from tundra.core.clock import now
from tundra.core.errors import InvalidFile

_ID = re.compile(r"[A-Z]{2}-[0-9]{2}")
_HEADER = re.compile(r"^\s*\[\[\s*waivers?\s*\]\]\s*(#.*)?$")
_KEYS = frozenset({"check", "justification", "expires", "owner"})
#: A justification must say something; "ok", "n/a" or "todo" does not.
MIN_JUSTIFICATION = 10


@dataclass(frozen=True, slots=True)
class Waiver:
    check: str
    justification: str
    expires: date
    owner: str | None = None
    #: Where it came from: "FILE entry N (line L)".
    where: str = ""

    def expired(self, today: date) -> bool:
        """A waiver is valid through its expiry day and expired from the day after."""
        return today > self.expires

    def to_dict(self, *, today: date) -> dict[str, Any]:
        return {
            "check": self.check,
            "justification": self.justification,
            "expires": self.expires.isoformat(),
            "owner": self.owner,
            "expired": self.expired(today),
            "source": self.where,
        }


def _header_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), start=1) if _HEADER.match(line)]


def parse_waivers(
    text: str, *, source: str = "waivers", known_ids: Collection[str] | None = None
) -> list[Waiver]:
    """Parse a waiver file's text strictly; ``known_ids`` defaults to the catalogue."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidFile(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"waiver"})
    if extra:
        raise InvalidFile(
            f"{source}: unexpected top-level key(s) {', '.join(extra)}",
            hint="each waiver is a [[waiver]] table",
        )
    entries = data.get("waiver", [])
    if not isinstance(entries, list):
        raise InvalidFile(f"{source}: 'waiver' must be an array of tables ([[waiver]])")
    lines = _header_lines(text)
    ids = set(CATALOGUE if known_ids is None else known_ids)
    waivers: list[Waiver] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries, start=1):
        line = f" (line {lines[index - 1]})" if index - 1 < len(lines) else ""
        where = f"{source} entry {index}{line}"
        if not isinstance(entry, dict):
            raise InvalidFile(f"{where}: a waiver must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise InvalidFile(
                f"{where}: unknown key(s) {', '.join(unknown)}",
                hint="a waiver has check, justification, expires and optionally owner",
            )
        check = entry.get("check")
        if not isinstance(check, str) or not _ID.fullmatch(check):
            raise InvalidFile(f"{where}: 'check' must be a check id such as \"HD-03\"")
        if check not in ids:
            raise InvalidFile(
                f"{where}: no check {check!r} in the catalogue",
                hint="`tundra acceptance list` shows the ids",
            )
        justification = entry.get("justification")
        if not isinstance(justification, str) or len(justification.strip()) < MIN_JUSTIFICATION:
            raise InvalidFile(
                f"{where}: waiver for {check} needs a justification"
                f" (at least {MIN_JUSTIFICATION} characters saying why the risk is accepted)"
            )
        expires = entry.get("expires")
        if isinstance(expires, str):
            try:
                expires = date.fromisoformat(expires)
            except ValueError:
                expires = None
        # A TOML datetime is a date subclass: an expiry is a day, not a moment.
        if not isinstance(expires, date) or type(expires) is not date:
            raise InvalidFile(
                f"{where}: waiver for {check} needs 'expires', a date such as 2026-09-30"
            )
        owner = entry.get("owner")
        if owner is not None and not isinstance(owner, str):
            raise InvalidFile(f"{where}: 'owner' must be a string")
        if check in seen:
            raise InvalidFile(f"{where}: a second waiver for {check} (the first is {seen[check]})")
        seen[check] = where
        waivers.append(Waiver(check, justification.strip(), expires, owner, where))
    return waivers


def load_waivers(path: Path, *, known_ids: Collection[str] | None = None) -> list[Waiver]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidFile(f"cannot read the waiver file {path}: {exc}") from None
    return parse_waivers(text, source=str(path), known_ids=known_ids)


def today_utc() -> date:
    return now().date()


def apply_waivers(
    results: Sequence[Result], waivers: Iterable[Waiver], *, today: date | None = None
) -> tuple[list[Result], list[str]]:
    """Results with unexpired waivers applied to failures, and notes for the report."""
    day = today or today_utc()
    by_check = {w.check: w for w in waivers}
    notes: list[str] = []
    applied: list[Result] = []
    for result in results:
        waiver = by_check.get(result.id)
        if waiver is None:
            applied.append(result)
            continue
        record = waiver.to_dict(today=day)
        if waiver.expired(day):
            notes.append(
                f"the waiver for {result.id} expired on {waiver.expires.isoformat()}"
                f" ({waiver.where}); it no longer applies"
            )
            applied.append(_with(result, waiver=record))
        elif result.status is Status.FAIL:
            applied.append(_with(result, status=Status.WAIVED, waiver=record))
        else:
            if result.status is Status.PASS:
                notes.append(f"the waiver for {result.id} is not needed: the check passes")
            applied.append(result)
    return applied, notes


def _with(result: Result, **changes: Any) -> Result:
    return replace(result, **changes)
