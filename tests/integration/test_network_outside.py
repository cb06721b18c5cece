"""NX-02 from a real "outside": a network namespace joined to this host by a veth pair.

The probe runs inside the namespace (``RunOptions.outside_probe = ("ip", "netns", "exec", NS)``)
and connects to this host's side of the veth. Fixtures on this host: a redis-server of our own
bound to 0.0.0.0 (protected-mode off: +PONG; protected-mode on: open but DENIED) or to
127.0.0.1, a stand-in PostgreSQL listener on 0.0.0.0, and a stand-in panel port for the control
probe. Root only; ``TUNDRA_REQUIRE_SERVICES=1`` turns the skip into a failure (CI runs as root).
Namespace indexes 20–29 are this file's.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netnshelpers import REQUIRE, OutsideHost, outside_host

from tundra.core.acceptance import runner
from tundra.core.acceptance.checks import network
from tundra.core.acceptance.context import RunOptions
from tundra.core.acceptance.model import Result, Status
from tundra.core.acceptance.registry import default_registry
from tundra.core.services import Services
from tundra.core.settings import Settings

ANY = "0.0.0.0"  # noqa: S104 - listeners reachable from the namespace are the fixtures here


@contextlib.contextmanager
def listening(host: str) -> Iterator[int]:
    sock = socket.socket()
    try:
        sock.bind((host, 0))
        sock.listen()
        yield sock.getsockname()[1]
    finally:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((ANY, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    binary = shutil.which("valkey-server") or shutil.which("redis-server")
    if binary is None:
        if REQUIRE:
            pytest.fail("redis-server is not installed; TUNDRA_REQUIRE_SERVICES=1", pytrace=False)
        pytest.skip("neither valkey-server nor redis-server is installed")
    started: list[subprocess.Popen[bytes]] = []

    def start(*, bind: str, protected_mode: str) -> tuple[int, str]:
        port = free_port()
        argv = [binary or "", "--port", str(port), "--bind", bind, "--protected-mode"]
        argv += [protected_mode, "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        started.append(process)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on {port} did not start")
            time.sleep(0.02)
        return port, f"redis://127.0.0.1:{port}/0"

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=10)


def outside_run(outside: OutsideHost, panel_port: int, settings: Settings) -> Result:
    services = Services(settings)
    try:
        options = RunOptions(
            url=f"https://{outside.host_ip}:{panel_port}",
            services=services,
            outside_probe=("ip", "netns", "exec", outside.name),
        )
        spec = default_registry(load=False).get("NX-02")
        assert spec.fn is network.outside_view
        return runner.run(options, checks=[spec]).by_id()["NX-02"]
    finally:
        services.close()


def states(result: Result, outside: OutsideHost) -> dict[int, str]:
    return {r["port"]: r["state"] for r in result.evidence["probes"][outside.host_ip]}


def test_a_wildcard_redis_answers_pong_outside(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    with outside_host(20) as outside, listening(ANY) as panel:
        port, url = redis_server(bind=ANY, protected_mode="no")
        result = outside_run(outside, panel, Settings(home=tmp_path, valkey_url=url))
    assert result.status is Status.FAIL
    assert result.summary == (
        f"{outside.host_ip}:{port} (valkey) answers PING without authentication"
    )
    assert result.evidence["vantage"] == f"outside probe: ip netns exec {outside.name}"
    assert states(result, outside)[panel] == "open"


def test_protected_mode_denies_ping_but_the_open_port_still_fails(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    with outside_host(21) as outside, listening(ANY) as panel:
        port, url = redis_server(bind=ANY, protected_mode="yes")
        result = outside_run(outside, panel, Settings(home=tmp_path, valkey_url=url))
    assert result.status is Status.FAIL
    assert result.summary == f"{outside.host_ip}:{port} (valkey) is open from this vantage point"
    probe = next(r for r in result.evidence["probes"][outside.host_ip] if r["port"] == port)
    assert probe["ping_reply"].startswith("-DENIED")


def test_loopback_services_are_refused_from_outside(
    tmp_path: Path, redis_server: Callable[..., tuple[int, str]]
) -> None:
    with outside_host(22) as outside, listening(ANY) as panel:
        port, url = redis_server(bind="127.0.0.1", protected_mode="no")
        result = outside_run(outside, panel, Settings(home=tmp_path, valkey_url=url))
    assert result.status is Status.PASS, result.summary
    seen = states(result, outside)
    assert seen[port] == "refused"
    assert seen[5432] == "refused" and seen[6379] == "refused"  # the host's own, on loopback


def test_a_wildcard_database_port_fails(tmp_path: Path) -> None:
    with outside_host(23) as outside, listening(ANY) as panel, listening(ANY) as fake_pg:
        settings = Settings(home=tmp_path, database_url=f"postgresql://u@127.0.0.1:{fake_pg}/x")
        result = outside_run(outside, panel, settings)
    assert result.status is Status.FAIL
    assert (
        result.summary
        == f"{outside.host_ip}:{fake_pg} (postgresql) is open from this vantage point"
    )


def test_without_a_reachable_panel_the_outside_view_is_inconclusive(tmp_path: Path) -> None:
    with outside_host(24) as outside, listening("127.0.0.1") as panel:
        result = outside_run(outside, panel, Settings(home=tmp_path))
    assert result.status is Status.ERROR
    assert "the panel port itself is not reachable" in result.summary
    assert states(result, outside)[panel] == "refused"
