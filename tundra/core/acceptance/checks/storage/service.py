"""The running control plane and its service user, shared by the storage checks: every
``tundra serve`` on this host, those of this run's home, and who the service user is.

Decision (to be repeated in docs/acceptance.md):

- **The service user** (ST-01's owner) is, in this order: the ``service_user`` run option (a name
  or uid) when given; else the effective user of a running ``tundra serve`` of this home (its
  ``TUNDRA_HOME``, or the default home it would resolve); else the owner of ``$TUNDRA_HOME``,
  which ``tundra init`` creates as the service user. The evidence says which source decided.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tundra.core.settings import SYSTEM_CONFIG

if TYPE_CHECKING:
    from tundra.core.acceptance.context import RunContext


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
