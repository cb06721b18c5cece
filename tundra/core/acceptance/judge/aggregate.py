"""The judge's aggregator: run the installed scanners, compare each verdict with tundra's.

:func:`run_judge` takes a finished :class:`~tundra.core.acceptance.model.Report` and the run's
options, runs every scanner that can speak to a check of that report (concurrently, each in
its own time budget), and compares each scanner verdict with tundra's result for the check:

- ``agree``: both pass, or both fail.
- ``scanner_laxer``: the scanner passes what tundra fails. Expected: tundra's thresholds are
  stricter than every public scanner's (docs/acceptance.md, "Judge", lists the known ones).
- ``scanner_stricter``: the scanner fails what tundra passes. Needs a human look: either the
  scanner holds an opinion tundra does not share (documented) or tundra missed something.
- ``not_compared``: tundra skipped the check or could not decide.

A missing scanner is reported as ``not_installed`` with how to install it; one that crashes,
hangs or prints garbage is that scanner's ``error``. Nothing here raises into the run, and the
judge never changes tundra's results or exit code.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from tundra.core.acceptance.context import RunOptions, Target
from tundra.core.acceptance.judge.base import (
    Invocation,
    Job,
    Scanner,
    ScannerError,
    ScannerMissing,
    ScannerTimedOut,
    Verdict,
    scanner_env,
)
from tundra.core.acceptance.judge.drheader import Drheader
from tundra.core.acceptance.judge.nmap import Nmap
from tundra.core.acceptance.judge.observatory import Observatory
from tundra.core.acceptance.judge.sslyze import Sslyze
from tundra.core.acceptance.judge.systemd_analyze import SystemdAnalyze
from tundra.core.acceptance.model import CATALOGUE, Report, Result, Status

#: Every scanner the judge knows, in report order.
SCANNERS: Final[tuple[Scanner, ...]] = (
    Sslyze(),
    Observatory(),
    Drheader(),
    Nmap(),
    SystemdAnalyze(),
)
#: Evidence kept per comparison (lines, characters per line).
MAX_LINES: Final = 40
MAX_LINE: Final = 400
#: Slack on top of the longest scanner budget before an adapter stuck outside a subprocess is
#: abandoned (its thread finishes in the background).
GRACE_S: Final = 15.0


class Agreement(StrEnum):
    AGREE = "agree"
    SCANNER_LAXER = "scanner_laxer"
    SCANNER_STRICTER = "scanner_stricter"
    NOT_COMPARED = "not_compared"


EXPLANATIONS: Final[Mapping[Agreement, str]] = {
    Agreement.AGREE: "agree",
    Agreement.SCANNER_LAXER: (
        "disagree (scanner passes what tundra fails: scanner is laxer) — expected"
    ),
    Agreement.SCANNER_STRICTER: (
        "disagree (scanner fails what tundra passes) — needs a human look"
    ),
    Agreement.NOT_COMPARED: "not compared",
}


class ScannerStatus(StrEnum):
    RAN = "ran"
    NOT_INSTALLED = "not_installed"
    NOT_APPLICABLE = "not_applicable"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ScannerRun:
    name: str
    status: ScannerStatus
    summary: str
    checks: tuple[str, ...]
    duration_ms: int = 0
    version: str | None = None
    invocations: tuple[Invocation, ...] = ()
    unmapped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    verdicts: tuple[Verdict, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": str(self.status),
            "summary": self.summary,
            "checks": list(self.checks),
            "duration_ms": self.duration_ms,
            "version": self.version,
            "invocations": [i.to_dict() for i in self.invocations],
            "unmapped": [_clip(u) for u in self.unmapped[:MAX_LINES]],
            "notes": [_clip(n) for n in self.notes],
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    check: str
    scanner: str
    tundra: str | None
    tundra_summary: str | None
    scanner_verdict: str
    agreement: Agreement
    explanation: str
    evidence: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "scanner": self.scanner,
            "tundra": self.tundra,
            "tundra_summary": self.tundra_summary,
            "scanner_verdict": self.scanner_verdict,
            "agreement": str(self.agreement),
            "explanation": self.explanation,
            "evidence": [_clip(e) for e in self.evidence[:MAX_LINES]],
        }


@dataclass(frozen=True, slots=True)
class JudgeReport:
    scanners: tuple[ScannerRun, ...]
    comparisons: tuple[Comparison, ...]
    duration_ms: int

    def counts(self) -> dict[str, int]:
        counts = {str(a): 0 for a in Agreement}
        for comparison in self.comparisons:
            counts[str(comparison.agreement)] += 1
        return counts

    def needs_review(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.agreement is Agreement.SCANNER_STRICTER]

    def scanner(self, name: str) -> ScannerRun:
        return next(s for s in self.scanners if s.name == name)

    def comparison(self, check: str, scanner: str) -> Comparison | None:
        return next(
            (c for c in self.comparisons if c.check == check and c.scanner == scanner), None
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "duration_ms": self.duration_ms,
            "counts": self.counts(),
            "needs_review": [f"{c.check} ({c.scanner})" for c in self.needs_review()],
            "scanners": [s.to_dict() for s in self.scanners],
            "comparisons": [c.to_dict() for c in self.comparisons],
        }


def _clip(text: str) -> str:
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def compare(verdict: Verdict, scanner: str, result: Result | None) -> Comparison:
    """One scanner verdict against tundra's result for the same check."""
    said = "pass" if verdict.passed else "fail"
    if result is None:
        agreement, why = Agreement.NOT_COMPARED, "not compared: tundra did not run this check"
    elif result.status is Status.SKIP:
        agreement, why = (
            Agreement.NOT_COMPARED,
            f"not compared: tundra skipped it ({result.summary})",
        )
    elif result.status is Status.ERROR:
        agreement, why = Agreement.NOT_COMPARED, "not compared: tundra could not decide (error)"
    else:
        tundra_passed = result.status is Status.PASS
        if tundra_passed == verdict.passed:
            agreement = Agreement.AGREE
        elif tundra_passed:
            agreement = Agreement.SCANNER_STRICTER
        else:
            agreement = Agreement.SCANNER_LAXER
        why = EXPLANATIONS[agreement]
        if result.status is Status.WAIVED:
            why += " (tundra's failure is waived)"
    return Comparison(
        check=verdict.check,
        scanner=scanner,
        tundra=str(result.status) if result is not None else None,
        tundra_summary=result.summary if result is not None else None,
        scanner_verdict=said,
        agreement=agreement,
        explanation=why,
        evidence=verdict.evidence,
    )


