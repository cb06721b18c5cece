"""Signed-command round trip over an established agent session, against a bare gRPC unary call.

Tundra: the gateway (the same ``Gateway`` class ``tundra serve`` runs) in this process on the
embedded SQLite home, and a real ``tundra agent run`` in its own process, enrolled through core
and connected over mutual TLS 1.3 on loopback. Each sample is ``Gateway.execute(agent, "ping")``:
sign the command and record it with its audit row (one durable transaction: an fsync), push it
down the live session, the agent verifies signature, audience, freshness and nonce (persisted),
runs ``ping`` and answers, the gateway records the result with its audit row (a second durable
transaction) and returns. Two figures come out of each sample:

- ``session_round_trip``: from writing the signed command to the session to its result arriving
  at the gateway (the round trip over the established session);
- ``execute_end_to_end``: the whole call, with both audited transactions. The audit row is
  committed before the command leaves (audit before effect), so its fsync is on the path.

Baseline, measured in the same run: a bare grpc.aio unary server in this process with the same
certificates and mutual TLS, called by a client in its own process over one warm channel. Both
are measured as wall-clock round trips; the ratio is tundra's p50 (and p99) over the baseline's
(aim <= 2).

Usage: ``.venv/bin/python bench/agent_commands.py`` (about 30 s). Prints one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import tundra.gateway  # noqa: F401  # the TLS 1.2-blocking cipher list, before grpc  # isort: skip
import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tundra.agent.config import AgentConfig, write_config
from tundra.agent.state import AgentState
from tundra.core.home import initialize
from tundra.core.principal import SYSTEM
from tundra.core.services import Services
from tundra.core.settings import Settings
from tundra.gateway.server import Gateway

SAMPLES = int(os.environ.get("BENCH_SAMPLES", "500"))
WARMUP = 50
METHOD = "/bench.Echo/Ping"

BASELINE_CLIENT = r"""
import json, sys, time
import tundra.gateway
import grpc
target, ca, key, cert, n, warm = sys.argv[1], *sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6])
creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(),
                                     open(cert, "rb").read())
with grpc.secure_channel(target, creds,
                         options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
    call = channel.unary_unary("/bench.Echo/Ping")
    for _ in range(warm):
        call(b"x", timeout=10)
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call(b"x", timeout=10)
        samples.append((time.perf_counter() - started) * 1000)
print(json.dumps(samples))
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples), 3),
        "p99_ms": round(percentile(samples, 99), 3),
        "mean_ms": round(statistics.fmean(samples), 3),
    }


def csr_for(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        key, hashes.SHA256()
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def enroll_agent(services: Services, root: Path, gateway_port: int) -> tuple[str, Path]:
    """Enroll server bench-1 through core and write the agent's state and configuration."""
    services.servers.add(SYSTEM, name="bench-1", address="127.0.0.1")
    token = services.enrollment.create_join_token(SYSTEM, "bench-1")
    key = ec.generate_private_key(ec.SECP256R1())
    enrolled = services.enrollment.enroll(
        join_token=token.token,
        csr_pem=csr_for(key),
        agent_version="bench",
        hostname="bench-1",
        source_address="127.0.0.1",
    )
    state = AgentState(root / "agent-state")
    state.prepare()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    state.store_credentials(key_pem=key_pem, cert_pem=enrolled.certificate_pem)
    state.store_ca_bundle(enrolled.ca_bundle_pem)
    state.store_command_keys(dict(enrolled.command_keys))
    config = root / "agent.toml"
    write_config(
        AgentConfig(
            agent_id=enrolled.agent_id,
            server_name="bench-1",
            gateway=f"localhost:{gateway_port}",
            panel_url="https://localhost:1",
            state_dir=state.state_dir if hasattr(state, "state_dir") else root / "agent-state",
        ),
        config,
    )
    return enrolled.agent_id, config


async def measure_tundra(gateway: Gateway, agent_id: str) -> tuple[list[float], list[float]]:
    deadline = time.monotonic() + 30
    while agent_id not in gateway.connected_agents:
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not connect")
        await asyncio.sleep(0.05)
    for _ in range(WARMUP):
        await gateway.execute(agent_id, "ping")
    samples, session = [], []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        outcome = await gateway.execute(agent_id, "ping")
        samples.append((time.perf_counter() - started) * 1000)
        if outcome["status"] != "succeeded":
            raise RuntimeError(f"ping failed: {outcome}")
        session.append(outcome["session_round_trip_ms"])
    return samples, session


async def measure_baseline(services: Services, root: Path) -> list[float]:
    cert_pem, key_pem, ca_pem = services.pki.gateway_credentials()

    async def ping(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return b"pong"

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(ping)}
    )
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=ca_pem, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    state = AgentState(root / "agent-state")
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BASELINE_CLIENT, f"127.0.0.1:{port}",
            str(state.ca_path), str(state.key_path), str(state.cert_path),
            str(SAMPLES), str(WARMUP),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError("the baseline client failed")
        return [float(v) for v in json.loads(out)]
    finally:
        await server.stop(1.0)


async def main_async(root: Path) -> dict[str, Any]:
    settings = replace(Settings(home=root / "home"), password_profile="test")
    services = Services(settings)
    initialize(services, admin_name="admin", admin_password="bench password 1234")
    gateway = Gateway(services, listen="127.0.0.1:0")
    port = await gateway.start()
    agent_id, config = enroll_agent(services, root, port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNDRA_")}
    agent = subprocess.Popen(
        [sys.executable, "-m", "tundra", "agent", "run", "--config", str(config)],
        env=env,
        stderr=(root / "agent.log").open("wb"),
    )
    try:
        tundra_samples, session_samples = await measure_tundra(gateway, agent_id)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=30)
        await gateway.stop(1.0)
    baseline_samples = await measure_baseline(services, root)
    services.close()
    ours, wire, base = summary(tundra_samples), summary(session_samples), summary(baseline_samples)
    return {
        "bench": "agent_commands",
        "samples": SAMPLES,
        "session_round_trip": wire,
        "execute_end_to_end": ours,
        "baseline_grpc_unary": base,
        "session_ratio_p50": round(wire["p50_ms"] / base["p50_ms"], 2),
        "session_ratio_p99": round(wire["p99_ms"] / base["p99_ms"], 2),
        "end_to_end_ratio_p50": round(ours["p50_ms"] / base["p50_ms"], 2),
        "end_to_end_ratio_p99": round(ours["p99_ms"] / base["p99_ms"], 2),
        "aim": "ratio <= 2",
    }


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="tundra-bench-") as tmp:
        print(json.dumps(asyncio.run(main_async(Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
