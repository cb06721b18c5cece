"""ST-04: data directories and config not world-readable: $TUNDRA_HOME and everything under
it, the system config, data the settings place outside the home, PostgreSQL's data directory.

Decision (to be repeated in docs/acceptance.md):

- **World-readable** (ST-04) means the "other" read bit; directories must also not be group- or
  world-writable. Public material (``*.crt``, ``*.vkey``) may be world-readable.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.model import Outcome, Section, Severity, failed, passed
from tundra.core.acceptance.registry import check
from tundra.core.settings import SYSTEM_CONFIG

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext
    from tundra.core.settings import Settings

#: File names in $TUNDRA_HOME that may be world-readable: certificates and verification keys.
#: Public by design: certificates, the checkpoint verifier key, signed checkpoint notes.
PUBLIC_SUFFIXES: Final = (".crt", ".vkey", ".note")


def _mode_problem(path: Path, info: os.stat_result) -> str | None:
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISDIR(info.st_mode):
        if mode & 0o007:
            return f"{path} (directory, {mode:04o}) is open to every user"
        if mode & 0o020:
            return f"{path} (directory, {mode:04o}) is group-writable"
        return None
    if mode & 0o004 and not path.name.endswith(PUBLIC_SUFFIXES):
        return f"{path} ({mode:04o}) is world-readable"
    if mode & 0o022:
        return f"{path} ({mode:04o}) is group/world-writable"
    return None


def inspect_data_dirs(
    home: Path, *, extra: Sequence[Path] = (), limit: int = 5000
) -> tuple[list[str], list[dict[str, Any]]]:
    """Problems with $TUNDRA_HOME and everything under it, and with ``extra`` paths."""
    problems: list[str] = []
    looked: list[dict[str, Any]] = []

    def look(path: Path) -> os.stat_result | None:
        try:
            info = os.stat(path)  # a link to the database is judged by what it points at
        except OSError as exc:
            looked.append({"path": str(path), "error": exc.strerror or str(exc)})
            return None
        looked.append({"path": str(path), "mode": f"{stat.S_IMODE(info.st_mode):04o}"})
        problem = _mode_problem(path, info)
        if problem:
            problems.append(problem)
        return info

    if look(home) is not None and home.is_dir():
        for count, path in enumerate(sorted(home.rglob("*"))):
            if count >= limit:
                looked.append({"path": str(home), "note": f"stopped after {limit} entries"})
                break
            look(path)
    for path in extra:
        look(path)
    return problems, looked


@check(
    "ST-04",
    "Data directories and config not world-readable",
    section=Section.STORAGE,
    severity=Severity.HIGH,
    timeout=20.0,
    needs=("services",),
)
def data_directories(ctx: RunContext) -> Outcome:
    settings = ctx.services.settings
    extra = [p for p in (SYSTEM_CONFIG,) if p.exists()]
    evidence: dict[str, Any] = {"home": str(settings.home)}
    extra += _outside_home(settings)
    from tundra.core.acceptance.checks.network import pg_facts_for

    pg = pg_facts_for(ctx)
    if pg is not None:
        evidence["postgresql_data_directory"] = pg.data_directory
        if pg.data_directory and Path(pg.data_directory).exists():
            extra.append(Path(pg.data_directory))
        elif pg.data_directory is None:
            evidence["postgresql_note"] = pg.errors.get(
                "data_directory", "PostgreSQL did not say where its data is"
            )
    problems, looked = inspect_data_dirs(settings.home, extra=extra)
    evidence.update(looked=looked, problems=problems)
    if problems:
        return failed("; ".join(problems[:5]) + (" …" if len(problems) > 5 else ""), **evidence)
    return passed(f"{len(looked)} paths: none world-readable", **evidence)


def _outside_home(settings: Settings) -> list[Path]:
    """Data the settings place outside $TUNDRA_HOME (the operator's TLS key and certificate)."""
    found = []
    for name in ("tls_key_file", "tls_cert_file"):
        value = str(getattr(settings, name))
        if value and not Path(value).resolve().is_relative_to(settings.home.resolve()):
            found.append(Path(value))
    return found