def _order(check: str) -> int:
    order = list(CATALOGUE)
    return order.index(check) if check in CATALOGUE else len(order)


def _summary(notes: Sequence[str], compared: Sequence[Comparison]) -> str:
    if not compared:
        return "ran; no verdict on a check of this run" + (f" ({notes[0]})" if notes else "")
    parts = {a: sum(1 for c in compared if c.agreement is a) for a in Agreement}
    text = ", ".join(f"{n} {a.value.replace('_', ' ')}" for a, n in parts.items() if n)
    return f"ran; {len(compared)} verdict(s): {text}"


def _run_one(scanner: Scanner, tool: str, job: Job, checks: tuple[str, ...]) -> ScannerRun:
    """Run one scanner; never raises (every failure is the scanner's error)."""
    started = time.monotonic()

    def done(status: ScannerStatus, summary: str, **kw: Any) -> ScannerRun:
        return ScannerRun(
            name=scanner.name,
            status=status,
            summary=summary,
            checks=checks,
            duration_ms=round((time.monotonic() - started) * 1000),
            invocations=tuple(job.invocations),
            **kw,
        )

    try:
        reason = scanner.not_applicable(job)
        if reason is not None:
            return done(ScannerStatus.NOT_APPLICABLE, reason)
        findings = scanner.scan(job, tool)
    except ScannerTimedOut as exc:
        return done(ScannerStatus.ERROR, f"error: {exc}")
    except ScannerError as exc:
        return done(ScannerStatus.ERROR, f"error: {exc}")
    except Exception as exc:  # a bug in the adapter or a format it does not know
        return done(ScannerStatus.ERROR, f"error: the adapter crashed: {type(exc).__name__}: {exc}")
    wanted = set(checks)
    verdicts = tuple(v for v in findings.verdicts if v.check in wanted)
    return done(
        ScannerStatus.RAN,
        "ran",
        version=findings.version,
        unmapped=findings.unmapped,
        notes=findings.notes,
        verdicts=verdicts,
    )


