"""``tundra serve`` starts the agent gateway in its event loop: an enrolled agent completes the
Session handshake with the real process, SIGTERM ends the session (UNAVAILABLE, agents reconnect)
and the process exits 0; ``gateway_listen`` empty leaves the port closed; a port in use is a
clear start-up error. Embedded database; real processes on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from gatewayhelpers import AgentSession, enroll_agent

from tundra.core.services import Services
from tundra.core.settings import load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(home: Path, gateway_listen: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNDRA_", "GRPC_"))}
    env.update(
        TUNDRA_HOME=str(home),
        TUNDRA_PASSWORD_PROFILE="test",
        TUNDRA_PANEL_LISTEN=f"127.0.0.1:{free_port()}",
        TUNDRA_REDIRECT_LISTEN="",
        TUNDRA_GATEWAY_LISTEN=gateway_listen,
    )
    return env


def init(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tundra", "init", "--generate-password", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def wait_for_line(log: Path, needle: str, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text("utf-8", errors="replace")
        if needle in text:
            return text
        if process.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not seen:\n" + log.read_text("utf-8", errors="replace"))


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_serve_runs_the_gateway_and_stops_it_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = environment(tmp_path / "home", f"127.0.0.1:{port}")
    init(env)
    services = Services(load_settings(environ=env))
    try:
        agent = enroll_agent(services, "web-1")
    finally:
        services.close()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tundra", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        text = wait_for_line(log, "Tundra is serving", process)
        assert f"The agent gateway listens on 127.0.0.1:{port}" in text
        started = [
            json.loads(line)
            for line in text.splitlines()
            if line.startswith("{") and '"gateway.started"' in line
        ]
        assert started and started[0]["port"] == port

        async def scenario() -> grpc.StatusCode:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", agent.credentials()) as chan:
                session = AgentSession(chan)
                welcome = await session.open(agent.agent_id)
                assert welcome.agent_id == agent.agent_id
                process.send_signal(signal.SIGTERM)
                return await session.ended(timeout=20)

        assert asyncio.run(scenario()) == grpc.StatusCode.UNAVAILABLE
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log.read_text("utf-8")
    assert '"event":"session.opened"' in text
    assert '"event":"gateway.stopped"' in text


def test_empty_gateway_listen_disables_the_gateway(tmp_path: Path) -> None:
    env = environment(tmp_path / "home", "")
    init(env)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "tundra", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        text = wait_for_line(log, "Tundra is serving", process)
        assert "agent gateway" not in text
        assert '"gateway.started"' not in text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_gateway_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = environment(tmp_path / "home", f"127.0.0.1:{port}")
        init(env)
        done = subprocess.run(
            [sys.executable, "-m", "tundra", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not listening(int(env["TUNDRA_PANEL_LISTEN"].rpartition(":")[2]))
