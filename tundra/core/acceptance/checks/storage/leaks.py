"""ST-02: key material absent from the service environment, units, logs and config: the
encodings searched for, the places searched, and the search itself.

Decision (to be repeated in docs/acceptance.md):

- **Leak search** (ST-02) looks for the key and the whole key file as raw bytes, hex (both cases),
  base64, base64url and base32, in: the environment and command line of every ``tundra serve``
  of this home, the unit files tundra ships or has installed (drop-ins and ``EnvironmentFile=``
  files too), tundra's logs (``$TUNDRA_HOME/**/*.log``, ``$TUNDRA_HOME/logs``,
  ``/var/log/tundra``), the config files (``/etc/tundra``, ``$TUNDRA_HOME/tundra.toml``) and any
  other file in ``$TUNDRA_HOME``. A world-readable config file with a password in a URL is a leak
  too. The journal is not searched (it needs a running systemd); the evidence says so.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tundra.core.acceptance.checks.storage.master_key import read_key_bytes
from tundra.core.acceptance.checks.storage.service import serving
from tundra.core.acceptance.checks.storage.units import find_units
from tundra.core.acceptance.model import Outcome, Section, Severity, errored, failed, passed
from tundra.core.acceptance.registry import check
from tundra.core.crypto import masterkey
from tundra.core.settings import SYSTEM_CONFIG

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext

#: Most bytes of one file the leak search reads (logs can be large; the evidence says when cut).
MAX_SCAN_BYTES: Final = 32 * 1024 * 1024
LOG_DIRS: Final = (Path("/var/log/tundra"),)


def key_forms(file_bytes: bytes) -> dict[str, bytes]:
    """Every encoding of the key (and of the whole key file) the leak search looks for."""
    forms: dict[str, bytes] = {}
    for label, raw in (("key", file_bytes[: masterkey.KEY_BYTES]), ("key file", file_bytes)):
        forms[f"{label} (raw bytes)"] = raw
        forms[f"{label} (hex)"] = raw.hex().encode()
        forms[f"{label} (HEX)"] = raw.hex().upper().encode()
        # Without padding: the unpadded text is what appears in every padded or unpadded form.
        forms[f"{label} (base64)"] = base64.b64encode(raw).rstrip(b"=")
        forms[f"{label} (base64url)"] = base64.urlsafe_b64encode(raw).rstrip(b"=")
        forms[f"{label} (base32)"] = base64.b32encode(raw).rstrip(b"=")
    return forms


_URL_PASSWORD = re.compile(rb"[a-z][a-z0-9+.-]*://[^/\s:@\"']*:[^@\s\"'/]+@", re.IGNORECASE)


@dataclass
class LeakSource:
    """One place to search: a file, or bytes already read (a process environment)."""

    kind: str
    name: str
    path: Path | None = None
    data: bytes | None = None
    #: A config file: a password in a URL is a leak too when it is world-readable.
    config: bool = False


@dataclass
class LeakReport:
    searched: list[dict[str, Any]] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def find_leaks(key_file_bytes: bytes, sources: Iterable[LeakSource]) -> LeakReport:
    """Search ``sources`` for any form of the key; never puts key material in the report."""
    forms = key_forms(key_file_bytes)
    report = LeakReport()
    for source in sources:
        entry: dict[str, Any] = {"kind": source.kind, "name": source.name}
        data = source.data
        world_readable = False
        if data is None and source.path is not None:
            try:
                info = os.stat(source.path)
                world_readable = bool(info.st_mode & stat.S_IROTH)
                with open(source.path, "rb") as handle:
                    data = handle.read(MAX_SCAN_BYTES + 1)
            except OSError as exc:
                report.unreadable.append(f"{source.name}: {exc.strerror or exc}")
                entry["error"] = exc.strerror or str(exc)
                report.searched.append(entry)
                continue
            entry["world_readable"] = world_readable
            if len(data) > MAX_SCAN_BYTES:
                data = data[:MAX_SCAN_BYTES]
                entry["truncated_at"] = MAX_SCAN_BYTES
        data = data or b""
        entry["bytes"] = len(data)
        hits = [name for name, form in forms.items() if form and form in data]
        if hits:
            entry["found"] = hits
            report.leaks.append(f"{source.kind} {source.name} contains the master key ({hits[0]})")
        if source.config and world_readable and _URL_PASSWORD.search(data):
            entry["url_password"] = True
            report.leaks.append(f"world-readable {source.name} has a password in a URL")
        report.searched.append(entry)
    return report


def _files_under(root: Path, *, pattern: str = "*", limit: int = 2000) -> Iterator[Path]:
    if not root.is_dir():
        return
    for count, path in enumerate(sorted(root.rglob(pattern))):
        if count >= limit:
            return
        if path.is_file() and not path.is_symlink():
            yield path


def leak_sources(ctx: RunContext, units: Sequence[Path]) -> list[LeakSource]:
    """Where ST-02 searches on this host (see the module docstring)."""
    settings = ctx.services.settings
    home = settings.home
    sources: list[LeakSource] = []
    for process in serving(ctx):
        pid_dir = Path("/proc", str(process.pid))
        for part in ("environ", "cmdline"):
            name = f"tundra serve[{process.pid}] {part}"
            sources.append(LeakSource(f"process {part}", name, pid_dir / part))
    for unit in units:
        sources.append(LeakSource("unit", str(unit), unit, config=True))
        for extra in sorted(unit.parent.glob(unit.name + ".d/*.conf")):
            sources.append(LeakSource("unit drop-in", str(extra), extra, config=True))
        for env_file in _environment_files(unit):
            if env_file.exists():  # "-" marks an optional file; a missing one cannot leak
                sources.append(LeakSource("EnvironmentFile", str(env_file), env_file, config=True))
    configs = {SYSTEM_CONFIG.parent: "*", home: "tundra.toml"}
    for directory, pattern in configs.items():
        for path in _files_under(directory, pattern=pattern, limit=200):
            if directory == home and path.parent != home:
                continue
            sources.append(LeakSource("config", str(path), path, config=True))
    logs = [*_files_under(home, pattern="*.log"), *_files_under(home / "logs")]
    for directory in LOG_DIRS:
        logs.extend(_files_under(directory))
    sources.extend(LeakSource("log", str(p), p) for p in dict.fromkeys(logs))
    keys = {masterkey.KeyPaths(settings.master_key_path), masterkey.KeyPaths(home / "master.key")}
    own = {str(p) for k in keys for p in (k.key, k.new, k.prev)}
    seen = {s.name for s in sources}
    for path in _files_under(home, limit=2000):
        if str(path) not in own and str(path) not in seen:
            sources.append(LeakSource("home file", str(path), path))
    return sources


def _environment_files(unit: Path) -> list[Path]:
    found = []
    with contextlib.suppress(OSError):
        for line in unit.read_text(errors="replace").splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.strip() == "EnvironmentFile":
                found.append(Path(value.strip().lstrip("-")))
    return found


@check(
    "ST-02",
    "Key material absent from the service environment, units, logs and config",
    section=Section.STORAGE,
    severity=Severity.CRITICAL,
    timeout=30.0,
    needs=("services",),
)
def secrets_not_leaked(ctx: RunContext) -> Outcome:
    path = ctx.services.settings.master_key_path
    try:
        data = read_key_bytes(path)
    except OSError as exc:
        return errored(
            f"cannot read {path} to know what to look for ({exc.strerror or exc})",
            hint="run as root or as the service user",
        )
    processes = serving(ctx)
    report = find_leaks(data, leak_sources(ctx, find_units()))
    evidence: dict[str, Any] = {
        "searched": report.searched,
        "unreadable": report.unreadable,
        "serve_processes": [p.evidence() for p in processes],
        "not_searched": ["the systemd journal"],
        "forms": sorted(key_forms(data)),
    }
    if not processes:
        evidence["note"] = "no running tundra serve of this home: no process environment searched"
    if report.leaks:
        return failed("; ".join(report.leaks), **evidence, leaks=report.leaks)
    unreadable_processes = [u for u in report.unreadable if u.startswith("tundra serve[")]
    if unreadable_processes:
        return errored("cannot read the environment of tundra serve: run as root", **evidence)
    return passed(f"no key material in {len(report.searched)} places searched", **evidence)
