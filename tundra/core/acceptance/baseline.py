"""Comparing a run with a previous JSON report: which problems are new, fixed or unchanged.

A *problem* is a result that is ``fail`` or ``error``; ``waived``, ``pass`` and ``skip`` are not.
The comparison is informational: it never changes the exit code (accepting a known failure is
what a waiver, with its justification and expiry, is for).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tundra.core.acceptance.model import Result, Status
from tundra.core.errors import InvalidFile

PROBLEMS = frozenset({Status.FAIL.value, Status.ERROR.value})


@dataclass(frozen=True, slots=True)
class Baseline:
    source: str
    started_at: str | None
    #: check id -> status in the baseline report.
    statuses: dict[str, str]


@dataclass(frozen=True, slots=True)
class BaselineDiff:
    source: str
    baseline_started_at: str | None
    new: tuple[str, ...]
    fixed: tuple[str, ...]
    unchanged: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "baseline_started_at": self.baseline_started_at,
            "new": list(self.new),
            "fixed": list(self.fixed),
            "unchanged": list(self.unchanged),
        }


def parse_baseline(data: Any, *, source: str = "baseline") -> Baseline:
    """A previous report (the ``--format json`` output), read only as far as the diff needs."""
    if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
        raise InvalidFile(
            f"{source} is not a tundra acceptance JSON report (no 'checks' list)",
            hint="write one with `tundra acceptance run --format json > report.json`",
        )
    statuses: dict[str, str] = {}
    for index, item in enumerate(data["checks"], start=1):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("id"), str)
            or item.get("status") not in {s.value for s in Status}
        ):
            raise InvalidFile(f"{source}: check entry {index} has no valid id and status")
        statuses[item["id"]] = item["status"]
    started = data.get("started_at")
    return Baseline(source, started if isinstance(started, str) else None, statuses)


def load_baseline(path: Path) -> Baseline:
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidFile(f"cannot read the baseline {path}: {exc}") from None
    except ValueError as exc:
        raise InvalidFile(f"the baseline {path} is not JSON: {exc}") from None
    return parse_baseline(data, source=str(path))


def compare(baseline: Baseline, results: Iterable[Result]) -> BaselineDiff:
    """New: a problem now, not in the baseline. Fixed: a problem then, passing (or waived) now.
    Unchanged: a problem in both. A check absent from this run is neither fixed nor new."""
    new: list[str] = []
    fixed: list[str] = []
    unchanged: list[str] = []
    for result in results:
        before = baseline.statuses.get(result.id)
        now_problem = result.status.value in PROBLEMS
        was_problem = before in PROBLEMS
        if now_problem and was_problem:
            unchanged.append(result.id)
        elif now_problem:
            new.append(result.id)
        elif was_problem and result.status is not Status.SKIP:
            fixed.append(result.id)
    return BaselineDiff(
        baseline.source, baseline.started_at, tuple(new), tuple(fixed), tuple(unchanged)
    )
