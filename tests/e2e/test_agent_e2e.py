"""An agent end to end, every part a real process on loopback.

`tundra init` + `tundra serve` (panel, redirect and gateway on free ports), `tundra server add`
(which prints the join token), `tundra agent enroll` and `tundra agent run` with a host
environment that has no Tundra home, `tundra server ping` answered over the session, then
`tundra agent revoke`: the agent's session ends and its next connection is refused, and a ping
no longer reaches it. Finally SIGTERM stops the agent with exit 0.

Runs on the embedded default (SQLite + embedded KV), which needs no external service.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

TOKEN_RE = re.compile(r"tjn1\.[a-z2-7]+\.[0-9a-f]{64}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tundra(
    env: dict[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tundra", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def wait_for(condition: Callable[[], Any], what: str, *, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class ControlPlane:
    env: dict[str, str]
    port: int
    gateway_port: int
    log: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        context = ssl.create_default_context(
            cafile=str(Path(self.env["TUNDRA_HOME"]) / "tls" / "ca.crt")
        )
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=context, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def gateway_listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.gateway_port), timeout=1):
                return True
        except OSError:
            return False


@pytest.fixture
def control_plane(tmp_path: Path) -> Iterator[ControlPlane]:
    port, redirect_port, gateway_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    env.update(
        TUNDRA_HOME=str(tmp_path / "home"),
        TUNDRA_PASSWORD_PROFILE="test",
        TUNDRA_PANEL_LISTEN=f"127.0.0.1:{port}",
        TUNDRA_REDIRECT_LISTEN=f"127.0.0.1:{redirect_port}",
        TUNDRA_PUBLIC_HTTPS_PORT=str(port),
        TUNDRA_GATEWAY_LISTEN=f"127.0.0.1:{gateway_port}",
        TUNDRA_GATEWAY_ADDRESS=f"127.0.0.1:{gateway_port}",
        # Revocation and delivery are noticed by polling: keep the test brisk.
        TUNDRA_AGENT_HEARTBEAT_SECONDS="2",
    )
    init = tundra(env, "init", "--generate-password", "--json")
    assert init.returncode == 0, init.stderr
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tundra", "serve"], env=env, stdout=out, stderr=out
        )
    plane = ControlPlane(env, port, gateway_port, log, process)
    try:
        wait_for(
            lambda: process.poll() is not None or (plane.healthy() and plane.gateway_listening()),
            "tundra serve",
        )
        assert process.poll() is None, log.read_text("utf-8", "replace")
        yield plane
    finally:
        stop(process)


class AgentLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        lines = self.path.read_text("utf-8", "replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def names(self) -> list[str]:
        return [e["event"] for e in self.events()]

    def text(self) -> str:
        return self.path.read_text("utf-8", "replace") if self.path.exists() else ""


def test_enroll_run_ping_revoke(control_plane: ControlPlane, tmp_path: Path) -> None:
    plane = control_plane
    added = tundra(plane.env, "server", "add", "web-1", "--address", "127.0.0.1")
    assert added.returncode == 0, added.stderr
    token = TOKEN_RE.search(added.stdout + added.stderr)
    assert token, f"no join token printed:\n{added.stdout}\n{added.stderr}"

    # The managed host: no TUNDRA_HOME, nothing of the control plane.
    host = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    config = tmp_path / "host" / "etc" / "agent.toml"
    state_dir = tmp_path / "host" / "state"
    enroll = tundra(
        {**host, "TUNDRA_JOIN_TOKEN": token[0]},
        "agent", "enroll", "--url", plane.url, "--config", str(config),
        "--state-dir", str(state_dir), "--json",
    )  # fmt: skip
    assert enroll.returncode == 0, enroll.stderr
    enrolled = json.loads(enroll.stdout)
    assert enrolled["server_name"] == "web-1"
    assert enrolled["gateway"] == f"127.0.0.1:{plane.gateway_port}"

    # The token is spent: a second enrollment with it is refused (and says why).
    again = tundra(
        {**host, "TUNDRA_JOIN_TOKEN": token[0]},
        "agent", "enroll", "--url", plane.url, "--config", str(tmp_path / "other.toml"),
        "--state-dir", str(tmp_path / "other-state"),
    )  # fmt: skip
    assert again.returncode == 77, again.stderr
    assert "refused" in again.stderr

    status = tundra(host, "agent", "status", "--config", str(config), "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["agent_id"] == enrolled["agent_id"]

    log = AgentLog(tmp_path / "agent.log")
    with log.path.open("wb") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "tundra", "agent", "run", "--config", str(config)],
            env=host,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        wait_for(
            lambda: agent.poll() is not None or "connected" in log.names(), "the agent session"
        )
        assert agent.poll() is None, log.text()

        ping = tundra(plane.env, "server", "ping", "web-1")
        assert ping.returncode == 0, ping.stdout + ping.stderr + log.text()
        commands = [e for e in log.events() if e["event"] == "command"]
        assert [(c["type"], c["status"]) for c in commands] == [("ping", "STATUS_SUCCEEDED")]

        shown = tundra(plane.env, "server", "show", "web-1", "--json")
        assert shown.returncode == 0, shown.stderr
        assert enrolled["agent_id"] in shown.stdout

        revoke = tundra(plane.env, "agent", "revoke", "web-1", "--yes")
        assert revoke.returncode == 0, revoke.stderr
        # The live session ends, and the reconnection that follows is refused.
        wait_for(
            lambda: (
                "reconnect-wait" in log.names()
                and "refused" in log.names()[log.names().index("reconnect-wait") :]
            ),
            "a refused reconnection",
            timeout=30,
        )
        assert "connected" not in log.names()[log.names().index("reconnect-wait") :]
        refused = tundra(plane.env, "server", "ping", "web-1")
        assert refused.returncode != 0
        assert agent.poll() is None  # it keeps trying (with backoff), it does not crash
    finally:
        code = stop(agent, timeout=10)
    assert code == 0, log.text()
    assert log.names()[-1] == "stopped"
