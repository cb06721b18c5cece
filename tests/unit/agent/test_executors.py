"""Executors: ping, facts from /proc and friends, service.status through systemctl only."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tundra.agent import executors
from tundra.agent.executors import (
    FACT_FIELDS,
    SERVICE_PROPERTIES,
    CommandFailed,
    collect_facts,
    execute,
    facts_message,
)
from tundra.agent.v1 import agent_pb2
from tundra.core.agents.envelope import Command
from tundra.core.errors import InvalidInput, TundraError


def command(type_: str, payload: dict[str, Any] | None = None) -> Command:
    return Command("a" * 32, "c" * 32, "0" * 32, 0, 30_000, type_, payload or {})


# -- ping ----------------------------------------------------------------------------------------


def test_ping_answers_pong_with_the_agent_clock() -> None:
    before = int(time.time() * 1000)
    result = execute(command("ping"))
    assert result["pong"] is True
    assert before <= result["agent_time_ms"] <= int(time.time() * 1000)
    assert set(result) == {"pong", "agent_time_ms"}


def test_execute_refuses_what_is_not_allowed() -> None:
    with pytest.raises(InvalidInput, match="unknown command type 'shell'"):
        execute(command("shell", {"cmd": "id"}))
    with pytest.raises(InvalidInput, match="takes no payload"):
        execute(command("ping", {"x": 1}))


# -- facts ---------------------------------------------------------------------------------------


def test_facts_describe_this_host() -> None:
    facts = collect_facts()
    assert tuple(facts) == FACT_FIELDS
    assert set(FACT_FIELDS) == {f.name for f in agent_pb2.Facts.DESCRIPTOR.fields}
    uname = os.uname()
    assert (facts["hostname"], facts["kernel"], facts["architecture"]) == (
        uname.nodename,
        uname.release,
        uname.machine,
    )
    assert facts["cpu_count"] == os.cpu_count()
    assert facts["memory_total_bytes"] >= facts["memory_available_bytes"] > 0
    disk = shutil.disk_usage("/")
    assert facts["disk_total_bytes"] == disk.total
    assert 0 < facts["disk_free_bytes"] <= disk.total
    assert facts["uptime_seconds"] > 0
    assert len(facts["load_average"]) == 3
    os_release = Path("/etc/os-release")
    if os_release.exists():
        pretty = [
            line for line in os_release.read_text().splitlines() if line.startswith("PRETTY_NAME=")
        ]
        if pretty:
            assert facts["os"] == pretty[0].split("=", 1)[1].strip('"')
    assert execute(command("facts")).keys() == facts.keys()
    json.dumps(facts)


def test_facts_are_parsed_from_the_kernel_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(
        "MemTotal:       16384 kB\nMemFree:         1024 kB\nMemAvailable:    8192 kB\n"
        "HugePages_Total:       0\n"
    )
    (proc / "uptime").write_text("12345.67 23456.78\n")
    (proc / "cpuinfo").write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n"
        "model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\n\nprocessor\t: 1\n"
        "model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\n"
    )
    release = tmp_path / "os-release"
    release.write_text('NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    monkeypatch.setattr(executors, "PROC", proc)
    monkeypatch.setattr(executors, "OS_RELEASE_PATHS", (release,))
    facts = collect_facts()
    assert facts["memory_total_bytes"] == 16384 * 1024
    assert facts["memory_available_bytes"] == 8192 * 1024
    assert facts["uptime_seconds"] == 12345.67
    assert facts["cpu_model"] == "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz"
    assert facts["os"] == "Debian GNU/Linux 12 (bookworm)"


@pytest.mark.parametrize(
    ("cpuinfo", "model"),
    [
        ("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\nHardware\t: BCM2835\n", "BCM2835"),
        (
            "processor\t: 0\nmodel\t\t: 85\nModel\t\t: Raspberry Pi 4 Model B\n",
            "Raspberry Pi 4 Model B",
        ),
        ("processor\t: 0\ncpu model\t: Loongson-3A5000\n", "Loongson-3A5000"),
        ("processor\t: 0\nmodel\t\t: 85\n", ""),
        ("", ""),
    ],
    ids=["arm-hardware", "arm-model", "mips", "number-only", "empty"],
)
def test_cpu_models_on_other_architectures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cpuinfo: str, model: str
) -> None:
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(executors, "PROC", tmp_path)
    assert collect_facts()["cpu_model"] == model


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PRETTY_NAME='Alpine Linux v3.19'\n", "Alpine Linux v3.19"),
        ("PRETTY_NAME=Gentoo\n", "Gentoo"),
        (
            'PRETTY_NAME="Fedora Linux 40 (Server \\"Edition\\")"\n',
            'Fedora Linux 40 (Server "Edition")',
        ),
        ('PRETTY_NAME="unterminated\n', "unterminated"),
        ("NAME=foo\n", ""),
    ],
)
def test_os_release_quoting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, expected: str
) -> None:
    release = tmp_path / "os-release"
    release.write_text(text)
    monkeypatch.setattr(executors, "OS_RELEASE_PATHS", (release,))
    assert executors._os_name() == expected


def test_missing_kernel_files_give_empty_facts_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executors, "PROC", tmp_path / "absent")
    monkeypatch.setattr(executors, "OS_RELEASE_PATHS", (tmp_path / "absent-release",))
    facts = collect_facts()
    assert (facts["memory_total_bytes"], facts["uptime_seconds"], facts["cpu_model"]) == (
        0,
        0.0,
        "",
    )
    assert facts["os"] == os.uname().sysname
    facts_message(facts)


def test_facts_message_carries_every_fact() -> None:
    facts = collect_facts()
    message = facts_message(facts)
    parsed = agent_pb2.Facts.FromString(message.SerializeToString())
    assert parsed.hostname == facts["hostname"]
    assert parsed.cpu_count == facts["cpu_count"]
    assert parsed.memory_total_bytes == facts["memory_total_bytes"]
    assert parsed.disk_free_bytes == facts["disk_free_bytes"]
    assert parsed.uptime_seconds == pytest.approx(facts["uptime_seconds"])
    assert list(parsed.load_average) == pytest.approx(facts["load_average"])
    for name in FACT_FIELDS:
        value = getattr(parsed, name)
        if isinstance(value, str | int) and not isinstance(value, bool):
            assert value == facts[name], name


def test_facts_message_tolerates_odd_values() -> None:
    message = facts_message(
        {
            "hostname": None,
            "cpu_count": -3,
            "memory_total_bytes": 2**70,
            "disk_total_bytes": True,
            "disk_free_bytes": "12",
            "uptime_seconds": "up",
            "load_average": "high",
            "unknown": 1,
        }
    )
    assert message.hostname == ""
    assert message.cpu_count == 0
    assert message.memory_total_bytes == 2**64 - 1
    assert (message.disk_total_bytes, message.disk_free_bytes) == (0, 0)
    assert message.uptime_seconds == 0.0
    assert list(message.load_average) == []
    assert facts_message({}) == agent_pb2.Facts()


# -- service.status ------------------------------------------------------------------------------


@pytest.fixture
def fake_systemctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in systemctl (records argv and environment) and a systemd runtime directory.

    Its behaviour comes from files next to it: ``stdout``, ``stderr``, ``rc``, ``sleep``.
    """
    script = tmp_path / "systemctl"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys, time, pathlib\n"
        "here = pathlib.Path(sys.argv[0]).parent\n"
        "(here / 'calls').open('a').write(json.dumps({'argv': sys.argv, 'env': dict(os.environ)})"
        " + '\\n')\n"
        "if (here / 'sleep').exists(): time.sleep(float((here / 'sleep').read_text()))\n"
        "if (here / 'stdout').exists(): sys.stdout.write((here / 'stdout').read_text())\n"
        "if (here / 'stderr').exists(): sys.stderr.write((here / 'stderr').read_text())\n"
        "sys.exit(int((here / 'rc').read_text()) if (here / 'rc').exists() else 0)\n"
    )
    script.chmod(0o755)
    runtime = tmp_path / "run-systemd-system"
    runtime.mkdir()
    monkeypatch.setattr(executors, "SYSTEMCTL_PATHS", (str(tmp_path / "absent"), str(script)))
    monkeypatch.setattr(executors, "SYSTEMD_RUNTIME_DIR", str(runtime))
    return script


