"""How many agents one ``tundra serve`` holds, its memory per agent, and enrollments per second.

A real ``tundra serve`` (panel + gateway, embedded SQLite, heartbeats every HEARTBEAT seconds)
runs in its own process. AGENTS servers are added with join tokens; the agents enroll over HTTPS
(``POST /agent/v1/enroll``, THREADS client threads on keep-alive connections, CSRs made before
the clock starts): that gives enrollments/s. Then SIMULATORS processes open one mutual-TLS
channel and one Session per agent (Hello, then a heartbeat every HEARTBEAT seconds) and hold them
HOLD seconds; the gateway must keep every agent connected (checked in the database and by the
acknowledgements the simulators count) and its resident memory growth per agent is reported.

Baselines, measured in the same run:
- enrollments: ``GET /healthz`` requests/s through the same server, threads and connections
  (the panel's cheapest route) — the ratio says what enrolling costs over a bare request;
- memory: a bare grpc.aio server (same certificates, mutual TLS, no interceptor, a bidi method
  that acknowledges heartbeats) holding the same number of streams from the same simulators.

Usage: ``.venv/bin/python bench/agent_fleet.py`` (about 2 minutes for 1,000 agents).
Environment: BENCH_AGENTS (1000), BENCH_HEARTBEAT (5), BENCH_HOLD (30), BENCH_SIMULATORS (4).
Prints one JSON object.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import tundra.gateway  # noqa: F401  # the TLS 1.2-blocking cipher list, before grpc  # isort: skip
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra.agent.v1 import agent_pb2
from tundra.core.home import initialize
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import load_settings

AGENTS = int(os.environ.get("BENCH_AGENTS", "1000"))
HEARTBEAT = int(os.environ.get("BENCH_HEARTBEAT", "5"))
HOLD = float(os.environ.get("BENCH_HOLD", "30"))
SIMULATORS = int(os.environ.get("BENCH_SIMULATORS", "4"))
THREADS = 4
HEALTH_REQUESTS = 2000

# One simulator process: open a Session per agent, heartbeat, hold, report. Mode "tundra" speaks
# the agent protocol; mode "bare" calls the baseline server's bidi method with the same frames.
SIMULATOR = r"""
import asyncio, json, sys, time
import tundra.gateway
import grpc
from tundra.agent.v1 import agent_pb2, agent_pb2_grpc

mode, target, spec_file, heartbeat, hold = sys.argv[1:6]
heartbeat, hold = int(heartbeat), float(hold)
agents = json.load(open(spec_file))
ca = open(agents[0]["ca"], "rb").read()
stats = {"welcomed": 0, "acks": 0, "errors": 0, "ended": 0}

async def one(agent, ready, stop):
    creds = grpc.ssl_channel_credentials(ca, agent["key"].encode(), agent["cert"].encode())
    options = [("grpc.ssl_target_name_override", "localhost"),
               ("grpc.keepalive_time_ms", 60000)]
    async with grpc.aio.secure_channel(target, creds, options=options) as channel:
        if mode == "tundra":
            call = agent_pb2_grpc.AgentGatewayStub(channel).Session()
        else:
            call = channel.stream_stream(
                "/bench.Bare/Session",
                request_serializer=agent_pb2.AgentMessage.SerializeToString,
                response_deserializer=agent_pb2.ControlMessage.FromString)()
        hello = agent_pb2.Hello(agent_id=agent["id"], agent_version="sim",
                                facts=agent_pb2.Facts(hostname=agent["id"], cpu_count=2))
        try:
            await call.write(agent_pb2.AgentMessage(hello=hello))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                stats["errors"] += 1
                return
            stats["welcomed"] += 1
            ready()
            seq = 0
            async def reader():
                while True:
                    msg = await call.read()
                    if msg is grpc.aio.EOF:
                        return
                    if msg.WhichOneof("kind") == "heartbeat_ack":
                        stats["acks"] += 1
            task = asyncio.create_task(reader())
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), heartbeat)
                except asyncio.TimeoutError:
                    seq += 1
                    await call.write(agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(
                        sequence=seq, sent_at_ms=int(time.time() * 1000))))
            await call.done_writing()
            try:
                await asyncio.wait_for(task, 5)
            except Exception:
                pass
        except grpc.aio.AioRpcError:
            stats["ended"] += 1

