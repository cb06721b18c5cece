"""``tundra acceptance run --judge``: the public scanners' view next to tundra's.

One module per scanner turns that scanner's output into verdicts on catalogue checks
(:mod:`.sslyze`, :mod:`.observatory`, :mod:`.drheader`, :mod:`.nmap`,
:mod:`.systemd_analyze`); :mod:`.base` runs their commands with time limits; :mod:`.aggregate`
runs the installed ones and compares each verdict with tundra's result (:func:`run_judge`).

Example::

    report = run(options)
    verdict = run_judge(report, options)
    for comparison in verdict.needs_review():
        print(comparison.check, comparison.scanner, comparison.evidence[0])
"""

from __future__ import annotations

from tundra.core.acceptance.judge.aggregate import (
    SCANNERS,
    Agreement,
    Comparison,
    JudgeReport,
    ScannerRun,
    ScannerStatus,
    run_judge,
)

__all__ = [
    "SCANNERS",
    "Agreement",
    "Comparison",
    "JudgeReport",
    "ScannerRun",
    "ScannerStatus",
    "run_judge",
]