def _calls(script: Path) -> list[dict[str, Any]]:
    calls = script.parent / "calls"
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


def test_service_status_runs_systemctl_show_with_a_fixed_argv(
    fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNDRA_TEST_SENTINEL", "must-not-leak")
    (fake_systemctl.parent / "stdout").write_text(
        "LoadState=loaded\nActiveState=active\nSubState=running\nMainPID=1234\n"
        "ExecMainStartTimestamp=Mon 2025-01-06 10:00:00 UTC\n"
    )
    result = execute(command("service.status", {"unit": "nginx"}))
    assert result == {
        "unit": "nginx.service",
        "load_state": "loaded",
        "active_state": "active",
        "sub_state": "running",
        "main_pid": 1234,
        "started_at": "Mon 2025-01-06 10:00:00 UTC",
    }
    [call] = _calls(fake_systemctl)
    assert call["argv"] == [
        str(fake_systemctl),
        "show",
        "--property=" + ",".join(SERVICE_PROPERTIES),
        "--no-pager",
        "--",
        "nginx.service",
    ]
    assert "TUNDRA_TEST_SENTINEL" not in call["env"]
    assert call["env"]["LC_ALL"] == "C"
    assert call["env"]["PATH"] == "/usr/bin:/bin"


def test_an_unknown_unit_is_reported_as_not_found(fake_systemctl: Path) -> None:
    (fake_systemctl.parent / "stdout").write_text(
        "LoadState=not-found\nActiveState=inactive\nSubState=dead\nMainPID=0\n"
        "ExecMainStartTimestamp=\n"
    )
    result = execute(command("service.status", {"unit": "nope.service"}))
    assert (result["load_state"], result["main_pid"], result["started_at"]) == (
        "not-found",
        0,
        None,
    )


@pytest.mark.parametrize(
    "unit", ["-H", "--host=evil", "../../bin/sh", "nginx; reboot", "$(id)", "a b", ""]
)
def test_a_bad_unit_never_reaches_systemctl(fake_systemctl: Path, unit: str) -> None:
    with pytest.raises(InvalidInput, match="unit name"):
        execute(command("service.status", {"unit": unit}))
    with pytest.raises(InvalidInput, match="unit name"):
        executors.service_status(unit)
    assert _calls(fake_systemctl) == []


def test_systemctl_failing_is_a_clear_failure(fake_systemctl: Path) -> None:
    (fake_systemctl.parent / "stderr").write_text("Failed to connect to bus: No such file\n")
    (fake_systemctl.parent / "rc").write_text("1")
    with pytest.raises(CommandFailed, match="failed: Failed to connect to bus"):
        execute(command("service.status", {"unit": "nginx"}))


def test_output_without_a_load_state_is_a_failure(fake_systemctl: Path) -> None:
    (fake_systemctl.parent / "stdout").write_text("garbage\n")
    with pytest.raises(CommandFailed, match="no LoadState"):
        execute(command("service.status", {"unit": "nginx"}))


def test_a_hanging_systemctl_is_cut_off(
    fake_systemctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executors, "SYSTEMCTL_TIMEOUT", 0.5)
    (fake_systemctl.parent / "sleep").write_text("30")
    started = time.monotonic()
    with pytest.raises(CommandFailed, match=r"did not answer within 0.5 s"):
        execute(command("service.status", {"unit": "nginx"}))
    assert time.monotonic() - started < 10


def test_no_systemctl_is_a_clear_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executors, "SYSTEMCTL_PATHS", (str(tmp_path / "absent"),))
    with pytest.raises(CommandFailed, match="systemctl is not installed"):
        execute(command("service.status", {"unit": "nginx"}))


def test_no_running_systemd_is_a_clear_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What this container (and any host without systemd as init) answers."""
    monkeypatch.setattr(executors, "SYSTEMD_RUNTIME_DIR", str(tmp_path / "absent"))
    present = [p for p in executors.SYSTEMCTL_PATHS if os.access(p, os.X_OK)]
    if not present:
        monkeypatch.setattr(executors, "SYSTEMCTL_PATHS", (sys.executable,))
    with pytest.raises(CommandFailed, match="systemd is not running on this host") as caught:
        execute(command("service.status", {"unit": "nginx"}))
    assert isinstance(caught.value, TundraError)
