"""The shipped systemd units: scored with `systemd-analyze security --offline=yes` (exposure
thresholds), checked with `systemd-analyze verify`, and read for the settings that matter.

`systemd-analyze` works here without a running systemd (PLATFORM-NOTES). ``--threshold=N``
makes it exit 1 when exposure × 10 exceeds N, and the text report ends with the overall
exposure, which is parsed too so a failure names the score.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[3]
UNITS = ROOT / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")

#: Unit → the highest exposure accepted. The control plane's aim is 3.0 (the issue); the agent
#: is held to what it scores now, so any loosening is a deliberate change to this table.
THRESHOLDS = {"tundra.service": 3.0, "tundra-agent.service": 1.5}


def directives(unit: str) -> dict[str, list[str]]:
    """``Key`` → every value it is given in the [Service] section (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in (UNITS / unit).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def one(unit: str, key: str) -> str:
    values = directives(unit)[key]
    assert len(values) == 1, f"{key} is set {len(values)} times in {unit}"
    return values[0]


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@needs_analyze
@pytest.mark.parametrize("unit", sorted(THRESHOLDS))
def test_exposure_is_under_the_threshold(unit: str) -> None:
    limit = THRESHOLDS[unit]
    result = analyze(
        "security", "--offline=yes", f"--threshold={round(limit * 10)}", str(UNITS / unit)
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match[1])
    assert exposure <= limit, f"{unit} scores {exposure} > {limit}:\n{result.stdout}"
    assert result.returncode == 0, result.stdout + result.stderr


@needs_analyze
@pytest.mark.parametrize("unit", sorted(THRESHOLDS))
def test_machine_report_confirms_the_key_protections(unit: str) -> None:
    result = analyze("security", "--offline=yes", "--json=short", str(UNITS / unit))
    assert result.returncode == 0, result.stderr
    checks = {c["json_field"]: c for c in json.loads(result.stdout)}
    for field in (
        "UserOrDynamicUser",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "RestrictNamespaces_user",
        "MemoryDenyWriteExecute",
        "SystemCallArchitectures",
        "RestrictAddressFamilies_AF_PACKET",
        "RestrictAddressFamilies_AF_NETLINK",
        "CapabilityBoundingSet_CAP_SYS_ADMIN",
        "CapabilityBoundingSet_CAP_SET_UID_GID_PCAP",
        "CapabilityBoundingSet_CAP_DAC_FOWNER_IPC_OWNER",
    ):
        assert checks[field]["set"] is True, f"{unit}: {checks[field]['description']}"


@needs_analyze
@pytest.mark.parametrize("unit", sorted(THRESHOLDS))
def test_units_verify(unit: str, tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists: point it at this checkout's tundra.
    tundra = Path(sys.executable).with_name("tundra")
    text = (UNITS / unit).read_text().replace("/usr/local/bin/tundra", str(tundra))
    (tmp_path / unit).write_text(text)
    result = analyze("verify", str(tmp_path / unit))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # unknown keys are only warned about


@pytest.mark.parametrize("unit", sorted(THRESHOLDS))
def test_exec_start_is_a_real_tundra_command(unit: str) -> None:
    binary, *args = one(unit, "ExecStart").split()
    assert binary == "/usr/local/bin/tundra"
    result = subprocess.run(
        [sys.executable, "-m", "tundra", *args, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_control_plane_keeps_only_the_low_port_capability() -> None:
    unit = "tundra.service"
    assert one(unit, "User") == "tundra"
    assert one(unit, "StateDirectory") == "tundra"
    assert one(unit, "StateDirectoryMode") == "0700"
    assert one(unit, "AmbientCapabilities") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "CapabilityBoundingSet") == "CAP_NET_BIND_SERVICE"
    assert one(unit, "NoNewPrivileges") == "yes"
    assert one(unit, "ProtectSystem") == "strict"
    assert one(unit, "Environment") == "TUNDRA_HOME=/var/lib/tundra"


def test_agent_runs_unprivileged_with_what_its_duties_need() -> None:
    unit = "tundra-agent.service"
    assert one(unit, "User") == "tundra-agent"
    assert one(unit, "StateDirectory") == "tundra-agent"  # /var/lib/tundra-agent, the default
    assert one(unit, "CapabilityBoundingSet") == ""
    assert one(unit, "AmbientCapabilities") == ""
    assert one(unit, "PrivateUsers") == "yes"
    # The facts read /proc/meminfo, cpuinfo, uptime, loadavg: ProcSubset=pid would hide them.
    assert "ProcSubset" not in directives(unit)
    # AF_UNIX for `systemctl show` over the system bus, INET for the gateway; nothing else.
    assert one(unit, "RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert "--config /etc/tundra/agent.toml" in one(unit, "ExecStart")
    # 78 (configuration) and 65 (a corrupt file) are not cured by restarting.
    assert set(one(unit, "RestartPreventExitStatus").split()) == {"65", "78"}
