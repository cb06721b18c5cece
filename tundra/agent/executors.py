"""What the agent does for each allowed command type: ping, facts, service.status.

The allowlist is :data:`tundra.core.agents.envelope.COMMAND_TYPES` and nothing here runs a shell
or any program other than ``systemctl`` (found at a fixed path, never through ``$PATH``), with a
list argv, a timeout and a fixed environment. :func:`execute` returns the result object for a
``STATUS_SUCCEEDED`` reply or raises a :class:`~tundra.core.errors.TundraError` whose message
becomes the ``STATUS_FAILED`` error text.

Facts are best effort: a value the host does not expose is reported empty or zero rather than
failing the whole report, so an agent on an unusual system still says hello.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tundra.core.agents.envelope import Command, validate_payload
from tundra.core.clock import epoch
from tundra.core.errors import CommandFailed, InvalidInput

if TYPE_CHECKING:
    from tundra.agent.v1 import agent_pb2

#: Where systemctl may be; $PATH is not consulted (the agent's environment is not trusted).
SYSTEMCTL_PATHS: tuple[str, ...] = ("/usr/bin/systemctl", "/bin/systemctl")
#: Exists exactly when systemd is the running init (what sd_booted(3) checks).
SYSTEMD_RUNTIME_DIR = "/run/systemd/system"
SYSTEMCTL_TIMEOUT = 5.0
SERVICE_PROPERTIES = ("LoadState", "ActiveState", "SubState", "MainPID", "ExecMainStartTimestamp")
#: A fixed environment: stable (C locale) output, no pager, no colours, nothing inherited.
SYSTEMCTL_ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
#: systemctl's output for one unit's properties is a few hundred bytes; more is not read.
MAX_SYSTEMCTL_OUTPUT = 16 * 1024

PROC = Path("/proc")
OS_RELEASE_PATHS = (Path("/etc/os-release"), Path("/usr/lib/os-release"))

FACT_FIELDS = (
    "hostname",
    "os",
    "kernel",
    "architecture",
    "cpu_count",
    "cpu_model",
    "memory_total_bytes",
    "memory_available_bytes",
    "disk_total_bytes",
    "disk_free_bytes",
    "uptime_seconds",
    "load_average",
)
_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


#: Commands that do no I/O and finish in microseconds: the daemon runs them on its event loop
#: instead of paying a hand-off to a worker thread. Everything else runs on a worker.
INLINE_TYPES: frozenset[str] = frozenset({"ping"})


def execute(command: Command) -> dict[str, Any]:
    """Carry out a verified command; its JSON-able result, or CommandFailed/InvalidInput."""
    # The guard validated type and payload already; checking again costs nothing and keeps
    # execute() safe for any caller.
    payload = validate_payload(command.type, command.payload)
    runner = _EXECUTORS.get(command.type)
    if runner is None:  # allowed by the envelope but not built into this agent version
        raise InvalidInput(f"this agent cannot run {command.type!r} commands")
    return runner(payload)


def _ping(_payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"pong": True, "agent_time_ms": int(epoch() * 1000)}


def _facts(_payload: Mapping[str, Any]) -> dict[str, Any]:
    return collect_facts()


def _service_status(payload: Mapping[str, Any]) -> dict[str, Any]:
    return service_status(str(payload["unit"]))


_EXECUTORS: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "ping": _ping,
    "facts": _facts,
    "service.status": _service_status,
}


# -- service.status ----------------------------------------------------------------------------


def service_status(unit: str) -> dict[str, Any]:
    """The state of one systemd unit, from ``systemctl show``."""
    from tundra.core.agents.envelope import normalize_unit

    unit = normalize_unit(unit)
    systemctl = next((p for p in SYSTEMCTL_PATHS if os.access(p, os.X_OK)), None)
    if systemctl is None:
        raise CommandFailed(
            "systemctl is not installed on this host, so service status is unavailable"
        )
    if not os.path.isdir(SYSTEMD_RUNTIME_DIR):
        raise CommandFailed(
            f"systemd is not running on this host (no {SYSTEMD_RUNTIME_DIR}), "
            "so service status is unavailable"
        )
    argv = [
        systemctl,
        "show",
        "--property=" + ",".join(SERVICE_PROPERTIES),
        "--no-pager",
        "--",  # the unit can never be read as an option
        unit,
    ]
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            timeout=SYSTEMCTL_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
            env={
                "LC_ALL": "C",
                "PATH": "/usr/bin:/bin",
                "SYSTEMD_COLORS": "0",
                "SYSTEMD_PAGER": "",
            },
            close_fds=True,
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(
            f"systemctl did not answer within {SYSTEMCTL_TIMEOUT:g} s for {unit}"
        ) from None
    except OSError as exc:
        raise CommandFailed(f"could not run systemctl: {exc.strerror or exc}") from None
    if done.returncode != 0:
        detail = _text(done.stderr).strip() or f"exit status {done.returncode}"
        raise CommandFailed(f"systemctl show {unit} failed: {detail[:500]}")
    props = _properties(_text(done.stdout[:MAX_SYSTEMCTL_OUTPUT]))
    if "LoadState" not in props:
        raise CommandFailed(f"systemctl show {unit} gave no LoadState")
    started = props.get("ExecMainStartTimestamp", "")
    return {
        "unit": unit,
        "load_state": props.get("LoadState", ""),
        "active_state": props.get("ActiveState", ""),
        "sub_state": props.get("SubState", ""),
        "main_pid": _int(props.get("MainPID", "0")),
        "started_at": started or None,
    }


def _properties(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in SERVICE_PROPERTIES:
            props[key] = value.strip()
    return props


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


# -- facts -------------------------------------------------------------------------------------


def collect_facts() -> dict[str, Any]:
    """OS, kernel, CPU, memory, disk, uptime and load: exactly the fields of the Facts message."""
    uname = os.uname()
    meminfo = _meminfo()
    try:
        disk = shutil.disk_usage("/")
        disk_total, disk_free = int(disk.total), int(disk.free)
    except OSError:
        disk_total = disk_free = 0
    try:
        load = [float(x) for x in os.getloadavg()]
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        "hostname": uname.nodename,
        "os": _os_name() or uname.sysname,
        "kernel": uname.release,
        "architecture": uname.machine,
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": _cpu_model(),
        "memory_total_bytes": meminfo.get("MemTotal", 0),
        "memory_available_bytes": meminfo.get("MemAvailable", meminfo.get("MemFree", 0)),
        "disk_total_bytes": disk_total,
        "disk_free_bytes": disk_free,
        "uptime_seconds": _uptime(),
        "load_average": load,
    }


def facts_message(facts: Mapping[str, Any]) -> agent_pb2.Facts:
    """The Facts message for a facts mapping (missing or out-of-range values become zero)."""
    from tundra.agent.v1 import agent_pb2

    def text(name: str) -> str:
        value = facts.get(name)
        return "" if value is None else str(value)

    def number(name: str, top: int) -> int:
        value = facts.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0
        return min(max(int(value), 0), top)

    def real(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return 0.0
        return float(value)

    loads = facts.get("load_average")
    return agent_pb2.Facts(
        hostname=text("hostname"),
        os=text("os"),
        kernel=text("kernel"),
        architecture=text("architecture"),
        cpu_count=number("cpu_count", _UINT32_MAX),
        cpu_model=text("cpu_model"),
        memory_total_bytes=number("memory_total_bytes", _UINT64_MAX),
        memory_available_bytes=number("memory_available_bytes", _UINT64_MAX),
        disk_total_bytes=number("disk_total_bytes", _UINT64_MAX),
        disk_free_bytes=number("disk_free_bytes", _UINT64_MAX),
        uptime_seconds=real(facts.get("uptime_seconds")),
        load_average=[real(x) for x in loads] if isinstance(loads, list | tuple) else [],
    )


def _read(path: Path) -> str:
    try:
        return path.read_text("utf-8", errors="replace")
    except OSError:
        return ""


def _meminfo() -> dict[str, int]:
    """/proc/meminfo values in bytes (the file counts in KiB)."""
    values: dict[str, int] = {}
    for line in _read(PROC / "meminfo").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
            values[key.strip()] = int(parts[0]) * scale
    return values


def _uptime() -> float:
    parts = _read(PROC / "uptime").split()
    try:
        return float(parts[0]) if parts else 0.0
    except ValueError:
        return 0.0


def _cpu_model() -> str:
    # x86 says "model name"; many ARM kernels say "Model" or "Hardware" instead.
    found: dict[str, str] = {}
    for line in _read(PROC / "cpuinfo").splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        # x86's "model" is a number; skip it so an ARM "Model" line further down still counts.
        if sep and value and not value.isdigit() and key not in found:
            found[key] = value
    return next(
        (found[k] for k in ("model name", "cpu model", "model", "hardware") if k in found), ""
    )


def _os_name() -> str:
    """PRETTY_NAME from os-release (shell-style quoting, as os-release(5) defines it)."""
    import shlex

    for path in OS_RELEASE_PATHS:
        for line in _read(path).splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == "PRETTY_NAME":
                try:
                    words = shlex.split(value, comments=False, posix=True)
                except ValueError:
                    words = [value.strip().strip("\"'")]
                return " ".join(words).strip()
    return ""
