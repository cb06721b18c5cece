"""A real deployment for the acceptance end-to-end tests (imported as ``acceptancedeploy``).

:func:`deployment` starts, as separate processes: ``tundra init``, ``tundra user add --acceptance``,
``tundra serve`` (panel and redirect listener on a given address, gateway on 0.0.0.0), a server
with an agent enrolled by ``tundra agent enroll`` and running (``tundra agent run``), and a second
enrolled agent identity that nothing runs (the runner's ``--agent-cert``/``--agent-key``: AG-06
opens that agent's session itself). :func:`wildcard_listeners` reads the kernel's listener table,
and :func:`run_acceptance` runs ``tundra acceptance run`` as a process.

Run as a script (``python acceptancedeploy.py proxy …``) it is a deliberately weak TLS reverse
proxy for the failing run: it accepts TLS 1.2 as well as 1.3, forwards each request to the panel
over verified TLS, and strips ``SameSite=Strict`` from every ``Set-Cookie``. It is a separate
process so that its sockets, event loop and noise stay out of the test process. It uses only
the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKEN_RE = re.compile(r"tjn1\.[a-z2-7]+\.[0-9a-f]{64}")
ACCEPTANCE_USER = "accept"
PASSWORD_ENV = "TUNDRA_E2E_ACCEPTANCE_PASSWORD"
ANY = "0.0.0.0"  # noqa: S104 - the gateway must be reachable from the outside namespace
_WILDCARDS = {"0.0.0.0", "::"}  # noqa: S104 - names compared, nothing bound


# --------------------------------------------------------------------------------------------
# Small process helpers


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def tundra(
    env: Mapping[str, str], *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tundra", *args],
        env=dict(env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 20) -> int:
    """SIGTERM the process we started (by its own handle), SIGKILL if it lingers."""
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
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wildcard_listeners(proc: Path = Path("/proc")) -> list[str]:
    """Every wildcard TCP listener of this network namespace, as ``HOST:PORT`` (IPv6 bracketed).

    Read straight from ``/proc/net/tcp{,6}`` (state 0A = LISTEN); the address words are in host
    byte order, and a wildcard is all zeros in either family.
    """
    found: set[str] = set()
    for name, v6 in (("tcp", False), ("tcp6", True)):
        with contextlib.suppress(FileNotFoundError):
            for line in (proc / "net" / name).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) < 4 or fields[3] != "0A":
                    continue
                address, _, port = fields[1].partition(":")
                if int(address, 16) == 0:
                    found.add(f"[::]:{int(port, 16)}" if v6 else f"0.0.0.0:{int(port, 16)}")
    return sorted(found)


# --------------------------------------------------------------------------------------------
# The deployment


@dataclass
class Agent:
    server: str
    config: Path
    state_dir: Path

    @property
    def cert(self) -> Path:
        return self.state_dir / "agent.crt"

    @property
    def key(self) -> Path:
        return self.state_dir / "agent.key"


@dataclass
class Deployment:
    """What the tests need of the running deployment (its processes are the context's)."""

    env: dict[str, str]
    host: str
    port: int
    gateway_port: int
    password: str
    logs: Path
    running_agent: Agent
    test_agent: Agent

    @property
    def home(self) -> Path:
        return Path(self.env["TUNDRA_HOME"])

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "ca.crt"

    @property
    def master_key(self) -> Path:
        return self.home / "master.key"

    @property
    def gateway(self) -> str:
        return f"{self.host}:{self.gateway_port}"

    def log_text(self) -> str:
        return log_text(self.logs)


def log_text(logs: Path) -> str:
    """The tail of every log of the deployment (for assertion messages)."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text('utf-8', 'replace')[-4000:]}"
        for p in sorted(logs.glob("*.log"))
    )


def panel_healthy(host: str, port: int, ca_file: Path) -> bool:
    """``GET /healthz`` answers 200 over TLS verified against the internal CA."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection((host, port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return tls.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _agent_events(log: Path) -> list[str]:
    if not log.exists():
        return []
    lines = log.read_text("utf-8", "replace").splitlines()
    return [json.loads(line)["event"] for line in lines if line.startswith("{")]


def _check(done: subprocess.CompletedProcess[str], what: str) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _enroll(plane_env: Mapping[str, str], url: str, host: str, name: str, root: Path) -> Agent:
    added = _check(tundra(plane_env, "server", "add", name, "--address", host), "server add")
    token = TOKEN_RE.search(added.stdout + added.stderr)
    assert token, f"no join token printed:\n{added.stdout}\n{added.stderr}"
    agent = Agent(name, root / name / "agent.toml", root / name / "state")
    bare = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    argv = ["agent", "enroll", "--url", url, "--config", str(agent.config)]
    argv += ["--state-dir", str(agent.state_dir)]
    _check(tundra({**bare, "TUNDRA_JOIN_TOKEN": token[0]}, *argv), f"agent enroll {name}")
    return agent


@contextlib.contextmanager
def deployment(
    root: Path,
    *,
    host: str,
    extra_env: Mapping[str, str] | None = None,
    public_https_port: int | None = None,
) -> Iterator[Deployment]:
    """A running control plane with an enrolled, connected agent and a spare agent identity.

    The panel and its redirect listener listen on ``host`` (an address the outside namespace
    reaches), the gateway on 0.0.0.0; agents dial ``host`` and so connect *from* ``host``, which
    is the address their servers are registered with. ``public_https_port`` is the port browsers
    use (a reverse proxy's); default the panel's own.
    """
    port, redirect_port, gateway_port = free_port(host), free_port(host), free_port(ANY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    env.update(
        TUNDRA_HOME=str(root / "home"),
        TUNDRA_PASSWORD_PROFILE="test",
        TUNDRA_PANEL_LISTEN=f"{host}:{port}",
        TUNDRA_REDIRECT_LISTEN=f"{host}:{redirect_port}",
        TUNDRA_PUBLIC_HTTPS_PORT=str(public_https_port or port),
        TUNDRA_PANEL_HOSTNAMES=host,
        TUNDRA_GATEWAY_LISTEN=f"{ANY}:{gateway_port}",
        TUNDRA_GATEWAY_ADDRESS=f"{host}:{gateway_port}",
        **(extra_env or {}),
    )
    # Logs live outside the home: ST-04 would rightly call a 0644 log in the home world-readable.
    logs = root / "logs"
    logs.mkdir()
    _check(tundra(env, "init", "--generate-password", "--json"), "tundra init")
    password = secrets.token_urlsafe(18)
    argv = ["user", "add", ACCEPTANCE_USER, "--acceptance", "--password-stdin"]
    _check(tundra(env, *argv, stdin=password + "\n"), "user add --acceptance")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with (logs / "serve.log").open("wb") as out:
            serve = subprocess.Popen(
                [sys.executable, "-m", "tundra", "serve"], env=env, stdout=out, stderr=out
            )
        processes.append(serve)
        ca_file = root / "home" / "tls" / "ca.crt"
        wait_for(
            lambda: (
                serve.poll() is not None
                or (
                    panel_healthy(host, port, ca_file)
                    and tcp_open(host, gateway_port)
                    and tcp_open(host, redirect_port)
                )
            ),
            "tundra serve",
        )
        assert serve.poll() is None, log_text(logs)
        url = f"https://{host}:{port}"
        running = _enroll(env, url, host, "web-1", root / "hosts")
        spare = _enroll(env, url, host, "acceptance-probe", root / "hosts")
        bare = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
        agent_log = logs / "agent.log"
        with agent_log.open("wb") as err:
            agent = subprocess.Popen(
                [sys.executable, "-m", "tundra", "agent", "run", "--config", str(running.config)],
                env=bare,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        processes.append(agent)
        wait_for(
            lambda: agent.poll() is not None or "connected" in _agent_events(agent_log),
            "the agent session",
        )
        assert agent.poll() is None, log_text(logs)
        plane = Deployment(
            env=env,
            host=host,
            port=port,
            gateway_port=gateway_port,
            password=password,
            logs=logs,
            running_agent=running,
            test_agent=spare,
        )
        yield plane
    finally:
        for process in reversed(processes):
            stop(process)


def run_acceptance(
    plane: Deployment,
    *,
    url: str | None = None,
    allowed: Sequence[str] = (),
    outside_probe: str | None = None,
    reports: Path,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``tundra acceptance run --local`` over the deployment, every input given; (process,
    JSON report). The JUnit and SARIF files go to ``reports``."""
    argv = [
        "acceptance", "run", "--url", url or plane.url, "--local",
        "--ca-file", str(plane.ca_file),
        "--user", ACCEPTANCE_USER, "--password-env", PASSWORD_ENV,
        "--agent-cert", str(plane.test_agent.cert), "--agent-key", str(plane.test_agent.key),
        "--gateway", plane.gateway,
        "--format", "json",
        "--junit", str(reports / "acceptance.xml"), "--sarif", str(reports / "acceptance.sarif"),
    ]  # fmt: skip
    if outside_probe:
        argv += ["--outside-probe", outside_probe]
    for listener in allowed:
        argv += ["--allow-listener", listener]
    argv += list(extra)
    done = tundra({**plane.env, **(env or {}), PASSWORD_ENV: plane.password}, *argv, timeout=240)
    try:
        report: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        raise AssertionError(
            f"no JSON report (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}\n{plane.log_text()}"
        ) from None
    return done, report


# --------------------------------------------------------------------------------------------
# redis-server on 0.0.0.0 (the weakened deployment's Valkey)


@contextlib.contextmanager
def wide_open_redis(binary: str, workdir: Path) -> Iterator[int]:
    """A redis-server of our own on 0.0.0.0, protected mode off, no password; its port."""
    port = free_port(ANY)
    argv = [binary, "--port", str(port), "--bind", ANY, "--protected-mode", "no"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(workdir)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: process.poll() is not None or tcp_open("127.0.0.1", port),
            "redis-server",
            timeout=10,
        )
        assert process.poll() is None, "redis-server exited"
        yield port
    finally:
        stop(process, timeout=10)


# --------------------------------------------------------------------------------------------
# The weakening TLS reverse proxy


@contextlib.contextmanager
def weak_proxy(plane: Deployment, *, port: int) -> Iterator[str]:
    """The weakening proxy (this file run as a script) on ``plane.host:port``; its URL."""
    log = plane.logs / "proxy.log"
    tls = plane.home / "tls"
    argv = [
        sys.executable, __file__, "proxy",
        "--listen", f"{plane.host}:{port}", "--upstream", f"{plane.host}:{plane.port}",
        "--cert", str(tls / "panel.crt"), "--key", str(tls / "panel.key"),
        "--ca", str(plane.ca_file),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=out)
    try:
        wait_for(lambda: process.poll() is not None or tcp_open(plane.host, port), "the weak proxy")
        assert process.poll() is None, log.read_text("utf-8", "replace")
        yield f"https://{plane.host}:{port}"
    finally:
        stop(process, timeout=10)


_SAMESITE_STRICT = re.compile(rb";\s*SameSite=Strict", re.IGNORECASE)


def weaken_response_head(head: bytes) -> bytes:
    """Strip ``SameSite=Strict`` from every Set-Cookie and make the response close."""
    lines = head.split(b"\r\n")
    out = []
    for line in lines:
        name = line.split(b":", 1)[0].strip().lower()
        if name == b"set-cookie":
            line = _SAMESITE_STRICT.sub(b"", line)
        elif name in (b"connection", b"keep-alive"):
            continue
        out.append(line)
    out.insert(1, b"Connection: close")
    return b"\r\n".join(out)


def _request_head(head: bytes) -> tuple[bytes, int]:
    """The request head made to close upstream, and its body length (Content-Length)."""
    lines = head.split(b"\r\n")
    out, length = [], 0
    for line in lines:
        name, _, value = line.partition(b":")
        lowered = name.strip().lower()
        if lowered == b"content-length":
            length = int(value.strip())
        if lowered in (b"connection", b"keep-alive"):
            continue
        out.append(line)
    out.insert(1, b"Connection: close")
    return b"\r\n".join(out), length


async def _proxy_one(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    upstream: tuple[str, int],
    client_context: ssl.SSLContext,
) -> None:
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        head, length = _request_head(raw[:-4])
        body = await reader.readexactly(length) if length else b""
        up_reader, up_writer = await asyncio.open_connection(
            *upstream, ssl=client_context, server_hostname=upstream[0]
        )
        try:
            up_writer.write(head + b"\r\n\r\n" + body)
            await up_writer.drain()
            chunks = []
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                while chunk := await asyncio.wait_for(up_reader.read(65536), 30):
                    chunks.append(chunk)
        finally:
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()
        response = b"".join(chunks)
        response_head, sep, rest = response.partition(b"\r\n\r\n")
        writer.write(weaken_response_head(response_head) + sep + rest)
        await writer.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, ValueError):
        pass  # probes that hang up, TLS probes without a request, malformed requests
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _serve_proxy(args: argparse.Namespace) -> None:
    # The panel's own context (tundra/panel/tls.py) with one weakening: TLS 1.2 is accepted.
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.minimum_version = ssl.TLSVersion.TLSv1_2
    server_context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    server_context.load_cert_chain(args.cert, args.key)
    server_context.set_ecdh_curve("X25519")
    server_context.set_alpn_protocols(["http/1.1"])
    client_context = ssl.create_default_context(cafile=args.ca)
    client_context.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    host, _, port = args.listen.rpartition(":")
    up_host, _, up_port = args.upstream.rpartition(":")
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)  # failed handshakes are expected
    server = await asyncio.start_server(
        lambda r, w: _proxy_one(r, w, (up_host, int(up_port)), client_context),
        host,
        int(port),
        ssl=server_context,
        ssl_handshake_timeout=10,
    )
    stopping = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    async with server:
        await stopping.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    proxy = sub.add_parser("proxy", help="the weakening TLS reverse proxy")
    for option in ("--listen", "--upstream", "--cert", "--key", "--ca"):
        proxy.add_argument(option, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve_proxy(args))


if __name__ == "__main__":
    main()
