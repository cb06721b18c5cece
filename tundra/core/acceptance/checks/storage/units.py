"""ST-03: systemd unit scores: the units tundra ships or has installed, their agreed
thresholds (:data:`UNIT_POLICIES`), ``systemd-analyze`` exposure and who each unit runs as.

Decision (to be repeated in docs/acceptance.md):

- **Unit scores** (ST-03) come from ``systemd-analyze security --offline=yes``; the thresholds are
  the data :data:`UNIT_POLICIES`. "Runs as root" is read from the unit (``User=``/``DynamicUser=``)
  and from a ``tundra serve`` started by a tundra unit (its cgroup); a ``tundra serve`` started by
  hand as root is reported, not failed, since no unit asked for it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.storage.service import serving
from tundra.core.acceptance.model import (
    Outcome,
    Section,
    Severity,
    Status,
    errored,
    failed,
    passed,
    skipped,
)
from tundra.core.acceptance.registry import check

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext

#: Where installed units live (``tundra*.service`` in each).
SYSTEM_UNIT_DIRS: Final = (
    Path("/etc/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)


@dataclass(frozen=True, slots=True)
class UnitPolicy:
    """The agreed limits for one unit: ``systemd-analyze`` exposure and whether root is needed."""

    max_exposure: float
    root_allowed: bool
    why: str


#: The agreed thresholds (ST-03), one entry per unit tundra ships. Units not listed get
#: :data:`DEFAULT_UNIT_POLICY`.
UNIT_POLICIES: Final[Mapping[str, UnitPolicy]] = {
    "tundra.service": UnitPolicy(
        3.0, False, "the control plane: the issue's ceiling; it keeps only CAP_NET_BIND_SERVICE"
    ),
    "tundra-agent.service": UnitPolicy(
        1.5,
        False,
        "the agent as shipped today (own user, no capabilities); workload provisioning will "
        "need a deliberate change here, as in tests/unit/deploy/test_systemd_units.py",
    ),
}
DEFAULT_UNIT_POLICY: Final = UnitPolicy(3.0, False, "any other unit tundra ships")


def shipped_unit_dir() -> Path:
    """``deploy/systemd`` of the tree this tundra is installed from."""
    import tundra

    return Path(tundra.__file__).resolve().parent.parent / "deploy" / "systemd"


def find_units(
    *, shipped: Path | None = None, system_dirs: Sequence[Path] = SYSTEM_UNIT_DIRS
) -> list[Path]:
    """Every unit tundra ships (deploy/systemd) or has installed (``tundra*.service``)."""
    shipped = shipped_unit_dir() if shipped is None else shipped
    found = sorted(shipped.glob("*.service")) if shipped.is_dir() else []
    for directory in system_dirs:
        if directory.is_dir():
            found.extend(sorted(directory.glob("tundra*.service")))
    return list(dict.fromkeys(found))


def unit_user(text: str) -> tuple[str | None, bool]:
    """``User=`` and ``DynamicUser=`` of a unit's [Service] section (the last value wins)."""
    user: str | None = None
    dynamic = False
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        key, sep, value = line.partition("=")
        if section != "[Service]" or not sep:
            continue
        if key.strip() == "User":
            user = value.strip() or None
        elif key.strip() == "DynamicUser":
            dynamic = value.strip().lower() in ("yes", "true", "1", "on")
    return user, dynamic


_OVERALL = re.compile(r"Overall exposure level for .*?:\s*([0-9]+(?:\.[0-9]+)?)\s+(\S+)")


