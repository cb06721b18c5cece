"""Acceptance checks of the storage section (host-local): ST-01 … ST-04.

Each check is a thin wrapper around a function that takes explicit paths and parameters
(:func:`inspect_master_key`, :func:`find_leaks`, :func:`score_units`, :func:`inspect_data_dirs`),
so the rules are exercised directly by the tests and by the checks alike.

Decisions (to be repeated in docs/acceptance.md):

- **The service user** (ST-01's owner) is, in this order: the ``service_user`` run option (a name
  or uid) when given; else the effective user of a running ``tundra serve`` of this home (its
  ``TUNDRA_HOME``, or the default home it would resolve); else the owner of ``$TUNDRA_HOME``,
  which ``tundra init`` creates as the service user. The evidence says which source decided.
- **The unprivileged probe** runs ``/bin/sh`` as ``nobody`` (``subprocess`` drops the groups, gid
  and uid between fork and exec, which is safe in a threaded runner) and lets the shell
  ``open()`` the key: a real open, so ACLs and every directory on the path count. Only root can
  switch users; otherwise that sub-probe is skipped with the reason in the evidence.
- **Leak search** (ST-02) looks for the key and the whole key file as raw bytes, hex (both cases),
  base64, base64url and base32, in: the environment and command line of every ``tundra serve``
  of this home, the unit files tundra ships or has installed (drop-ins and ``EnvironmentFile=``
  files too), tundra's logs (``$TUNDRA_HOME/**/*.log``, ``$TUNDRA_HOME/logs``,
  ``/var/log/tundra``), the config files (``/etc/tundra``, ``$TUNDRA_HOME/tundra.toml``) and any
  other file in ``$TUNDRA_HOME``. A world-readable config file with a password in a URL is a leak
  too. The journal is not searched (it needs a running systemd); the evidence says so.
- **Unit scores** (ST-03) come from ``systemd-analyze security --offline=yes``; the thresholds are
  the data :data:`UNIT_POLICIES`. "Runs as root" is read from the unit (``User=``/``DynamicUser=``)
  and from a ``tundra serve`` started by a tundra unit (its cgroup); a ``tundra serve`` started by
  hand as root is reported, not failed, since no unit asked for it.
- **World-readable** (ST-04) means the "other" read bit; directories must also not be group- or
  world-writable. Public material (``*.crt``, ``*.vkey``) may be world-readable.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import pwd
import re
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

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
from tundra.core.crypto import masterkey
from tundra.core.errors import KeyMaterialError
from tundra.core.settings import SYSTEM_CONFIG

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext
    from tundra.core.settings import Settings

ACL_XATTR: Final = "system.posix_acl_access"
PROBE_USER: Final = "nobody"
#: Most bytes of one file the leak search reads (logs can be large; the evidence says when cut).
MAX_SCAN_BYTES: Final = 32 * 1024 * 1024
#: Where installed units live (``tundra*.service`` in each).
SYSTEM_UNIT_DIRS: Final = (
    Path("/etc/systemd/system"),
    Path("/usr/local/lib/systemd/system"),
    Path("/lib/systemd/system"),
    Path("/usr/lib/systemd/system"),
)
LOG_DIRS: Final = (Path("/var/log/tundra"),)
#: File names in $TUNDRA_HOME that may be world-readable: certificates and verification keys.
#: Public by design: certificates, the checkpoint verifier key, signed checkpoint notes.
PUBLIC_SUFFIXES: Final = (".crt", ".vkey", ".note")


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


# --------------------------------------------------------------------------------------------
# The running control plane and its service user


@dataclass(frozen=True, slots=True)
class ServeProcess:
    """A running ``tundra serve`` (of any home)."""

    pid: int
    uid: int
    argv: tuple[str, ...]
    #: The home it serves, resolved (None when its environment is not readable).
    home: str | None
    #: The tundra unit whose cgroup it runs in, if any.
    unit: str | None

    def evidence(self) -> dict[str, Any]:
        return {"pid": self.pid, "uid": self.uid, "home": self.home, "unit": self.unit}


def _is_tundra_serve(argv: Sequence[str]) -> bool:
    if "serve" not in argv:
        return False
    before = argv[: argv.index("serve")]
    return any(Path(arg).name == "tundra" for arg in before)


def _read_environ(pid_dir: Path) -> dict[str, str] | None:
    try:
        raw = (pid_dir / "environ").read_bytes()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _process_home(env: Mapping[str, str], uid: int, cwd: str) -> str:
    """The home ``load_settings`` resolves in a process with ``env`` (settings.py's order)."""
    home = env.get("TUNDRA_HOME")
    if not home:
        with contextlib.suppress(Exception):
            import tomllib

            home = str(tomllib.loads(SYSTEM_CONFIG.read_text()).get("home") or "")
    if not home:
        if uid == 0 and Path("/var/lib/tundra").is_dir():
            home = "/var/lib/tundra"
        else:
            data = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME", "/")) / ".local/share")
            home = str(Path(data) / "tundra")
    path = Path(home).expanduser()
    return str(Path(cwd, path).resolve() if not path.is_absolute() else path.resolve())


def _unit_of(pid_dir: Path) -> str | None:
    with contextlib.suppress(OSError):
        for line in (pid_dir / "cgroup").read_text().splitlines():
            for part in line.rsplit(":", 1)[-1].split("/"):
                if part.startswith("tundra") and part.endswith(".service"):
                    return part
    return None


def serve_processes(*, proc: Path = Path("/proc")) -> list[ServeProcess]:
    """Every ``tundra serve`` on this host that we can see."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = tuple(
                a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0")
            )
            status = (entry / "status").read_text()
        except OSError:
            continue
        if not _is_tundra_serve(argv):
            continue
        match = re.search(r"^Uid:\s+\d+\s+(\d+)", status, re.MULTILINE)
        uid = int(match.group(1)) if match else -1
        env = _read_environ(entry)
        home = None
        if env is not None:
            cwd = "/"
            with contextlib.suppress(OSError):
                cwd = os.readlink(entry / "cwd")
            home = _process_home(env, uid, cwd)
        found.append(ServeProcess(int(entry.name), uid, argv, home, _unit_of(entry)))
    return found


def serving(ctx: RunContext) -> list[ServeProcess]:
    """The ``tundra serve`` processes of this run's home."""
    home = str(ctx.services.settings.home.resolve())
    every = ctx.memo("storage:serve-processes", serve_processes)
    return [p for p in every if p.home == home]


@dataclass(frozen=True, slots=True)
class ServiceUser:
    uid: int
    name: str
    source: str

    def evidence(self) -> dict[str, Any]:
        return {"uid": self.uid, "name": self.name, "source": self.source}


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def resolve_user(value: str | int) -> int:
    """A uid from a user name or number (KeyError when unknown)."""
    text = str(value)
    return int(text) if text.isdigit() else pwd.getpwnam(text).pw_uid


def service_user(ctx: RunContext) -> ServiceUser:
    """Who the control plane runs as (see the module docstring for the order)."""
    option = ctx.options.service_user
    if option:
        uid = resolve_user(option)
        return ServiceUser(uid, _user_name(uid), "the service_user option")
    processes = serving(ctx)
    if processes:
        first = processes[0]
        return ServiceUser(first.uid, _user_name(first.uid), f"tundra serve (pid {first.pid})")
    uid = os.lstat(ctx.services.settings.home).st_uid
    return ServiceUser(uid, _user_name(uid), "owner of $TUNDRA_HOME")


# --------------------------------------------------------------------------------------------
# ST-01: the master key file

_ACL_TAGS: Final = {0x01: "user_obj", 0x02: "user", 0x04: "group_obj", 0x08: "group"}
_ACL_TAGS_MORE: Final = {0x10: "mask", 0x20: "other"}


def parse_acl(data: bytes) -> list[dict[str, Any]]:
    """Entries of a binary ``system.posix_acl_access`` value (version 2, 8 bytes per entry)."""
    entries = []
    for offset in range(4, len(data) - 7, 8):
        tag, perm, ident = struct.unpack_from("<HHI", data, offset)
        name = _ACL_TAGS.get(tag) or _ACL_TAGS_MORE.get(tag) or hex(tag)
        perms = "".join(c if perm & bit else "-" for c, bit in (("r", 4), ("w", 2), ("x", 1)))
        entry: dict[str, Any] = {"tag": name, "perm": perms}
        if tag in (0x02, 0x08):
            entry["id"] = ident
        entries.append(entry)
    return entries


def read_acl(path: Path) -> list[dict[str, Any]] | None:
    """The extended ACL of ``path`` (None: it has none, or the filesystem has no ACLs)."""
    try:
        data = os.getxattr(path, ACL_XATTR, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    return parse_acl(data)


def open_as(path: Path, user: pwd.struct_passwd, *, timeout: float = 5.0) -> tuple[bool, str]:
    """Whether ``user`` (no supplementary groups) can open ``path`` for reading, and why not."""
    done = subprocess.run(
        ["/bin/sh", "-c", 'exec 3< "$1"', "sh", str(path)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        env={"PATH": "/usr/bin:/bin"},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode == 0, done.stderr.strip().splitlines()[-1] if done.stderr else ""


def inspect_master_key(
    path: Path,
    *,
    service_uid: int,
    kcv: str | None,
    probe_user: str | None = PROBE_USER,
) -> Outcome:
    """ST-01's rules for one key file. ``kcv``: the database's key-check value."""
    problems: list[str] = []
    unknown: list[str] = []
    evidence: dict[str, Any] = {"path": str(path), "service_uid": service_uid}
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return failed(f"{path} does not exist", **evidence)
    evidence["file"] = {
        "type": _file_type(info.st_mode),
        "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        "uid": info.st_uid,
        "owner": _user_name(info.st_uid),
        "size": info.st_size,
    }
    if stat.S_ISLNK(info.st_mode):
        evidence["link_target"] = os.readlink(path)
        return failed(f"{path} is a symbolic link", **evidence)
    if not stat.S_ISREG(info.st_mode):
        return failed(f"{path} is not a regular file", **evidence)
    mode = stat.S_IMODE(info.st_mode)
    if mode != masterkey.MODE:
        problems.append(f"mode {mode:04o}, not {masterkey.MODE:04o}")
    if info.st_uid != service_uid:
        problems.append(
            f"owned by {_user_name(info.st_uid)} (uid {info.st_uid}), not the service user "
            f"{_user_name(service_uid)} (uid {service_uid})"
        )
    acl = read_acl(path)
    evidence["acl"] = acl
    if acl:
        problems.append("has an ACL: " + ", ".join(f"{e['tag']}:{e['perm']}" for e in acl))
    parent = os.stat(path.parent)
    parent_mode = stat.S_IMODE(parent.st_mode)
    evidence["parent"] = {
        "path": str(path.parent),
        "mode": f"{parent_mode:04o}",
        "uid": parent.st_uid,
    }
    if parent_mode & 0o022:
        problems.append(f"its directory {path.parent} is group/world-writable ({parent_mode:04o})")
    if parent.st_uid not in (service_uid, 0):
        problems.append(f"its directory is owned by uid {parent.st_uid}, who can replace the key")
    evidence["unprivileged_open"] = _probe_open(path, service_uid, probe_user, problems)
    evidence["leftovers"] = _leftovers(path, problems)
    _verify_contents(path, kcv, evidence, problems, unknown)
    evidence["problems"] = problems
    if problems:
        return failed(f"{path}: " + "; ".join(problems), **evidence)
    if unknown:
        return errored("could not verify: " + "; ".join(unknown), **evidence)
    return passed(
        f"{path}: regular file, 0400, owned by the service user, no ACL, trailer and key-check "
        "value verify",
        **evidence,
    )


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISREG, "file"), (stat.S_ISDIR, "dir")):
        if test(mode):
            return name
    return "other"


def _probe_open(
    path: Path, service_uid: int, probe_user: str | None, problems: list[str]
) -> dict[str, Any]:
    if probe_user is None:
        return {"skipped": "no probe user given"}
    if os.geteuid() != 0:
        return {"skipped": "the runner is not root, so it cannot switch to an unprivileged user"}
    try:
        user = pwd.getpwnam(probe_user)
    except KeyError:
        return {"skipped": f"no user {probe_user!r} on this host"}
    if user.pw_uid in (service_uid, 0):
        return {"skipped": f"{probe_user} is the service user or root"}
    opened, error = open_as(path, user)
    if opened:
        problems.append(f"{probe_user} (uid {user.pw_uid}) can open it")
    return {"user": probe_user, "uid": user.pw_uid, "opened": opened, "error": error}


def _leftovers(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    found = []
    for extra in masterkey.KeyPaths(path).leftovers():
        info = os.lstat(extra)
        mode = stat.S_IMODE(info.st_mode)
        found.append({"path": str(extra), "mode": f"{mode:04o}", "uid": info.st_uid})
        if mode & 0o077 or stat.S_ISLNK(info.st_mode):
            problems.append(f"leftover {extra.name} is a link or readable by others ({mode:04o})")
    return found


def _verify_contents(
    path: Path, kcv: str | None, evidence: dict[str, Any], problems: list[str], unknown: list[str]
) -> None:
    try:
        data = read_key_bytes(path)
    except PermissionError as exc:
        unknown.append(f"cannot read the key ({exc.strerror}): run as root or the service user")
        return
    try:
        key = masterkey.decode(data, path)
    except KeyMaterialError as exc:
        evidence["trailer"] = "mismatch"
        problems.append(exc.message)
        return
    evidence["trailer"] = "ok"
    if kcv is None:
        evidence["key_check_value"] = "missing in the database"
        problems.append("the database has no key-check value")
    elif masterkey.kcv_matches(key, kcv):
        evidence["key_check_value"] = "matches"
    else:
        evidence["key_check_value"] = "mismatch"
        problems.append("a valid key, but not this database's (key-check value mismatch)")


def read_key_bytes(path: Path) -> bytes:
    """The raw bytes of a key file, never through a symlink."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


@check(
    "ST-01",
    "Master key: 0400, service user's, no ACL, unreadable to others, trailer and KCV verify",
    section=Section.STORAGE,
    severity=Severity.CRITICAL,
    needs=("services",),
)
def master_key_file(ctx: RunContext) -> Outcome:
    services = ctx.services
    try:
        user = service_user(ctx)
    except KeyError as exc:
        return errored(f"unknown service user {exc}", hint="give a user name or uid that exists")
    outcome = inspect_master_key(
        services.settings.master_key_path, service_uid=user.uid, kcv=services.keys.fetch_kcv()
    )
    outcome.evidence["service_user"] = user.evidence()
    return outcome


# --------------------------------------------------------------------------------------------
# ST-02: key material not leaked


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


# --------------------------------------------------------------------------------------------
# ST-03: systemd unit scores


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


# --------------------------------------------------------------------------------------------
# ST-04: data directories


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
