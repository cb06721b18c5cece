"""The data of an acceptance run: sections, severities, statuses, outcomes, results, reports.

A check returns an :class:`Outcome` (status, one-line summary, JSON-able evidence); the runner
wraps it into a :class:`Result` with the check's metadata and timing, and collects the results
into a :class:`Report`, which also owns the exit-code rule of the output contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Section(StrEnum):
    TRANSPORT = "transport"
    HEADERS = "headers"
    IDENTITY = "identity"
    STORAGE = "storage"
    NETWORK = "network"
    AGENT = "agent"
    AUDIT = "audit"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        """Higher is more severe; ``--fail-on S`` counts failures whose rank is >= S's rank."""
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.CRITICAL: 4,
    Severity.HIGH: 3,
    Severity.MEDIUM: 2,
    Severity.LOW: 1,
    Severity.INFO: 0,
}


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    FAIL = "fail"
    ERROR = "error"  # could not evaluate (also: inconclusive, timed out, crashed)
    SKIP = "skip"  # not applicable here, with the reason
    WAIVED = "waived"  # failed, but an unexpired waiver covers it


#: The catalogue of ../shared/design/ACCEPTANCE.md: every check id and its section. Binding:
#: ids are stable across releases because waivers and baselines refer to them.
CATALOGUE: Mapping[str, Section] = {
    **{f"TR-0{n}": Section.TRANSPORT for n in range(1, 7)},
    **{f"HD-0{n}": Section.HEADERS for n in range(1, 7)},
    **{f"ID-0{n}": Section.IDENTITY for n in range(1, 9)},
    **{f"ST-0{n}": Section.STORAGE for n in range(1, 5)},
    **{f"NX-0{n}": Section.NETWORK for n in range(1, 4)},
    **{f"AG-0{n}": Section.AGENT for n in range(1, 7)},
    "AU-01": Section.AUDIT,
    "AU-02": Section.AUDIT,
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a check function returns. ``evidence`` must be JSON-able; every outcome has some."""

    status: Status
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)


def passed(summary: str, /, **evidence: Any) -> Outcome:
    return Outcome(Status.PASS, summary, evidence)


def failed(summary: str, /, **evidence: Any) -> Outcome:
    return Outcome(Status.FAIL, summary, evidence)


def skipped(reason: str, /, **evidence: Any) -> Outcome:
    return Outcome(Status.SKIP, reason, evidence)


def errored(summary: str, /, **evidence: Any) -> Outcome:
    """The check could not decide (unreachable target, unexpected answer, inconclusive)."""
    return Outcome(Status.ERROR, summary, evidence)


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    title: str
    section: Section
    severity: Severity
    status: Status
    summary: str
    evidence: dict[str, Any]
    duration_ms: int
    #: The waiver that applied (status waived) or that had expired (status fail), else None.
    waiver: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "section": str(self.section),
            "severity": str(self.severity),
            "status": str(self.status),
            "summary": self.summary,
            "evidence": self.evidence,
            "duration_ms": self.duration_ms,
            "waiver": self.waiver,
        }


class ExitCode:
    """The exit codes of the output contract (the CLI maps USAGE to its own ExitStatus)."""

    OK = 0
    FAILED = 1
    ERRORED = 2
    USAGE = 64


@dataclass(frozen=True, slots=True)
class Report:
    tool_version: str
    target: str
    started_at: str
    finished_at: str
    options: dict[str, Any]
    results: tuple[Result, ...]
    fail_on: Severity = Severity.LOW
    #: Problems with the run itself (e.g. expired waivers), shown next to the results.
    notes: tuple[str, ...] = ()
    #: The comparison with ``--baseline`` (see :mod:`.baseline`), if one was given.
    baseline: dict[str, Any] | None = None

    def counts(self) -> dict[str, int]:
        counts = {str(status): 0 for status in Status}
        for result in self.results:
            counts[str(result.status)] += 1
        return counts

    def failures(self) -> list[Result]:
        """Failures that count against ``fail_on``."""
        return [
            r
            for r in self.results
            if r.status is Status.FAIL and r.severity.rank >= self.fail_on.rank
        ]

    @property
    def exit_code(self) -> int:
        """0 all pass (waived and skipped allowed), 1 any counted failure, 2 errors only."""
        if self.failures():
            return ExitCode.FAILED
        if any(r.status is Status.ERROR for r in self.results):
            return ExitCode.ERRORED
        return ExitCode.OK

    def by_id(self) -> dict[str, Result]:
        return {r.id: r for r in self.results}