def analyze_unit(path: Path, *, timeout: float = 20.0) -> dict[str, Any]:
    """``systemd-analyze security --offline=yes`` of one unit file: exposure and worst items."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise FileNotFoundError("systemd-analyze is not installed")
    argv = [tool, "security", "--offline=yes", "--no-pager", str(path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    match = _OVERALL.search(done.stdout)
    result: dict[str, Any] = {
        "command": " ".join(argv),
        "exposure": float(match.group(1)) if match else None,
        "rating": match.group(2) if match else None,
        "warnings": [line for line in done.stderr.splitlines() if line.strip()][:10],
    }
    if match is None:
        return result
    detail = subprocess.run(
        [*argv[:-1], "--json=short", str(path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    with contextlib.suppress(ValueError):
        import json

        items = json.loads(detail.stdout)
        worst = sorted(
            (i for i in items if i.get("exposure") not in (None, "0.0") and i.get("set") is False),
            key=lambda i: -float(i["exposure"]),
        )
        result["worst"] = [f"{i['name']} ({i['exposure']})" for i in worst[:8]]
    return result


def score_units(
    units: Sequence[Path], *, policies: Mapping[str, UnitPolicy] = UNIT_POLICIES
) -> Outcome:
    """ST-03's rule over unit files: exposure at most the policy's, no root unless allowed."""
    problems: list[str] = []
    unknown: list[str] = []
    scored = []
    for unit in units:
        policy = policies.get(unit.name, DEFAULT_UNIT_POLICY)
        entry: dict[str, Any] = {
            "unit": str(unit),
            "max_exposure": policy.max_exposure,
            "root_allowed": policy.root_allowed,
            "policy": policy.why,
        }
        try:
            entry.update(analyze_unit(unit))
            user, dynamic = unit_user(unit.read_text(errors="replace"))
        except (OSError, subprocess.TimeoutExpired) as exc:
            unknown.append(f"{unit}: {exc}")
            entry["error"] = str(exc)
            scored.append(entry)
            continue
        as_root = not dynamic and user in (None, "root", "0")
        entry["user"] = "DynamicUser" if dynamic else (user or "root (no User=)")
        exposure = entry["exposure"]
        if exposure is None:
            unknown.append(f"{unit.name}: systemd-analyze gave no exposure")
        elif exposure > policy.max_exposure:
            problems.append(f"{unit.name} exposure {exposure} > {policy.max_exposure}")
        if as_root and not policy.root_allowed:
            problems.append(f"{unit.name} runs as root")
        scored.append(entry)
    evidence: dict[str, Any] = {"units": scored, "problems": problems}
    if problems:
        return failed("; ".join(problems), **evidence)
    if unknown:
        return errored("could not score: " + "; ".join(unknown), **evidence)
    return passed(
        f"{len(scored)} unit(s) within their exposure thresholds, root only where required",
        **evidence,
    )


@check(
    "ST-03",
    "Service units: systemd-analyze exposure under threshold, no needless root",
    section=Section.STORAGE,
    severity=Severity.MEDIUM,
    timeout=30.0,
    needs=("services",),
)
def service_units(ctx: RunContext) -> Outcome:
    units = find_units()
    processes = serving(ctx)
    if not units:
        return skipped(
            "no tundra unit here: neither deploy/systemd in the installed tree nor an installed "
            "tundra*.service",
            looked_in=[str(shipped_unit_dir()), *map(str, SYSTEM_UNIT_DIRS)],
        )
    if shutil.which("systemd-analyze") is None:
        return errored("systemd-analyze is not installed", units=[str(u) for u in units])
    outcome = score_units(units)
    root_by_unit = [p for p in processes if p.uid == 0 and p.unit is not None]
    for process in root_by_unit:
        policy = UNIT_POLICIES.get(process.unit or "", DEFAULT_UNIT_POLICY)
        if not policy.root_allowed:
            message = f"tundra serve (pid {process.pid}) runs as root under {process.unit}"
            outcome = failed(
                message if outcome.status is not Status.FAIL else f"{outcome.summary}; {message}",
                **outcome.evidence,
            )
    outcome.evidence["serve_processes"] = [p.evidence() for p in processes]
    if any(p.uid == 0 and p.unit is None for p in processes):
        outcome.evidence["note"] = "tundra serve runs as root outside a unit (started by hand)"
    return outcome
