"""The gateway's source allowlist seen from other hosts: network namespaces with veth pairs.

Two "outside" hosts reach the gateway over their own links. The agent's server is registered at
host A's address: from A its session opens; from B the very same certificate is refused with
PERMISSION_DENIED (and audited), until B's network is configured as trusted. Root only; CI runs
as root and TUNDRA_REQUIRE_SERVICES=1 turns a skip into a failure.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

from gatewayhelpers import EnrolledAgent, enroll_agent, make_services
from netnshelpers import OutsideHost, outside_host, require_netns

from tundra.core.audit.actions import Action
from tundra.core.services import Services
from tundra.gateway.server import Gateway

#: Runs inside a namespace: one Session with Hello, then prints what happened as JSON.
PROBE = r"""
import json, sys
import tundra.gateway  # the TLS 1.2-blocking cipher list, before grpc
import grpc
from tundra.agent.v1 import agent_pb2, agent_pb2_grpc

target, agent_id, cert, key, ca = sys.argv[1:6]
credentials = grpc.ssl_channel_credentials(
    open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read()
)
options = [("grpc.ssl_target_name_override", "localhost")]
with grpc.secure_channel(target, credentials, options=options) as channel:
    stub = agent_pb2_grpc.AgentGatewayStub(channel)
    hello = agent_pb2.AgentMessage(hello=agent_pb2.Hello(agent_id=agent_id, agent_version="t"))
    try:
        first = next(stub.Session(iter([hello]), timeout=15))
        print(json.dumps({"ok": True, "kind": first.WhichOneof("kind")}))
    except grpc.RpcError as exc:
        print(json.dumps({"ok": False, "code": exc.code().name, "details": exc.details()}))
"""


@contextmanager
def gateway_thread(services: Services) -> Iterator[int]:
    """The gateway on 0.0.0.0 (every link) in its own event loop; yields its port."""
    loop = asyncio.new_event_loop()
    gateway = Gateway(services, listen="0.0.0.0:0")
    started: Future[int] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started.set_result(loop.run_until_complete(gateway.start()))
        except BaseException as exc:
            started.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    try:
        yield started.result(timeout=30)
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(1.0), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def probe(host: OutsideHost, port: int, agent: EnrolledAgent, files: Path) -> dict[str, object]:
    cert, key, ca = agent.write_files(files)
    done = host.run(
        [
            sys.executable,
            "-c",
            PROBE,
            f"{host.host_ip}:{port}",
            agent.agent_id,
            str(cert),
            str(key),
            str(ca),
        ],
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def refusal_reasons(services: Services) -> list[str]:
    with services.db.read() as tx:
        rows = tx.fetchall(
            "SELECT details FROM audit_log WHERE action = :a ORDER BY seq",
            {"a": str(Action.AGENT_REFUSED)},
        )
    return [json.loads(r["details"]).get("reason", "") for r in rows]


def test_only_the_registered_address_may_connect(tmp_path: Path) -> None:
    require_netns()
    with outside_host(0) as host_a, outside_host(1) as host_b:
        services = make_services(tmp_path / "home")
        try:
            agent = enroll_agent(services, "web-1", address=host_a.ip)
            with gateway_thread(services) as port:
                from_a = probe(host_a, port, agent, tmp_path / "a")
                from_b = probe(host_b, port, agent, tmp_path / "b")
            assert from_a == {"ok": True, "kind": "welcome"}
            assert from_b["ok"] is False
            assert from_b["code"] == "PERMISSION_DENIED"
            assert "not trusted" in str(from_b["details"])
            assert "source" in refusal_reasons(services)
        finally:
            services.close()


def test_a_configured_network_is_trusted_too(tmp_path: Path) -> None:
    require_netns()
    with outside_host(2) as host_a, outside_host(3) as host_b:
        services = make_services(tmp_path / "home", agent_trusted_cidrs=f"{host_b.ip}/30")
        try:
            agent = enroll_agent(services, "web-1", address=host_a.ip)
            with gateway_thread(services) as port:
                assert probe(host_b, port, agent, tmp_path / "b") == {"ok": True, "kind": "welcome"}
        finally:
            services.close()