async def main():
    stop = asyncio.Event()
    count = [0]
    def ready():
        count[0] += 1
        if count[0] == len(agents):
            print(json.dumps({"ready": len(agents)}), flush=True)
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(one(agent, ready, stop)))
        await asyncio.sleep(0.002)  # a steady dial rate, not one burst of handshakes
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps(stats), flush=True)

asyncio.run(main())
"""

# The memory baseline: a bare grpc.aio server with the gateway's certificates.
BARE_SERVER = r"""
import asyncio, json, sys
import tundra.gateway
import grpc
from tundra.agent.v1 import agent_pb2

cert, key, ca = (open(p, "rb").read() for p in sys.argv[1:4])

async def session(requests, context):
    async for message in requests:
        kind = message.WhichOneof("kind")
        if kind == "hello":
            yield agent_pb2.ControlMessage(welcome=agent_pb2.Welcome(
                agent_id=message.hello.agent_id, heartbeat_seconds=5))
        elif kind == "heartbeat":
            yield agent_pb2.ControlMessage(heartbeat_ack=agent_pb2.HeartbeatAck(
                sequence=message.heartbeat.sequence))

async def main():
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler("bench.Bare", {
        "Session": grpc.stream_stream_rpc_method_handler(
            session, request_deserializer=agent_pb2.AgentMessage.FromString,
            response_serializer=agent_pb2.ControlMessage.SerializeToString)})
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                        require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def csr_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def tundra_env(home: Path, panel: int, gateway: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    env.update(
        TUNDRA_HOME=str(home),
        TUNDRA_PASSWORD_PROFILE="test",
        TUNDRA_PANEL_LISTEN=f"127.0.0.1:{panel}",
        TUNDRA_REDIRECT_LISTEN="",
        TUNDRA_GATEWAY_LISTEN=f"127.0.0.1:{gateway}",
        TUNDRA_AGENT_HEARTBEAT_SECONDS=str(HEARTBEAT),
    )
    return env


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tundra serve exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


class Https:
    """One keep-alive HTTPS connection per thread to the panel."""

    def __init__(self, port: int, ca: Path) -> None:
        self.port = port
        self.context = ssl.create_default_context(cafile=str(ca))
        self.local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection("localhost", self.port, context=self.context)
            self.local.conn = conn
        headers = {"Content-Type": "application/x-protobuf"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()


def enroll_all(https: Https, requests: list[bytes]) -> tuple[float, list[agent_pb2.EnrollResponse]]:
    def one(body: bytes) -> agent_pb2.EnrollResponse:
        status, data = https.request("POST", "/agent/v1/enroll", body)
        if status != 200:
            raise RuntimeError(f"enroll answered {status}: {data[:200]!r}")
        return agent_pb2.EnrollResponse.FromString(data)

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        answers = list(pool.map(one, requests))
    return time.perf_counter() - started, answers


def health_rate(https: Https) -> float:
    def one(_: int) -> None:
        status, _body = https.request("GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"/healthz answered {status}")

    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(HEALTH_REQUESTS)))
    return HEALTH_REQUESTS / (time.perf_counter() - started)


def hold_fleet(
    mode: str,
    target: str,
    agents: list[dict[str, str]],
    root: Path,
    server_pid: int,
    probe: Any = None,
) -> dict[str, Any]:
    """Connect every agent from SIMULATORS processes, hold HOLD seconds, measure the server."""
    before = rss_kib(server_pid)
    chunks = [agents[i::SIMULATORS] for i in range(SIMULATORS)]
    sims = []
    for index, chunk in enumerate(chunks):
        spec = root / f"{mode}-sim-{index}.json"
        spec.write_text(json.dumps(chunk))
        sims.append(
            subprocess.Popen(
                [sys.executable, "-c", SIMULATOR, mode, target, str(spec), str(HEARTBEAT),
                 str(HOLD)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )
        )
    started = time.perf_counter()
    for sim in sims:
        line = sim.stdout.readline() if sim.stdout else ""
        if not line:
            raise RuntimeError(f"a {mode} simulator ended before all its agents connected")
    connect_seconds = time.perf_counter() - started
    cpu_start = cpu_seconds(server_pid)
    time.sleep(HOLD)
    cpu_used = cpu_seconds(server_pid) - cpu_start
    after = rss_kib(server_pid)
    seen = probe() if probe is not None else None
    totals: dict[str, int] = {}
    for sim in sims:
        out, _ = sim.communicate("stop\n", timeout=120)
        for key, value in json.loads(out.strip().splitlines()[-1]).items():
            totals[key] = totals.get(key, 0) + int(value)
    return {
        "connected": totals.get("welcomed", 0),
        "connect_seconds": round(connect_seconds, 2),
        "heartbeat_acks": totals.get("acks", 0),
        "errors": totals.get("errors", 0) + totals.get("ended", 0),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_agent": round((after - before) / max(len(agents), 1), 1),
        "cpu_percent_while_holding": round(100 * cpu_used / HOLD, 1),
        **({"connected_in_database": seen} if seen is not None else {}),
    }


def connected_in_database(home: Path, panel: int, gateway: int) -> int:
    services = Services(load_settings(environ=tundra_env(home, panel, gateway)))
    try:
        agents = services.agents.list(SYSTEM)
        return sum(1 for a in agents if a.connection(heartbeat_seconds=HEARTBEAT) == "connected")
    finally:
        services.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tundra-fleet-") as tmp:
        root = Path(tmp)
        home = root / "home"
        panel, gateway = free_port(), free_port()
        env = tundra_env(home, panel, gateway)
        settings = replace(load_settings(environ=env), password_profile="test")
        services = Services(settings)
        initialize(services, admin_name="admin", admin_password="bench password 1234")
        tokens = []
        for index in range(AGENTS):
            name = f"sim-{index:05d}"
            services.servers.add(SYSTEM, name=name, address="127.0.0.1")
            tokens.append(services.enrollment.create_join_token(SYSTEM, name).token)
        ca = services.pki.ca_cert_path
        services.close()
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(AGENTS)]
        requests = [
            agent_pb2.EnrollRequest(
                join_token=token, csr_pem=csr_for(key), agent_version="sim", hostname="sim"
            ).SerializeToString()
            for token, key in zip(tokens, keys, strict=True)
        ]

        serve = subprocess.Popen(
            [sys.executable, "-m", "tundra", "serve"], env=env,
            stdout=subprocess.DEVNULL, stderr=(root / "serve.log").open("wb"),
        )
        try:
            wait_for_port(panel, serve)
            wait_for_port(gateway, serve)
            https = Https(panel, ca)
            health = health_rate(https)
            seconds, answers = enroll_all(https, requests)
            bundle = root / "ca-bundle.pem"
            bundle.write_bytes(answers[0].ca_bundle_pem)
            agents = [
                {"id": a.agent_id, "cert": a.certificate_pem.decode(), "key": key_pem(k),
                 "ca": str(bundle)}
                for a, k in zip(answers, keys, strict=True)
            ]
            fleet = hold_fleet(
                "tundra", f"127.0.0.1:{gateway}", agents, root, serve.pid,
                probe=lambda: connected_in_database(home, panel, gateway),
            )
        finally:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)

        gateway_cert = home / "tls" / "gateway.crt"
        gateway_key = home / "tls" / "gateway.key"
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_SERVER, str(gateway_cert), str(gateway_key),
             str(bundle)],
            stdout=subprocess.PIPE, text=True,
        )
        try:
            port = int(bare.stdout.readline()) if bare.stdout else 0
            baseline = hold_fleet("bare", f"127.0.0.1:{port}", agents, root, bare.pid)
        finally:
            bare.send_signal(signal.SIGTERM)
            bare.wait(timeout=30)

    rate = AGENTS / seconds
    print(json.dumps({
        "bench": "agent_fleet",
        "agents": AGENTS,
        "heartbeat_seconds": HEARTBEAT,
        "hold_seconds": HOLD,
        "tundra": fleet,
        "baseline_bare_grpc": baseline,
        "memory_ratio_per_agent": round(
            fleet["kib_per_agent"] / baseline["kib_per_agent"], 2
        ) if baseline["kib_per_agent"] > 0 else None,
        "enrollments_per_second": round(rate, 1),
        "baseline_healthz_per_second": round(health, 1),
        "enrollment_cost_vs_healthz": round(health / rate, 1),
        "aim": "connected >= 1000 with heartbeats",
    }, indent=2))


if __name__ == "__main__":
    main()