def run_judge(
    report: Report,
    options: RunOptions,
    *,
    scanners: Sequence[Scanner] = SCANNERS,
    path: str | None = None,
    timeout: float | None = None,
) -> JudgeReport:
    """Run the installed scanners against ``report``'s target and compare with its results.

    ``path`` replaces ``PATH`` for finding and running the scanners (tests; ``None``: the
    environment's, plus the running interpreter's bin directory for pip-installed scanners).
    ``timeout`` caps every scanner's own budget. Never raises for a scanner's failure.
    """
    started = time.monotonic()
    target = Target.parse(options.url, http_port=options.http_port)
    results = report.by_id()
    env = scanner_env(path)
    runs: dict[str, ScannerRun] = {}
    pending: list[tuple[Scanner, str, tuple[str, ...]]] = []
    for scanner in scanners:
        checks = tuple(sorted(scanner.checks & set(results), key=_order))
        if not checks:
            runs[scanner.name] = ScannerRun(
                scanner.name,
                ScannerStatus.NOT_APPLICABLE,
                "none of its checks (" + ", ".join(sorted(scanner.checks)) + ") is in this run",
                checks,
            )
            continue
        try:
            tool = scanner.locate(env, search_interpreter_bin=path is None)
        except ScannerMissing:
            runs[scanner.name] = ScannerRun(
                scanner.name,
                ScannerStatus.NOT_INSTALLED,
                f"not installed ({scanner.executable} is not on PATH): {scanner.install_hint}",
                checks,
            )
            continue
        pending.append((scanner, tool, checks))

    with tempfile.TemporaryDirectory(prefix="tundra-judge-") as tmp:
        budgets = {s.name: min(s.timeout, timeout or s.timeout) for s, _, _ in pending}
        executor = ThreadPoolExecutor(
            max_workers=max(1, len(pending)), thread_name_prefix="acceptance-judge"
        )
        try:
            futures = {}
            for scanner, tool, checks in pending:
                workdir = Path(tmp) / scanner.name
                workdir.mkdir()
                job = Job(
                    target=target,
                    options=options,
                    results=results,
                    env=env,
                    deadline=time.monotonic() + budgets[scanner.name],
                    workdir=workdir,
                )
                futures[executor.submit(_run_one, scanner, tool, job, checks)] = (scanner, checks)
            longest = max(budgets.values(), default=0.0)
            finished, unfinished = wait(futures, timeout=longest + GRACE_S)
            for future in finished:
                run = future.result()
                runs[run.name] = run
            for future in unfinished:
                scanner, checks = futures[future]
                runs[scanner.name] = ScannerRun(
                    scanner.name,
                    ScannerStatus.ERROR,
                    f"error: did not finish within {budgets[scanner.name] + GRACE_S:.0f}s",
                    checks,
                )
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    comparisons: list[Comparison] = []
    ordered: list[ScannerRun] = []
    for scanner in scanners:
        run = runs[scanner.name]
        compared = [compare(v, run.name, results.get(v.check)) for v in run.verdicts]
        if run.status is ScannerStatus.RAN:
            run = replace(run, summary=_summary(run.notes, compared))
        ordered.append(run)
        comparisons.extend(compared)
    names = [s.name for s in scanners]
    comparisons.sort(key=lambda c: (_order(c.check), c.check, names.index(c.scanner)))
    return JudgeReport(
        scanners=tuple(ordered),
        comparisons=tuple(comparisons),
        duration_ms=round((time.monotonic() - started) * 1000),
    )
