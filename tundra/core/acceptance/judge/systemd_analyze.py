"""systemd-analyze: the exposure rating of the service units tundra ships, by systemd's scale.

Run as ``systemd-analyze security --offline=yes --no-pager UNIT...`` over the same unit files
ST-03 scores (:func:`~tundra.core.acceptance.checks.storage.find_units`: ``deploy/systemd`` of
the installed tree and any installed ``tundra*.service``). Host-local like ST-03: it runs only
when the run is ``--local``. No network at all.

systemd prints, per unit, "Overall exposure level for UNIT: 2.1 OK" with its own rating word.
Its verdict: EXPOSED, UNSAFE or DANGEROUS fails ST-03; PERFECT, SAFE, OK and MEDIUM pass.
ST-03 holds each unit to an agreed ceiling (3.0 for tundra.service, 1.5 for the agent) and
refuses root, so systemd's own scale is laxer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Final

from tundra.core.acceptance.judge.base import Findings, Job, Scanner, ScannerError, Verdict

_OVERALL = re.compile(r"Overall exposure level for (\S+?):\s*([0-9]+(?:\.[0-9]+)?)\s+([A-Z]+)")
BAD_RATINGS: Final = frozenset({"EXPOSED", "UNSAFE", "DANGEROUS"})


def parse(output: str) -> list[tuple[str, float, str]]:
    """(unit, exposure, rating) for every unit in ``systemd-analyze security`` output."""
    return [(m.group(1), float(m.group(2)), m.group(3)) for m in _OVERALL.finditer(output)]


def interpret(output: str, units: Sequence[Path]) -> Findings:
    scores = parse(output)
    if not scores:
        raise ScannerError("systemd-analyze printed no exposure level")
    lines = tuple(f"{unit}: exposure {exposure} {rating}" for unit, exposure, rating in scores)
    missing = sorted({u.name for u in units} - {unit for unit, _, _ in scores})
    notes = (f"systemd-analyze scored no {', '.join(missing)}",) if missing else ()
    bad = any(rating in BAD_RATINGS for _, _, rating in scores)
    return Findings((Verdict("ST-03", not bad, lines),), (), notes)


class SystemdAnalyze(Scanner):
    name: ClassVar[str] = "systemd-analyze"
    executable: ClassVar[str] = "systemd-analyze"
    checks: ClassVar[frozenset[str]] = frozenset({"ST-03"})
    install_hint: ClassVar[str] = "apt-get install systemd (it ships systemd-analyze)"
    timeout: ClassVar[float] = 30.0

    def units(self) -> list[Path]:
        from tundra.core.acceptance.checks.storage import find_units

        return find_units()

    def not_applicable(self, job: Job) -> str | None:
        if not job.options.local:
            return "host-local like ST-03: run on the panel host with --local"
        if not self.units():
            return "no tundra unit here (neither deploy/systemd nor an installed tundra*.service)"
        return None

    def scan(self, job: Job, tool: str) -> Findings:
        units = self.units()
        argv = [tool, "security", "--offline=yes", "--no-pager", *map(str, units)]
        done = job.run(argv)
        found = interpret(done.stdout, units)
        version = None
        try:
            line = job.run([tool, "--version"]).stdout.splitlines()
            version = line[0].strip() if line else None
        except ScannerError:
            version = None
        return Findings(found.verdicts, found.unmapped, found.notes, version)
